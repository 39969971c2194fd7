"""Jacobian-based Saliency Map Attack (Papernot et al., "The Limitations of Deep Learning in Adversarial
Settings", IEEE EuroS&P 2016), the L0 attack of Paschali et al. (MICCAI 2018).

JSMA changes few input features by a large amount. Each iteration, for the target class t,

    alpha = d z_t / dx            (N, D)   how each feature moves the target logit
    beta  = d sum_{j != t} z_j / dx  (N, D)   how it moves all other logits together

(z are the model's logits, D the number of input features C * H * W). The increasing variant (theta > 0) picks
the feature pair (p, q) maximising -(alpha_p + alpha_q) * (beta_p + beta_q) subject to alpha_p + alpha_q > 0 and
beta_p + beta_q < 0, adds theta * (high - low) to both, clamps them to the bounds and removes them from the
search domain. The decreasing variant (theta < 0) flips the signs of alpha and beta. A sample stops when it is
classified as t (targeted) or as any wrong class (untargeted), or when it has used ``floor(gamma * D)``
features. alpha and beta come from one forward and two backward passes (of z_t and of the sum of all logits;
beta is their difference), whatever the number of classes.

Top-k restriction: the paper searches all pairs, which for a 224 x 224 x 3 image (D = 150,528) is a D x D pair
matrix of 2.3e10 entries per sample (~90 GB in float32). Here the pair search is restricted to the
``candidates`` features of each sample with the highest single-feature saliency alpha_p - beta_p (the pair
objective's sign conditions are on sums, and alpha_p + alpha_q - beta_p - beta_q is exactly the sum of these
single scores), so memory is O(N * k^2) on top of O(N * D). With ``candidates >= D`` the search is the exact
one of the paper. If no valid pair exists among the candidates (or only one feature of the budget is left),
the single top-ranked feature is changed, provided alpha_p - beta_p > 0; a sample with no such feature stops
(no first-order direction favours the target any more).

Ties between pairs go to the lexicographically smallest (p, q) (candidates are kept in index order). Finished
samples leave the batch, so they cost no further forward or backward passes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from medrobust.attacks.base import Attack, check_int
from medrobust.models.wrapper import Model
from medrobust.tasks import Task

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JSMA(Attack):
    """JSMA with the search restricted to the top ``candidates`` features per sample (see the module docstring).

    theta: change per chosen feature as a fraction of the bounds' range (high - low); > 0 increases features,
        < 0 decreases them (the paper's theta = +1 saturates a feature in one step).
    gamma: largest fraction of the input features that may be modified, in (0, 1]; the L0 budget per sample is
        ``floor(gamma * D)`` features.
    target: class to reach for every sample, or None (untargeted: per sample the wrong class with the highest
        logit at the clean input, and success is any wrong class). Samples whose label is ``target`` are
        returned unchanged.
    candidates: features per sample entering the pair search (memory O(N * candidates^2)).
    norm: threat norm, always "l0"; ``eps`` given to ``__call__`` is a fraction of the input features.

    x: (N, C, *spatial) inside the model's bounds; returns x_adv of the same shape, dtype and device.
    """

    minimal: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("classification",)

    theta: float = 1.0
    gamma: float = 0.1
    target: int | None = None
    candidates: int = 64
    norm: str = "l0"

    def __post_init__(self) -> None:
        if not isinstance(self.theta, (int, float)) or not math.isfinite(self.theta) or self.theta == 0:
            raise ValueError(f"theta={self.theta!r} must be a finite non-zero fraction of the bounds' range")
        if not isinstance(self.gamma, (int, float)) or not 0 < self.gamma <= 1:
            raise ValueError(f"gamma={self.gamma!r} must be in (0, 1] (fraction of input features)")
        check_int("candidates", self.candidates, minimum=1)
        if self.target is not None:
            check_int("target", self.target, minimum=0)
        if str(self.norm).lower() != "l0":
            raise ValueError(f"norm={self.norm!r} is not supported by JSMA; expected 'l0'")
        object.__setattr__(self, "norm", "l0")

    def run(self, model: Model, task: Task, x: torch.Tensor, y: torch.Tensor, *, eps, generator) -> torch.Tensor:
        n = x.shape[0]
        if n == 0:
            return x.clone()
        low, high = model.bounds
        sign = 1.0 if self.theta > 0 else -1.0
        step = float(self.theta) * (high - low)
        shape = x.shape[1:]
        flat = x.reshape(n, -1).clone()
        d = flat.shape[1]
        budget = int(math.floor(self.gamma * d + 1e-9))
        k = min(self.candidates, d)

        with torch.no_grad():
            logits = model(x)
        task.check(logits, y)
        n_classes = logits.shape[1]
        if n_classes < 2:
            raise ValueError(f"JSMA needs a model with at least 2 classes, got {n_classes}")
        if self.target is not None:
            if self.target >= n_classes:
                raise ValueError(
                    f"target={self.target!r} is out of range for a model with {n_classes} classes; "
                    f"expected 0..{n_classes - 1}"
                )
            t = torch.full_like(y, self.target)
        else:
            t = logits.scatter(1, y.unsqueeze(1), float("-inf")).argmax(dim=1)

        used = torch.zeros_like(flat, dtype=torch.bool)
        n_used = torch.zeros(n, dtype=torch.long, device=x.device)
        active = torch.arange(n, device=x.device)
        if self.target is not None:
            active = active[y != t]
        if budget == 0:
            active = active[:0]
        gave_up = 0

        while active.numel():
            xa = flat[active].view(-1, *shape).requires_grad_(True)
            za = model(xa)
            ta = t[active]
            pred = za.detach().argmax(dim=1)
            reached = pred == ta if self.target is not None else task.is_adversarial(za.detach(), y[active])
            fa = flat[active]
            room = fa < high if sign > 0 else fa > low
            domain = room & ~used[active]
            go = ~reached & domain.any(dim=1)
            if not bool(go.any()):
                break
            keep = go.nonzero().flatten()
            z = za[keep]
            # Rows dropped here still share this batch's graph once; from the next iteration they cost nothing.
            (g_t,) = torch.autograd.grad(z.gather(1, ta[keep].unsqueeze(1)).sum(), xa, retain_graph=True)
            (g_all,) = torch.autograd.grad(z.sum(), xa)
            alpha = sign * g_t[keep].flatten(1)
            beta = sign * g_all[keep].flatten(1) - alpha
            rows = active[keep]
            sel, ok = select_features(alpha, beta, domain[keep], k, budget - n_used[rows])
            gave_up += int((~ok).sum())
            rows, sel = rows[ok], sel[ok]
            values = (flat[rows].gather(1, sel) + step).clamp(low, high)
            flat[rows] = flat[rows].scatter(1, sel, values)
            used[rows] = used[rows].scatter(1, sel, True)
            n_used[rows] = used[rows].sum(dim=1)
            active = rows[n_used[rows] < budget]

        if gave_up:
            logger.debug("JSMA: %d sample(s) stopped early with no feature favouring the target", gave_up)
        return flat.view_as(x)


def select_features(
    alpha: torch.Tensor, beta: torch.Tensor, domain: torch.Tensor, k: int, remaining: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One JSMA selection for m samples.

    alpha, beta: (m, D) sign-adjusted derivatives of the target logit and of the sum of the other logits.
    domain: (m, D) bool, features that may still change. k: candidates per sample. remaining: (m,) features
    left in each sample's budget. Returns (sel, ok): sel (m, 2) feature indices (both equal when one feature is
    chosen) and ok (m,) bool, False where nothing favours the target.
    """
    rank = (alpha - beta).masked_fill(~domain, float("-inf"))
    cand = rank.topk(k, dim=1, sorted=False).indices.sort(dim=1).values
    cand_ok = domain.gather(1, cand)
    a = alpha.gather(1, cand)
    b = beta.gather(1, cand)
    pair_a = a.unsqueeze(2) + a.unsqueeze(1)
    pair_b = b.unsqueeze(2) + b.unsqueeze(1)
    upper = torch.ones(k, k, dtype=torch.bool, device=alpha.device).triu(diagonal=1)
    valid = (pair_a > 0) & (pair_b < 0) & upper & cand_ok.unsqueeze(2) & cand_ok.unsqueeze(1)
    score = (-pair_a * pair_b).masked_fill(~valid, float("-inf")).flatten(1)
    best = score.argmax(dim=1)
    pair = torch.stack([cand.gather(1, (best // k).unsqueeze(1)), cand.gather(1, (best % k).unsqueeze(1))], 1)
    pair = pair.squeeze(2)
    use_pair = valid.flatten(1).any(dim=1) & (remaining >= 2)

    single_rank = rank.gather(1, cand)
    top = single_rank.argmax(dim=1, keepdim=True)
    single = cand.gather(1, top).expand(-1, 2)
    single_ok = single_rank.gather(1, top).squeeze(1) > 0
    sel = torch.where(use_pair.unsqueeze(1), pair, single)
    return sel, use_pair | single_ok
