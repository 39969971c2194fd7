"""Carlini & Wagner L2 against the analytic optimum of a linear model and against its contract on the toy CNN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medrobust.attacks.cw import CarliniWagnerL2
from medrobust.attacks.fgsm import FGSM
from medrobust.models.wrapper import Model


def l2(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x_adv - x).flatten(1).norm(dim=1)


def test_linear_two_class_reaches_the_analytic_minimum() -> None:
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(16, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, 16, generator=g, dtype=torch.float64))
        lin.bias.copy_(torch.randn(2, generator=g, dtype=torch.float64))
    # Bounds that never bind at the optimum: |x| <= 0.5 and every minimal distance is below 1.
    model = Model(nn.Sequential(nn.Flatten(), lin), bounds=(-3.0, 3.0))
    x = torch.rand(8, 1, 4, 4, generator=g, dtype=torch.float64) - 0.5
    y = model(x).argmax(1)
    w = (lin.weight[1] - lin.weight[0]).detach()
    f = x.flatten(1) @ w + (lin.bias[1] - lin.bias[0]).detach()
    optimum = f.abs() / w.norm()  # distance from x to the hyperplane z_1 = z_0
    assert float(optimum.max()) < 1.0

    x_adv = CarliniWagnerL2(steps=300, lr=0.005)(model, "classification", x, y)
    assert x_adv.dtype == torch.float64
    assert bool((model(x_adv).argmax(1) != y).all())
    dist = l2(x_adv, x)
    assert bool((dist >= optimum - 1e-6).all()), (dist, optimum)  # nothing beats the optimum
    assert bool((dist <= 1.05 * optimum).all()), (dist / optimum)


def test_toy_cnn_success_and_smaller_than_fgsm(toy_model, toy_batch) -> None:
    x, y = toy_batch
    x_adv = CarliniWagnerL2()(toy_model, "classification", x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    fooled = toy_model(x_adv).argmax(1) != y
    assert float(fooled.float().mean()) >= 0.9
    cw_median = l2(x_adv, x)[fooled].median()

    # Reference: the smallest L2 at which fast-gradient (FGSM-L2) perturbations succeed, per sample, on a grid.
    fgsm_min = torch.full((x.shape[0],), float("inf"))
    for eps in torch.linspace(4.0, 0.05, 80).tolist():
        x_fgsm = FGSM(norm="l2")(toy_model, "classification", x, y, eps=eps)
        ok = toy_model(x_fgsm).argmax(1) != y
        fgsm_min = torch.where(ok, l2(x_fgsm, x), fgsm_min)
    assert bool(torch.isfinite(fgsm_min).all())
    assert float(cw_median) < float(fgsm_min.median()), (float(cw_median), float(fgsm_min.median()))


def test_confidence_is_met_and_costs_distance(toy_model, toy_batch) -> None:
    x, y = toy_batch
    plain = CarliniWagnerL2()(toy_model, "classification", x, y)
    kappa = 3.0
    strong = CarliniWagnerL2(confidence=kappa)(toy_model, "classification", x, y)
    logits = toy_model(strong)
    fooled = logits.argmax(1) != y
    assert float(fooled.float().mean()) >= 0.9
    true = logits.gather(1, y[:, None]).squeeze(1)
    best_other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    assert bool((best_other[fooled] - true[fooled] >= kappa - 1e-4).all())  # beaten by kappa logits at least
    assert float(l2(strong, x).median()) > float(l2(plain, x).median())


def test_never_fooled_samples_are_returned_unperturbed(toy_model, toy_batch) -> None:
    x, y = toy_batch
    # c far too small and a single search run: the distance term wins, nothing is ever adversarial.
    weak = CarliniWagnerL2(steps=20, initial_const=1e-4, binary_search_steps=1)
    assert torch.equal(weak(toy_model, "classification", x, y), x)
    # Failures multiply c by 10 per run, so the same start reaches a working c within a few runs.
    grown = CarliniWagnerL2(steps=50, initial_const=1e-4, binary_search_steps=6)
    x_adv = grown(toy_model, "classification", x, y)
    assert float((toy_model(x_adv).argmax(1) != y).float().mean()) >= 0.9


def test_misclassified_samples_are_returned_unchanged(toy_model, toy_batch) -> None:
    x, y = toy_batch
    wrong = (y + 1) % 3
    assert torch.equal(CarliniWagnerL2(steps=5)(toy_model, "classification", x, wrong), x)


def test_other_bounds_and_inputs_on_the_bounds(toy_model, toy_batch) -> None:
    x, y = toy_batch
    x = x.clone()
    x[:, :, 0, 0] = 0.0  # exactly on the bounds: the tanh change of variables must stay finite
    x[:, :, 7, 7] = 1.0
    x_adv = CarliniWagnerL2(steps=50)(toy_model, "classification", x, y)
    assert bool(torch.isfinite(x_adv).all())
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0

    # The same classifier on inputs in [-1, 1]: iterates must respect these bounds instead.
    shifted = Model(nn.Sequential(_Affine(0.5, 0.5), toy_model), bounds=(-1.0, 1.0))
    x2 = 2 * x - 1
    x2_adv = CarliniWagnerL2(steps=50)(shifted, "classification", x2, y)
    assert float(x2_adv.min()) >= -1.0 and float(x2_adv.max()) <= 1.0
    assert float((shifted(x2_adv).argmax(1) != y).float().mean()) >= 0.9


class _Affine(nn.Module):
    def __init__(self, scale: float, shift: float) -> None:
        super().__init__()
        self.scale, self.shift = scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def test_eps_clips_the_minimal_perturbation(toy_model, toy_batch) -> None:
    x, y = toy_batch
    eps = 0.3
    x_adv = CarliniWagnerL2(steps=50)(toy_model, "classification", x, y, eps=eps)
    assert float(l2(x_adv, x).max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert CarliniWagnerL2().threat_norm == "l2"


def test_batched_equals_per_sample(toy_model, toy_batch) -> None:
    x, y = toy_batch
    x, y = x[:6], y[:6]
    attack = CarliniWagnerL2(steps=50, binary_search_steps=3, initial_const=0.1)
    batched = attack(toy_model, "classification", x, y)
    alone = torch.cat([attack(toy_model, "classification", x[i : i + 1], y[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_segmentation_is_refused(toy_model, toy_batch) -> None:
    x, _ = toy_batch
    with pytest.raises(ValueError, match="classification"):
        CarliniWagnerL2()(toy_model, "segmentation", x, torch.zeros(x.shape[0], 8, 8, dtype=torch.long))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"steps": 0}, "steps=0"),
        ({"lr": 0.0}, "lr=0.0"),
        ({"confidence": -1.0}, "confidence=-1.0"),
        ({"binary_search_steps": 0}, "binary_search_steps=0"),
        ({"initial_const": -0.5}, "initial_const=-0.5"),
        ({"abort_early": "yes"}, "abort_early='yes'"),
        ({"norm": "linf"}, "norm='linf'"),
    ],
)
def test_bad_hyperparameters(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        CarliniWagnerL2(**kwargs)
