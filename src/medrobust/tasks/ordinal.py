"""Ordinal classification: one decision per image among ordered grades (diabetic retinopathy 0-4, tumour grades).

A classification task whose summaries add the metrics graded labels are judged by: quadratic weighted kappa
(with a bootstrap interval) and the mean absolute error in grades. A dataset declares it (MedMNIST's RetinaMNIST),
or a spec sets ``dataset: {ordinal: true}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from medrobust import stats
from medrobust.metrics import mean_absolute_error, quadratic_kappa
from medrobust.tasks.base import Group, Metrics
from medrobust.tasks.classification import ClassificationTask


def resampled_kappa(cell: np.ndarray, k: int, idx: np.ndarray) -> np.ndarray:
    """Quadratic weighted kappa of every bootstrap resample at once: ``cell`` (N,) is each sample's
    confusion-matrix cell (label * k + prediction), ``idx`` (B, N) the resampled indices; (B,) kappas, NaN where
    undefined. The same value as :func:`medrobust.metrics.quadratic_kappa` of each resample."""
    b = idx.shape[0]
    grid = np.arange(k, dtype=np.float64)
    weights = ((grid[:, None] - grid[None, :]) ** 2 / max(k - 1, 1) ** 2).ravel()
    offsets = (np.arange(b)[:, None] * k * k + cell[idx]).ravel()
    cm = np.bincount(offsets, minlength=b * k * k).reshape(b, k, k).astype(np.float64)
    n = cm.sum(axis=(1, 2))
    expected = (cm.sum(2)[:, :, None] * cm.sum(1)[:, None, :]).reshape(b, -1) / n[:, None]
    denominator = expected @ weights
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, 1.0 - (cm.reshape(b, -1) @ weights) / denominator, np.nan)


class OrdinalTask(ClassificationTask):
    name = "ordinal"

    def report_metrics(self, class_counts: Sequence[int]) -> list[str]:
        """Quadratic weighted kappa and grade error always; balanced accuracy when the grades are imbalanced."""
        return [*super().report_metrics(class_counts), "quadratic_kappa", "mae"]

    def summary(self, group: Group) -> Metrics:
        """Classification's metrics, plus ``quadratic_kappa`` (bootstrap 95% interval) and ``mae`` (grades)."""
        metrics, intervals = super().summary(group)
        k = len(group.class_names)
        y = torch.tensor([r["label"] for r in group.records])
        pred = torch.tensor([r["pred"] for r in group.records])
        metrics["quadratic_kappa"] = quadratic_kappa(pred, y, k)
        cell = (y * k + pred).numpy()

        def kappa(idx: np.ndarray) -> np.ndarray:
            return resampled_kappa(cell, k, idx)

        intervals["quadratic_kappa"] = stats.bootstrap(kappa, len(cell), key=(*group.key, "kappa"))
        metrics["mae"] = mean_absolute_error(pred, y)
        return metrics, intervals
