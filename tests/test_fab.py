"""FAB / FAB-T: the box-constrained projection against a bisection reference, exact minimal distances of linear
classifiers, bounds, determinism, untouched misclassified samples and the eps mode AutoAttack uses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import medrobust
from medrobust.attacks import FAB, DeepFool
from medrobust.attacks.base import flat_norm
from medrobust.attacks.fab import project_to_hyperplane


def bisection_projection(t, w, c, bounds, norm, iters=200):
    """The reference: d(lambda) = clip(lambda * sign(c) * v, low - t, high - t) with v = sign(w) (Linf) or w (L2),
    the KKT form of the minimal step; lambda found by bisection on <w, d(lambda)> = |c| (float64)."""
    low, high = bounds
    v = torch.sign(w) if norm == "linf" else w
    v = torch.sign(c).unsqueeze(1) * v

    def step(lam):
        return torch.minimum(torch.maximum(lam.unsqueeze(1) * v, low - t), high - t)

    def reach(lam):
        return (w * step(lam)).sum(1) * torch.sign(c)

    lo_lam = torch.zeros_like(c)
    hi_lam = torch.full_like(c, 1e6)
    for _ in range(iters):
        mid = (lo_lam + hi_lam) / 2
        short = reach(mid) < c.abs()
        lo_lam, hi_lam = torch.where(short, mid, lo_lam), torch.where(short, hi_lam, mid)
    return step(hi_lam)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_matches_a_bisection_reference(norm):
    g = torch.Generator().manual_seed(0)
    m, d = 40, 30
    t = torch.rand(m, d, generator=g, dtype=torch.float64)
    t[:, :5] = 0.0  # coordinates already at a bound
    t[:, 5:10] = 1.0
    w = torch.randn(m, d, generator=g, dtype=torch.float64)
    w[:, 10:13] = 0.0  # features the hyperplane ignores
    c = torch.randn(m, generator=g, dtype=torch.float64) * torch.linspace(0.1, 12.0, m, dtype=torch.float64)
    ours = project_to_hyperplane(t, w, c, (0.0, 1.0), norm)
    ref = bisection_projection(t, w, c, (0.0, 1.0), norm)
    assert torch.allclose(ours, ref, atol=1e-9)
    assert float((t + ours).min()) >= 0.0 and float((t + ours).max()) <= 1.0
    reachable = (w * ref).sum(1).sub(c).abs() < 1e-9
    assert 5 < int(reachable.sum()) < m  # both cases: on the hyperplane, and out of the box's reach
    assert torch.allclose((w * ours).sum(1)[reachable], c[reachable], atol=1e-9)
    assert torch.equal(ours[:, 10:13], torch.zeros(m, 3, dtype=torch.float64))
    # the unconstrained minimum where no bound binds: |c| / ||w||_1 (Linf), |c| / ||w||_2 (L2)
    far = torch.full((1, d), 0.5, dtype=torch.float64)
    w1 = w[:1]
    step = project_to_hyperplane(far, w1, torch.tensor([1e-3], dtype=torch.float64), (0.0, 1.0), norm)
    dual = w1.abs().sum() if norm == "linf" else w1.norm()
    assert float(flat_norm(step, norm)) == pytest.approx(1e-3 / float(dual), rel=1e-9)


def linear_problem(k=4, n=24, seed=1):
    """A K-class linear classifier on 1x8x8 inputs near 0.5 (far from the bounds) and the exact minimal distances
    per sample: min_j margin_j / ||w_y - w_j||_1 (Linf) and / ||w_y - w_j||_2 (L2)."""
    torch.manual_seed(0)  # test-only: fixed weights
    lin = nn.Linear(64, k).double()
    net = nn.Sequential(nn.Flatten(), lin)
    g = torch.Generator().manual_seed(seed)
    x = 0.5 + 0.02 * torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64)
    with torch.no_grad():
        z = net(x)
    y = z.argmax(1)
    diff = lin.weight.detach()[y].unsqueeze(1) - lin.weight.detach().unsqueeze(0)  # (n, K, D): w_y - w_j
    margin = z.gather(1, y.unsqueeze(1)) - z  # (n, K)
    own = torch.nn.functional.one_hot(y, k).bool()
    exact = {
        "linf": (margin / diff.abs().sum(2)).masked_fill(own, float("inf")).amin(1),
        "l2": (margin / diff.norm(dim=2)).masked_fill(own, float("inf")).amin(1),
    }
    return net, x, y, exact


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("targeted", [False, True])
def test_linear_classifier_minimal_distance_is_found(norm, targeted):
    net, x, y, exact = linear_problem()
    adv = FAB(norm=norm, steps=10, targeted=targeted)(net, "classification", x, y)
    with torch.no_grad():
        assert bool((net(adv).argmax(1) != y).all())
    ratio = flat_norm(adv - x, norm) / exact[norm]
    assert float(ratio.min()) >= 1 - 1e-9  # never closer than the boundary while adversarial
    assert float(ratio.max()) <= 1.01  # eta = 1.05, then the backward steps close in


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_box_constrained_minimum_near_the_bounds(norm):
    """Two classes, inputs with many features at the bounds: the minimal adversarial is the box-constrained
    projection onto the (exact) decision hyperplane, given by the bisection reference."""
    torch.manual_seed(0)  # test-only: fixed weights
    lin = nn.Linear(16, 2).double()
    net = nn.Sequential(nn.Flatten(), lin)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(12, 1, 4, 4, generator=g, dtype=torch.float64)
    x[:, :, :2] = x[:, :, :2].round()  # half the features at 0 or 1
    with torch.no_grad():
        y = net(x).argmax(1)
    w = (lin.weight[1] - lin.weight[0]).detach().expand(12, 16) * (1 - 2 * y.double()).unsqueeze(1)  # z_other - z_y
    f = (net(x).gather(1, (1 - y).unsqueeze(1)) - net(x).gather(1, y.unsqueeze(1))).detach().squeeze(1)
    exact = flat_norm(bisection_projection(x.flatten(1), w, -f, (0.0, 1.0), norm), norm)
    adv = FAB(norm=norm, steps=20)(net, "classification", x, y)
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    with torch.no_grad():
        assert bool((net(adv).argmax(1) != y).all())
    ratio = flat_norm(adv - x, norm) / exact
    assert float(ratio.min()) >= 1 - 1e-9 and float(ratio.max()) <= 1.01


def test_deterministic_given_the_generator_and_misclassified_samples_unchanged(toy_model, toy_batch):
    x, y = toy_batch
    x, y = x[:12], y[:12].clone()
    y[:4] = (y[:4] + 1) % 3  # wrong labels: misclassified from the start
    attack = FAB(norm="l2", steps=8, restarts=2, targeted=True)
    a = attack(toy_model, "classification", x, y, generator=torch.Generator().manual_seed(5))
    b = attack(toy_model, "classification", x, y, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(a[:4], x[:4])
    with torch.no_grad():
        assert bool((toy_model(a[4:]).argmax(1) != y[4:]).all())
    # restarts draw from the generator: another seed gives other random starts
    c = attack(toy_model, "classification", x, y, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(a, c)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_mode_returns_adversarials_within_eps(norm):
    net, x, y, exact = linear_problem(n=40, seed=2)
    dist = exact[norm].sort().values
    i = int((dist[1:] / dist[:-1]).argmax())  # eps in the widest gap between two samples' minimal distances
    assert float(dist[i + 1] / dist[i]) > 1.02
    eps = float(dist[i] * 1.01)
    adv = FAB(norm=norm, steps=10, targeted=True)(net, "classification", x, y, eps=eps)
    assert float(flat_norm(adv - x, norm).max()) <= eps + 1e-9
    with torch.no_grad():
        fooled = net(adv).argmax(1) != y
    assert torch.equal(fooled, exact[norm] <= eps)


def test_fab_finds_smaller_l2_perturbations_than_deepfool(toy_model):
    """On a small trained CNN, FAB's minimal L2 norms are no larger than DeepFool's (the paper's comparison)."""
    from conftest import make_toy

    x, y = make_toy(30, seed=4)
    fab = FAB(norm="l2", steps=30)(toy_model, "classification", x, y)
    df = DeepFool(steps=50)(toy_model, "classification", x, y)
    with torch.no_grad():
        assert bool((toy_model(fab).argmax(1) != y).all())
    assert float(flat_norm(fab - x, "l2").median()) <= float(flat_norm(df - x, "l2").median())


def test_registered_and_classification_only(toy_segmenter, toy_seg_batch):
    attack = medrobust.attacks.ATTACKS.build("fab", norm="l2", targeted=True)
    assert attack.minimal and attack.threat_norm == "l2"
    x, y = toy_seg_batch
    with pytest.raises(ValueError, match="classification tasks only"):
        attack(toy_segmenter, "segmentation", x, y)
    for bad in ({"norm": "l0"}, {"steps": 0}, {"beta": 1.5}, {"eta": 0}, {"start_radius": -1.0}):
        with pytest.raises(ValueError):
            FAB(**bad)
