"""Projected Gradient Descent (Madry et al., ICLR 2018), Linf or L2.

Each step: x_{t+1} = clip_bounds(x + P_eps(x_t + alpha * d(g_t) - x)), d = sign for Linf and g / ||g||_2 for
L2, P_eps the projection onto the eps-ball. The last iterate is returned (the textbook algorithm). With
``restarts > 1`` further random restarts run only on the samples still not adversarial, and each sample keeps
its best run (adversarial first, then highest loss), as AutoAttack does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medrobust.attacks.base import (
    Attack,
    check_int,
    check_positive,
    clamp_bounds,
    loss_and_grad,
    project,
    random_in_ball,
    step_direction,
)
from medrobust.models.wrapper import Model
from medrobust.tasks import Task
from medrobust.types import check_norm


@dataclass(frozen=True)
class PGD(Attack):
    steps: int = 10
    step_size: float | None = None
    norm: str = "linf"
    random_start: bool = True
    restarts: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", check_norm(self.norm))
        check_int("steps", self.steps)
        check_int("restarts", self.restarts)
        if self.step_size is not None:
            check_positive("step_size", self.step_size)

    def alpha(self, eps: float) -> float:
        """Step size in input units; default 2.5 * eps / steps (Madry et al.)."""
        return float(self.step_size) if self.step_size is not None else 2.5 * eps / self.steps

    def gradient(self, model: Model, task: Task, x_adv: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        """Gradient of the summed task loss w.r.t. the input; variants (SegPGD) change the loss here."""
        return loss_and_grad(model, task, x_adv, y)[2]

    def _single(self, model: Model, task: Task, x, y, eps: float, generator) -> torch.Tensor:
        alpha = self.alpha(eps)
        x_adv = x.clone()
        if self.random_start:
            x_adv = clamp_bounds(x + random_in_ball(x, eps, self.norm, generator), model.bounds)
        for step in range(self.steps):
            grad = self.gradient(model, task, x_adv, y, step)
            x_adv = x_adv + alpha * step_direction(grad, self.norm)
            x_adv = clamp_bounds(x + project(x_adv - x, eps, self.norm), model.bounds)
        return x_adv

    def run(self, model: Model, task: Task, x: torch.Tensor, y: torch.Tensor, *, eps, generator) -> torch.Tensor:
        best = self._single(model, task, x, y, eps, generator)
        if self.restarts == 1:
            return best
        with torch.no_grad():
            logits = model(best)
            best_adv = task.is_adversarial(logits, y)
            best_loss = task.loss(logits, y)
        for _ in range(self.restarts - 1):
            todo = (~best_adv).nonzero().flatten()
            if todo.numel() == 0:
                break
            cand = self._single(model, task, x[todo], y[todo], eps, generator)
            with torch.no_grad():
                logits = model(cand)
                adv = task.is_adversarial(logits, y[todo])
                loss = task.loss(logits, y[todo])
            better = adv | (loss > best_loss[todo])
            idx = todo[better]
            best[idx] = cand[better]
            best_adv[idx] = adv[better]
            best_loss[idx] = loss[better]
        return best
