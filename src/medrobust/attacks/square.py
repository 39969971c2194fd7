"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020), Linf or L2.

A score-based black-box attack: it only reads the model's logits, never its gradients, so it is immune to
gradient masking and is the gradient-free member of a worst-case ensemble (AutoAttack). Random search minimises
the per-sample objective ``task.margin(logits, y).reshape(N, -1).mean(1)`` (z_true - max_{k != true} z_k, the
paper's margin loss; for segmentation the mean per-pixel margin):

- Linf: start from vertical stripes (each column of each channel shifted by +eps or -eps at random); each step
  sets one random s x s window of each sample to a constant +eps or -eps per channel (resampled while it would
  not change the image).
- L2: start from a grid of "meta pseudo-Gaussian" blocks (two opposite-signed bumps) with random signs, scaled
  to L2 norm eps; each step picks two random s x s windows, moves the perturbation mass of their union into the
  first window with a pseudo-Gaussian shape of random sign per channel, zeroes the second, and rescales the whole
  perturbation to norm eps.

After every candidate the image is clipped to the model's bounds, which only shrinks the perturbation, so every
x_adv stays in the eps ball. A candidate is kept when it lowers the objective (or is adversarial). The side s
follows the paper's schedule: the fraction p of the H*W pixels a window covers halves at fixed iterations of a
budget rescaled to 10,000 (``p_selection``). Window positions are drawn per sample, vectorised over the batch.

Shapes and units: x (N, C, H, W) inside ``model.bounds``; eps in input units, measured in ``norm``. Queries are
model forward evaluations per sample: 1 for the clean input (a sample already adversarial stops there and is
returned unchanged), then per restart at most ``queries`` (the initial perturbation counts 1, each random-search
step 1); a sample stops as soon as ``task.is_adversarial`` holds. So ``info["queries"][i] <= 1 + restarts *
queries``. Restarts after the first run only on the samples still not adversarial.

Differences from the authors' code: window corners are drawn from all H - s + 1 positions (theirs leave out the
last row and column), L2 windows and block orientations are drawn per sample rather than shared by the batch,
and the L2 initial grid covers the image with (min(H, W) // 5)-pixel blocks, centred.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from medrobust.attacks.base import (
    Attack,
    AttackResult,
    check_int,
    check_positive,
    clamp_bounds,
    flat_norm,
    per_sample,
)
from medrobust.models.wrapper import Model
from medrobust.tasks import Task
from medrobust.types import Bounds, check_norm

# Iterations (of a 10,000-iteration budget) after which p halves, as in the paper's code.
_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# A Linf window is resampled at most this often when it would leave the image unchanged (with eps below the
# floating-point resolution of x no draw changes it, so an unbounded loop could hang).
_MAX_RESAMPLES = 10


def p_selection(p_init: float, it: int, n_iters: int) -> float:
    """Fraction of the H*W pixels a square covers at step ``it`` of ``n_iters``: ``p_init`` halved at each of
    10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 once ``it`` is rescaled to a 10,000-step budget."""
    scaled = int(it / n_iters * 10000)
    return p_init / 2 ** sum(scaled > t for t in _P_HALVINGS)


def pseudo_gaussian(rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    """A (rows, cols) bump of unit L2 norm: a pixel at Chebyshev distance d from (rows // 2, cols // 2) gets
    sum_{k=d}^{K-1} 1 / (k + 1)^2, K = max(rows, cols) // 2 + 1 (nested rectangles of shrinking weight)."""
    k = max(rows, cols) // 2 + 1
    weights = 1.0 / torch.arange(1, k + 1, device=like.device, dtype=like.dtype) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)
    dr = (torch.arange(rows, device=like.device) - rows // 2).abs()
    dc = (torch.arange(cols, device=like.device) - cols // 2).abs()
    bump = tail[torch.maximum(dr[:, None], dc[None, :])]
    return bump / bump.norm().clamp_min(1e-12)


def meta_pseudo_gaussian(s: int, like: torch.Tensor) -> torch.Tensor:
    """(s, s) unit-norm pattern: a pseudo-Gaussian bump on the top half and a negated one on the bottom half."""
    top, bottom = pseudo_gaussian(s // 2, s, like), pseudo_gaussian(s - s // 2, s, like)
    pattern = torch.cat([top, -bottom], dim=0)
    return pattern / pattern.norm()


def _corners(n: int, s: int, h: int, w: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Random top-left corners (n, 2) of s x s windows inside an h x w image."""
    top = torch.randint(0, h - s + 1, (n,), generator=gen, device=device)
    left = torch.randint(0, w - s + 1, (n,), generator=gen, device=device)
    return torch.stack([top, left], dim=1)


def _window_mask(corners: torch.Tensor, s: int, h: int, w: int) -> torch.Tensor:
    """Boolean (n, 1, h, w), True inside each sample's s x s window."""
    rows = torch.arange(h, device=corners.device)[None, :] - corners[:, :1]
    cols = torch.arange(w, device=corners.device)[None, :] - corners[:, 1:]
    in_rows, in_cols = (rows >= 0) & (rows < s), (cols >= 0) & (cols < s)
    return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)


def _random_signs(shape: tuple[int, ...], gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=gen, device=like.device).to(like.dtype) * 2 - 1


def _objective(task: Task, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return task.margin(logits, y).reshape(y.shape[0], -1).mean(dim=1)


@dataclass(frozen=True)
class Square(Attack):
    """Square Attack. queries: forward evaluations per sample and restart; p_init: initial fraction of the
    pixels a square covers; restarts: independent runs, later ones only on samples still not adversarial."""

    gradient_free: ClassVar[bool] = True

    queries: int = 5000
    norm: str = "linf"
    p_init: float = 0.8
    restarts: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", check_norm(self.norm))
        check_int("queries", self.queries)
        check_int("restarts", self.restarts)
        check_positive("p_init", self.p_init)
        if self.p_init > 1:
            raise ValueError(f"p_init={self.p_init!r} must be in (0, 1]: it is a fraction of the image's pixels")

    def run(self, model: Model, task: Task, x: torch.Tensor, y: torch.Tensor, *, eps, generator) -> AttackResult:
        if x.dim() != 4 or min(x.shape[2:]) < 2:
            raise ValueError(
                f"Square attacks images: expected x of shape (N, C, H, W) with H, W >= 2, got {tuple(x.shape)}"
            )
        with torch.no_grad():  # black-box: the attack reads logits only, so no autograd graph is ever built
            logits = model(x)
            task.check(logits, y)
            done = task.is_adversarial(logits, y)
            best, best_obj = x.clone(), _objective(task, logits, y)
            used = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
            for _ in range(self.restarts):
                todo = (~done).nonzero().flatten()
                if todo.numel() == 0:
                    break
                cand, obj, adv, spent = self._search(model, task, x[todo], y[todo], eps, generator)
                better = adv | (obj < best_obj[todo])
                idx = todo[better]
                best[idx], best_obj[idx], done[idx] = cand[better], obj[better], adv[better]
                used[todo] += spent
        return AttackResult(best, {"queries": [int(q) for q in used.tolist()]})

    def _search(self, model: Model, task: Task, x: torch.Tensor, y: torch.Tensor, eps: float, gen: torch.Generator):
        """One random-search run. Returns (x_best, objective (n,), adversarial (n,), queries used (n,))."""
        bounds = model.bounds
        init = self._init_linf(x, eps, gen) if self.norm == "linf" else self._init_l2(x, eps, gen)
        x_best = clamp_bounds(x + init, bounds)
        logits = model(x_best)
        obj, adv = _objective(task, logits, y), task.is_adversarial(logits, y)
        used = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
        step = self._step_linf if self.norm == "linf" else self._step_l2
        for it in range(self.queries - 1):
            act = (~adv).nonzero().flatten()
            if act.numel() == 0:
                break
            cand = step(x[act], x_best[act], p_selection(self.p_init, it, self.queries), eps, gen, bounds)
            logits = model(cand)
            c_obj, c_adv = _objective(task, logits, y[act]), task.is_adversarial(logits, y[act])
            # Adversarial candidates are kept even without a lower mean margin: for segmentation the two can
            # disagree, and reaching the goal is what ends the search.
            keep = (c_obj < obj[act]) | c_adv
            idx = act[keep]
            x_best[idx], obj[idx], adv[idx] = cand[keep], c_obj[keep], c_adv[keep]
            used[act] += 1
        return x_best, obj, adv, used

    @staticmethod
    def _init_linf(x: torch.Tensor, eps: float, gen: torch.Generator) -> torch.Tensor:
        """Vertical stripes: one random +-eps per (sample, channel, column); the paper found them best."""
        n, c, _, w = x.shape
        return _random_signs((n, c, 1, w), gen, x).expand_as(x) * eps

    @staticmethod
    def _init_l2(x: torch.Tensor, eps: float, gen: torch.Generator) -> torch.Tensor:
        """A centred grid of (min(H, W) // 5)-pixel meta pseudo-Gaussian blocks, random sign per block and
        channel, random orientation per block, scaled to L2 norm eps."""
        n, c, h, w = x.shape
        s = max(min(h, w) // 5, 1)
        nh, nw = h // s, w // s
        pattern = meta_pseudo_gaussian(s, x)
        flip = torch.rand((n, 1, nh, nw, 1, 1), generator=gen, device=x.device) < 0.5
        blocks = torch.where(flip, pattern.T, pattern) * _random_signs((n, c, nh, nw, 1, 1), gen, x)
        grid = blocks.permute(0, 1, 2, 4, 3, 5).reshape(n, c, nh * s, nw * s)
        delta = torch.zeros_like(x)
        top, left = (h - nh * s) // 2, (w - nw * s) // 2
        delta[:, :, top : top + nh * s, left : left + nw * s] = grid
        return delta * (eps / per_sample(flat_norm(delta, "l2"), x).clamp_min(1e-12))

    @staticmethod
    def _step_linf(x, x_best, p: float, eps: float, gen: torch.Generator, bounds: Bounds) -> torch.Tensor:
        n, c, h, w = x.shape
        s = min(max(round(math.sqrt(p * h * w)), 1), min(h, w) - 1)
        mask = _window_mask(_corners(n, s, h, w, gen, x.device), s, h, w)
        delta = x_best - x
        cand, pending = x_best, torch.ones(n, dtype=torch.bool, device=x.device)
        for _ in range(_MAX_RESAMPLES):
            trial = clamp_bounds(x + torch.where(mask, _random_signs((n, c, 1, 1), gen, x) * eps, delta), bounds)
            cand = torch.where(per_sample(pending, x), trial, cand)
            # A window that reproduces x_best would waste a query: redraw its signs (the paper does the same).
            pending = pending & (trial == x_best).flatten(1).all(dim=1)
            if not bool(pending.any()):
                break
        return cand

    @staticmethod
    def _step_l2(x, x_best, p: float, eps: float, gen: torch.Generator, bounds: Bounds) -> torch.Tensor:
        n, c, h, w = x.shape
        s = max(round(math.sqrt(p * h * w)), 3)
        s = min(s + 1 - s % 2, min(h, w) - 1)  # odd sides centre the bump, when the image allows it
        first = _corners(n, s, h, w, gen, x.device)
        m1 = _window_mask(first, s, h, w)
        union = m1 | _window_mask(_corners(n, s, h, w, gen, x.device), s, h, w)
        delta = x_best - x
        room = (eps**2 - flat_norm(delta, "l2") ** 2).clamp_min(0)  # unused budget of the whole image
        in_first = torch.where(m1, delta, torch.zeros_like(delta))
        first_norm = in_first.pow(2).sum((2, 3), keepdim=True).sqrt()
        union_sq = torch.where(union, delta, torch.zeros_like(delta)).pow(2).sum((2, 3), keepdim=True)
        # The new bump, placed at each sample's first window by gathering pattern[row - top, col - left].
        pattern = meta_pseudo_gaussian(s, x)
        flip = torch.rand((n, 1, 1), generator=gen, device=x.device) < 0.5
        shapes = torch.where(flip, pattern.T, pattern)
        rows = (torch.arange(h, device=x.device)[None, :] - first[:, :1]).clamp(0, s - 1)
        cols = (torch.arange(w, device=x.device)[None, :] - first[:, 1:]).clamp(0, s - 1)
        bump = shapes[torch.arange(n, device=x.device)[:, None, None], rows[:, :, None], cols[:, None, :]]
        bump = torch.where(m1, bump.unsqueeze(1), torch.zeros_like(bump.unsqueeze(1)))
        new = bump * _random_signs((n, c, 1, 1), gen, x) + in_first / (first_norm + 1e-10)
        # Per channel, the first window receives the union's old mass plus an equal share of the unused budget.
        scale = (per_sample(room, x) / c + union_sq).sqrt()
        new = new / new.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12) * scale
        delta = torch.where(union, new, delta)
        delta = delta * (eps / per_sample(flat_norm(delta, "l2"), x).clamp_min(1e-12))
        return clamp_bounds(x + delta, bounds)
