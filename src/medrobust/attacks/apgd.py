"""Auto-PGD (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020), Linf or L2, untargeted or targeted, cross-entropy or DLR loss.

PGD with momentum and a step size that adapts itself, so no step size needs tuning:
- start at a random point on the eps-sphere; step size eta = 2 eps;
- x(1) = P(x(0) + eta d(grad f(x(0)))); then z = P(x(k) + eta d(grad f(x(k)))) and
  x(k+1) = P(x(k) + alpha (z - x(k)) + (1 - alpha)(x(k) - x(k-1))), alpha = 0.75, P the projection onto the
  eps-ball intersected with the input bounds, d = sign (Linf) or g / ||g||_2 (L2);
- at checkpoints w_j = ceil(p_j N), p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), the
  step size of a sample is halved and its iterate restarts from the best point x_max found so far when
  (1) the loss rose in fewer than rho = 0.75 of the steps since the last checkpoint, or
  (2) its step size was not halved at the last checkpoint and its best loss f_max has not improved since.
The loss f is the mean over a sample's decision units (one for classification, one per pixel for segmentation)
of cross-entropy or DLR (see ``losses``). Targeted APGD-T runs once per target: the classes ranked 1, 2, ...,
``target_classes`` below the true class at the clean input (per unit), each run only on the samples still
robust; success is still "not the true class", as in AutoAttack.

Each sample returns the best point visited over all runs: the lowest task score first (misclassified beats
correct; the lowest Dice), then the highest cross-entropy. A sample whose score is 0 (for classification:
misclassified) is done: it leaves the batch at the next checkpoint and is not restarted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch

from medrobust.attacks import losses
from medrobust.attacks.base import (
    Attack,
    check_int,
    check_positive,
    clamp_bounds,
    flat_norm,
    keep_better,
    loss_and_grad,
    per_sample,
    project,
    step_direction,
)
from medrobust.models.wrapper import Model
from medrobust.tasks import Task
from medrobust.types import check_norm

LOSSES = ("ce", "dlr")


def checkpoints(steps: int) -> list[int]:
    """Iterations after which APGD checks its step size: ceil(p_j * steps) for the p_j in (0, 1]."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # round first: 0.22 + 0.19 is 0.41000000000000003, whose ceil at 100 steps would be 42, not 41
    return sorted({math.ceil(round(q * steps, 6)) for q in p[1:] if q <= 1.0} - {0})


def _start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """A random point on the eps-sphere around x (AutoAttack's start)."""
    if norm == "linf":
        t = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
        return eps * t / per_sample(flat_norm(t, "linf").clamp_min(1e-12), t)
    t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return eps * t / per_sample(flat_norm(t, "l2").clamp_min(1e-12), t)


@dataclass(frozen=True)
class APGD(Attack):
    """steps: iterations per run (100 in AutoAttack). loss: "ce" or "dlr". targeted: run APGD-T over the top
    ``target_classes`` other classes (capped at K - 1). restarts: random restarts per run, each only on samples
    still robust. rho, momentum: the paper's 0.75 and 0.75."""

    strong: ClassVar[bool] = True

    steps: int = 100
    norm: str = "linf"
    loss: str = "ce"
    targeted: bool = False
    target_classes: int = 9
    restarts: int = 1
    rho: float = 0.75
    momentum: float = 0.75

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", check_norm(self.norm))
        check_int("steps", self.steps)
        check_int("restarts", self.restarts)
        check_int("target_classes", self.target_classes)
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r} is not supported; expected one of {', '.join(LOSSES)}")
        for name in ("rho", "momentum"):
            value = getattr(self, name)
            check_positive(name, value)
            if value > 1:
                raise ValueError(f"{name}={value!r} must be in (0, 1]")

    def objective(self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, scale) -> torch.Tensor:
        """Per-sample loss to maximise (N,)."""
        if self.loss == "ce":
            units = -losses.cross_entropy(logits, target) if target is not None else losses.cross_entropy(logits, y)
        elif target is not None:
            units = losses.dlr_targeted(logits, y, target, scale)
        else:
            units = losses.dlr(logits, y, scale)
        return losses.sample_mean(units)

    def on_checkpoint(self, iteration: int, rows: torch.Tensor, eta: torch.Tensor, halved: torch.Tensor) -> None:
        """Called at each step-size checkpoint with the batch rows still running, their step sizes (after
        halving) and which were halved; a hook for tracing the schedule, does nothing here."""

    def run(self, model: Model, task: Task, x: torch.Tensor, y: torch.Tensor, *, eps, generator) -> torch.Tensor:
        with torch.no_grad():
            clean_logits = model(x)
        task.check(clean_logits, y)
        best = x.clone()
        best_score, best_loss = task.score(clean_logits, y), task.loss(clean_logits, y)
        k = clean_logits.shape[1]
        scale = (
            losses.logit_range(clean_logits) if losses.needs_scale(k, self.targeted) and self.loss == "dlr" else None
        )
        ranks: list[int | None] = list(range(1, min(self.target_classes, k - 1) + 1)) if self.targeted else [None]
        for rank in ranks:
            target = None if rank is None else losses.ranked_targets(clean_logits, y, rank)
            for _ in range(self.restarts):
                todo = (best_score > 0).nonzero().flatten()
                if todo.numel() == 0:
                    return best
                loss_fn = partial(
                    self.objective,
                    y=y[todo],
                    target=None if target is None else target[todo],
                    scale=None if scale is None else scale[todo],
                )
                self._single(model, task, x[todo], y[todo], eps, generator, loss_fn, best, best_score, best_loss, todo)
        return best

    def _single(self, model, task, x, y, eps, generator, loss_fn, best, best_score, best_loss, rows) -> None:
        """One run on the rows ``rows`` of the batch; improvements go into best, best_score, best_loss."""
        bounds = model.bounds
        marks = set(checkpoints(self.steps))
        if self.norm == "linf":
            # the eps-box intersected with the bounds, once: projecting is then one in-place clamp per step
            lo, hi = (x - eps).clamp_min(bounds[0]), (x + eps).clamp_max(bounds[1])

            def ball_(z: torch.Tensor) -> torch.Tensor:
                return z.clamp_(lo, hi)
        else:
            lo = hi = x  # unused for L2; kept so that dropping finished rows below treats both norms alike

            def ball_(z: torch.Tensor) -> torch.Tensor:
                return clamp_bounds(x + project(z - x, eps, self.norm), bounds)

        def evaluate(x_at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits, f, g = loss_and_grad(model, task, x_at, y, loss_fn)
            keep_better(best, best_score, best_loss, x_at, task.score(logits, y), task.loss(logits, y), rows)
            return f, g

        x_adv = clamp_bounds(x + _start(x, eps, self.norm, generator), bounds)
        f, grad = evaluate(x_adv)
        eta = torch.full((x.shape[0],), 2.0 * eps, dtype=x.dtype, device=x.device)
        x_prev = x_adv
        x_max, f_max, g_max = x_adv.clone(), f.clone(), grad.clone()
        f_max_at_check, halved_at_check = f_max.clone(), torch.zeros_like(f, dtype=torch.bool)
        rises = torch.zeros_like(f)
        last = 0
        for i in range(self.steps):
            # z = P(x + eta d(grad)), written into the direction's buffer
            z = ball_(step_direction(grad, self.norm).mul_(per_sample(eta, x)).add_(x_adv))
            if i > 0:  # x + a (z - x) + (1 - a)(x - x_prev) = a z + 2 (1 - a) x - (1 - a) x_prev
                a = self.momentum
                z = ball_(z.mul_(a).add_(x_adv, alpha=2 * (1 - a)).sub_(x_prev, alpha=1 - a))
            x_prev, x_adv = x_adv, z
            f_new, grad = evaluate(x_adv)
            rises += (f_new > f).to(rises.dtype)
            f = f_new
            up = f > f_max
            x_max[up], g_max[up], f_max[up] = x_adv[up], grad[up], f[up]
            if i + 1 not in marks:
                continue
            # the step-size checkpoint: halve and restart from x_max where the search stalled
            halve = (rises < self.rho * (i + 1 - last)) | (~halved_at_check & (f_max <= f_max_at_check))
            eta = torch.where(halve, eta / 2, eta)
            x_adv = torch.where(per_sample(halve, x), x_max, x_adv)
            grad = torch.where(per_sample(halve, x), g_max, grad)
            f = torch.where(halve, f_max, f)
            halved_at_check, f_max_at_check, last = halve, f_max.clone(), i + 1
            rises.zero_()
            self.on_checkpoint(i + 1, rows, eta, halve)
            # samples already at score 0 cannot get better: drop them from the batch
            live = best_score[rows] > 0
            if not bool(live.any()):
                return
            if not bool(live.all()):
                x, y, rows, x_adv, x_prev, grad, eta, f = (t[live] for t in (x, y, rows, x_adv, x_prev, grad, eta, f))
                lo, hi = lo[live], hi[live]  # ball_ reads x, lo and hi from this scope
                x_max, f_max, g_max, f_max_at_check = x_max[live], f_max[live], g_max[live], f_max_at_check[live]
                halved_at_check, rises = halved_at_check[live], rises[live]
                loss_fn = _subset(loss_fn, live)


def _subset(loss_fn: partial, live: torch.Tensor) -> partial:
    """The same objective restricted to the rows still in the batch."""
    kwargs = {k: (v[live] if torch.is_tensor(v) else v) for k, v in loss_fn.keywords.items()}
    return partial(loss_fn.func, **kwargs)
