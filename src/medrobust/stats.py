"""Intervals and paired tests for the summary: pure functions of per-sample values, deterministic.

- ``wilson``: the Wilson score interval of a proportion k / n (accuracy, attack success rate); it keeps its
  nominal coverage near 0 and 1, where robust accuracies live, unlike the Wald interval.
- ``bootstrap``: a percentile bootstrap over samples (resampled indices) for a statistic such as a median, with a
  generator seeded from the caller's key, so a summary is the same bytes every time it is computed. Intervals of
  the task metrics (balanced accuracy, AUC, kappa, mean Dice) resample independent units: ``medrobust.resampling``.
- ``mcnemar``: the exact McNemar test for two models scored on the same samples (a two-sided binomial test on
  the discordant pairs); ``wilcoxon``: the Wilcoxon signed-rank test on paired per-sample scores (Dice);
  ``holm``: Holm's step-down adjustment of a family of p-values.
- ``mcnemar_samples``: how many samples a McNemar test needs to detect the observed difference (Connor 1987).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP = 1000


def _z(confidence: float) -> float:
    from scipy import stats as sps  # scipy on first use: `import medrobust` stays light

    return float(sps.norm.ppf(0.5 + confidence / 2))


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of the proportion ``k / n``; (nan, nan) without samples."""
    if n <= 0:
        return math.nan, math.nan
    if not 0 <= k <= n:
        raise ValueError(f"k={k} successes must be within 0..n={n}")
    z = _z(confidence)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # at k = 0 (k = n) the bound is exactly 0 (1); the formula leaves rounding error there
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def _kept(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(v)]


def median(values: Sequence[float | None]) -> float:
    """The median of the values that are not None or NaN (the lower middle value for an even count, as
    ``torch.median``); NaN when none is left."""
    kept = _kept(values)
    return float(np.sort(np.asarray(kept, dtype=np.float64))[(len(kept) - 1) // 2]) if kept else math.nan


def mean(values: Sequence[float | None]) -> float:
    """The mean of the values that are not None or NaN; NaN when none is left."""
    kept = _kept(values)
    return float(sum(kept) / len(kept)) if kept else math.nan


def seed_of(*key: object) -> int:
    """A stable 64-bit seed from any key (not Python's salted ``hash``)."""
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little")


def bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray],
    n: int,
    *,
    key: object,
    resamples: int = BOOTSTRAP,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap interval. ``statistic(indices)`` gets an integer array (B, n) of resampled sample
    indices and returns the B statistics (NaN where undefined, e.g. AUC of a resample with one class; those
    resamples are left out). ``key`` seeds the resampling."""
    if n <= 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed_of("bootstrap", key))
    values = np.asarray(statistic(rng.integers(0, n, size=(resamples, n))), dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < resamples // 2:
        return math.nan, math.nan
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> tuple[int, int, float]:
    """Exact McNemar test. Returns (b, c, p): b = samples only A gets right, c = only B, and the two-sided
    exact p-value, min(1, 2 * P(Binomial(b + c, 1/2) <= min(b, c)))."""
    a, b_ = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError(f"paired samples differ in number: {a.shape} vs {b_.shape}")
    only_a, only_b = int((a & ~b_).sum()), int((~a & b_).sum())
    m = only_a + only_b
    from scipy import stats as sps

    p = 1.0 if m == 0 else min(1.0, 2.0 * float(sps.binom.cdf(min(only_a, only_b), m, 0.5)))
    return only_a, only_b, p


def wilcoxon(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value for paired scores (1.0 when every pair is equal)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0 or np.all(d == 0):
        return 1.0
    from scipy import stats as sps

    return float(sps.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order."""
    p = list(pvalues)
    order = sorted(range(len(p)), key=lambda i: p[i])
    adjusted = [0.0] * len(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def mcnemar_samples(only_a: int, only_b: int, n: int, *, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Samples a two-sided McNemar test at ``alpha`` needs to detect, with ``power``, the discordance seen in
    ``n`` samples (only_a, only_b); None when the observed rates show no difference (Connor 1987)."""
    if n <= 0 or only_a == only_b:
        return None
    p10, p01 = only_a / n, only_b / n
    disc, delta = p10 + p01, abs(p10 - p01)
    from scipy import stats as sps

    za, zb = _z(1 - alpha), float(sps.norm.ppf(power))
    root = max(disc - delta * delta, 0.0)
    return math.ceil((za * math.sqrt(disc) + zb * math.sqrt(root)) ** 2 / (delta * delta))
