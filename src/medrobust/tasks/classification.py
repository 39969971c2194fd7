"""Classification: one decision unit per image."""

from __future__ import annotations

import torch

from medrobust.tasks.base import Task


class ClassificationTask(Task):
    name = "classification"

    def score(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.correct(logits, y).to(logits.dtype)

    def is_adversarial(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ~self.correct(logits, y)
