"""A budget attack over several strengths, pruned: ascending strengths, each only on the samples the smaller
ones left robust (an adversarial example inside a smaller ball lies inside every larger one)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medrobust.attacks import FGSM, PGD
from medrobust.cells import expand
from medrobust.config import load_config
from medrobust.seeding import make_generator
from medrobust.tasks import get_task

CLS = get_task("classification")


class Window(nn.Module):
    """Two classes on a scalar input (N, 1): class 1 wins only inside (0.55, 0.65). From x = 0.5 (class 0) the
    loss gradient points up, so FGSM at eps 0.1 lands at 0.6 (wrong) and at eps 0.2 at 0.7 (right again)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z1 = 100.0 * (0.0025 - (x[:, :1] - 0.6) ** 2)
        return torch.cat([torch.zeros_like(z1), z1], dim=1)


def gen(eps: float | None) -> torch.Generator:
    return make_generator(0, "m", "fgsm", eps)


def sweep(attack, net, x, y, strengths, prune, task=CLS):
    return dict(attack.sweep(net, task, x, y, strengths, gen, prune=prune))


def test_fgsm_that_overshoots_is_not_counted_robust_at_the_larger_strength():
    x, y = torch.tensor([[0.5], [0.3]]), torch.tensor([0, 0])
    alone = sweep(FGSM(), Window(), x, y, [0.1, 0.2], prune=False)
    pruned = sweep(FGSM(), Window(), x, y, [0.2, 0.1], prune=True)
    assert alone[0.1].success.tolist() == [True, False]
    assert alone[0.2].success.tolist() == [False, False]  # FGSM overshoots the window: robust "again"
    assert pruned[0.1].success.tolist() == [True, False]
    assert pruned[0.2].success.tolist() == [True, False]
    # the broken sample carries the eps-0.1 example; the other is attacked at 0.2 as alone
    assert pruned[0.2].x_adv[0].item() == pytest.approx(0.6)
    assert pruned[0.2].x_adv[1].item() == pytest.approx(alone[0.2].x_adv[1].item()) == pytest.approx(0.5)
    assert list(pruned) == [0.1, 0.2]  # ascending, whatever order was given


def test_pruned_accuracy_is_never_above_separate_strengths_and_only_robust_samples_are_attacked():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.Tanh(), nn.Linear(32, 3))
    x = torch.rand(40, 3, 4, 4)
    with torch.no_grad():
        y = net(x).argmax(1)
    y[:5] = (y[:5] + 1) % 3  # a few samples wrong from the start
    strengths = [0.01, 0.03, 0.1, 0.3]
    alone = sweep(FGSM(), net, x, y, strengths, prune=False)
    seen: list[int] = []
    net.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    pruned = sweep(FGSM(), net, x, y, strengths, prune=True)
    previous = torch.zeros(40, dtype=torch.bool)
    for eps in strengths:
        acc_alone = 1 - alone[eps].success.float().mean().item()
        acc_pruned = 1 - pruned[eps].success.float().mean().item()
        assert acc_pruned <= acc_alone + 1e-9
        assert bool((pruned[eps].success >= previous).all())  # monotone per sample
        assert pruned[eps].success.tolist() == (alone[eps].success | previous).tolist()
        assert bool(((pruned[eps].x_adv - x).abs() <= eps + 1e-6).all())
        previous = pruned[eps].success
    # the network sees all 40 samples at the first strength (FGSM's gradient, then the scoring pass), then at
    # each larger strength only the samples still robust (twice each), none where nothing is left
    left = [int((~pruned[e].success).sum()) for e in strengths[:-1]]
    assert seen == [40, 40] + [n for k in left if k for n in (k, k)]
    assert left[0] < 35  # pruning saved work here


def test_pruned_segmentation_keeps_the_lower_dice_per_sample():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 3, 1))
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        y = net(x).argmax(1)
    seg = get_task("segmentation")
    strengths = [0.02, 0.05, 0.1]
    attack = PGD(steps=3, random_start=False)
    alone = sweep(attack, net, x, y, strengths, prune=False, task=seg)
    pruned = sweep(attack, net, x, y, strengths, prune=True, task=seg)
    best = None
    for eps in strengths:
        dice_alone = seg.score(alone[eps].logits, y)
        best = dice_alone if best is None else torch.minimum(best, dice_alone)
        assert torch.allclose(seg.score(pruned[eps].logits, y), best)


SPEC = {
    "name": "s",
    "dataset": {"name": "derm-synth", "params": {"size": 16}},
    "models": [{"name": "m", "checkpoint": "x"}],
    "perturbations": [
        {"attack": "pgd", "strengths": [0.01, 0.02, 0.04]},
        {"attack": "fgsm", "strengths": [0.01, 0.02], "sweep": "independent"},
        {"attack": "apgd", "strengths": [0.03]},
        {"attack": "deepfool", "strengths": [0.1, 0.2]},
    ],
}


def test_a_pruned_sweep_is_one_cell_and_independent_strengths_are_one_cell_each():
    cells = expand(load_config(SPEC), {"m": "w"})
    shape = [(c.label, c.strengths) for c in cells]
    assert shape == [
        ("clean", (0.0,)),
        ("pgd", (0.01, 0.02, 0.04)),
        ("fgsm", (0.01,)),
        ("fgsm", (0.02,)),
        ("apgd", (0.03,)),
        ("deepfool", (0.1, 0.2)),
    ]
    # a single strength keeps the key it had before sweeps were pruned; independent cells too
    other = load_config({**SPEC, "perturbations": [{**p, "sweep": "independent"} for p in SPEC["perturbations"]]})
    keys = {(c.label, c.strengths): c.key for c in expand(other, {"m": "w"})}
    assert keys[("apgd", (0.03,))] == cells[4].key and keys[("fgsm", (0.01,))] == cells[2].key
    assert ("pgd", (0.01,)) in keys


def test_sweep_accepts_only_pruned_or_independent():
    bad = {**SPEC, "perturbations": [{"attack": "pgd", "strengths": [0.01], "sweep": "fast"}]}
    with pytest.raises(Exception, match="sweep"):
        load_config(bad)
