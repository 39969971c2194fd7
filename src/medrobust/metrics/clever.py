"""CLEVER (Weng et al., "Evaluating the Robustness of Neural Networks: An Extreme Value Theory Approach",
ICLR 2018): an attack-independent estimate of the minimal adversarial perturbation.

For a sample x0 with true class c and another class j, the margin g(x) = z_c(x) - z_j(x) changes by at most
L * ||delta||_p inside a ball where L bounds the dual norm ||grad g||_q (1/p + 1/q = 1). No perturbation smaller
than g(x0) / L can flip the decision to j. CLEVER estimates the local L by extreme value theory: sample
``n_batches`` batches of ``batch_size`` points uniformly in the p-ball of radius ``radius`` around x0 (clipped
to the input bounds), keep each batch's largest ||grad g||_q, fit a reverse Weibull distribution to these
maxima and take its location (the distribution's upper end) as L. The score for class j is
min(g(x0) / L, radius); the untargeted score is the minimum over the target classes (all other classes, or the
``target_classes`` with the largest clean logits).

It is an estimate, not a certificate: the sampled maxima can miss the steepest point of the ball, so a CLEVER
score can exceed the true minimal perturbation. Samples the model already gets wrong score 0 (as a minimal
attack returns them unchanged).

Batched: the points of many samples go through the network together, and one backward pass per target rank
gives the gradient of that margin at every point (points are independent, so the gradient of the summed margin
is each point's own gradient). The reverse Weibull fits are maximum likelihood for all (sample, class) pairs at
once (:func:`fit_locations`: the likelihood profiled over the location, shape and scale solved in closed form
or by bisection), about 20x faster than one scipy fit at a time and equal to it where scipy converges. A fit
is accepted when its optimum is interior, or at the largest observed maximum itself (shape <= 1, where the
likelihood rises towards it). A fit whose location runs off more than ``RUNAWAY`` spreads of the maxima above
the largest one (a flat likelihood: the degenerate fits that make other tools report spurious ~1e-6 scores)
is not used: the largest observed maximum is, and the sample is flagged (``fit`` = "max"). With few batches
(ART's default of 10 x 5 points) many fits are degenerate on real networks; more batches help. Maxima that are
all equal (a locally linear model) give that value exactly (``fit`` = "constant").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medrobust.models.wrapper import as_model, attack_mode
from medrobust.types import Bounds

DUAL = {"l2": 2.0, "linf": 1.0, "l1": math.inf}
# a fitted upper end more than this many spreads (largest - smallest batch maximum) above the largest maximum is
# a fit that ran off on a flat likelihood, not an estimate
RUNAWAY = 5.0


@dataclass(frozen=True)
class CleverEstimate:
    """scores (N,): untargeted CLEVER in input units of ``norm``; per_class (N, K): the score towards each
    target class (NaN where not evaluated); lipschitz (N, K): the estimated local Lipschitz constants; fit:
    per sample, how its limiting class's constant was obtained ("weibull", "constant", "max",
    "misclassified"); flagged (N,): a degenerate fit was replaced by the observed maximum."""

    scores: torch.Tensor
    per_class: torch.Tensor
    lipschitz: torch.Tensor
    fit: list[str]
    flagged: torch.Tensor


def sample_ball(center: torch.Tensor, count: int, radius: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """``count`` points uniformly in the ``norm`` ball of ``radius`` around each sample: (N, count, *shape)."""
    n, shape = center.shape[0], center.shape[1:]
    d = int(np.prod(shape))

    def uniform(*size: int) -> torch.Tensor:
        return torch.rand(size, generator=generator, device=center.device, dtype=center.dtype)

    if norm == "linf":
        delta = (2 * uniform(n, count, d) - 1) * radius
    elif norm == "l2":
        direction = torch.randn((n, count, d), generator=generator, device=center.device, dtype=center.dtype)
        direction = direction / direction.norm(dim=2, keepdim=True).clamp_min(1e-12)
        delta = direction * radius * uniform(n, count, 1) ** (1.0 / d)
    elif norm == "l1":
        # uniform in the L1 ball: Laplace directions on the L1 sphere, radius scaled by U^(1/d)
        e = -torch.log(uniform(n, count, d).clamp_min(1e-12))
        signs = torch.randint(0, 2, (n, count, d), generator=generator, device=center.device).to(center.dtype) * 2 - 1
        direction = e * signs / e.sum(dim=2, keepdim=True)
        delta = direction * radius * uniform(n, count, 1) ** (1.0 / d)
    else:
        raise ValueError(f"norm={norm!r} is not supported; expected one of l2, linf, l1")
    return center.unsqueeze(1) + delta.view(n, count, *shape)


def _weibull_shape(y: np.ndarray, iters: int = 40) -> np.ndarray:
    """Maximum-likelihood Weibull shape c for each row of y (M, B) > 0, by bisection in log c on the profile
    equation 1/c + mean(log y) - sum(y^c log y) / sum(y^c) = 0 (decreasing in c, so the root is unique)."""
    logy = np.log(y)
    mean_log = logy.mean(axis=-1)
    lo = np.full(y.shape[:-1], math.log(0.02))
    hi = np.full(y.shape[:-1], math.log(200.0))
    z = logy - logy.max(axis=-1, keepdims=True)  # y^c up to a common factor, to avoid overflow
    for _ in range(iters):
        c = np.exp((lo + hi) / 2)
        w = np.exp(c[..., None] * z)
        g = 1.0 / c + mean_log - (w * logy).sum(axis=-1) / w.sum(axis=-1)
        lo, hi = np.where(g > 0, np.log(c), lo), np.where(g > 0, hi, np.log(c))
    return np.exp((lo + hi) / 2)


def _profile_loglik(maxima: np.ndarray, loc: np.ndarray) -> np.ndarray:
    """Log-likelihood of a reverse Weibull with location ``loc`` (M, G) at its best shape and scale, for the
    maxima (M, B); the constant -B is left out."""
    y = np.maximum(loc[..., None] - maxima[:, None, :], 1e-300)  # (M, G, B)
    c = _weibull_shape(y)
    b = maxima.shape[-1]
    logy = np.log(y)
    scale_c = np.exp(c[..., None] * (logy - logy.max(axis=-1, keepdims=True))).mean(axis=-1)
    log_mean_yc = np.log(scale_c) + c * logy.max(axis=-1)
    return b * np.log(c) - b * log_mean_yc + (c - 1) * logy.sum(axis=-1)


def fit_locations(maxima: np.ndarray, grid: int = 48, refine: int = 24) -> tuple[np.ndarray, list[str]]:
    """Upper ends (locations) of reverse Weibull distributions fitted by maximum likelihood to each row of
    ``maxima`` (M, B), all rows at once: the profile likelihood over the location on a log grid above the
    largest maximum, refined by golden-section search. Returns (locations, how): "weibull" for an interior
    optimum within RUNAWAY spreads above the largest maximum, or for the largest maximum itself when the
    likelihood rises towards it; "constant" for equal maxima (their value, exactly); "max" where the fit runs
    off (a degenerate fit: the largest maximum is used)."""
    maxima = np.asarray(maxima, dtype=np.float64)
    top, bottom = maxima.max(axis=1), maxima.min(axis=1)
    spread = top - bottom
    constant = ~(spread > 1e-9 * np.abs(top))
    locs, how = top.copy(), np.where(constant, "constant", "max").astype(object)
    rows = np.flatnonzero(~constant & np.isfinite(top))
    if rows.size:
        m, t, r = maxima[rows], top[rows], spread[rows]
        steps = np.logspace(-4, 2, grid)  # location = top + step * spread
        ll = _profile_loglik(m, t[:, None] + steps[None, :] * r[:, None])
        best = np.nanargmax(np.where(np.isfinite(ll), ll, -np.inf), axis=1)
        interior = (best > 0) & (best < grid - 1)
        # golden-section search on log(step) between the grid neighbours of the best point
        a = np.log(steps[np.clip(best - 1, 0, grid - 1)])
        b = np.log(steps[np.clip(best + 1, 0, grid - 1)])
        ratio = (math.sqrt(5) - 1) / 2
        for _ in range(refine):
            x1, x2 = b - ratio * (b - a), a + ratio * (b - a)
            f1 = _profile_loglik(m, (t + np.exp(x1) * r)[:, None])[:, 0]
            f2 = _profile_loglik(m, (t + np.exp(x2) * r)[:, None])[:, 0]
            a, b = np.where(f1 < f2, x1, a), np.where(f1 < f2, b, x2)
        step = np.exp((a + b) / 2)
        fitted = t + step * r
        # at the grid's lower edge the likelihood rises towards the largest maximum (shape <= 1): the MLE is
        # that maximum itself; beyond RUNAWAY spreads above it the fit has run off (a flat likelihood that
        # makes the score spuriously small): degenerate
        at_max = best == 0
        ok = (interior | at_max) & np.isfinite(fitted) & (step <= RUNAWAY)
        locs[rows] = np.where(ok & ~at_max, fitted, t)
        how[rows] = np.where(ok, "weibull", "max")
    return locs, list(how)


def fit_location(maxima: np.ndarray) -> tuple[float, str]:
    """:func:`fit_locations` for one set of batch maxima."""
    locs, how = fit_locations(np.asarray(maxima, dtype=np.float64)[None, :])
    return float(locs[0]), how[0]


def clever_estimate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "l2",
    n_batches: int = 10,
    batch_size: int = 5,
    radius: float = 5.0,
    target_classes: int | None = None,
    bounds: Bounds | None = None,
    generator: torch.Generator | None = None,
    chunk: int = 128,
) -> CleverEstimate:
    """CLEVER for every sample of ``x`` (N, C, *spatial) with labels ``y`` (N,). See the module docstring."""
    if norm not in DUAL:
        raise ValueError(f"norm={norm!r} is not supported; expected one of {', '.join(DUAL)}")
    for name, value in (("n_batches", n_batches), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1")
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius={radius!r} must be a finite number > 0")
    wrapped = as_model(model, bounds)
    y = torch.as_tensor(y, device=x.device).long()
    if x.dim() < 2 or y.shape != (x.shape[0],):
        raise ValueError(
            f"x of shape {tuple(x.shape)} and y of shape {tuple(y.shape)}: expected x (N, C, ...) and y (N,)"
        )
    generator = generator or torch.Generator(device=x.device).manual_seed(0)
    q = DUAL[norm]
    low, high = wrapped.bounds
    with attack_mode(wrapped), torch.no_grad():
        logits = wrapped(x)
    n, k = logits.shape
    others = logits.scatter(1, y.unsqueeze(1), -math.inf)
    ranks = k - 1 if target_classes is None else min(int(target_classes), k - 1)
    targets = others.topk(ranks, dim=1).indices  # (N, T), classes by descending clean logit
    margin0 = logits.gather(1, y.unsqueeze(1)) - logits.gather(1, targets)  # (N, T)
    per_point = n_batches * batch_size
    points = sample_ball(x, per_point, radius, norm, generator).clamp(low, high)  # (N, P, *shape)
    flat = points.reshape(n * per_point, *x.shape[1:])
    owner = torch.arange(n, device=x.device).repeat_interleave(per_point)
    grad_norms = torch.empty((n * per_point, ranks), dtype=x.dtype, device=x.device)
    with attack_mode(wrapped), torch.enable_grad():
        for start in range(0, flat.shape[0], chunk):
            sl = slice(start, start + chunk)
            xp = flat[sl].detach().requires_grad_(True)
            z = wrapped(xp)
            own = owner[sl]
            for r in range(ranks):
                g = (z.gather(1, y[own].unsqueeze(1)) - z.gather(1, targets[own, r : r + 1])).sum()
                (grad,) = torch.autograd.grad(g, xp, retain_graph=r < ranks - 1)
                grad_norms[sl, r] = grad.flatten(1).norm(p=q, dim=1)
    maxima = grad_norms.view(n, n_batches, batch_size, ranks).amax(dim=2).cpu().numpy()  # (N, B, T)
    correct = (logits.argmax(1) == y).cpu()
    margins = margin0.detach().cpu().double()
    fitted, statuses = fit_locations(maxima.transpose(0, 2, 1).reshape(n * ranks, n_batches))
    locs = torch.from_numpy(fitted).view(n, ranks)
    status = np.asarray(statuses, dtype=object).reshape(n, ranks)
    # score towards each target class: margin / Lipschitz constant, at most the radius, never below 0
    toward = torch.where(locs > 0, margins / locs, torch.full_like(locs, radius)).clamp(0.0, radius)
    cols = targets.cpu()
    lipschitz = torch.full((n, k), math.nan, dtype=torch.float64).scatter_(1, cols, locs)
    per_class = torch.full((n, k), math.nan, dtype=torch.float64).scatter_(1, cols, toward)
    best, limiting = toward.min(dim=1)  # the first class reaching the smallest score
    scores = torch.where(correct, best, torch.zeros_like(best))
    fits = [str(status[i, int(limiting[i])]) if correct[i] else "misclassified" for i in range(n)]
    flagged = torch.from_numpy((status == "max").any(axis=1))
    return CleverEstimate(scores, per_class, lipschitz, fits, flagged)


def clever(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "l2",
    n_batches: int = 10,
    batch_size: int = 5,
    radius: float = 5.0,
    target_classes: int | None = None,
    bounds: Bounds | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Untargeted CLEVER scores (N,), float64, in input units of ``norm`` ("l2", "linf" or "l1"); 0 for samples
    the model already misclassifies. An estimate of the minimal adversarial perturbation, not a certificate.

    >>> scores = clever(net, x, y, norm="l2", n_batches=10, batch_size=5, radius=5)  # doctest: +SKIP
    """
    return clever_estimate(
        model,
        x,
        y,
        norm=norm,
        n_batches=n_batches,
        batch_size=batch_size,
        radius=radius,
        target_classes=target_classes,
        bounds=bounds,
        generator=generator,
    ).scores
