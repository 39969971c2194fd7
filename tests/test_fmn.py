"""FMN against analytic minimal norms of linear models, its contract, and DeepFool on the toy CNN."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medrobust.attacks import ATTACKS
from medrobust.attacks.base import flat_norm
from medrobust.attacks.deepfool import DeepFool
from medrobust.attacks.fmn import FMN
from medrobust.models.wrapper import Model


def linear_model(d: int, k: int, seed: int, bounds=(-100.0, 100.0)) -> tuple[Model, nn.Linear]:
    """A linear classifier on (N, 1, 4, 4) inputs in float64; the default bounds never bind."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=g, dtype=torch.float64))
        lin.bias.copy_(torch.randn(k, generator=g, dtype=torch.float64))
    return Model(nn.Sequential(nn.Flatten(), lin), bounds=bounds), lin


def linear_inputs(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1


def boundary_distances(lin: nn.Linear, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
    """(N, K): the distance from x to the hyperplane where class k ties with the true class y, worked out by hand:
    |f_k| / ||w_k||_*, with f_k = (W_y - W_k) x + b_y - b_k, w_k = W_y - W_k and ||.||_* the dual norm (L2 for
    L2, L1 for Linf); infinite for k = y. A linear model without bounds is misclassified only beyond one of these
    hyperplanes, so the minimal norm is their minimum over k."""
    W, b = lin.weight.detach(), lin.bias.detach()
    w = W[y][:, None, :] - W[None, :, :]  # (N, K, D)
    f = (w * x.flatten(1)[:, None, :]).sum(2) + b[y][:, None] - b[None, :]
    dual = w.norm(dim=2) if norm == "l2" else w.abs().sum(dim=2)
    dist = f.abs() / dual
    dist[torch.arange(len(y)), y] = math.inf
    return dist


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_binary_linear_model_reaches_the_exact_minimal_norm(norm: str) -> None:
    model, lin = linear_model(16, 2, seed=2)
    x = linear_inputs(20, seed=1)
    y = model(x).argmax(1)  # every sample starts correctly classified
    x_adv = FMN(norm=norm)(model, "classification", x, y)
    found = flat_norm(x_adv - x, norm)
    exact = boundary_distances(lin, x, y, norm).min(dim=1).values
    assert bool((model(x_adv).argmax(1) != y).all())
    # adversarial, so never closer than the boundary; and within 0.1% of it (gamma is annealed to 0.001)
    assert bool((found >= exact * (1 - 1e-9)).all())
    ratio = found / exact
    assert float(ratio.max()) <= 1.001, ratio


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_multiclass_linear_model_reaches_the_boundary_it_crosses(norm: str) -> None:
    """FMN descends the margin to the currently strongest other class, so with several classes it may cross a
    boundary other than the nearest one: it must then reach that boundary's exact distance, and the nearest one
    on most samples."""
    model, lin = linear_model(16, 4, seed=4)
    x = linear_inputs(20, seed=1)
    y = model(x).argmax(1)
    x_adv = FMN(norm=norm)(model, "classification", x, y)
    found = flat_norm(x_adv - x, norm)
    with torch.no_grad():
        crossed = model(x_adv).argmax(1)
    assert bool((crossed != y).all())
    dist = boundary_distances(lin, x, y, norm)
    exact = dist.min(dim=1).values
    assert bool((found >= exact * (1 - 1e-9)).all())
    to_crossed = dist.gather(1, crossed[:, None]).squeeze(1)
    assert float((found / to_crossed).max()) <= 1.005
    ratio = found / exact
    assert float(ratio.median()) <= 1.001 and float((ratio <= 1.005).float().mean()) >= 0.9, ratio


def test_binary_linear_l2_perturbation_is_parallel_to_the_weights() -> None:
    model, lin = linear_model(16, 2, seed=5)
    x = linear_inputs(8, seed=6)
    y = model(x).argmax(1)
    delta = (FMN(norm="l2")(model, "classification", x, y) - x).flatten(1)
    w = (lin.weight[1] - lin.weight[0]).detach()
    cosine = (delta @ w).abs() / (delta.norm(dim=1) * w.norm())
    torch.testing.assert_close(cosine, torch.ones_like(cosine), atol=1e-6, rtol=0)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_outputs_stay_inside_binding_bounds(norm: str) -> None:
    """Inputs on the edges of [0, 1] and a boundary far away: the bounds bind, x_adv never leaves them."""
    model, lin = linear_model(16, 3, seed=7, bounds=(0.0, 1.0))
    g = torch.Generator().manual_seed(8)
    x = (torch.rand(12, 1, 4, 4, generator=g, dtype=torch.float64) > 0.5).double()
    y = model(x).argmax(1)
    x_adv = FMN(norm=norm, steps=50)(model, "classification", x, y)
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    fooled = model(x_adv).argmax(1) != y
    unchanged = (x_adv == x).flatten(1).all(1)
    assert bool((fooled | unchanged).all())  # each sample is either adversarial or returned as it was
    assert bool(fooled.any())


def test_deterministic_and_ignores_the_generator(toy_model, toy_batch) -> None:
    x, y = toy_batch
    attack = FMN(norm="linf", steps=30)
    a = attack(toy_model, "classification", x, y, generator=torch.Generator().manual_seed(0))
    b = attack(toy_model, "classification", x, y, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert a.dtype == x.dtype and not a.requires_grad


def test_already_misclassified_samples_are_returned_unchanged(toy_model, toy_batch) -> None:
    x, y = toy_batch
    wrong = torch.zeros_like(y, dtype=torch.bool)
    wrong[::3] = True
    labels = torch.where(wrong, (y + 1) % 3, y)  # every third label is wrong: misclassified at distance 0
    with torch.no_grad():
        assert bool((toy_model(x).argmax(1) == y).all())
    x_adv = FMN(steps=30)(toy_model, "classification", x, labels)
    assert torch.equal(x_adv[wrong], x[wrong])
    assert bool((flat_norm(x_adv - x, "l2")[~wrong] > 0).all())


def test_samples_never_fooled_are_returned_unperturbed() -> None:
    """A model whose output ignores its input has a zero gradient: no NaN, and x comes back as it was."""

    class Constant(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 0 * x.flatten(1)[:, :3] + torch.tensor([2.0, 0.0, -1.0], dtype=x.dtype)

    x = torch.rand(4, 1, 4, 4)
    y = torch.zeros(4, dtype=torch.long)
    x_adv = FMN(steps=10)(Constant(), "classification", x, y)
    assert torch.equal(x_adv, x)


def test_not_worse_than_deepfool_on_the_toy_model(toy_model, toy_batch) -> None:
    x, y = toy_batch
    fmn = FMN(norm="l2")(toy_model, "classification", x, y)
    deepfool = DeepFool(steps=50)(toy_model, "classification", x, y)
    with torch.no_grad():
        assert bool((toy_model(fmn).argmax(1) != y).all())
        both = toy_model(deepfool).argmax(1) != y
    ours, theirs = flat_norm(fmn - x, "l2")[both], flat_norm(deepfool - x, "l2")[both]
    assert int(both.sum()) >= 20
    assert float(ours.median()) <= float(theirs.median())
    assert float((ours <= theirs * 1.01).float().mean()) >= 0.8  # and per sample, nearly always


def test_the_framework_clips_the_minimal_perturbation_to_eps(toy_model, toy_batch) -> None:
    x, y = toy_batch
    attack = ATTACKS.build("fmn", norm="linf", steps=30)
    assert attack.minimal and attack.threat_norm == "linf"
    full = attack(toy_model, "classification", x, y)
    eps = float(flat_norm(full - x, "linf").median())
    clipped = attack(toy_model, "classification", x, y, eps=eps)
    assert float(flat_norm(clipped - x, "linf").max()) <= eps + 1e-7
    with torch.no_grad():
        robust = (toy_model(clipped).argmax(1) == y).float().mean()
    assert 0.3 <= float(robust) <= 0.7  # about half the samples need more than the median norm


def test_cosine_schedule() -> None:
    attack = FMN(steps=100, alpha_init=2.0, gamma_init=0.05, gamma_final=0.001)
    assert attack.schedule(0) == pytest.approx((2.0, 0.05))
    assert attack.schedule(50) == pytest.approx(((2.0 + 0.02) / 2, (0.05 + 0.001) / 2))
    alpha, gamma = attack.schedule(99)
    assert 0.02 < alpha < 0.021 and 0.001 < gamma < 0.00102


def test_float32_input_gives_float32_output(toy_model, toy_batch) -> None:
    x, y = toy_batch
    out = FMN(steps=5)(toy_model, "classification", x.float(), y)
    assert out.dtype == torch.float32 and out.shape == x.shape


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"norm": "l1"}, "norm='l1' is not supported by FMN; expected one of l2, linf"),
        ({"norm": "l0"}, "norm='l0' is not supported"),
        ({"steps": 0}, "steps=0"),
        ({"alpha_init": 0.0}, "alpha_init=0.0"),
        ({"gamma_init": 1.0}, "gamma_init=1.0 must be in"),
        ({"gamma_final": -0.1}, "gamma_final=-0.1"),
    ],
)
def test_bad_parameters_are_clear_errors(params, message) -> None:
    with pytest.raises(ValueError, match=message):
        FMN(**params)


def test_norm_is_normalised_and_segmentation_is_refused() -> None:
    assert FMN(norm="LINF").threat_norm == "linf"
    segmenter = nn.Conv2d(1, 2, 1)  # refused before the model runs: an untrained one does
    x, y = torch.rand(2, 1, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="classification tasks only"):
        FMN(steps=2)(segmenter, "segmentation", x, y)
