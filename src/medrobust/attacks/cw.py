"""Carlini & Wagner L2 attack (Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks",
IEEE S&P 2017), one of the paper's minimal-norm attacks, untargeted.

The box constraint is removed by a change of variables: x'(w) = low + (high - low) * (tanh(w) + 1) / 2 always
lies inside the model's bounds. Adam minimises, per sample,

    ||x'(w) - x||_2^2 + c * max(z_y(x') - max_{k != y} z_k(x'), -confidence)

over w, starting from x. A per-sample binary search tunes c: after a run that found an adversarial example c
becomes the midpoint of its bracket (it is now an upper bound); after a failure c grows tenfold until some
success has given an upper bound, then moves to the bracket's midpoint. Each sample keeps its smallest-L2
adversarial iterate over all runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from medrobust.attacks.base import Attack, check_int, check_positive, clean_outputs, flat_norm
from medrobust.models.wrapper import Model
from medrobust.tasks import Task

# atanh(+-1) is infinite: inputs on the bounds are pulled this fraction inside before the change of variables.
_TANH_SHRINK = 1.0 - 1e-6
# Abort a run for a sample once its loss improved by less than this fraction over a check interval (as in the
# authors' code).
_ABORT_TOLERANCE = 0.9999


@dataclass(frozen=True)
class CarliniWagnerL2(Attack):
    """Minimal-L2 Carlini & Wagner attack for classification.

    steps: Adam iterations per binary-search run.
    lr: Adam learning rate in tanh space w (one unit of w moves an input near the middle of the bounds by about
        (high - low) / 2 input units).
    confidence: kappa, in logit units: the adversarial example must beat the true class by this margin.
    binary_search_steps: runs of the search on the trade-off constant c.
    initial_const: c of the first run.
    abort_early: stop a sample's run when its loss stalls (checked every steps // 10 iterations); the batch's
        run ends when every sample has stalled.
    norm: always "l2"; a field so that configs may state it.

    Input x: (N, C, *spatial) inside the model's bounds; labels y: (N,). Returns x_adv of x's shape, dtype and
    device: each sample's smallest-L2 adversarial example found. Samples misclassified from the start, and
    samples never fooled (with the required confidence), are returned as the original x, unperturbed; callers
    see the failure as a sample the model still classifies correctly.
    """

    minimal: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("classification",)

    steps: int = 100
    lr: float = 0.01
    confidence: float = 0.0
    binary_search_steps: int = 5
    initial_const: float = 0.01
    abort_early: bool = True
    norm: str = "l2"

    def __post_init__(self) -> None:
        check_int("steps", self.steps)
        check_positive("lr", self.lr)
        check_positive("confidence", self.confidence, allow_zero=True)
        check_int("binary_search_steps", self.binary_search_steps)
        check_positive("initial_const", self.initial_const)
        if not isinstance(self.abort_early, bool):
            raise ValueError(f"abort_early={self.abort_early!r} must be True or False")
        if str(self.norm).lower() != "l2":
            raise ValueError(f"norm={self.norm!r} is not supported by CarliniWagnerL2; expected 'l2'")
        object.__setattr__(self, "norm", "l2")

    def run(
        self,
        model: Model,
        task: Task,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        eps: float | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        clean = clean_outputs(model, task, x, y, "CarliniWagnerL2")
        result = x.clone()
        # Only samples still classified correctly need an attack; the others are adversarial at distance 0.
        todo = task.correct(clean, y).nonzero().flatten()
        if todo.numel() == 0:
            return result
        best_adv, _ = self._search(model, task, x[todo], y[todo])
        result[todo] = best_adv
        return result

    def _search(self, model: Model, task: Task, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Binary search over c for correctly classified x. Returns (best x_adv or x, best L2 or inf), (N,)."""
        low, high = model.bounds
        half = (high - low) / 2
        w0 = torch.atanh(((x - low) / half - 1) * _TANH_SHRINK)
        n = x.shape[0]
        opts: dict[str, Any] = {"device": x.device, "dtype": x.dtype}
        const = torch.full((n,), float(self.initial_const), **opts)
        lower = torch.zeros(n, **opts)
        upper = torch.full((n,), math.inf, **opts)
        best_l2 = torch.full((n,), math.inf, **opts)
        best_adv = x.clone()
        check_every = max(self.steps // 10, 1)
        for _ in range(self.binary_search_steps):
            found = self._optimise(model, task, x, y, w0, const, best_l2, best_adv, check_every)
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(torch.isfinite(upper), (lower + upper) / 2, const * 10)
        return best_adv, best_l2

    def _optimise(
        self,
        model: Model,
        task: Task,
        x: torch.Tensor,
        y: torch.Tensor,
        w0: torch.Tensor,
        const: torch.Tensor,
        best_l2: torch.Tensor,
        best_adv: torch.Tensor,
        check_every: int,
    ) -> torch.Tensor:
        """One Adam run at fixed per-sample c from x. Updates best_l2/best_adv in place; returns which samples
        were fooled at some iterate of this run, (N,) bool."""
        low, high = model.bounds
        half = (high - low) / 2
        w = w0.clone().requires_grad_(True)
        # Adam is element-wise, so one optimiser over the batch's leaf tensor keeps the samples independent.
        opt = torch.optim.Adam([w], lr=self.lr)
        found = torch.zeros_like(const, dtype=torch.bool)
        running = torch.ones_like(found)
        prev = torch.full_like(const, math.inf)
        for it in range(self.steps):
            x_adv = low + half * (torch.tanh(w) + 1)
            logits = model(x_adv)
            margin = task.margin(logits, y)
            dist = (x_adv - x).flatten(1).pow(2).sum(dim=1)
            loss = dist + const * (margin + self.confidence).clamp_min(0)
            with torch.no_grad():
                adv = running & task.is_adversarial(logits, y) & (margin <= -self.confidence)
                l2 = flat_norm(x_adv - x, "l2")
                better = adv & (l2 < best_l2)
                best_l2.copy_(torch.where(better, l2, best_l2))
                best_adv[better] = x_adv[better]
                found |= adv
                if self.abort_early and it % check_every == 0:
                    # A stalled sample stops recording; its iterates no longer matter, so the batch stays in
                    # lock-step and results do not depend on which other samples share the batch.
                    running &= loss <= prev * _ABORT_TOLERANCE
                    prev = torch.where(running, loss, prev)
                    if not bool(running.any()):
                        break
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
        return found
