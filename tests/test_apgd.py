"""APGD (Croce & Hein 2020) against hand-computed schedules and analytic cases; DLR by hand; PGD's best iterate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

import medrobust
from medrobust.attacks import APGD, PGD
from medrobust.attacks import losses
from medrobust.attacks.apgd import checkpoints


class Recording(APGD):
    """APGD that records (iteration, step sizes, halved) at every checkpoint."""

    log: ClassVar[list] = []

    def on_checkpoint(self, iteration, rows, eta, halved):
        Recording.log.append((iteration, eta.clone(), halved.clone()))


Recording = dataclass(frozen=True)(Recording)


def test_checkpoints_follow_the_papers_recursion():
    # p: 0, .22, .41, .57, .70, .80, .87, .93, .99 (then 1.05 > 1): w_j = ceil(p_j * N)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]
    assert checkpoints(1000)[:3] == [220, 410, 570]


def test_dlr_by_hand():
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0]])
    y = torch.tensor([0])
    # untargeted: -(z_y - max other) / (z_pi1 - z_pi3) = -(3 - 1) / (3 - 0)
    assert float(losses.dlr(z, y)) == pytest.approx(-2 / 3)
    # targeted to class 3: -(3 - (-1)) / (3 - (0 + (-1)) / 2) = -4 / 3.5
    assert float(losses.dlr_targeted(z, y, torch.tensor([3]))) == pytest.approx(-4 / 3.5)
    # invariant to shifting and scaling the logits
    assert float(losses.dlr(5 * z + 7, y)) == pytest.approx(-2 / 3)
    # three classes: untargeted keeps z_pi1 - z_pi3; targeted uses the fixed scale of the starting point
    z3 = torch.tensor([[0.5, 2.0, -1.0]])
    assert float(losses.dlr(z3, torch.tensor([1]))) == pytest.approx(-(2.0 - 0.5) / 3.0)
    start = losses.logit_range(torch.tensor([[0.0, 4.0, -1.0]]))
    assert float(losses.dlr_targeted(z3, torch.tensor([1]), torch.tensor([0]), start)) == pytest.approx(-(2.0 - 0.5) / 5.0)
    with pytest.raises(ValueError, match="3-class"):
        losses.dlr_targeted(z3, torch.tensor([1]), torch.tensor([0]))
    # two classes: the fixed scale of the starting point; the loss is the margin over that scale
    z2 = torch.tensor([[1.0, 4.0]])
    scale = losses.logit_range(torch.tensor([[0.0, 2.0]]))
    assert float(losses.dlr(z2, torch.tensor([1]), scale)) == pytest.approx(-(4.0 - 1.0) / 2.0)
    with pytest.raises(ValueError, match="2-class"):
        losses.dlr(z2, torch.tensor([1]))


def test_dlr_per_pixel_for_segmentation():
    z = torch.tensor([3.0, 1.0, 0.0, -1.0]).view(1, 4, 1, 1).expand(2, 4, 2, 3)
    y = torch.zeros(2, 2, 3, dtype=torch.long)
    out = losses.dlr(z, y)
    assert out.shape == (2, 2, 3)
    torch.testing.assert_close(out, torch.full((2, 2, 3), -2 / 3))


def test_ranked_targets_skip_the_true_class():
    z = torch.tensor([[0.1, 5.0, 3.0, 4.0], [9.0, 1.0, 2.0, 0.0]])
    y = torch.tensor([1, 2])
    assert losses.ranked_targets(z, y, 1).tolist() == [3, 0]
    assert losses.ranked_targets(z, y, 2).tolist() == [2, 1]
    assert losses.ranked_targets(z, y, 3).tolist() == [0, 3]


class Bump(nn.Module):
    """Two logits (0, -k ||x - c||^2): for label 0 the cross-entropy is largest at x = c, inside the ball."""

    def __init__(self, c: torch.Tensor, k: float = 50.0) -> None:
        super().__init__()
        self.c, self.k = c, k

    def forward(self, x):
        d = ((x - self.c) ** 2).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(d), -self.k * d], dim=1)


def test_apgd_halves_its_step_and_converges_to_an_interior_maximum():
    # The loss peaks at c, 0.1 from x in every coordinate, inside the Linf ball of 0.3. Sign steps of a fixed
    # size oscillate around c; APGD halves its step whenever the loss stops rising and ends next to c.
    Recording.log.clear()
    c = torch.full((1, 4), 0.6)
    x = torch.full((1, 4), 0.5)
    y = torch.tensor([0])
    attack = Recording(steps=100, loss="ce")
    x_adv = attack(Bump(c), "classification", x, y, eps=0.3, generator=torch.Generator().manual_seed(0))
    iterations = [it for it, _, _ in Recording.log]
    assert iterations == checkpoints(100)
    etas = [float(eta[0]) for _, eta, _ in Recording.log]
    halved = [bool(h[0]) for _, _, h in Recording.log]
    # each checkpoint either halves the step (from 2 eps = 0.6) or leaves it: eta = 0.6 / 2^(halvings so far)
    for j, eta in enumerate(etas):
        assert eta == pytest.approx(0.6 / 2 ** sum(halved[: j + 1]))
    assert sum(halved) >= 6
    # the best point is close to the maximum; PGD with a fixed step of 0.6/4 cannot get as close
    assert float((x_adv - c).abs().max()) < 0.01
    pgd = PGD(steps=100, step_size=0.15)(Bump(c), "classification", x, y, eps=0.3)
    assert float((pgd - c).abs().max()) > float((x_adv - c).abs().max())


def test_apgd_on_a_linear_model_goes_to_the_corner_and_then_halves_every_checkpoint():
    # For a linear two-class model the loss rises monotonically along sign(w1 - w0): the first step reaches the
    # corner x + eps sign(w1 - w0), which every later step keeps. The loss never rises again, so condition 1
    # (rose in fewer than 75% of the steps) halves the step at every checkpoint.
    Recording.log.clear()
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -1.0, 0.5], [-1.0, 1.0, 2.0]]))
        lin.bias.copy_(torch.tensor([10.0, 0.0]))  # stays correct: label 0 always wins
    x = torch.full((1, 3), 0.5)
    y = torch.tensor([0])
    out = Recording(steps=20)(lin, "classification", x, y, eps=0.1, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, x + 0.1 * torch.tensor([[-1.0, 1.0, 1.0]]))
    assert [it for it, _, _ in Recording.log] == checkpoints(20)
    assert all(bool(h[0]) for _, _, h in Recording.log)
    assert float(Recording.log[-1][1][0]) == pytest.approx(0.2 / 2 ** len(checkpoints(20)))


def test_apgd_l2_stays_in_ball_and_bounds(toy_model, toy_batch):
    x, y = toy_batch
    x_adv = medrobust.attack("apgd", toy_model, x, y, eps=1.0, norm="l2", steps=20)
    assert float((x_adv - x).flatten(1).norm(dim=1).max()) <= 1.0 + 1e-5
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


def test_apgd_is_at_least_as_strong_as_pgd(toy_model):
    from conftest import make_toy

    x, y = make_toy(90, seed=5)

    def acc(x_adv):
        with torch.no_grad():
            return float((toy_model(x_adv).argmax(1) == y).float().mean())

    eps = 0.15
    pgd = acc(medrobust.attack("pgd", toy_model, x, y, eps=eps, steps=20))
    ce = acc(medrobust.attack("apgd", toy_model, x, y, eps=eps, steps=50))
    dlr_t = acc(medrobust.attack("apgd", toy_model, x, y, eps=eps, steps=50, loss="dlr", targeted=True))
    assert 0.0 < pgd < 1.0
    assert ce <= pgd
    assert dlr_t < 0.1  # the targeted DLR variant alone breaks > 90% of the samples


def test_apgd_leaves_misclassified_samples_alone(toy_model, toy_batch):
    x, y = toy_batch
    wrong = (y + 1) % 3
    out = APGD(steps=10)(toy_model, "classification", x, wrong, eps=0.2)
    with torch.no_grad():
        clean_wrong = toy_model(x).argmax(1) != wrong
    assert bool(clean_wrong.all())
    assert torch.equal(out, x)


class Slab(nn.Module):
    """One input feature; label 0 wins except in the thin slab |x - 0.5| < 0.02, where class 1 wins."""

    def forward(self, x):
        z1 = 10 * (0.02 - (x[:, :1] - 0.5).abs())
        return torch.cat([torch.zeros_like(z1), z1], dim=1)


def test_pgd_keeps_the_best_iterate_not_the_last():
    # From 0.31 with step 0.2 the iterates are 0.51 (inside the slab: adversarial) and back to 0.31.
    x, y = torch.tensor([[0.31]]), torch.tensor([0])
    best = PGD(steps=2, step_size=0.2, random_start=False)(Slab(), "classification", x, y, eps=0.3)
    last = PGD(steps=2, step_size=0.2, random_start=False, keep_best=False)(Slab(), "classification", x, y, eps=0.3)
    torch.testing.assert_close(best, torch.tensor([[0.51]]))
    torch.testing.assert_close(last, torch.tensor([[0.31]]))
    with torch.no_grad():
        assert int(Slab()(best).argmax(1)) == 1 and int(Slab()(last).argmax(1)) == 0


def test_apgd_two_classes_uses_the_fixed_dlr_scale():
    lin = nn.Linear(4, 2)
    torch.manual_seed(0)  # test-only: fixed weights
    nn.init.normal_(lin.weight)
    x = torch.rand(16, 4)
    with torch.no_grad():
        y = lin(x).argmax(1)
    out = APGD(steps=20, loss="dlr", targeted=True)(lin, "classification", x, y, eps=0.5)
    with torch.no_grad():
        assert float((lin(out).argmax(1) == y).float().mean()) < 0.5
