"""Segmentation: one decision unit per pixel or voxel; class 0 is background."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medrobust.tasks.base import Task


class SegmentationTask(Task):
    name = "segmentation"

    def __init__(self, success_fraction: float = 0.5) -> None:
        if not 0.0 < success_fraction <= 1.0:
            raise ValueError(f"success_fraction={success_fraction!r} must be in (0, 1]")
        self.success_fraction = success_fraction

    def score(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean foreground Dice per sample; a structure absent from both masks counts as 1."""
        k = logits.shape[1]
        pred = F.one_hot(self.predict(logits), k).movedim(-1, 1).flatten(2)[:, 1:]
        true = F.one_hot(y, k).movedim(-1, 1).flatten(2)[:, 1:]
        inter = (pred * true).sum(-1).to(logits.dtype)
        total = (pred.sum(-1) + true.sum(-1)).to(logits.dtype)
        dice = torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))
        return dice.mean(dim=1)

    def is_adversarial(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Successful once at least ``success_fraction`` of the foreground units are mislabelled."""
        fg = (y > 0).flatten(1)
        wrong = (~self.correct(logits, y)).flatten(1) & fg
        n_fg = fg.sum(1)
        return (n_fg > 0) & (wrong.sum(1) >= self.success_fraction * n_fg)
