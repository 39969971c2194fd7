"""Segmentation: one decision unit per pixel or voxel; class 0 is background."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from medrobust import resampling, stats
from medrobust.metrics import (
    class_counts,
    flip_rate,
    flip_rate_per_structure,
    foreground_dice,
    hd95,
    per_structure_dice,
    target_iou,
)
from medrobust.tasks.base import Group, Metrics, Outcome, Task


class SegmentationTask(Task):
    name = "segmentation"
    family = "segmentation"
    metric = "dice"
    metric_title = "Dice"
    dense = True
    units_title = "share of foreground units still correct"
    select_metrics = ("dice", "pixel_accuracy")
    scored_metrics = {"dice": True}

    def __init__(self, success_fraction: float = 0.5) -> None:
        if not 0.0 < success_fraction <= 1.0:
            raise ValueError(f"success_fraction={success_fraction!r} must be in (0, 1]")
        self.success_fraction = success_fraction

    def score(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean foreground Dice per sample (:func:`medrobust.metrics.foreground_dice`: structures absent from
        both masks are left out)."""
        return foreground_dice(self.predict(logits), y, logits.shape[1]).to(logits.dtype)

    def is_adversarial(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Successful once at least ``success_fraction`` of the foreground units are mislabelled."""
        fg = (y > 0).flatten(1)
        wrong = (~self.correct(logits, y)).flatten(1) & fg
        n_fg = fg.sum(1)
        return (n_fg > 0) & (wrong.sum(1) >= self.success_fraction * n_fg)

    def training_loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Dice + cross-entropy over the foreground structures (MONAI's DiceCELoss)."""
        from monai.losses import DiceCELoss

        dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)

        def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return dice_ce(logits, y.unsqueeze(1))

        return loss

    def model_scores(self, logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, float]:
        pred = self.predict(logits)
        return {
            "dice": float(foreground_dice(pred, y, num_classes).float().mean()),
            "pixel_accuracy": float((pred == y).float().mean()),
        }

    def outcomes(
        self, logits: torch.Tensor, y: torch.Tensor, clean_pred: torch.Tensor, target: torch.Tensor | None = None
    ) -> list[Outcome]:
        """Score: mean foreground Dice; details: per-structure Dice and HD95, the share of foreground units
        whose label changed (overall and per structure), units per class in the labels and the prediction, and
        IoU with a targeted attack's label map."""
        pred = self.predict(logits)
        k = logits.shape[1]
        details = {
            "dice": per_structure_dice(pred, y, k).tolist(),
            "hd95": hd95(pred, y, k).tolist(),
            "flip": flip_rate(clean_pred, pred, y).tolist(),
            "flip_s": flip_rate_per_structure(clean_pred, pred, y, k).tolist(),
            # units (pixels, voxels) per class, background first, in the labels and in the prediction: how much
            # of the data a structure is, and whether the model labels far more or less of it than the labels hold
            "true_n": class_counts(y, k).tolist(),
            "pred_n": class_counts(pred, k).tolist(),
        }
        if target is not None:
            details["target_iou"] = target_iou(pred, target).tolist()
        score = foreground_dice(pred, y, k).float().tolist()
        return [Outcome(-1, -1, -1, [], score[i], {key: v[i] for key, v in details.items()}) for i in range(y.shape[0])]

    def summary(self, group: Group) -> Metrics:
        """Dice (mean foreground), per-structure Dice and HD95; under a perturbation also the flip rate and
        the Dice drop (overall and per structure) and perturbation sizes, over all samples. Intervals are
        bootstrap intervals over units (volumes, subjects), none with too few of them."""
        recs, kind, key, units = group.records, group.kind, group.key, group.sampling
        structures = list(group.class_names)[1:]
        details = [json.loads(r["detail_json"]) for r in recs]
        nan = math.nan

        def mean_ci(values: list[Any], *tag: str) -> tuple[float, float] | None:
            data = {"v": np.asarray([nan if v is None else float(v) for v in values], dtype=np.float64)}
            return resampling.interval(lambda w: resampling.mean("v")(data, w), units, key=(*key, *tag))

        scores = [r["score"] for r in recs]
        metrics: dict[str, float] = {"dice": stats.mean(scores)}
        intervals: dict[str, tuple[float, float] | None] = {"dice": mean_ci(scores, "dice")}
        for j, name in enumerate(structures):
            metrics[f"dice:{name}"] = stats.mean([d["dice"][j] for d in details])
            intervals[f"dice:{name}"] = mean_ci([d["dice"][j] for d in details], "dice", name)
            metrics[f"hd95:{name}"] = stats.median([v for d in details if (v := d["hd95"][j]) is not None])
        if kind == "clean":
            return metrics, intervals
        metrics["flip_rate"] = stats.mean([d["flip"] for d in details])
        intervals["flip_rate"] = mean_ci([d["flip"] for d in details], "flip")
        if any("target_iou" in d for d in details):
            metrics["target_iou"] = stats.mean([d.get("target_iou") for d in details])
        base = [group.clean.get(r["sample_index"]) for r in recs]
        drops = [c["score"] - r["score"] if c else nan for c, r in zip(base, recs)]
        metrics["dice_drop"] = stats.mean(drops)
        intervals["dice_drop"] = mean_ci(drops, "drop")
        base_details = [json.loads(c["detail_json"]) if c else None for c in base]
        for j, name in enumerate(structures):
            metrics[f"flip_rate:{name}"] = stats.mean([d["flip_s"][j] for d in details])
            metrics[f"dice_drop:{name}"] = stats.mean(
                [
                    cd["dice"][j] - d["dice"][j]
                    if cd and cd["dice"][j] is not None and d["dice"][j] is not None
                    else nan
                    for cd, d in zip(base_details, details)
                ]
            )
        for size in ("l2", "linf", "l0", "psnr", "rho"):
            metrics[size] = stats.median([r[size] for r in recs])
        metrics["ssim"] = stats.mean([r["ssim"] for r in recs])
        return metrics, intervals

    def statistic(self, metric: str) -> resampling.Statistic:
        if metric == "dice":
            return resampling.mean("score")
        return super().statistic(metric)

    def paired_test_kind(self, metric: str, quantity: str) -> str:
        return "wilcoxon"

    def paired_test(self, a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
        """Wilcoxon signed-rank on per-sample Dice."""
        return {"test": "wilcoxon", "p": stats.wilcoxon(a, b), "only_a": None, "only_b": None, "samples_needed": None}
