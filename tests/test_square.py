"""Square Attack (Andriushchenko et al., ECCV 2020): budget, query counting, schedule and window geometry by
hand, gradient-free behaviour, and success against PGD on the toy problems."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import medrobust
from medrobust.attacks.pgd import PGD
from medrobust.attacks.square import Square, meta_pseudo_gaussian, p_selection, pseudo_gaussian
from medrobust.tasks import get_task


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def success(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) != y).float().mean())


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 0.6)])
def test_shape_bounds_budget(toy_model, toy_batch, norm, eps):
    x, y = toy_batch
    res = Square(queries=100, norm=norm).detailed(toy_model, "classification", x, y, eps=eps, generator=gen())
    x_adv = res.x_adv
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    size = (x_adv - x).flatten(1)
    size = size.abs().amax(1) if norm == "linf" else size.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5
    # It uses its budget: most samples sit on the boundary of the ball (clipping only shrinks perturbations).
    assert float((size > 0.9 * eps).float().mean()) > 0.5
    assert len(res.info["queries"]) == len(y)


def test_custom_bounds_and_normalisation():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    model = medrobust.Model(net, bounds=(0.0, 255.0), mean=[127.5] * 3, std=[50.0] * 3)
    x = torch.rand(6, 3, 8, 8, generator=gen()) * 255
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    for norm, eps in (("linf", 4.0), ("l2", 40.0)):
        x_adv = Square(queries=30, norm=norm)(model, "classification", x, y, eps=eps, generator=gen())
        d = (x_adv - x).flatten(1)
        assert float((d.abs().amax(1) if norm == "linf" else d.norm(dim=1)).max()) <= eps * (1 + 1e-5)
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 255.0


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_deterministic_given_generator(toy_model, toy_batch, norm):
    x, y = toy_batch
    attack = Square(queries=40, norm=norm)
    eps = 0.1 if norm == "linf" else 0.6
    a = attack.detailed(toy_model, "classification", x, y, eps=eps, generator=gen(5))
    b = attack.detailed(toy_model, "classification", x, y, eps=eps, generator=gen(5))
    c = attack.detailed(toy_model, "classification", x, y, eps=eps, generator=gen(6))
    assert torch.equal(a.x_adv, b.x_adv) and a.info == b.info
    assert not torch.equal(a.x_adv, c.x_adv)


class NoGradGuard(nn.Module):
    """Fails the test if the attack ever runs the model with autograd on (a black-box attack must not)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled(), "Square ran the model with gradients enabled"
        assert not x.requires_grad
        return self.net(x)


class Quantised(nn.Module):
    """Rounds inputs to 1/10 steps before the net: the input gradient is zero almost everywhere."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x * 10) / 10)


def test_no_gradients_used(toy_model, toy_batch):
    x, y = toy_batch
    for norm in ("linf", "l2"):
        Square(queries=20, norm=norm)(NoGradGuard(toy_model), "classification", x, y, eps=0.1, generator=gen())


def test_fools_non_differentiable_model_where_pgd_cannot(toy_model, toy_batch):
    x, y = toy_batch
    model = Quantised(toy_model)
    assert success(model, x, y) == 0.0
    eps = 0.15
    square = Square(queries=300)(model, "classification", x, y, eps=eps, generator=gen())
    pgd = PGD(steps=20)(model, "classification", x, y, eps=eps, generator=gen())
    assert success(model, square, y) >= 0.7
    assert success(model, pgd, y) <= 0.2  # zero gradients: PGD is left with its random start


def test_queries_counted(toy_model, toy_batch):
    x, y = toy_batch
    y = y.clone()
    y[:3] = (y[:3] + 1) % 3  # wrong labels: these samples are adversarial before any perturbation
    budget = 200
    res = Square(queries=budget).detailed(toy_model, "classification", x, y, eps=0.15, generator=gen())
    q = torch.tensor(res.info["queries"])
    assert q[:3].tolist() == [1, 1, 1]
    assert torch.equal(res.x_adv[:3], x[:3])
    assert int(q.max()) <= budget + 1  # the clean evaluation, then at most `budget` per restart
    with torch.no_grad():
        fooled = toy_model(res.x_adv).argmax(1) != y
    assert int(fooled[3:].sum()) >= 15 and bool((q[3:][fooled[3:]] < budget + 1).all())  # stopped early
    assert bool((q[3:][~fooled[3:]] == budget + 1).all())  # the rest spent all of it


def test_queries_exact_for_robust_samples_with_restarts(toy_model, toy_batch):
    # At this eps nothing is fooled, so every sample spends 1 (clean) + restarts * queries exactly.
    x, y = toy_batch
    res = Square(queries=7, restarts=3).detailed(toy_model, "classification", x, y, eps=0.02, generator=gen())
    assert res.info["queries"] == [1 + 3 * 7] * len(y)
    res = Square(queries=1, norm="l2").detailed(toy_model, "classification", x, y, eps=0.1, generator=gen())
    assert res.info["queries"] == [2] * len(y)  # clean + the initial perturbation


def test_p_schedule_by_hand():
    assert p_selection(0.8, 0, 10000) == 0.8
    assert p_selection(0.8, 10, 10000) == 0.8
    assert p_selection(0.8, 11, 10000) == 0.4
    assert p_selection(0.8, 200, 10000) == 0.2
    assert p_selection(0.8, 201, 10000) == 0.1
    assert p_selection(0.8, 7000, 10000) == pytest.approx(0.8 / 256)
    assert p_selection(0.8, 9999, 10000) == pytest.approx(0.8 / 512)
    # Rescaled to the budget: step 100 of 1,000 is step 1,000 of 10,000 (p / 16), step 101 is past it.
    assert p_selection(0.8, 100, 1000) == pytest.approx(0.05)
    assert p_selection(0.8, 101, 1000) == pytest.approx(0.025)


def test_pseudo_gaussian_by_hand():
    # Nested rectangles: weight 1 at the centre, + 1/4 on the 3x3 ring -> centre 1.25, ring 0.25, unit norm.
    expected = torch.full((3, 3), 0.25)
    expected[1, 1] = 1.25
    torch.testing.assert_close(pseudo_gaussian(3, 3, torch.zeros(1)), expected / expected.norm())
    m = meta_pseudo_gaussian(2, torch.zeros(1))  # rows: [0.25, 1.25] and its negation
    row = torch.tensor([0.25, 1.25])
    torch.testing.assert_close(m, torch.stack([row, -row]) / (2 * row.pow(2).sum()).sqrt())


def test_linf_step_changes_one_square_window():
    # p = 0.25 of 8x8 pixels -> side 4. Away from the bounds the change is one 4x4 window, constant per channel.
    x = torch.full((5, 2, 8, 8), 0.5)
    cand = Square._step_linf(x, x, 0.25, 0.1, gen(), (0.0, 1.0))
    changed = (cand != x).any(1)  # (5, 8, 8)
    for i in range(5):
        rows, cols = changed[i].nonzero(as_tuple=True)
        assert int(rows.max() - rows.min()) == 3 and int(cols.max() - cols.min()) == 3
        window = cand[i, :, int(rows.min()) : int(rows.min()) + 4, int(cols.min()) : int(cols.min()) + 4] - 0.5
        assert torch.allclose(window.abs(), torch.full_like(window, 0.1))
        assert bool((window == window[:, :1, :1]).all())  # one sign per channel


def test_l2_step_keeps_norm_and_changes_two_windows():
    x = torch.full((4, 3, 16, 16), 0.5)
    eps = 0.5
    d = torch.randn(x.shape, generator=gen())
    x_best = x + d * eps / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    cand = Square._step_l2(x, x_best, 0.1, eps, gen(1), (0.0, 1.0))  # side round(sqrt(25.6)) = 5
    torch.testing.assert_close((cand - x).flatten(1).norm(dim=1), torch.full((4,), eps))
    changed = (~torch.isclose(cand, x_best, atol=1e-6)).any(1).flatten(1).sum(1)
    assert int(changed.max()) <= 2 * 5 * 5 and int(changed.min()) > 0


def test_success_comparable_to_pgd(toy_model):
    # 90 toy images at an eps where PGD-20 fools about half (0.52; Square 0.60 when written): Square with 1,000
    # queries must come within 5 points of PGD-20 here. This is the toy stand-in for the acceptance target, not it.
    from conftest import make_toy

    x, y = make_toy(90, seed=3)
    eps = 0.13
    pgd = success(toy_model, PGD(steps=20)(toy_model, "classification", x, y, eps=eps, generator=gen()), y)
    square = success(toy_model, Square(queries=1000)(toy_model, "classification", x, y, eps=eps, generator=gen()), y)
    assert 0.2 <= pgd <= 0.8
    assert square >= pgd - 0.05


def test_segmentation_lowers_dice(toy_segmenter, toy_seg_batch):
    x, y = toy_seg_batch
    task = get_task("segmentation")
    eps = 0.15
    res = Square(queries=100).detailed(toy_segmenter, task, x, y, eps=eps, generator=gen())
    with torch.no_grad():
        clean, adv = task.score(toy_segmenter(x), y), task.score(toy_segmenter(res.x_adv), y)
    assert float((res.x_adv - x).abs().max()) <= eps + 1e-6
    assert float(adv.mean()) < float(clean.mean()) - 0.2
    assert max(res.info["queries"]) <= 101


@pytest.mark.parametrize(
    ("params", "message"),
    [({"queries": 0}, "queries=0"), ({"restarts": 0}, "restarts=0"), ({"p_init": 0.0}, "p_init=0.0"),
     ({"p_init": 1.5}, r"p_init=1.5 must be in \(0, 1\]"), ({"norm": "l0"}, "norm='l0'")],
)
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        Square(**params)


def test_non_image_input_rejected():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(2, 1, 16), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\).*\(2, 1, 16\)"):
        Square(queries=5)(model, "classification", x, y, eps=0.1)
