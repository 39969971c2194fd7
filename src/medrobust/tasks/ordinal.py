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
        yn, pn = y.numpy(), pred.numpy()

        def kappa(idx: np.ndarray) -> np.ndarray:
            return np.asarray([quadratic_kappa(torch.from_numpy(pn[i]), torch.from_numpy(yn[i]), k) for i in idx])

        intervals["quadratic_kappa"] = stats.bootstrap(kappa, len(yn), key=(*group.key, "kappa"), resamples=200)
        metrics["mae"] = mean_absolute_error(pred, y)
        return metrics, intervals
