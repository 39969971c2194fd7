"""Projected Gradient Descent (Madry et al., ICLR 2018), Linf or L2.

Each step: x_{t+1} = clip_bounds(x + P_eps(x_t + alpha * d(g_t) - x)), d = sign for Linf and g / ||g||_2 for
L2, P_eps the projection onto the eps-ball. By default each sample returns the best point it visited (the clean
input, the random start and every iterate): the lowest task score first (misclassified beats correct; for
segmentation the lowest Dice), then the highest loss, as AutoAttack does. The last iterate can oscillate out of
an adversarial region, so returning it overstates robustness; ``keep_best=False`` gives the textbook variant
that returns the last iterate. With ``restarts > 1`` further random restarts run only on the samples whose best
score is still above 0, and each sample keeps its best run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medrobust.attacks.base import (
    Attack,
    check_int,
    check_positive,
    clamp_bounds,
    keep_better,
    loss_and_grad,
    outcome,
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
    keep_best: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", check_norm(self.norm))
        check_int("steps", self.steps)
        check_int("restarts", self.restarts)
        if self.step_size is not None:
            check_positive("step_size", self.step_size)

    def alpha(self, eps: float) -> float:
        """Step size in input units; default 2.5 * eps / steps (Madry et al.)."""
        return float(self.step_size) if self.step_size is not None else 2.5 * eps / self.steps

    def gradient(
        self, model: Model, task: Task, x_adv: torch.Tensor, y: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits at x_adv, gradient of the summed task loss w.r.t. the input); variants (SegPGD) change the loss
        here."""
        logits, _, grad = loss_and_grad(model, task, x_adv, y)
        return logits, grad

    def _single(self, model: Model, task: Task, x, y, eps: float, generator) -> tuple[torch.Tensor, ...]:
        """One run from one start. Returns (x_out, score, loss) per sample: the best visited point, or the
        last iterate when ``keep_best`` is off."""
        alpha = self.alpha(eps)
        x_adv = x.clone()
        if self.random_start:
            x_adv = clamp_bounds(x + random_in_ball(x, eps, self.norm, generator), model.bounds)
        best = x.clone()
        best_score: torch.Tensor | None = None
        best_loss: torch.Tensor | None = None
        if self.keep_best:
            best_score, best_loss = outcome(model, task, x, y)
        for step in range(self.steps):
            logits, grad = self.gradient(model, task, x_adv, y, step)
            # With keep_best (the only case the best scores are set), the gradient's forward pass scores the iterate.
            if best_score is not None and best_loss is not None:
                keep_better(best, best_score, best_loss, x_adv, task.score(logits, y), task.loss(logits, y))
            x_adv = x_adv + alpha * step_direction(grad, self.norm)
            x_adv = clamp_bounds(x + project(x_adv - x, eps, self.norm), model.bounds)
        score, loss = outcome(model, task, x_adv, y)
        if best_score is None or best_loss is None:  # keep_best is off
            return x_adv, score, loss
        keep_better(best, best_score, best_loss, x_adv, score, loss)
        return best, best_score, best_loss

    def run(self, model: Model, task: Task, x: torch.Tensor, y: torch.Tensor, *, eps, generator) -> torch.Tensor:
        best, best_score, best_loss = self._single(model, task, x, y, eps, generator)
        for _ in range(self.restarts - 1):
            todo = (best_score > 0).nonzero().flatten()
            if todo.numel() == 0:
                break
            cand, score, loss = self._single(model, task, x[todo], y[todo], eps, generator)
            keep_better(best, best_score, best_loss, cand, score, loss, todo)
        return best
