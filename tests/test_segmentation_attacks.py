"""Segmentation through the Task adapter: Dice, DAG (Xie et al. 2017) and SegPGD (Gu et al. 2022)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medrobust.attacks import DAG, PGD, SegPGD
from medrobust.attacks.dag import dag_target
from medrobust.models import build_network
from medrobust.tasks import get_task

SEG = get_task("segmentation")


def one_hot_logits(mask: torch.Tensor, k: int) -> torch.Tensor:
    return F.one_hot(mask, k).movedim(-1, 1).float()


def test_dice_of_two_2x2_masks_is_0_8():
    true = torch.tensor([[[1, 1], [1, 0]]])
    pred = torch.tensor([[[1, 1], [0, 0]]])
    # one foreground structure: 2 * |A & B| / (|A| + |B|) = 2 * 2 / (2 + 3)
    assert float(SEG.score(one_hot_logits(pred, 2), true)) == pytest.approx(0.8)


def test_task_dice_leaves_out_structures_absent_from_both_masks():
    true = torch.tensor([[[1, 1], [2, 0]]])
    pred = torch.tensor([[[1, 0], [2, 2]]])
    # class 1: 2*1/(1+2) = 2/3; class 2: 2*1/(2+1) = 2/3; class 3 absent in both: left out (as the stored Dice)
    expected = (2 / 3 + 2 / 3) / 2
    assert float(SEG.score(one_hot_logits(pred, 4), true)) == pytest.approx(expected)


def test_dag_targets_by_hand():
    y = torch.tensor([[[0, 1, 2, 3]]])
    assert dag_target(y, 4, "permutation").tolist() == [[[0, 2, 3, 1]]]
    assert dag_target(y, 4, "background").tolist() == [[[0, 0, 0, 0]]]
    assert dag_target(y, 4, "swap", (1, 3)).tolist() == [[[0, 3, 2, 1]]]
    grid = torch.zeros((1, 5, 5), dtype=torch.long)
    grid[0, 2, 2] = 1
    grown = dag_target(grid, 2, "dilate", (1,), radius=1)
    assert int(grown.sum()) == 9 and grown[0, 1:4, 1:4].eq(1).all()


def test_dag_first_step_matches_reference():
    # A 1x1-conv per-pixel linear model: one DAG iteration, compared with a step written out here.
    torch.manual_seed(0)
    net = nn.Conv2d(1, 3, 1)
    x = torch.rand(2, 1, 4, 4) * 0.5 + 0.25
    y = torch.randint(0, 3, (2, 4, 4))
    got = DAG(steps=1, gamma=0.1)(net, "segmentation", x, y)
    target = dag_target(y, 3, "permutation")
    xr = x.clone().requires_grad_(True)
    out = net(xr)
    live = ((out.argmax(1) == y) & (target != y)).float()
    diff = out.gather(1, target.unsqueeze(1)).squeeze(1) - out.gather(1, y.unsqueeze(1)).squeeze(1)
    (diff * live).sum().backward()
    g = xr.grad
    expected = (x + 0.1 * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).clamp(0, 1)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("target", ["permutation", "background"])
def test_dag_flips_at_least_90_percent_of_foreground(toy_segmenter, toy_seg_batch, target):
    x, y = toy_seg_batch
    x_adv = DAG(steps=100, target=target)(toy_segmenter, "segmentation", x, y)
    with torch.no_grad():
        pred = toy_segmenter(x_adv).argmax(1)
    fg = y > 0
    flipped = float(((pred != y) & fg).sum() / fg.sum())
    assert flipped >= 0.9
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


def test_dag_dilate_attacks_the_rim(toy_segmenter, toy_seg_batch):
    # The rim around structure 1 is the attacked set. DAG drops a pixel once it is no longer labelled correctly
    # (the released variant), so on this toy, where raising a dark pixel towards the bright square passes
    # the grey of structure 2, rim pixels flip but not always to the target.
    x, y = toy_seg_batch
    target = dag_target(y, 3, "dilate", (1,), radius=1)
    rim = target != y
    x_adv = DAG(steps=100, target="dilate", classes=(1,), radius=1)(toy_segmenter, "segmentation", x, y)
    with torch.no_grad():
        pred = toy_segmenter(x_adv).argmax(1)
    assert float((pred[rim] != y[rim]).float().mean()) >= 0.9
    # pixels outside the rim are not the attack's goal: most keep their label
    assert float((pred[~rim] == y[~rim]).float().mean()) >= 0.7


def test_dag_bad_parameters():
    with pytest.raises(ValueError, match="target='grow'"):
        DAG(target="grow")
    with pytest.raises(ValueError, match="needs classes with 2 entries"):
        DAG(target="swap", classes=(1,))
    with pytest.raises(ValueError, match="classification"):
        DAG()(nn.Linear(4, 2), "classification", torch.rand(2, 4), torch.tensor([0, 1]))


def test_segpgd_first_step_uses_correct_pixels_only(toy_segmenter, toy_seg_batch):
    x, y = toy_seg_batch
    x_adv = x.clone()
    attack = SegPGD(steps=4)
    _, got = attack.gradient(toy_segmenter, SEG, x_adv, y, step=0)
    xr = x.clone().requires_grad_(True)
    logits = toy_segmenter(xr)
    correct = (logits.argmax(1) == y).float()
    ce = F.cross_entropy(logits, y, reduction="none")
    ((ce * correct).flatten(1).mean(1)).sum().backward()
    torch.testing.assert_close(got, xr.grad)
    # at step t the wrong pixels weigh t / (2T)
    _, got3 = attack.gradient(toy_segmenter, SEG, x_adv, y, step=3)
    xr.grad = None
    logits = toy_segmenter(xr)
    lam = 3 / 8
    w = torch.where(logits.argmax(1) == y, 1 - lam, lam)
    ((w * F.cross_entropy(logits, y, reduction="none")).flatten(1).mean(1)).sum().backward()
    torch.testing.assert_close(got3, xr.grad)


def test_segpgd_lowers_dice_more_than_pgd(toy_segmenter, toy_seg_batch):
    x, y = toy_seg_batch
    scores = {}
    for name, attack in (("pgd", PGD(steps=10, random_start=False)), ("segpgd", SegPGD(steps=10, random_start=False))):
        x_adv = attack(toy_segmenter, "segmentation", x, y, eps=0.1)
        with torch.no_grad():
            scores[name] = float(SEG.score(toy_segmenter(x_adv), y).mean())
    assert scores["segpgd"] < scores["pgd"] - 0.01


@pytest.mark.parametrize("arch", ["unet", "basic-unet", "attention-unet", "segresnet"])
@pytest.mark.parametrize("dims", [2, 3])
def test_segmentation_zoo_shapes(arch, dims):
    net = build_network(arch, in_channels=1, num_classes=4, spatial_dims=dims).eval()
    with torch.no_grad():
        out = net(torch.rand((1, 1) + (32,) * dims))
    assert out.shape == (1, 4) + (32,) * dims


def test_target_iou_by_hand():
    from medrobust.metrics import target_iou

    pred = torch.tensor([[[0, 1], [1, 1]]])
    target = torch.tensor([[[0, 1], [0, 1]]])
    # label 0: 1/2, label 1: 2/3
    assert float(target_iou(pred, target)) == pytest.approx((0.5 + 2 / 3) / 2)


def test_asma_reaches_a_user_given_target_mask(toy_segmenter, toy_seg_batch):
    from medrobust.attacks import ASMA
    from medrobust.metrics import target_iou

    x, y = toy_seg_batch
    # the target: the square (class 1) moved to where the disk is, everything else background
    target = torch.where(y == 2, torch.ones_like(y), torch.zeros_like(y))
    x_adv = ASMA(steps=150, gamma=0.05).run_targeted(toy_segmenter, x, target)
    with torch.no_grad():
        clean = target_iou(toy_segmenter(x).argmax(1), target).mean()
        adv = target_iou(toy_segmenter(x_adv).argmax(1), target).mean()
    assert float(clean) < 0.6 and float(adv) >= 0.9
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


def test_asma_keeps_going_past_wrong_labels_where_dag_stops(toy_segmenter, toy_seg_batch):
    from medrobust.attacks import ASMA
    from medrobust.metrics import target_iou

    x, y = toy_seg_batch
    target = dag_target(y, 3, "dilate", (1,), radius=1)
    ious = {}
    for name, attack in (("dag", DAG(steps=150, target="dilate", classes=(1,), radius=1)),
                         ("asma", ASMA(steps=150, target="dilate", classes=(1,), radius=1))):
        with torch.no_grad():
            ious[name] = float(target_iou(toy_segmenter(attack(toy_segmenter, "segmentation", x, y)).argmax(1), target).mean())
    assert ious["asma"] > ious["dag"] and ious["asma"] >= 0.85
