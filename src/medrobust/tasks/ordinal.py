"""Ordinal classification: one decision per image among ordered grades (diabetic retinopathy 0-4, tumour grades).

A classification task whose summaries add the metrics graded labels are judged by: quadratic weighted kappa
(with a bootstrap interval) and the mean absolute error in grades. A dataset declares it (MedMNIST's RetinaMNIST),
or a spec sets ``dataset: {ordinal: true}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medrobust.metrics import mean_absolute_error, quadratic_kappa
from medrobust.tasks.base import Group, Metrics
from medrobust.tasks.classification import ClassificationTask


class OrdinalTask(ClassificationTask):
    name = "ordinal"
    scored_metrics = {**ClassificationTask.scored_metrics, "quadratic_kappa": True, "mae": False}

    def report_metrics(self, class_counts: Sequence[int]) -> list[str]:
        """Quadratic weighted kappa and grade error always; balanced accuracy when the grades are imbalanced."""
        return [*super().report_metrics(class_counts), "quadratic_kappa", "mae"]

    def harm(self, metric: str, data: dict[str, Any]) -> np.ndarray:
        """For kappa and grade error: the grade furthest from the true one first, then a wrong decision, then a
        lower probability of the true grade; for the other metrics as classification."""
        base = super().harm(metric, data)
        if metric in ("quadratic_kappa", "mae"):
            return 4.0 * np.asarray(data["grade_error"], dtype=np.float64) + base
        return base

    def summary(self, group: Group) -> Metrics:
        """Classification's metrics, plus ``quadratic_kappa`` and ``mae`` (grades), each with a bootstrap 95%
        interval over units."""
        metrics, intervals = super().summary(group)
        k = len(group.class_names)
        data = self.unit_data(group.records, k)
        units = group.sampling
        y, pred = torch.from_numpy(data["label"]), torch.from_numpy(data["pred"])
        metrics["quadratic_kappa"] = quadratic_kappa(pred, y, k)
        intervals["quadratic_kappa"] = self.interval("quadratic_kappa", data, units, (*group.key, "kappa"))
        metrics["mae"] = mean_absolute_error(pred, y)
        intervals["mae"] = self.interval("mae", data, units, (*group.key, "mae"))
        return metrics, intervals
