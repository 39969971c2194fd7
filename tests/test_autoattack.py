"""The AutoAttack ensemble: cascade on still-robust samples, per-sample worst case, black-box member vs masking."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

import medrobust
from medrobust.attacks import APGD, FAB, AutoAttack, Square
from medrobust.attacks.base import Attack


@dataclass(frozen=True)
class Counting(Attack):
    """Runs ``inner`` and logs how many samples it was given."""

    inner: Any = None
    name: str = ""
    log: ClassVar[list] = []

    def run(self, model, task, x, y, *, eps, generator):
        Counting.log.append((self.name, x.shape[0]))
        return self.inner.detailed(model, task, x, y, eps=eps, generator=generator)


@dataclass(frozen=True)
class CountingAutoAttack(AutoAttack):
    def members(self, family=None):
        return [(n, Counting(inner=m, name=n)) for n, m in super().members(family)]


def correct(model, x, y):
    with torch.no_grad():
        return model(x).argmax(1) == y


def test_cascade_runs_each_member_on_what_is_still_robust(toy_model):
    from conftest import make_toy

    x, y = make_toy(45, seed=6)
    Counting.log.clear()
    gen = torch.Generator().manual_seed(0)
    out = CountingAutoAttack(steps=10, queries=100).detailed(toy_model, "classification", x, y, eps=0.12, generator=gen)
    sizes = dict(Counting.log)
    robust_clean = int(correct(toy_model, x, y).sum())
    assert sizes["apgd-ce"] == robust_clean
    broken = out.info["broken_by"]
    after_ce = robust_clean - broken.count("apgd-ce")
    assert sizes["apgd-t"] == after_ce
    if "fab-t" in sizes:
        assert sizes["fab-t"] == after_ce - broken.count("apgd-t")
    if "square" in sizes:
        assert sizes["square"] == after_ce - broken.count("apgd-t") - broken.count("fab-t")
    # the members' examples, reproduced independently in the same order with the same generator
    gen = torch.Generator().manual_seed(0)
    x_ref = x.clone()
    todo = correct(toy_model, x, y).nonzero().flatten()
    members = (
        APGD(steps=10),
        APGD(steps=10, loss="dlr", targeted=True),
        FAB(steps=10, targeted=True),
        Square(queries=100),
    )
    for member in members:
        if todo.numel() == 0:
            break
        adv = member(toy_model, "classification", x[todo], y[todo], eps=0.12, generator=gen)
        hit = ~correct(toy_model, adv, y[todo])
        x_ref[todo[hit]] = adv[hit]
        todo = todo[~hit]
    assert torch.equal(correct(toy_model, out.x_adv, y), correct(toy_model, x_ref, y))
    assert sum(b is not None for b in broken) == int((~correct(toy_model, out.x_adv, y)).sum())


def test_standard_runs_fab_t_after_apgd_and_before_square(toy_model):
    """The standard cascade is APGD-CE, APGD-T, FAB-T, Square, as in the authors' code; FAB-T breaks samples the
    APGD members left (made weak here: one step each) within eps, and Square gets only what FAB-T left."""
    from conftest import make_toy

    assert [n for n, _ in AutoAttack().members()] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert [n for n, _ in AutoAttack(version="fast").members()] == ["apgd-ce", "apgd-t"]
    # FAB-T is defined for classification only: a segmentation run neither runs nor lists it
    assert [n for n, _ in AutoAttack().members("segmentation")] == ["apgd-ce", "apgd-t", "square"]
    fab = dict(AutoAttack(steps=7, fab_steps=30, restarts=2, target_classes=4).members())["fab-t"]
    assert (fab.steps, fab.restarts, fab.targeted, fab.target_classes, fab.norm) == (30, 2, True, 4, "linf")
    x, y = make_toy(45, seed=6)
    eps = 0.12
    Counting.log.clear()
    attack = CountingAutoAttack(steps=1, fab_steps=15, queries=20)
    out = attack.detailed(toy_model, "classification", x, y, eps=eps, generator=torch.Generator().manual_seed(0))
    assert [name for name, _ in Counting.log] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    broken = out.info["broken_by"]
    sizes = dict(Counting.log)
    assert sizes["square"] == sizes["fab-t"] - broken.count("fab-t")
    by_fab = [i for i, b in enumerate(broken) if b == "fab-t"]
    assert len(by_fab) >= 2
    assert float((out.x_adv[by_fab] - x[by_fab]).abs().flatten(1).amax(1).max()) <= eps + 1e-6
    assert not bool(correct(toy_model, out.x_adv[by_fab], y[by_fab]).any())


def test_ensemble_is_at_least_as_strong_as_each_member(toy_model):
    from conftest import make_toy

    x, y = make_toy(45, seed=8)
    eps = 0.13
    acc = {}
    for name, params in {
        "apgd-ce": {"steps": 20},
        "apgd-dlr-t": {"steps": 20, "loss": "dlr", "targeted": True},
        "pgd": {"steps": 20},
    }.items():
        attack = "pgd" if name == "pgd" else "apgd"
        acc[name] = float(
            correct(toy_model, medrobust.attack(attack, toy_model, x, y, eps=eps, **params), y).float().mean()
        )
    ens = float(
        correct(toy_model, medrobust.attack("autoattack", toy_model, x, y, eps=eps, steps=20, queries=200), y)
        .float()
        .mean()
    )
    assert ens <= min(acc.values())
    assert ens < 0.5


class Quantised(nn.Module):
    """A model whose input is quantised to 8 levels: its input gradients are zero almost everywhere, so every
    gradient attack stalls (gradient masking), though the decision boundary is no farther away."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 7) / 7)


def test_black_box_member_breaks_a_gradient_masked_model(toy_model):
    from conftest import make_toy

    model = Quantised(toy_model)
    x, y = make_toy(30, seed=9)
    x = (torch.round(x * 7) / 7).clamp(0, 1)  # start on a quantisation level
    eps = 0.2
    ce = medrobust.attack("apgd", model, x, y, eps=eps, steps=20)
    out = AutoAttack(steps=20, queries=300).detailed(model, "classification", x, y, eps=eps)
    clean = int(correct(model, x, y).sum())
    assert clean >= 25
    assert int((~correct(model, ce, y)).sum()) == clean - int(correct(model, x, y).sum())  # APGD breaks nothing
    broken = out.info["broken_by"]
    assert broken.count("apgd-ce") == 0 and broken.count("apgd-t") == 0
    assert broken.count("square") >= 10  # only the black-box member gets through
    assert max(q for q in out.info["square.queries"] if q is not None) <= 301


def test_autoattack_l2_and_budget(toy_model, toy_batch):
    x, y = toy_batch
    out = medrobust.attack("autoattack", toy_model, x, y, eps=1.0, norm="l2", steps=10, queries=100)
    assert float((out - x).flatten(1).norm(dim=1).max()) <= 1.0 + 1e-5
    assert float(out.min()) >= 0 and float(out.max()) <= 1
