"""SegPGD (Gu, Zhao, Tresp & Torr, "SegPGD: An Effective and Efficient Adversarial Attack for Evaluating and
Boosting Segmentation Robustness", ECCV 2022).

PGD whose per-pixel cross-entropy is re-weighted between pixels still labelled correctly (weight 1 - lambda_t)
and pixels already wrong (weight lambda_t), with lambda_t = t / (2 T) growing over the T steps: early steps push
the pixels that are still right, later ones keep the already fooled pixels fooled. Every other detail (step,
projection, bounds, random start, restarts, keeping the best iterate) is PGD's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from medrobust.attacks.pgd import PGD
from medrobust.models.wrapper import Model
from medrobust.tasks import Task


@dataclass(frozen=True)
class SegPGD(PGD):
    tasks: ClassVar[tuple[str, ...]] = ("segmentation",)

    def gradient(
        self, model: Model, task: Task, x_adv: torch.Tensor, y: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = x_adv.detach().requires_grad_(True)
        logits = model(x)
        task.check(logits, y)
        lam = step / (2.0 * self.steps)
        unit = task.unit_loss(logits, y)
        correct = task.correct(logits, y).detach()
        weights = torch.where(correct, 1.0 - lam, lam).to(unit.dtype)
        loss = (weights * unit).flatten(1).mean(dim=1).sum()
        (grad,) = torch.autograd.grad(loss, x)
        return logits.detach(), grad
