"""Fast Gradient Sign Method (Goodfellow et al., ICLR 2015), one of the paper's attacks.

x_adv = clip(x + eps * sign(grad_x L(f(x), y))) for Linf; with ``norm="l2"`` the fast gradient method
x + eps * g / ||g||_2. L is the task's cross-entropy on logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medrobust.attacks.base import Attack, clamp_bounds, loss_and_grad, step_direction
from medrobust.models.wrapper import Model
from medrobust.tasks import Task
from medrobust.types import check_norm


@dataclass(frozen=True)
class FGSM(Attack):
    norm: str = "linf"

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", check_norm(self.norm))

    def run(self, model: Model, task: Task, x: torch.Tensor, y: torch.Tensor, *, eps, generator) -> torch.Tensor:
        _, _, grad = loss_and_grad(model, task, x, y)
        return clamp_bounds(x + eps * step_direction(grad, self.norm), model.bounds)
