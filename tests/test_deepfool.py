"""DeepFool against analytic answers on linear models and against its contract on the toy CNN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medrobust.attacks.deepfool import DeepFool
from medrobust.models.wrapper import Model

SLACK = 1e-4  # the step slack of the reference algorithm: r = (|f| + 1e-4) / ||w||^2 * w


def linear_model(d: int, k: int, seed: int) -> tuple[Model, nn.Linear]:
    """A linear classifier on (N, 1, 4, 4) inputs in float64 with bounds wide enough never to bind."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=g, dtype=torch.float64))
        lin.bias.copy_(torch.randn(k, generator=g, dtype=torch.float64))
    return Model(nn.Sequential(nn.Flatten(), lin), bounds=(-100.0, 100.0)), lin


def linear_inputs(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1


def expected_first_step(lin: nn.Linear, x: torch.Tensor, y: torch.Tensor, k: torch.Tensor, overshoot: float):
    """The hand-derived DeepFool step of a linear model towards class k: x + (1+o)(|f|+s)/||w||^2 w."""
    W, b = lin.weight.detach(), lin.bias.detach()
    w = W[k] - W[y]  # (N, D)
    f = (x.flatten(1) * w).sum(1) + b[k] - b[y]
    delta = (1 + overshoot) * ((f.abs() + SLACK) / w.norm(dim=1) ** 2)[:, None] * w
    return x + delta.view_as(x), f.abs() / w.norm(dim=1)


def test_two_class_linear_matches_closed_form() -> None:
    model, lin = linear_model(16, 2, seed=0)
    x = linear_inputs(12, seed=1)
    y = model(x).argmax(1)  # every sample starts correctly classified
    overshoot = 0.02
    x_adv = DeepFool(steps=50, overshoot=overshoot)(model, "classification", x, y)

    ref, dist = expected_first_step(lin, x, y, 1 - y, overshoot)
    torch.testing.assert_close(x_adv, ref, atol=1e-9, rtol=1e-9)
    delta = (x_adv - x).flatten(1)
    norm = delta.norm(dim=1)
    torch.testing.assert_close(norm, (1 + overshoot) * dist, atol=2e-4, rtol=0)
    w = (lin.weight[1] - lin.weight[0]).detach()
    cosine = (delta @ w).abs() / (norm * w.norm())
    torch.testing.assert_close(cosine, torch.ones_like(cosine))  # parallel to w
    assert bool((model(x_adv).argmax(1) != y).all())
    # One step suffices for a linear model: a single allowed step gives the same answer.
    torch.testing.assert_close(DeepFool(steps=1, overshoot=overshoot)(model, "classification", x, y), x_adv)


def test_multiclass_linear_reaches_nearest_boundary() -> None:
    model, lin = linear_model(16, 4, seed=2)
    x = linear_inputs(20, seed=3)
    y = model(x).argmax(1)
    W, b = lin.weight.detach(), lin.bias.detach()
    # Distance from x to each linear boundary {z_k = z_y}, by hand: |f_k| / ||w_k||.
    dists = torch.full((x.shape[0], 4), float("inf"), dtype=x.dtype)
    for k in range(4):
        w = W[k] - W[y]
        f = (x.flatten(1) * w).sum(1) + b[k] - b[y]
        dists[:, k] = torch.where(y == k, torch.full_like(f, float("inf")), f.abs() / w.norm(dim=1))
    nearest = dists.argmin(1)
    x_adv = DeepFool(overshoot=0.0)(model, "classification", x, y)
    ref, dist = expected_first_step(lin, x, y, nearest, 0.0)
    torch.testing.assert_close(dist, dists.min(1).values)
    torch.testing.assert_close(x_adv, ref, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close((x_adv - x).flatten(1).norm(dim=1), dists.min(1).values, atol=2e-4, rtol=0)
    assert bool((model(x_adv).argmax(1) != y).all())

    # candidates=1 looks only at the runner-up class by clean logit, which need not be the nearest boundary.
    runner_up = model(x).scatter(1, y[:, None], float("-inf")).argmax(1)
    assert bool((runner_up != nearest).any()), "the case should tell the two apart"
    ref1, _ = expected_first_step(lin, x, y, runner_up, 0.02)
    torch.testing.assert_close(DeepFool(candidates=1)(model, "classification", x, y), ref1, atol=1e-9, rtol=1e-9)


def test_misclassified_samples_are_returned_unchanged() -> None:
    model, _ = linear_model(16, 3, seed=4)
    x = linear_inputs(10, seed=5)
    y = (model(x).argmax(1) + 1) % 3  # all wrong from the start
    assert torch.equal(DeepFool()(model, "classification", x, y), x)


def test_toy_cnn_unbounded_success_and_bounds(toy_model, toy_batch) -> None:
    x, y = toy_batch
    assert bool((toy_model(x).argmax(1) == y).all())
    for candidates in (10, None, 1):
        x_adv = DeepFool(candidates=candidates)(toy_model, "classification", x, y)
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
        fooled = (toy_model(x_adv).argmax(1) != y).float().mean()
        assert float(fooled) >= 0.95, (candidates, float(fooled))
    # All K - 1 = 2 other classes are the candidates either way, so None and 10 agree exactly.
    torch.testing.assert_close(
        DeepFool(candidates=None)(toy_model, "classification", x, y),
        DeepFool(candidates=10)(toy_model, "classification", x, y),
    )


def test_finished_samples_stop_costing_forwards(toy_model, toy_batch) -> None:
    x, y = toy_batch
    sizes: list[int] = []
    handle = toy_model.register_forward_pre_hook(lambda _m, inp: sizes.append(int(inp[0].shape[0])))
    try:
        steps = 50
        DeepFool(steps=steps, candidates=None)(toy_model, "classification", x, y)
    finally:
        handle.remove()
    n, m = x.shape[0], 2
    assert sizes[0] == n  # the clean forward
    replicated = sizes[1:]
    assert replicated[0] == n * m
    assert all(a >= b for a, b in zip(replicated, replicated[1:])), replicated  # the active set only shrinks
    assert replicated[-1] < replicated[0]
    assert len(replicated) < steps  # stops once every sample is fooled
    assert sum(sizes) < steps * n * m


def test_batched_equals_per_sample(toy_model, toy_batch) -> None:
    x, y = toy_batch
    attack = DeepFool()
    batched = attack(toy_model, "classification", x, y)
    alone = torch.cat([attack(toy_model, "classification", x[i : i + 1], y[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_eps_clips_the_minimal_perturbation(toy_model, toy_batch) -> None:
    x, y = toy_batch
    eps = 0.3
    x_adv = DeepFool()(toy_model, "classification", x, y, eps=eps)
    assert float((x_adv - x).flatten(1).norm(dim=1).max()) <= eps + 1e-6
    assert DeepFool().threat_norm == "l2"


def test_segmentation_is_refused(toy_model, toy_batch) -> None:
    x, _ = toy_batch
    with pytest.raises(ValueError, match="classification"):
        DeepFool()(toy_model, "segmentation", x, torch.zeros(x.shape[0], 8, 8, dtype=torch.long))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"steps": 0}, "steps=0"),
        ({"steps": 2.5}, "steps=2.5"),
        ({"overshoot": -0.1}, "overshoot=-0.1"),
        ({"candidates": 0}, "candidates=0"),
        ({"norm": "linf"}, "norm='linf'"),
    ],
)
def test_bad_hyperparameters(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        DeepFool(**kwargs)
