"""Segmentation: one decision unit per pixel or voxel; class 0 is background."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medrobust.tasks.base import Task


def foreground_dice(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean Dice over the foreground structures present in either mask, per sample (N,); a structure absent from
    both masks is left out (it says nothing about the segmentation), and a sample with no structure in either
    mask scores 1. The one definition of Dice in medrobust: attacks score with it and the runner stores it.

    pred, y: label maps (N, *spatial) with values in [0, num_classes)."""
    pred_1h = F.one_hot(pred.long(), num_classes).movedim(-1, 1).flatten(2)[:, 1:]
    true_1h = F.one_hot(y.long(), num_classes).movedim(-1, 1).flatten(2)[:, 1:]
    inter = (pred_1h * true_1h).sum(-1).double()
    total = (pred_1h.sum(-1) + true_1h.sum(-1)).double()
    present = total > 0
    dice = torch.where(present, 2 * inter / total.clamp_min(1), torch.zeros_like(total))
    count = present.sum(1)
    return torch.where(count > 0, dice.sum(1) / count.clamp_min(1), torch.ones_like(dice[:, 0]))


class SegmentationTask(Task):
    name = "segmentation"

    def __init__(self, success_fraction: float = 0.5) -> None:
        if not 0.0 < success_fraction <= 1.0:
            raise ValueError(f"success_fraction={success_fraction!r} must be in (0, 1]")
        self.success_fraction = success_fraction

    def score(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean foreground Dice per sample (:func:`foreground_dice`: structures absent from both masks are left
        out)."""
        return foreground_dice(self.predict(logits), y, logits.shape[1]).to(logits.dtype)

    def is_adversarial(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Successful once at least ``success_fraction`` of the foreground units are mislabelled."""
        fg = (y > 0).flatten(1)
        wrong = (~self.correct(logits, y)).flatten(1) & fg
        n_fg = fg.sum(1)
        return (n_fg > 0) & (wrong.sum(1) >= self.success_fraction * n_fg)
