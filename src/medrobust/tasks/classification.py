"""Classification: one decision unit per image."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medrobust import resampling, stats
from medrobust.metrics import accuracy, attack_success_rate, auc_ovr, balanced_accuracy
from medrobust.tasks.base import Group, Metrics, Outcome, Task

# perturbation sizes in summaries: medians (ssim: mean) over the attack's successful adversarial examples
SIZE_KEYS = ("l2", "linf", "l0", "psnr", "rho")


def successful(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records of successful adversarial examples: correct on the clean input, wrong on the perturbed one."""
    return [r for r in recs if r["clean_pred"] == r["label"] and r["pred"] != r["label"]]


class ClassificationTask(Task):
    name = "classification"
    family = "classification"
    metric = "accuracy"
    metric_title = "accuracy"
    dense = False
    units_title = "accuracy"
    select_metrics = ("balanced_accuracy", "accuracy", "auc")
    scored_metrics = {"accuracy": True, "balanced_accuracy": True, "auc": True}

    def score(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.correct(logits, y).to(logits.dtype)

    def is_adversarial(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ~self.correct(logits, y)

    def report_metrics(self, class_counts: Sequence[int]) -> list[str]:
        """Balanced accuracy when the classes are imbalanced (the largest at least 1.5 times the smallest present
        class): there accuracy hides a class the model never predicts."""
        present = [c for c in class_counts if c > 0]
        return ["balanced_accuracy"] if present and max(present) >= 1.5 * min(present) else []

    def training_loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return F.cross_entropy

    def model_scores(self, logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, float]:
        pred = self.predict(logits)
        return {
            "accuracy": float(accuracy(pred, y)),
            "balanced_accuracy": float(balanced_accuracy(pred, y, num_classes)),
            "auc": float(auc_ovr(logits.softmax(1), y, num_classes)),
        }

    def outcomes(
        self, logits: torch.Tensor, y: torch.Tensor, clean_pred: torch.Tensor, target: torch.Tensor | None = None
    ) -> list[Outcome]:
        pred = self.predict(logits)
        probs = logits.softmax(1).double().tolist()
        score = (pred == y).double().tolist()
        labels, clean, preds = y.tolist(), clean_pred.tolist(), pred.tolist()
        return [
            Outcome(int(labels[i]), int(clean[i]), int(preds[i]), [round(v, 7) for v in probs[i]], score[i])
            for i in range(len(labels))
        ]

    def unit_data(self, records: Sequence[dict[str, Any]], num_classes: int) -> dict[str, Any]:
        """label, pred (n,), probs (n, K), score (0/1), p_true (the true class's probability) and grade_error
        (|pred - label|, in classes) of each record."""
        label = np.asarray([r["label"] for r in records], dtype=np.int64)
        pred = np.asarray([r["pred"] for r in records], dtype=np.int64)
        probs = np.asarray([json.loads(r["probs_json"]) for r in records], dtype=np.float64)
        if probs.shape != (len(records), num_classes):  # records without probabilities (an older store)
            probs = np.full((len(records), num_classes), np.nan)
        return {
            "label": label,
            "pred": pred,
            "probs": probs,
            "score": (pred == label).astype(np.float64),
            "p_true": probs[np.arange(len(records)), label] if len(records) else np.zeros(0),
            "grade_error": np.abs(pred - label).astype(np.float64),
            "k": num_classes,
        }

    def statistic(self, metric: str) -> resampling.Statistic:
        named = {
            "accuracy": resampling.mean("score"),
            "balanced_accuracy": resampling.balanced_accuracy,
            "auc": resampling.auc,
            "quadratic_kappa": resampling.quadratic_kappa,
            "mae": resampling.mean("grade_error"),
        }
        if metric not in self.scored_metrics:
            return super().statistic(metric)
        return named[metric]

    def harm(self, metric: str, data: dict[str, Any]) -> np.ndarray:
        """A wrong decision first, then a lower probability of the true class (the most confidently wrong)."""
        p_true = np.nan_to_num(np.asarray(data["p_true"], dtype=np.float64), nan=0.5)
        return 2.0 * (1.0 - data["score"]) + (1.0 - p_true)

    def paired_test_kind(self, metric: str, quantity: str) -> str:
        return "mcnemar" if metric == "accuracy" and quantity == "value" else "permutation"

    def summary(self, group: Group) -> Metrics:
        """Accuracy (Wilson interval; a cluster bootstrap where samples share units), balanced accuracy and
        one-vs-rest AUC (bootstrap intervals over units); under a perturbation also the attack success rate over
        the clean-correct samples, perturbation sizes and, for black-box attacks, the median number of
        queries."""
        recs, kind, key, units = group.records, group.kind, group.key, group.sampling
        num_classes = len(group.class_names)
        data = self.unit_data(recs, num_classes)
        y, pred = torch.from_numpy(data["label"]), torch.from_numpy(data["pred"])
        clean_pred = torch.tensor([r["clean_pred"] for r in recs])
        probs = torch.from_numpy(data["probs"])
        has_probs = bool(probs.numel()) and bool(torch.isfinite(probs).all())  # stores without them: no AUC
        correct = pred == y
        metrics: dict[str, float] = {
            "accuracy": float(accuracy(pred, y)),
            "balanced_accuracy": float(balanced_accuracy(pred, y, num_classes)),
            "auc": float(auc_ovr(probs, y, num_classes)) if has_probs else float("nan"),
        }
        intervals: dict[str, tuple[float, float] | None] = {
            "accuracy": stats.wilson(int(correct.sum()), len(recs))
            if not units.grouped
            else self.interval("accuracy", data, units, (*key, "acc")),
            "balanced_accuracy": self.interval("balanced_accuracy", data, units, (*key, "bacc")),
            "auc": self.interval("auc", data, units, (*key, "auc")) if has_probs else None,
        }
        for metric, value in metrics.items():  # undefined (one class only, or no AUC): no interval either
            if math.isnan(value):
                intervals[metric] = None
        if kind == "clean":
            return metrics, intervals
        metrics["success_rate"] = float(attack_success_rate(clean_pred, pred, y))
        eligible = clean_pred == y
        if units.grouped:
            keep = eligible.numpy()
            wrong = {"score": (~correct).numpy()[keep].astype(np.float64)}
            intervals["success_rate"] = resampling.interval(
                lambda w: resampling.mean("score")(wrong, w), units.subset(keep), key=(*key, "success")
            )
        else:
            intervals["success_rate"] = stats.wilson(int((eligible & ~correct).sum()), int(eligible.sum()))
        keep_recs = successful(recs) if kind == "attack" else recs
        for size in SIZE_KEYS:
            metrics[size] = stats.median([r[size] for r in keep_recs])
        ssims = [r["ssim"] for r in keep_recs if r["ssim"] is not None]
        metrics["ssim"] = float(sum(ssims) / len(ssims)) if ssims else float("nan")
        # black-box attacks (square) store the model queries each sample used
        queries = [
            d["queries"]
            for r in recs
            if r.get("detail_json") and (d := json.loads(r["detail_json"])).get("queries") is not None
        ]
        if queries:
            metrics["queries"] = stats.median(queries)
        return metrics, intervals

    def paired_test(self, a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
        """Exact McNemar on per-sample correctness, with the samples a test at 0.05 and power 0.8 would need
        for the observed discordance."""
        only_a, only_b, p = stats.mcnemar([v > 0.5 for v in a], [v > 0.5 for v in b])
        return {
            "test": "mcnemar-exact",
            "p": p,
            "only_a": only_a,
            "only_b": only_b,
            "samples_needed": stats.mcnemar_samples(only_a, only_b, len(a)),
        }
