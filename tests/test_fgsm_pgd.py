"""FGSM and PGD against reference iterates written independently here (Goodfellow 2015; Madry 2018)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import medrobust
from medrobust.attacks import FGSM, PGD


def ref_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    F.cross_entropy(model(x), y, reduction="sum").backward()
    return x.grad.detach()


def ref_pgd_linf(model, x, y, eps, alpha, steps, lo=0.0, hi=1.0):
    xa = x.clone()
    for _ in range(steps):
        xa = xa + alpha * ref_grad(model, xa, y).sign()
        xa = torch.min(torch.max(xa, x - eps), x + eps).clamp(lo, hi)
    return xa


def ref_pgd_l2(model, x, y, eps, alpha, steps):
    xa = x.clone()
    for _ in range(steps):
        g = ref_grad(model, xa, y)
        g = g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        xa = xa + alpha * g
        d = xa - x
        n = d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        d = d * torch.clamp(eps / n, max=1.0)
        xa = (x + d).clamp(0, 1)
    return xa


def test_fgsm_matches_textbook_step(toy_model, toy_batch):
    x, y = toy_batch
    eps = 0.07
    expected = (x + eps * ref_grad(toy_model, x, y).sign()).clamp(0, 1)
    got = medrobust.attack("fgsm", toy_model, x, y, eps=eps)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert float((got - x).abs().max()) <= eps + 1e-6


def test_fgsm_on_linear_model_moves_along_weight_sign():
    # For a 2-class linear model the CE gradient wrt x is proportional to (w_other - w_true), so the FGSM step
    # is eps * sign(w_other - w_true) exactly.
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 0.0], [-1.0, 1.0, 1.5, 3.0]]))
        lin.bias.zero_()
    x = torch.full((1, 4), 0.5)
    y = torch.tensor([0])
    got = FGSM()(lin, "classification", x, y, eps=0.1)
    expected = x + 0.1 * torch.tensor([[-1.0, 1.0, 1.0, 1.0]])
    torch.testing.assert_close(got, expected)


def test_pgd_linf_matches_reference_iterates(toy_model, toy_batch):
    x, y = toy_batch
    got = PGD(steps=7, step_size=0.02, random_start=False, keep_best=False)(toy_model, "classification", x, y, eps=0.08)
    expected = ref_pgd_linf(toy_model, x, y, eps=0.08, alpha=0.02, steps=7)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_pgd_l2_matches_reference_iterates(toy_model, toy_batch):
    x, y = toy_batch
    got = PGD(steps=5, step_size=0.15, norm="l2", random_start=False, keep_best=False)(toy_model, "classification", x, y, eps=0.5)
    expected = ref_pgd_l2(toy_model, x, y, eps=0.5, alpha=0.15, steps=5)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert float((got - x).flatten(1).norm(dim=1).max()) <= 0.5 + 1e-5


def test_pgd_default_step_size_is_madry():
    assert PGD(steps=10).alpha(0.04) == pytest.approx(2.5 * 0.04 / 10)


def test_pgd_restarts_never_weaker(toy_model, toy_batch):
    x, y = toy_batch
    eps = 0.12
    one = PGD(steps=5, restarts=1)(toy_model, "classification", x, y, eps=eps, generator=torch.Generator().manual_seed(3))
    four = PGD(steps=5, restarts=4)(toy_model, "classification", x, y, eps=eps, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        acc1 = (toy_model(one).argmax(1) == y).float().mean()
        acc4 = (toy_model(four).argmax(1) == y).float().mean()
    assert acc4 <= acc1
    assert float((four - x).abs().max()) <= eps + 1e-6


def test_pgd_respects_custom_bounds_and_normalisation(toy_model):
    # Inputs in [0, 255] with normalisation inside the wrapper: eps is in the input's units.
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    model = medrobust.Model(net, bounds=(0.0, 255.0), mean=[127.5], std=[50.0])
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 255
    y = torch.tensor([0, 1, 2, 0, 1])
    x_adv = medrobust.attack("pgd", model, x, y, eps=4.0, steps=3)
    assert float((x_adv - x).abs().max()) <= 4.0 + 1e-4
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 255.0


def test_attack_leaves_model_state_alone(toy_model, toy_batch):
    x, y = toy_batch
    toy_model.train()
    flags = [p.requires_grad for p in toy_model.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in toy_model.parameters()]
    medrobust.attack("pgd", toy_model, x, y, eps=0.05, steps=2)
    assert toy_model.training
    assert [p.requires_grad for p in toy_model.parameters()] == flags
    for p, g in zip(toy_model.parameters(), grads):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    toy_model.eval()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"steps": 0, "eps": 0.1}, "steps=0"),
        ({"norm": "l3", "eps": 0.1}, "norm='l3'"),
        ({"eps": -1.0}, "eps=-1.0"),
        ({}, "needs eps"),
    ],
)
def test_bad_parameters_are_named(toy_model, toy_batch, params, message):
    x, y = toy_batch
    with pytest.raises(ValueError, match=message):
        medrobust.attack("pgd", toy_model, x, y, **params)


def test_inputs_outside_bounds_rejected(toy_model, toy_batch):
    x, y = toy_batch
    with pytest.raises(ValueError, match="outside the model's bounds"):
        medrobust.attack("fgsm", toy_model, x * 3, y, eps=0.1)


def test_unknown_attack_suggests_name(toy_model, toy_batch):
    x, y = toy_batch
    with pytest.raises(KeyError, match="did you mean 'fgsm'"):
        medrobust.attack("fgms", toy_model, x, y, eps=0.1)
