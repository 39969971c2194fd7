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

Why fits degenerate, and what is done about it. In a ball of a few input units around an image the gradient norm of
a trained network is close to normally distributed over the sampled points (on the demo's small-cnn its spread is
2-4% of its mean, skewness about 0): the batch maxima then look like Gumbel maxima, whose reverse Weibull fit has no
finite optimum for about a quarter of all draws of 10 maxima (the likelihood keeps rising as the shape and the
location run off together), so about half the samples of a three-class model have one. This is a property of the
draw, not of the radius or of the batch size (larger batches only move the maxima further into the Gumbel regime);
more maxima settle it. So the default batch is small (2 points: the same number of maxima for 40% of the network
work of ART's 5) and the sampling is adaptive: every sample starts with ``n_batches`` batches, and the samples with
a degenerate fit for any target class draw as many batches again (doubling their maxima) and are refitted on all
their maxima, until every fit is accepted or ``max_batches`` batches are spent. Only the samples still degenerate
get more points. The original code (Weng et al., 500 batches of 1024 points) and ART (``clever_u``: the caller's
``nb_batches`` x ``batch_size``, scipy's fit started at one shape) use a fixed budget.

Fits: maximum likelihood for all (sample, class) pairs at once (:func:`fit_locations`: the likelihood profiled
over the location, shape and scale solved in closed form or by bisection), equal to scipy's fit where scipy
converges. A fit is accepted when its optimum is interior, or at the largest observed maximum itself (shape
<= 1, where the likelihood rises towards it). A fit whose location runs off more than ``RUNAWAY`` spreads of the
maxima above the largest one (the degenerate fits that make other tools report spurious ~1e-6 scores) is not
used: the largest observed maximum is, and the sample is flagged (``fit`` = "max"); its score then rests on a
lower estimate of L and can be too large. Maxima that are all equal (a locally linear model) give that value
exactly (``fit`` = "constant").

It is an estimate, not a certificate: random points in a high-dimensional ball are almost orthogonal to the
steepest direction, so the sampled maxima can miss it and a CLEVER score can exceed the true minimal
perturbation (:func:`attack_distances` gives what the run's minimal attacks found, to check against). Samples
the model already gets wrong score 0 (as a minimal attack returns them unchanged) and are not sampled.

Defaults (``N_BATCHES`` x ``BATCH_SIZE`` points to start, up to ``MAX_BATCHES`` batches, ``RADIUS`` in L2 input
units) come from the measurement in bench/clever.py (bench/RESULTS.md, "CLEVER convergence") on the demo's three
models (3x64x64 in [0, 1], DeepFool's median L2 0.35-0.58): at most 5% degenerate fits where ART's 10 x 5 points
in radius 5 left 42-58%, at about the old cost. A radius of 5 scores far from the image (the points are clipped
to the bounds) and gives smaller, more often degenerate estimates; a radius of 1 caps some scores. ``RADIUS``
suits L2 on images in [0, 1]: set it for other norms and ranges (scores reaching it are capped there).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from medrobust.models.wrapper import Model, as_model, attack_mode
from medrobust.types import Bounds

DUAL = {"l2": 2.0, "linf": 1.0, "l1": math.inf}
# a fitted upper end more than this many spreads (largest - smallest batch maximum) above the largest maximum is
# a fit that ran off on a flat likelihood, not an estimate
RUNAWAY = 5.0
# the defaults (CleverSpec's too), measured in bench/clever.py
N_BATCHES = 10
BATCH_SIZE = 2
MAX_BATCHES = 160
RADIUS = 2.0
# a model's median CLEVER is withheld when more than this share of its clean-correct samples has a degenerate fit
WITHHOLD = 0.2


@dataclass(frozen=True)
class CleverEstimate:
    """scores (N,): untargeted CLEVER in input units of ``norm``; per_class (N, K): the score towards each
    target class (NaN where not evaluated, and for misclassified samples); lipschitz (N, K): the estimated local
    Lipschitz constants; fit: per sample, how its limiting class's constant was obtained ("weibull",
    "constant", "max", "misclassified"); flagged (N,): the fit of at least one target class was still
    degenerate after the budget and its largest observed maximum was used; batches (N,): the batches of
    ``batch_size`` points each sample's fits rest on (0 for misclassified samples)."""

    scores: torch.Tensor
    per_class: torch.Tensor
    lipschitz: torch.Tensor
    fit: list[str]
    flagged: torch.Tensor
    batches: torch.Tensor


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


def _gradient_norms(
    model: Model, points: torch.Tensor, y: torch.Tensor, targets: torch.Tensor, q: float, chunk: int
) -> torch.Tensor:
    """||grad (z_y - z_t)||_q at every point (P, *shape) for each target rank: (P, T). ``y`` (P,) and ``targets``
    (P, T) belong to each point. One forward and T backward passes per chunk of points: the points are
    independent, so the gradient of the chunk's summed margin is each point's own gradient."""
    ranks = targets.shape[1]
    out = torch.empty((points.shape[0], ranks), dtype=points.dtype, device=points.device)
    with attack_mode(model), torch.enable_grad():
        for start in range(0, points.shape[0], chunk):
            sl = slice(start, start + chunk)
            xp = points[sl].detach().requires_grad_(True)
            z = model(xp)
            own = z.gather(1, y[sl].unsqueeze(1))
            for r in range(ranks):
                g = (own - z.gather(1, targets[sl, r : r + 1])).sum()
                (grad,) = torch.autograd.grad(g, xp, retain_graph=r < ranks - 1)
                out[sl, r] = grad.flatten(1).norm(p=q, dim=1)
    return out


def batch_maxima(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    targets: torch.Tensor,
    *,
    n_batches: int,
    batch_size: int,
    radius: float,
    norm: str,
    generator: torch.Generator,
    chunk: int = 128,
) -> torch.Tensor:
    """The largest ||grad (z_y - z_t)||_q of each of ``n_batches`` batches of ``batch_size`` points drawn
    uniformly in the ``norm`` ball of ``radius`` around each sample of ``x`` (N, C, *spatial), clipped to the
    model's bounds: (N, n_batches, T) for the target classes ``targets`` (N, T). The points of a batch are drawn
    for all samples at once, batch after batch, so the draws do not depend on ``chunk`` (points per forward
    pass); several batches share a forward pass when the samples are few."""
    n, ranks = targets.shape
    low, high = model.bounds
    q = DUAL[norm]
    out = torch.empty((n, n_batches, ranks), dtype=x.dtype, device=x.device)
    group = max(1, chunk // (n * batch_size))  # batches per forward group
    for b0 in range(0, n_batches, group):
        b1 = min(n_batches, b0 + group)
        points = torch.cat([sample_ball(x, batch_size, radius, norm, generator) for _ in range(b0, b1)], dim=1)
        per = points.shape[1]  # (b1 - b0) * batch_size points per sample, sample-major
        flat = points.clamp(low, high).reshape(n * per, *x.shape[1:])
        owner = torch.arange(n, device=x.device).repeat_interleave(per)
        norms = _gradient_norms(model, flat, y[owner], targets[owner], q, chunk)
        out[:, b0:b1] = norms.view(n, b1 - b0, batch_size, ranks).amax(dim=2)
    return out


def _check_settings(norm: str, n_batches: int, batch_size: int, max_batches: int, radius: float) -> None:
    if norm not in DUAL:
        raise ValueError(f"norm={norm!r} is not supported; expected one of {', '.join(DUAL)}")
    for name, value in (("n_batches", n_batches), ("batch_size", batch_size), ("max_batches", max_batches)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1")
    if max_batches < n_batches:
        raise ValueError(f"max_batches={max_batches} must be >= n_batches={n_batches} (the batches drawn first)")
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius={radius!r} must be a finite number > 0")


def clever_estimate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "l2",
    n_batches: int = N_BATCHES,
    batch_size: int = BATCH_SIZE,
    radius: float = RADIUS,
    max_batches: int | None = MAX_BATCHES,
    target_classes: int | None = None,
    bounds: Bounds | None = None,
    generator: torch.Generator | None = None,
    chunk: int = 128,
) -> CleverEstimate:
    """CLEVER for every sample of ``x`` (N, C, *spatial) with labels ``y`` (N,); see the module docstring.

    ``n_batches`` x ``batch_size`` points per sample to start; samples with a degenerate fit draw more batches
    (doubling) up to ``max_batches`` batches (None: ``n_batches``, a fixed budget as in ART). ``radius`` in
    input units of ``norm``; ``chunk``: points per forward pass (memory, not results)."""
    max_batches = n_batches if max_batches is None else max_batches
    _check_settings(norm, n_batches, batch_size, max_batches, radius)
    wrapped = as_model(model, bounds)
    y = torch.as_tensor(y, device=x.device).long()
    if x.dim() < 2 or y.shape != (x.shape[0],):
        raise ValueError(
            f"x of shape {tuple(x.shape)} and y of shape {tuple(y.shape)}: expected x (N, C, ...) and y (N,)"
        )
    generator = generator or torch.Generator(device=x.device).manual_seed(0)
    with attack_mode(wrapped), torch.no_grad():
        logits = wrapped(x)
    n, k = logits.shape
    others = logits.scatter(1, y.unsqueeze(1), -math.inf)
    ranks = k - 1 if target_classes is None else min(int(target_classes), k - 1)
    targets = others.topk(ranks, dim=1).indices  # (N, T), classes by descending clean logit
    margins = (logits.gather(1, y.unsqueeze(1)) - logits.gather(1, targets)).detach().cpu().double()  # (N, T)
    correct = (logits.argmax(1) == y).cpu()

    maxima = np.full((n, ranks, max_batches), math.nan)
    locs = np.full((n, ranks), math.nan)
    status = np.full((n, ranks), "misclassified", dtype=object)
    batches = np.zeros(n, dtype=np.int64)
    todo = np.flatnonzero(correct.numpy())  # misclassified samples score 0 and need no points
    have, draw = 0, n_batches
    while todo.size and draw > 0:
        idx = torch.from_numpy(todo).to(x.device)
        new = batch_maxima(
            wrapped,
            x[idx],
            y[idx],
            targets[idx],
            n_batches=draw,
            batch_size=batch_size,
            radius=radius,
            norm=norm,
            generator=generator,
            chunk=chunk,
        )
        maxima[todo, :, have : have + draw] = new.detach().cpu().double().numpy().transpose(0, 2, 1)
        have += draw
        batches[todo] = have
        fitted, how = fit_locations(maxima[todo, :, :have].reshape(todo.size * ranks, have))
        locs[todo] = fitted.reshape(todo.size, ranks)
        status[todo] = np.asarray(how, dtype=object).reshape(todo.size, ranks)
        todo = todo[(status[todo] == "max").any(axis=1)]  # only these draw again, as many batches as they have
        draw = min(have, max_batches - have)

    lip = torch.from_numpy(locs)
    # score towards each target class: margin / Lipschitz constant, at most the radius, never below 0
    toward = torch.where(lip > 0, margins / lip, torch.full_like(lip, radius)).clamp(0.0, radius)
    toward = torch.where(correct.unsqueeze(1), toward, torch.full_like(toward, math.nan))
    cols = targets.cpu()
    lipschitz = torch.full((n, k), math.nan, dtype=torch.float64).scatter_(1, cols, lip)
    per_class = torch.full((n, k), math.nan, dtype=torch.float64).scatter_(1, cols, toward)
    best, limiting = toward.nan_to_num(math.inf).min(dim=1)  # the first class reaching the smallest score
    scores = torch.where(correct, best, torch.zeros_like(best))
    fits = [str(status[i, int(limiting[i])]) for i in range(n)]
    flagged = torch.from_numpy((status == "max").any(axis=1))
    return CleverEstimate(scores, per_class, lipschitz, fits, flagged, torch.from_numpy(batches))


def clever(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "l2",
    n_batches: int = N_BATCHES,
    batch_size: int = BATCH_SIZE,
    radius: float = RADIUS,
    max_batches: int | None = MAX_BATCHES,
    target_classes: int | None = None,
    bounds: Bounds | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Untargeted CLEVER scores (N,), float64, in input units of ``norm`` ("l2", "linf" or "l1"); 0 for samples
    the model already misclassifies. An estimate of the minimal adversarial perturbation, not a certificate.

    >>> scores = clever(net, x, y, norm="l2", radius=2.0)  # doctest: +SKIP
    """
    return clever_estimate(
        model,
        x,
        y,
        norm=norm,
        n_batches=n_batches,
        batch_size=batch_size,
        radius=radius,
        max_batches=max_batches,
        target_classes=target_classes,
        bounds=bounds,
        generator=generator,
    ).scores


def attack_distances(
    records: Iterable[Mapping[str, Any]], attacks: Collection[str], norm: str = "l2"
) -> dict[str, dict[int, float]]:
    """The smallest adversarial perturbation the run's minimal-norm attacks found per sample, to check CLEVER
    against: model -> sample index -> the smallest ``norm`` size (the record's ``norm`` column, input units)
    over the records of the attack labels ``attacks`` (minimal attacks of the same norm, e.g. DeepFool, C&W)
    that succeeded (clean_pred == label and pred != label), over all their strengths. Samples no attack broke
    are absent."""
    out: dict[str, dict[int, float]] = {}
    for r in records:
        if r["perturbation"] not in attacks or r["kind"] != "attack":
            continue
        size = r.get(norm)
        if size is None or not (r["clean_pred"] == r["label"] and r["pred"] != r["label"]):
            continue
        best = out.setdefault(str(r["model"]), {})
        i = int(r["sample_index"])
        best[i] = min(float(size), best.get(i, math.inf))
    return out
