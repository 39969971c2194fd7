"""Resampling at the level of independent units: cluster bootstrap intervals and paired permutation tests.

A unit is what was sampled independently: a patient, a subject, a volume. Slices of one volume, patches of one
scan or images of one patient are not independent samples; intervals and tests that treat them as such are far
too narrow (pseudo-replication). Every sample carries the index of its unit (:class:`Units`); a sample whose
dataset records no group is its own unit.

- Intervals: a percentile bootstrap that draws whole units with replacement (the cluster bootstrap). A statistic
  sees the resample as per-sample weights W (B, n): how often each sample's unit was drawn. With one sample per
  unit this is the ordinary bootstrap (the same draws as resampling sample indices).
- Paired tests between two models scored on the same samples: a permutation test that swaps the two models'
  outcomes on whole units (exact over all 2^G swaps for G <= ``EXACT_UNITS`` units, else ``PERMUTATIONS``
  random swaps; p = (1 + #{|d*| >= |d|}) / (1 + P) then), two-sided, on the statistic itself (kappa, AUC,
  balanced accuracy, a mean). For a mean score over units of equal size it is the sign-flip test on the
  per-unit mean differences.
- Fewer than ``MIN_UNITS`` units: no interval and no test (no inference is possible from one or two subjects);
  callers show the numbers as descriptive only and say so.

Metric statistics (:func:`mean`, :func:`balanced_accuracy`, :func:`quadratic_kappa`, :func:`auc`) take per-sample
arrays, either shared by every resample (n, ...) or one per permutation (P, n, ...), and weights (B, n) or None
(every sample once), and return one value per resample.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medrobust.stats import BOOTSTRAP, CONFIDENCE, seed_of

MIN_UNITS = 3  # fewer independent units: descriptive numbers only
EXACT_UNITS = 11  # up to 2^11 = 2048 swap patterns are enumerated exactly
PERMUTATIONS = 2000  # random swap patterns beyond that
CHUNK_VALUES = 4_000_000  # floats per chunk of resamples (memory bound for large test sets)

Data = Mapping[str, Any]  # per-sample arrays by name, or nested Data (clean / perturbed)
Statistic = Callable[[Data, "np.ndarray | None"], np.ndarray]


@dataclass(frozen=True)
class Units:
    """The independent unit of each sample: ``index`` (n,) in 0..count-1; ``grouped`` when some unit holds more
    than one sample (slices of a volume, images of a patient)."""

    index: np.ndarray
    count: int
    grouped: bool

    @classmethod
    def of(cls, groups: Sequence[Any]) -> Units:
        """Units from one group label per sample (None: the sample is its own unit)."""
        labels = [("group", g) if g is not None else ("sample", i) for i, g in enumerate(groups)]
        codes: dict[Any, int] = {}
        index = np.fromiter((codes.setdefault(lab, len(codes)) for lab in labels), dtype=np.int64, count=len(labels))
        return cls(index, len(codes), len(codes) < len(labels))

    @classmethod
    def samples(cls, n: int) -> Units:
        return cls(np.arange(n), n, False)

    @property
    def n(self) -> int:
        return int(self.index.size)

    @property
    def inference(self) -> bool:
        """Whether intervals and tests can be computed: at least ``MIN_UNITS`` independent units."""
        return self.count >= MIN_UNITS

    def subset(self, keep: np.ndarray) -> Units:
        """The units of the samples where ``keep`` (n,) is true."""
        index = self.index[keep]
        _, codes = np.unique(index, return_inverse=True)
        count = int(codes.max()) + 1 if codes.size else 0
        return Units(codes.astype(np.int64), count, count < codes.size)


def _chunks(total: int, per_row: int) -> Iterator[int]:
    size = max(1, CHUNK_VALUES // max(per_row, 1))
    for start in range(0, total, size):
        yield min(size, total - start)


def bootstrap_weights(units: Units, key: object, resamples: int = BOOTSTRAP) -> Iterator[np.ndarray]:
    """Cluster-bootstrap weights (b, n) in chunks, ``resamples`` rows in all: each row draws ``units.count`` units
    with replacement; a sample's weight is how often its unit was drawn. Seeded by ``key``."""
    rng = np.random.default_rng(seed_of("bootstrap", key))
    for b in _chunks(resamples, max(units.n, units.count)):
        draws = rng.integers(0, units.count, size=(b, units.count))
        counts = np.zeros((b, units.count))
        np.add.at(counts, (np.arange(b)[:, None], draws), 1.0)
        yield counts[:, units.index]


def interval(
    statistic: Callable[[np.ndarray], np.ndarray], units: Units, *, key: object, confidence: float = CONFIDENCE
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``statistic(W)`` ((B, n) weights -> (B,) values) over resampled units;
    None with fewer than ``MIN_UNITS`` units or when most resamples leave the statistic undefined."""
    if not units.inference:
        return None
    values = np.concatenate([np.asarray(statistic(w), dtype=np.float64) for w in bootstrap_weights(units, key)])
    values = values[np.isfinite(values)]
    if values.size < BOOTSTRAP // 2:
        return None
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def swap_masks(units: Units, key: object) -> tuple[Iterator[np.ndarray], int, bool]:
    """Swap patterns (P, n) bool in chunks: whole units swapped between the two models. Returns (chunks, P,
    exact): every one of the 2^G patterns for G <= ``EXACT_UNITS``, else ``PERMUTATIONS`` random ones."""
    g = units.count
    if g <= EXACT_UNITS:
        total = 2**g
        patterns = np.array(list(itertools.product((False, True), repeat=g)), dtype=bool).reshape(total, g)

        def exact() -> Iterator[np.ndarray]:
            start = 0
            for b in _chunks(total, units.n):
                yield patterns[start : start + b][:, units.index]
                start += b

        return exact(), total, True
    rng = np.random.default_rng(seed_of("permutation", key))

    def sampled() -> Iterator[np.ndarray]:
        for b in _chunks(PERMUTATIONS, units.n):
            yield rng.random((b, g)) < 0.5

    return (m[:, units.index] for m in sampled()), PERMUTATIONS, False


def _swap(a: Data, b: Data, mask: np.ndarray) -> dict[str, Any]:
    """Per-permutation data: a's arrays where ``mask`` (P, n) is false, b's where true: (P, n, ...)."""
    out: dict[str, Any] = {}
    for name, va in a.items():
        vb = b[name]
        if isinstance(va, Mapping):
            out[name] = _swap(va, vb, mask)
        elif (
            isinstance(va, np.ndarray)
            and va.ndim >= 1
            and va.shape[0] == mask.shape[1]
            and not np.array_equal(va, vb, equal_nan=True)  # labels: the same for both, nothing to swap
        ):
            m = mask.reshape(mask.shape + (1,) * (va.ndim - 1))
            out[name] = np.where(m, vb[None], va[None])
        else:  # constants (class count)
            out[name] = va
    return out


def permutation_p(statistic: Statistic, a: Data, b: Data, units: Units, *, key: object) -> tuple[float, str]:
    """Two-sided p-value of statistic(a) - statistic(b) under exchanging the models' outcomes on whole units,
    and the test's name. NaN differences (statistic undefined for a pattern) count as not extreme."""
    observed = float(statistic(a, None)[0] - statistic(b, None)[0])
    chunks, total, exact = swap_masks(units, key)
    if not math.isfinite(observed):
        return math.nan, "permutation"
    extreme = 0
    tol = 1e-12 * max(1.0, abs(observed))
    for mask in chunks:
        d = statistic(_swap(a, b, mask), None) - statistic(_swap(b, a, mask), None)
        extreme += int(np.sum(np.abs(d) >= abs(observed) - tol))
    if exact:
        return min(1.0, extreme / total), f"permutation-exact ({total} swaps)"
    return min(1.0, (1 + extreme) / (1 + total)), f"permutation ({total} swaps)"


def smallest_p(units: Units) -> float:
    """The smallest two-sided p an exact swap test over these units can give: 2 / 2^G."""
    return 2.0 / 2.0**units.count if units.count < 1024 else 0.0


# --- metric statistics ------------------------------------------------------------------------------------


def _rows(values: np.ndarray, w: np.ndarray | None, per_sample_dims: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(values, weights) broadcast to a leading resample axis: values (B, n, ...), weights (B, n)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == per_sample_dims:
        v = v[None]
    if w is None:
        w = np.ones(v.shape[:2])
    if v.shape[0] == 1 and w.shape[0] > 1:
        v = np.broadcast_to(v, (w.shape[0], *v.shape[1:]))
    return v, w


def mean(name: str) -> Statistic:
    """The weighted mean of the per-sample values ``data[name]`` (score, Dice, grade error); NaN values are
    left out."""

    def stat(data: Data, w: np.ndarray | None) -> np.ndarray:
        v, w = _rows(data[name], w)
        keep = np.isfinite(v)
        w = np.where(keep, w, 0.0)
        total = w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, (np.where(keep, v, 0.0) * w).sum(axis=1) / total, np.nan)

    return stat


def balanced_accuracy(data: Data, w: np.ndarray | None) -> np.ndarray:
    """Mean recall over the classes present (weight > 0) in each resample: data pred, label (n,) or (P, n), k;
    nan where fewer than two classes are present (``medrobust.metrics.balanced_accuracy``: nothing to balance)."""
    pred, w = _rows(data["pred"], w)
    label, _ = _rows(data["label"], w)
    hit = (pred == label).astype(np.float64)
    recalls = []
    for k in range(int(data["k"])):
        member = (label == k) * w
        size = member.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(np.where(size > 0, (member * hit).sum(axis=1) / size, np.nan))
    stacked = np.stack(recalls, axis=1)
    present = np.isfinite(stacked)
    with np.errstate(invalid="ignore"):
        return np.where(
            present.sum(axis=1) >= 2, np.nansum(stacked, axis=1) / np.maximum(present.sum(axis=1), 1), np.nan
        )


def quadratic_kappa(data: Data, w: np.ndarray | None) -> np.ndarray:
    """Quadratic weighted kappa of each resample (``medrobust.metrics.quadratic_kappa`` on the weighted
    confusion matrix): data pred, label (n,) or (P, n), k."""
    k = int(data["k"])
    pred, w = _rows(data["pred"], w)
    label, _ = _rows(data["label"], w)
    b = pred.shape[0]
    cells = (label * k + pred).astype(np.int64) + (np.arange(b) * k * k)[:, None]
    cm = np.bincount(cells.ravel(), weights=w.ravel(), minlength=b * k * k).reshape(b, k, k)
    grid = np.arange(k, dtype=np.float64)
    weights = (grid[:, None] - grid[None, :]) ** 2 / max(k - 1, 1) ** 2
    n = cm.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = cm.sum(2)[:, :, None] * cm.sum(1)[:, None, :] / n[:, None, None]
        denominator = (expected * weights).sum(axis=(1, 2))
        return np.where(denominator > 0, 1.0 - (cm * weights).sum(axis=(1, 2)) / denominator, np.nan)


def _auc_classes(label: np.ndarray, k: int) -> list[int]:
    """As :func:`medrobust.metrics.auc_ovr`: class 1 for two classes, else every class with positives and
    negatives."""
    return [c for c in ([1] if k == 2 else range(k)) if 0 < int((label == c).sum()) < label.size]


def auc(data: Data, w: np.ndarray | None) -> np.ndarray:
    """Macro one-vs-rest AUC (Mann-Whitney, ties 1/2) of each resample: data probs (n, K) with weights (B, n),
    or probs (P, n, K) without weights (one score set per permutation); label (n,), k. NaN where a resample
    lacks the positives or negatives of a class."""
    probs, label, k = np.asarray(data["probs"], dtype=np.float64), np.asarray(data["label"]), int(data["k"])
    classes = _auc_classes(label, k)
    if not classes:
        rows = w.shape[0] if w is not None else (probs.shape[0] if probs.ndim == 3 else 1)
        return np.full(rows, np.nan)
    if probs.ndim == 3:  # permutations: every sample once, scores differ per row
        if w is not None:
            raise ValueError("auc: per-permutation scores take no resampling weights")
        from scipy import stats as sps  # scipy on first use: `import medrobust` stays light

        out = []
        for c in classes:
            pos = label == c
            ranks = sps.rankdata(probs[:, :, c], axis=1)
            n_pos, n_neg = int(pos.sum()), int((~pos).sum())
            out.append((ranks[:, pos].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
        return np.mean(out, axis=0)
    weights = np.ones((1, label.size)) if w is None else w
    out = []
    for c in classes:
        pos = label == c
        s_pos, s_neg = probs[pos, c], probs[~pos, c]
        heaviside = (s_pos[:, None] > s_neg[None, :]) + 0.5 * (s_pos[:, None] == s_neg[None, :])
        c_pos, c_neg = weights[:, pos], weights[:, ~pos]
        u = np.einsum("bi,ij,bj->b", c_pos, heaviside, c_neg, optimize=True)
        pairs = c_pos.sum(axis=1) * c_neg.sum(axis=1)
        out.append(np.where(pairs > 0, u / np.maximum(pairs, 1e-300), np.nan))
    stacked = np.stack(out, axis=1)
    return np.where(np.isnan(stacked).any(axis=1), np.nan, stacked.mean(axis=1))


def drop(statistic: Statistic) -> Statistic:
    """The loss of a statistic under a perturbation: statistic(data["clean"]) - statistic(data["perturbed"])."""

    def stat(data: Data, w: np.ndarray | None) -> np.ndarray:
        return statistic(data["clean"], w) - statistic(data["perturbed"], w)

    return stat
