"""JSMA (Papernot et al., EuroS&P 2016): hand-computed steps, an exact brute-force reference, the toy CNN,
several class counts, memory on a 224 x 224 x 3 input, eps clipping and parameter errors."""

from __future__ import annotations

import math
import resource
import sys

import numpy as np
import pytest
import torch
from torch import nn

import medrobust.attacks.jsma as jsma_module
from medrobust.attacks.jsma import JSMA
from medrobust.models.wrapper import Model

# Hand case: 4 features, 3 classes, target 2.
# alpha = W[2] = [1.0, 0.8, -0.5, 2.0]; beta = W[0] + W[1] = [0.2, -0.6, -0.4, 0.4].
# Pair scores -(a_p+a_q)(b_p+b_q) where a-sum > 0 and b-sum < 0:
#   (0,1): 1.8 * 0.4 = 0.72   (0,2): 0.5 * 0.2 = 0.10   (1,2): 0.3 * 1.0 = 0.30   (1,3): 2.8 * 0.2 = 0.56
#   (0,3): b-sum 0.6 > 0, (2,3): b-sum 0.0, invalid.
# -> features 0 and 1, although feature 3 has the largest alpha.
W = np.array([[0.5, -1.0, 0.2, 0.3], [-0.3, 0.4, -0.6, 0.1], [1.0, 0.8, -0.5, 2.0]])
B = np.array([1.0, 0.0, -1.0])


def linear_net(weight: np.ndarray, bias: np.ndarray, dtype=torch.float64) -> nn.Module:
    net = nn.Sequential(nn.Flatten(), nn.Linear(weight.shape[1], weight.shape[0]))
    with torch.no_grad():
        net[1].weight.copy_(torch.as_tensor(weight))
        net[1].bias.copy_(torch.as_tensor(bias))
    return net.to(dtype)


def brute_force_pair(a: np.ndarray, b: np.ndarray, domain: list[int]) -> tuple[float, int, int] | None:
    """Exact search over all pairs p < q of the domain (a, b already multiplied by sign(theta))."""
    best = None
    for i, p in enumerate(domain):
        for q in domain[i + 1:]:
            sa, sb = a[p] + a[q], b[p] + b[q]
            if sa > 0 and sb < 0 and (best is None or -sa * sb > best[0]):
                best = (-sa * sb, p, q)
    return best


def test_hand_computed_pair_matches_formula():
    x = torch.full((1, 1, 2, 2), 0.2, dtype=torch.float64)
    y = torch.tensor([0])  # logits at x: [1.2, -0.08, -0.34], so the sample starts correct and not at the target
    best = brute_force_pair(W[2], W[0] + W[1], [0, 1, 2, 3])
    assert best is not None and best[1:] == (0, 1) and best[0] == pytest.approx(0.72)
    # gamma = 0.5 of 4 features: one pair, then the budget is spent.
    x_adv = JSMA(theta=0.5, gamma=0.5, target=2)(linear_net(W, B), "classification", x, y)
    assert x_adv.dtype == torch.float64
    np.testing.assert_allclose(x_adv.flatten().numpy(), [0.7, 0.7, 0.2, 0.2], atol=1e-12)


def test_hand_computed_pair_in_other_bounds():
    # bounds (-1, 1): theta = 0.25 of the range 2 is a step of 0.5, the same move as above; -0.8 + 0.5 = -0.3.
    net = Model(linear_net(W, B + W.sum(axis=1)), bounds=(-1.0, 1.0))
    x = torch.full((1, 1, 2, 2), -0.8, dtype=torch.float64)  # same logits as x = 0.2 with the original bias
    x_adv = JSMA(theta=0.25, gamma=0.5, target=2)(net, "classification", x, torch.tensor([0]))
    np.testing.assert_allclose(x_adv.flatten().numpy(), [-0.3, -0.3, -0.8, -0.8], atol=1e-12)


def test_hand_computed_single_feature_fallback_when_decreasing():
    # theta < 0 flips signs: a' = -alpha = [-1, -0.8, 0.5, -2], b' = -beta = [-0.2, 0.6, 0.4, -0.4].
    # No pair has a'-sum > 0 and b'-sum < 0, so the top single feature by a' - b' = [-0.8, -1.4, 0.1, -1.6] is
    # feature 2 (0.1 > 0): 0.8 - 0.5 = 0.3. Next iteration nothing scores > 0 and the sample stops.
    x = torch.full((1, 1, 2, 2), 0.8, dtype=torch.float64)
    bias = np.array([2.5, 0.0, -1.0])  # logits at x: [2.5, -0.32, 1.64]; after the step [2.4, -0.38, 1.89]
    x_adv = JSMA(theta=-0.5, gamma=1.0, target=2)(linear_net(W, bias), "classification", x, torch.tensor([0]))
    np.testing.assert_allclose(x_adv.flatten().numpy(), [0.8, 0.8, 0.3, 0.8], atol=1e-12)


def reference_jsma(net, x0, y, *, theta, gamma, target, bounds=(0.0, 1.0), candidates=None):
    """Per-sample JSMA with an exact pair search (or, with ``candidates``, over the top features by a - b);
    Jacobian from torch.autograd.functional.jacobian, beta as the explicit sum over the other classes."""
    low, high = bounds
    s = 1.0 if theta > 0 else -1.0
    shape = x0.shape
    x = x0.flatten().numpy().copy()
    d = x.size

    def f(v):
        return net(torch.as_tensor(v).view(1, *shape))[0]

    with torch.no_grad():
        z0 = f(x).numpy()
    t = target if target is not None else max((j for j in range(z0.size) if j != y), key=lambda j: z0[j])
    if t == y:
        return x
    used: set[int] = set()
    budget = math.floor(gamma * d + 1e-9)
    while len(used) < budget:
        with torch.no_grad():
            pred = int(f(x).argmax())
        if (target is not None and pred == t) or (target is None and pred != y):
            break
        jac = torch.autograd.functional.jacobian(f, torch.as_tensor(x)).numpy()  # (K, D)
        a = s * jac[t]
        b = s * sum(jac[j] for j in range(jac.shape[0]) if j != t)
        domain = [p for p in range(d) if p not in used and (x[p] < high if s > 0 else x[p] > low)]
        if not domain:
            break
        if candidates is not None:
            domain = sorted(sorted(domain, key=lambda p: -(a[p] - b[p]))[:candidates])
        best = brute_force_pair(a, b, domain) if budget - len(used) >= 2 else None
        if best is not None:
            chosen = [best[1], best[2]]
        else:
            p = max(domain, key=lambda p: (a[p] - b[p], -p))
            if a[p] - b[p] <= 0:
                break
            chosen = [p]
        for p in chosen:
            x[p] = min(max(x[p] + theta * (high - low), low), high)
            used.add(p)
    return x


def small_mlp(d: int, k: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)  # test-only: fixed random weights
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, k)).double().eval()


@pytest.mark.parametrize(
    "theta,target", [(1.0, None), (0.3, None), (-1.0, None), (1.0, 3), (-0.4, 1)]
)
def test_matches_brute_force_reference(theta, target):
    net = small_mlp(12, 5, seed=3)
    x = torch.rand(6, 1, 3, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        y = net(x).argmax(1)
    x_adv = JSMA(theta=theta, gamma=0.5, target=target, candidates=12)(net, "classification", x, y)
    for i in range(x.shape[0]):
        ref = reference_jsma(net, x[i], int(y[i]), theta=theta, gamma=0.5, target=target)
        np.testing.assert_allclose(x_adv[i].flatten().numpy(), ref, atol=1e-12, err_msg=f"sample {i}")
    assert (x_adv != x).any()


def test_topk_restriction_matches_reference_over_top_features():
    net = small_mlp(12, 5, seed=5)
    x = torch.rand(6, 1, 3, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with torch.no_grad():
        y = net(x).argmax(1)
    x_adv = JSMA(gamma=0.5, candidates=4)(net, "classification", x, y)
    for i in range(x.shape[0]):
        ref = reference_jsma(net, x[i], int(y[i]), theta=1.0, gamma=0.5, target=None, candidates=4)
        np.testing.assert_allclose(x_adv[i].flatten().numpy(), ref, atol=1e-12, err_msg=f"sample {i}")


def l0(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x_adv != x).flatten(1).sum(1)


@pytest.mark.parametrize("theta", [1.0, -1.0])
def test_untargeted_fools_toy_cnn_within_budget(toy_model, toy_batch, theta):
    x, y = toy_batch
    attack = JSMA(theta=theta, gamma=0.3)
    x_adv = attack(toy_model, "classification", x, y)
    with torch.no_grad():
        assert (toy_model(x).argmax(1) == y).all()
        success = (toy_model(x_adv).argmax(1) != y).float().mean().item()
    assert success >= 0.9
    assert l0(x_adv, x).max() <= math.floor(0.3 * 64)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    torch.testing.assert_close(attack(toy_model, "classification", x, y), x_adv, rtol=0, atol=0)


@pytest.mark.parametrize("target", [0, 1, 2])
def test_targeted_reaches_target_on_toy_cnn(toy_model, toy_batch, target):
    x, y = toy_batch
    x_adv = JSMA(gamma=0.3, target=target)(toy_model, "classification", x, y)
    other = y != target
    with torch.no_grad():
        reached = (toy_model(x_adv[other]).argmax(1) == target).float().mean().item()
    assert reached >= 0.9
    assert torch.equal(x_adv[~other], x[~other])  # already labelled the target: left alone
    assert l0(x_adv, x).max() <= math.floor(0.3 * 64)


@pytest.mark.parametrize("n_classes", [3, 7, 10])
def test_any_number_of_classes(n_classes):
    torch.manual_seed(n_classes)  # test-only: fixed random weights
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, n_classes)
    ).eval()
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1)
    x_adv = JSMA(gamma=0.2)(net, "classification", x, y)
    with torch.no_grad():
        assert (net(x_adv).argmax(1) != y).float().mean().item() >= 0.9
    assert l0(x_adv, x).max() <= math.floor(0.2 * 192)
    x_t = JSMA(gamma=0.3, target=n_classes - 1)(net, "classification", x, y)
    other = y != n_classes - 1
    with torch.no_grad():
        assert (net(x_t[other]).argmax(1) == n_classes - 1).float().mean().item() >= 0.8


def test_large_input_keeps_pair_search_small(monkeypatch):
    """224 x 224 x 3 = 150,528 features: a full D x D pair matrix would be 2.3e10 entries per sample (~90 GB); the
    attack must search k x k pairs among its candidates and stay far below that in resident memory."""
    torch.manual_seed(0)  # test-only: fixed random weights
    net = nn.Sequential(
        nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 7)
    ).eval()
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1)
    shapes = []
    original = jsma_module.select_features

    def recording(alpha, beta, domain, k, remaining):
        shapes.append((tuple(alpha.shape), k))
        return original(alpha, beta, domain, k, remaining)

    monkeypatch.setattr(jsma_module, "select_features", recording)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    x_adv = JSMA(gamma=0.0001)(net, "classification", x, y)  # budget floor(15.05) = 15 features
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    growth_bytes = growth if sys.platform == "darwin" else growth * 1024  # ru_maxrss is KiB on Linux
    assert growth_bytes < 2**30
    assert shapes and all(k == 64 and s[0] <= 2 and s[1] == 150_528 for s, k in shapes)
    assert 1 <= len(shapes) <= 15  # at least one feature per iteration
    assert l0(x_adv, x).max() <= 15
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_eps_clipping_limits_changed_features(toy_model, toy_batch):
    torch.manual_seed(2)  # test-only: fixed random weights
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 4)).eval()
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = net(x).argmax(1)
    full = JSMA()(net, "classification", x, y)
    clipped = JSMA()(net, "classification", x, y, eps=0.01)
    assert l0(full, x).max() > 7
    assert l0(clipped, x).max() <= math.floor(0.01 * 768)
    changed = clipped != x
    assert torch.equal(clipped[changed], full[changed])  # a subset of the attack's own changes
    xt, yt = toy_batch
    assert l0(JSMA()(toy_model, "classification", xt, yt, eps=0.05), xt).max() <= math.floor(0.05 * 64)


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"gamma": 0}, "gamma=0"),
        ({"gamma": 2}, "gamma=2"),
        ({"candidates": 0}, "candidates=0"),
        ({"target": -1}, "target=-1"),
        ({"theta": 0.0}, "theta=0.0"),
        ({"norm": "linf"}, "norm='linf'"),
    ],
)
def test_bad_parameters_raise(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        JSMA(**kwargs)


def test_target_out_of_range_and_wrong_task_raise(toy_model, toy_batch):
    x, y = toy_batch
    with pytest.raises(ValueError, match="target=5"):
        JSMA(target=5)(toy_model, "classification", x, y)
    with pytest.raises(ValueError, match="classification"):
        JSMA()(toy_model, "segmentation", x, torch.zeros(30, 8, 8, dtype=torch.long))


def test_misclassified_and_empty_inputs_unchanged(toy_model, toy_batch):
    x, y = toy_batch
    wrong = (y + 1) % 3  # every sample already misclassified: nothing to do
    assert torch.equal(JSMA()(toy_model, "classification", x, wrong), x)
    empty = JSMA()(toy_model, "classification", x[:0], y[:0])
    assert empty.shape == (0, 1, 8, 8)
