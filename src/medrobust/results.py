"""Records -> the summary every run writes (``summary.csv``, ``summary.json``): a pure function of the store.

summary.json is a stable contract: a list of objects with keys model, perturbation, strength, metric, value, n.
Clean results have perturbation "clean" and strength 0. Black-box attacks add "queries", the median number of
model queries per attacked sample. Attack sizes (l2, linf, l0, ssim, rho) are medians
(ssim: mean) over the attack's successful adversarial examples; for noise and corruptions over all samples.
"worst_case[NORM]" rows count a sample as robust at a strength only if it survives every attack of that norm at
that strength (AutoAttack's per-sample worst case); with a single norm in the run the row is "worst_case".
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from medrobust.metrics import accuracy, attack_success_rate, auc_ovr, balanced_accuracy

SUMMARY_KEYS = ("model", "perturbation", "strength", "metric", "value", "n")


def _median(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(torch.tensor(values, dtype=torch.float64).median()) if values else math.nan


def _group_rows(model: str, pert: str, strength: float, kind: str, recs: list[dict[str, Any]], num_classes: int) -> list[dict[str, Any]]:
    recs = sorted(recs, key=lambda r: r["sample_index"])
    y = torch.tensor([r["label"] for r in recs])
    pred = torch.tensor([r["pred"] for r in recs])
    clean = torch.tensor([r["clean_pred"] for r in recs])
    probs = torch.tensor([json.loads(r["probs_json"]) for r in recs], dtype=torch.float64)
    n = len(recs)
    metrics: dict[str, float] = {
        "accuracy": float(accuracy(pred, y)),
        "balanced_accuracy": float(balanced_accuracy(pred, y, num_classes)),
        "auc": float(auc_ovr(probs, y, num_classes)) if probs.numel() else math.nan,
    }
    if pert != "clean":
        metrics["success_rate"] = float(attack_success_rate(clean, pred, y))
        keep = [r for r in recs if r["clean_pred"] == r["label"] and r["pred"] != r["label"]] if kind == "attack" else recs
        for key in ("l2", "linf", "l0", "psnr", "rho"):
            metrics[key] = _median([r[key] for r in keep])
        ssims = [r["ssim"] for r in keep if r["ssim"] is not None]
        metrics["ssim"] = float(sum(ssims) / len(ssims)) if ssims else math.nan
        # black-box attacks (square) store the model queries each sample used
        queries = [d["queries"] for r in recs if r.get("detail_json") and (d := json.loads(r["detail_json"])).get("queries") is not None]
        if queries:
            metrics["queries"] = _median(queries)
    return [
        {"model": model, "perturbation": pert, "strength": float(strength), "metric": m, "value": v, "n": n}
        for m, v in metrics.items()
    ]


def _score(r: dict[str, Any]) -> float:
    """Per-sample score: stored Dice or correctness; records written before the score column get correctness."""
    if r.get("score") is not None:
        return float(r["score"])
    return float(r["pred"] == r["label"])


def _nanmean(values: list[float | None]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(sum(values) / len(values)) if values else math.nan


def _segmentation_rows(
    model: str, pert: str, strength: float, recs: list[dict[str, Any]], structures: list[str],
    clean: dict[int, dict[str, Any]],
) -> list[dict[str, Any]]:
    """Dice (mean foreground), per-structure Dice and HD95, flip rate and Dice drop (overall and per structure),
    sizes, over all samples. ``clean``: sample index -> that sample's clean record."""
    recs = sorted(recs, key=lambda r: r["sample_index"])
    details = [json.loads(r["detail_json"]) for r in recs]
    nan = math.nan
    metrics: dict[str, float] = {"dice": _nanmean([r["score"] for r in recs])}
    for j, name in enumerate(structures):
        metrics[f"dice:{name}"] = _nanmean([d["dice"][j] for d in details])
        metrics[f"hd95:{name}"] = _median([v for d in details if (v := d["hd95"][j]) is not None])
    if pert != "clean":
        metrics["flip_rate"] = _nanmean([d["flip"] for d in details])
        if any("target_iou" in d for d in details):
            metrics["target_iou"] = _nanmean([d.get("target_iou") for d in details])
        base = [clean.get(r["sample_index"]) for r in recs]
        metrics["dice_drop"] = _nanmean([c["score"] - r["score"] if c else nan for c, r in zip(base, recs)])
        base_details = [json.loads(c["detail_json"]) if c else None for c in base]
        for j, name in enumerate(structures):
            if all("flip_s" in d for d in details):  # absent from records of older versions
                metrics[f"flip_rate:{name}"] = _nanmean([d["flip_s"][j] for d in details])
            metrics[f"dice_drop:{name}"] = _nanmean([
                cd["dice"][j] - d["dice"][j] if cd and cd["dice"][j] is not None and d["dice"][j] is not None else nan
                for cd, d in zip(base_details, details)
            ])
        for key in ("l2", "linf", "l0", "psnr", "rho"):
            metrics[key] = _median([r[key] for r in recs])
        metrics["ssim"] = _nanmean([r["ssim"] for r in recs])
    return [
        {"model": model, "perturbation": pert, "strength": float(strength), "metric": m, "value": v, "n": len(recs)}
        for m, v in metrics.items()
    ]


def summarise(
    records: list[dict[str, Any]],
    norms: dict[str, str],
    num_classes: dict[str, int],
    class_names: dict[str, list[str]] | None = None,
    tasks: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Summary rows from store records. ``norms``: attack label -> threat norm; ``num_classes``,
    ``class_names`` and ``tasks`` ("classification" or "segmentation"): per model."""
    tasks = tasks or {}
    class_names = class_names or {}
    groups: dict[tuple[str, str, float, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["model"], r["perturbation"], float(r["strength"]), r["kind"])].append(r)
    clean_records = {
        model: {r["sample_index"]: r for r in recs}
        for (model, pert, _, _), recs in groups.items()
        if pert == "clean"
    }

    def rows_for(model: str, pert: str, strength: float, kind: str, recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if tasks.get(model) == "segmentation":
            names = class_names.get(model) or [f"class{k}" for k in range(num_classes[model])]
            return _segmentation_rows(model, pert, strength, recs, names[1:], clean_records.get(model, {}))
        return _group_rows(model, pert, strength, kind, recs, num_classes[model])

    rows: list[dict[str, Any]] = []
    for (model, pert, strength, kind), recs in sorted(groups.items()):
        rows += rows_for(model, pert, strength, kind, recs)
    # Per-sample worst case over all attacks of the same norm at the same strength.
    norm_groups = sorted({norms[p] for (_, p, _, k) in groups if k == "attack" and p in norms})
    for norm in norm_groups:
        label = "worst_case" if len(norm_groups) == 1 else f"worst_case[{norm}]"
        by_ms: dict[tuple[str, float], dict[int, dict[str, Any]]] = defaultdict(dict)
        for (model, pert, strength, kind), recs in groups.items():
            if kind != "attack" or norms.get(pert) != norm:
                continue
            worst = by_ms[(model, strength)]
            for r in recs:
                cur = worst.get(r["sample_index"])
                # the lower score is the worse outcome (0/1 correctness, or Dice)
                if cur is None or _score(r) < _score(cur):
                    worst[r["sample_index"]] = {**r, "perturbation": label}
        for (model, strength), worst in sorted(by_ms.items()):
            rows += rows_for(model, label, strength, "attack", list(worst.values()))
    return rows


def clean_json(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


def write_summary(rows: list[dict[str, Any]], run_dir: str | Path, fmt: str = "both") -> list[Path]:
    """Write summary.csv and/or summary.json (NaN/inf as empty / null) into ``run_dir``."""
    run_dir = Path(run_dir)
    written = []
    if fmt in ("both", "json"):
        path = run_dir / "summary.json"
        path.write_text(json.dumps([{k: clean_json(r[k]) for k in SUMMARY_KEYS} for r in rows], indent=1))
        written.append(path)
    if fmt in ("both", "csv"):
        path = run_dir / "summary.csv"
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=SUMMARY_KEYS)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: ("" if clean_json(r[k]) is None else r[k]) for k in SUMMARY_KEYS})
        written.append(path)
    return written
