"""Segmentation metrics on hand-computable masks (as MONAI's tests do)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medrobust.metrics import flip_rate, flip_rate_per_structure, hd95, mean_foreground_dice, per_structure_dice
from medrobust.tasks import get_task


def test_dice_2x2_is_0_8_and_absent_structure_is_nan():
    y = torch.tensor([[[1, 1], [1, 0]]])
    pred = torch.tensor([[[1, 1], [0, 0]]])
    d = per_structure_dice(pred, y, 3)
    assert d[0, 0].item() == pytest.approx(0.8)
    assert math.isnan(d[0, 1].item())
    assert mean_foreground_dice(pred, y, 3).item() == pytest.approx(0.8)


def test_mean_foreground_dice_agrees_with_task_score_where_all_present():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (3, 8, 8), generator=g)
    pred = torch.randint(0, 4, (3, 8, 8), generator=g)
    logits = F.one_hot(pred, 4).movedim(-1, 1).float()
    torch.testing.assert_close(mean_foreground_dice(pred, y, 4), get_task("segmentation").score(logits, y).double().float())


def test_hd95_of_a_shifted_square():
    y = torch.zeros((1, 12, 12), dtype=torch.long)
    y[0, 2:6, 2:6] = 1
    pred = torch.zeros_like(y)
    pred[0, 2:6, 5:9] = 1  # shifted by 3 columns
    assert hd95(pred, y, 2)[0, 0].item() == pytest.approx(3.0)
    assert hd95(y, y, 2)[0, 0].item() == pytest.approx(0.0)
    assert math.isnan(hd95(torch.zeros_like(y), y, 2)[0, 0].item())


def test_flip_rate_counts_foreground_only():
    y = torch.tensor([[[0, 1, 1, 2]], [[0, 0, 0, 0]]])
    clean = torch.tensor([[[0, 1, 1, 2]], [[0, 0, 0, 0]]])
    adv = torch.tensor([[[1, 0, 1, 2]], [[1, 1, 1, 1]]])
    rate = flip_rate(clean, adv, y)
    assert rate[0].item() == pytest.approx(1 / 3)
    assert math.isnan(rate[1].item())


def test_flip_rate_per_structure_by_hand():
    # structure 1 has 2 units, one of them flipped; structure 2 has 1 unit, flipped; structure 3 is absent
    y = torch.tensor([[[0, 1, 1, 2]]])
    clean = torch.tensor([[[0, 1, 1, 2]]])
    adv = torch.tensor([[[3, 0, 1, 1]]])
    rate = flip_rate_per_structure(clean, adv, y, 4)
    assert rate.shape == (1, 3)
    assert rate[0, 0].item() == pytest.approx(0.5)
    assert rate[0, 1].item() == pytest.approx(1.0)
    assert math.isnan(rate[0, 2].item())
    # the overall rate is the unit-weighted mean of the per-structure rates: (1 + 1) / 3
    assert flip_rate(clean, adv, y)[0].item() == pytest.approx((0.5 * 2 + 1.0 * 1) / 3)


def test_one_dice_definition_for_attacks_and_records():
    """A structure absent from both masks is left out everywhere: the 2x2 case of 4 classes, true [[1,1],[2,0]]
    and predicted [[1,0],[2,2]]: structure 1 Dice 2/3, structure 2 Dice 2/3, structure 3 absent from both ->
    mean 2/3 (counting the absent structure as 1 would give 7/9)."""
    import torch.nn.functional as F

    from medrobust.metrics import mean_foreground_dice
    from medrobust.tasks import get_task

    y = torch.tensor([[[1, 1], [2, 0]]])
    pred = torch.tensor([[[1, 0], [2, 2]]])
    logits = F.one_hot(pred, 4).movedim(-1, 1).float()
    assert float(get_task("segmentation").score(logits, y)) == pytest.approx(2 / 3)
    assert float(mean_foreground_dice(pred, y, 4)) == pytest.approx(2 / 3)
    # no structure in either mask: a perfect score
    empty = torch.zeros((1, 2, 2), dtype=torch.long)
    assert float(get_task("segmentation").score(F.one_hot(empty, 4).movedim(-1, 1).float(), empty)) == 1.0
