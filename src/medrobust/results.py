"""Records -> the summary every run writes (``summary.csv``, ``summary.json``): a pure function of the store.

summary.json is a stable contract: a list of objects with keys model, perturbation, strength, metric, value, n,
ci_low, ci_high. ``ci_low``/``ci_high`` bound a 95% interval of every accuracy-type value (``medrobust.stats``):
Wilson for proportions (accuracy, success_rate over the clean-correct samples), a percentile bootstrap over
samples (1,000 resamples, seeded by the row) for balanced_accuracy, auc and per-sample means (dice, flip_rate,
dice_drop); null for sizes and counts.
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medrobust import stats
from medrobust.metrics import accuracy, attack_success_rate, auc_ovr, balanced_accuracy

SUMMARY_KEYS = ("model", "perturbation", "strength", "metric", "value", "n", "ci_low", "ci_high")


def _median(values: Sequence[float | None]) -> float:
    kept = [float(v) for v in values if v is not None and not math.isnan(v)]
    return float(torch.tensor(kept, dtype=torch.float64).median()) if kept else math.nan


def _group_rows(
    model: str, pert: str, strength: float, kind: str, recs: list[dict[str, Any]], num_classes: int
) -> list[dict[str, Any]]:
    recs = sorted(recs, key=lambda r: r["sample_index"])
    y = torch.tensor([r["label"] for r in recs])
    pred = torch.tensor([r["pred"] for r in recs])
    clean = torch.tensor([r["clean_pred"] for r in recs])
    probs = torch.tensor([json.loads(r["probs_json"]) for r in recs], dtype=torch.float64)
    n = len(recs)
    row_key = (model, pert, float(strength))
    correct = pred == y
    metrics: dict[str, float] = {
        "accuracy": float(accuracy(pred, y)),
        "balanced_accuracy": float(balanced_accuracy(pred, y, num_classes)),
        "auc": float(auc_ovr(probs, y, num_classes)) if probs.numel() else math.nan,
    }
    intervals = {
        "accuracy": stats.wilson(int(correct.sum()), n),
        "balanced_accuracy": stats.balanced_accuracy_interval(
            pred.numpy(), y.numpy(), num_classes, key=(*row_key, "bacc")
        ),
        "auc": stats.auc_interval(probs.numpy(), y.numpy(), num_classes, key=(*row_key, "auc"))
        if probs.numel()
        else None,
    }
    if pert != "clean":
        metrics["success_rate"] = float(attack_success_rate(clean, pred, y))
        eligible = clean == y
        intervals["success_rate"] = stats.wilson(int((eligible & ~correct).sum()), int(eligible.sum()))
        keep = (
            [r for r in recs if r["clean_pred"] == r["label"] and r["pred"] != r["label"]] if kind == "attack" else recs
        )
        for key in ("l2", "linf", "l0", "psnr", "rho"):
            metrics[key] = _median([r[key] for r in keep])
        ssims = [r["ssim"] for r in keep if r["ssim"] is not None]
        metrics["ssim"] = float(sum(ssims) / len(ssims)) if ssims else math.nan
        # black-box attacks (square) store the model queries each sample used
        queries = [
            d["queries"]
            for r in recs
            if r.get("detail_json") and (d := json.loads(r["detail_json"])).get("queries") is not None
        ]
        if queries:
            metrics["queries"] = _median(queries)
    return _rows(model, pert, strength, metrics, intervals, n)


def _rows(
    model: str,
    pert: str,
    strength: float,
    metrics: dict[str, float],
    intervals: dict[str, tuple[float, float] | None],
    n: int,
) -> list[dict[str, Any]]:
    out = []
    for m, v in metrics.items():
        lo, hi = intervals.get(m) or (None, None)
        out.append(
            {
                "model": model,
                "perturbation": pert,
                "strength": float(strength),
                "metric": m,
                "value": v,
                "n": n,
                "ci_low": lo,
                "ci_high": hi,
            }
        )
    return out


def sample_score(r: dict[str, Any]) -> float:
    """Per-sample score: stored Dice or correctness; records written before the score column get correctness."""
    if r.get("score") is not None:
        return float(r["score"])
    return float(r["pred"] == r["label"])


def _nanmean(values: Sequence[float | None]) -> float:
    kept = [float(v) for v in values if v is not None and not math.isnan(v)]
    return float(sum(kept) / len(kept)) if kept else math.nan


def _segmentation_rows(
    model: str,
    pert: str,
    strength: float,
    recs: list[dict[str, Any]],
    structures: list[str],
    clean: dict[int, dict[str, Any]],
) -> list[dict[str, Any]]:
    """Dice (mean foreground), per-structure Dice and HD95, flip rate and Dice drop (overall and per structure),
    sizes, over all samples. ``clean``: sample index -> that sample's clean record."""
    recs = sorted(recs, key=lambda r: r["sample_index"])
    details = [json.loads(r["detail_json"]) for r in recs]
    nan = math.nan
    row_key = (model, pert, float(strength))
    metrics: dict[str, float] = {"dice": _nanmean([r["score"] for r in recs])}
    intervals: dict[str, tuple[float, float] | None] = {
        "dice": stats.mean_interval([r["score"] for r in recs], key=(*row_key, "dice"))
    }
    for j, name in enumerate(structures):
        metrics[f"dice:{name}"] = _nanmean([d["dice"][j] for d in details])
        intervals[f"dice:{name}"] = stats.mean_interval([d["dice"][j] for d in details], key=(*row_key, "dice", name))
        metrics[f"hd95:{name}"] = _median([v for d in details if (v := d["hd95"][j]) is not None])
    if pert != "clean":
        metrics["flip_rate"] = _nanmean([d["flip"] for d in details])
        intervals["flip_rate"] = stats.mean_interval([d["flip"] for d in details], key=(*row_key, "flip"))
        if any("target_iou" in d for d in details):
            metrics["target_iou"] = _nanmean([d.get("target_iou") for d in details])
        base = [clean.get(r["sample_index"]) for r in recs]
        drops = [c["score"] - r["score"] if c else nan for c, r in zip(base, recs)]
        metrics["dice_drop"] = _nanmean(drops)
        intervals["dice_drop"] = stats.mean_interval(drops, key=(*row_key, "drop"))
        base_details = [json.loads(c["detail_json"]) if c else None for c in base]
        for j, name in enumerate(structures):
            if all("flip_s" in d for d in details):  # absent from records of older versions
                metrics[f"flip_rate:{name}"] = _nanmean([d["flip_s"][j] for d in details])
            metrics[f"dice_drop:{name}"] = _nanmean(
                [
                    cd["dice"][j] - d["dice"][j]
                    if cd and cd["dice"][j] is not None and d["dice"][j] is not None
                    else nan
                    for cd, d in zip(base_details, details)
                ]
            )
        for key in ("l2", "linf", "l0", "psnr", "rho"):
            metrics[key] = _median([r[key] for r in recs])
        metrics["ssim"] = _nanmean([r["ssim"] for r in recs])
    return _rows(model, pert, strength, metrics, intervals, len(recs))


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
    groups = group_records(records)
    clean_records = {
        model: {r["sample_index"]: r for r in recs} for (model, pert, _, _), recs in groups.items() if pert == "clean"
    }

    def rows_for(model: str, pert: str, strength: float, kind: str, recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if tasks.get(model) == "segmentation":
            names = class_names.get(model) or [f"class{k}" for k in range(num_classes[model])]
            return _segmentation_rows(model, pert, strength, recs, names[1:], clean_records.get(model, {}))
        return _group_rows(model, pert, strength, kind, recs, num_classes[model])

    rows: list[dict[str, Any]] = []
    for (model, pert, strength, kind), recs in sorted(groups.items()):
        rows += rows_for(model, pert, strength, kind, recs)
    for (label, model, strength), worst in sorted(worst_cases(groups, norms).items()):
        rows += rows_for(model, label, strength, "attack", list(worst.values()))
    return rows


def clever_rows(model: str, label: str, scores: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Summary rows of a model's CLEVER scores (``label`` e.g. "clever[l2]", strength 0): ``clever``, the
    median over the clean-correct samples with a bootstrap 95% interval of the median, and ``clever_flagged``,
    the fraction of those whose fit was degenerate."""
    kept = [s for s in scores if s["fit"] != "misclassified"]
    values = np.asarray([s["score"] for s in kept], dtype=np.float64)
    median = float(np.median(values)) if values.size else math.nan
    lo, hi = stats.bootstrap(lambda idx: np.median(values[idx], axis=1), values.size, key=("clever", model, label))
    flagged = float(np.mean([bool(s["flagged"]) for s in kept])) if kept else math.nan
    return _rows(
        model,
        label,
        0.0,
        {"clever": median, "clever_flagged": flagged},
        {
            "clever": (lo, hi),
            "clever_flagged": stats.wilson(int(round(flagged * len(kept))), len(kept)) if kept else None,
        },
        len(kept),
    )


def group_records(records: list[dict[str, Any]]) -> dict[tuple[str, str, float, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str, float, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["model"], r["perturbation"], float(r["strength"]), r["kind"])].append(r)
    return groups


def worst_label(norm: str, norms: list[str]) -> str:
    """The summary's name for the per-sample worst case over the attacks of ``norm`` among the run's ``norms``:
    "worst_case" when the run has one norm, else "worst_case[NORM]"."""
    return "worst_case" if len(norms) == 1 else f"worst_case[{norm}]"


def worst_cases(
    groups: dict[tuple[str, str, float, str], list[dict[str, Any]]], norms: dict[str, str]
) -> dict[tuple[str, str, float], dict[int, dict[str, Any]]]:
    """Per-sample worst case over all attacks of the same norm at the same strength:
    (label, model, strength) -> sample index -> the record with the lowest score, relabelled."""
    out: dict[tuple[str, str, float], dict[int, dict[str, Any]]] = defaultdict(dict)
    norm_groups = sorted({norms[p] for (_, p, _, k) in groups if k == "attack" and p in norms})
    for norm in norm_groups:
        label = worst_label(norm, norm_groups)
        for (model, pert, strength, kind), recs in groups.items():
            if kind != "attack" or norms.get(pert) != norm:
                continue
            worst = out[(label, model, strength)]
            for r in recs:
                cur = worst.get(r["sample_index"])
                # the lower score is the worse outcome (0/1 correctness, or Dice)
                if cur is None or sample_score(r) < sample_score(cur):
                    worst[r["sample_index"]] = {**r, "perturbation": label}
    return out


COMPARISON_KEYS = (
    "model_a",
    "model_b",
    "perturbation",
    "strength",
    "metric",
    "n",
    "value_a",
    "value_b",
    "difference",
    "ci_low",
    "ci_high",
    "test",
    "only_a",
    "only_b",
    "p",
    "p_adjusted",
    "samples_needed",
)


def compare_models(
    records: list[dict[str, Any]], norms: dict[str, str], tasks: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Paired tests between every two models on the samples both were scored on, for clean data and every
    worst case at every strength. Classification: exact McNemar on per-sample correctness (metric accuracy);
    segmentation: Wilcoxon signed-rank on per-sample Dice. ``difference`` = value_a - value_b with a bootstrap
    95% interval over samples; ``p_adjusted``: Holm over the model pairs of one (perturbation, strength);
    ``samples_needed``: for McNemar, the samples a test at 0.05 with power 0.8 would need for the observed
    discordance (None when the models disagree symmetrically)."""
    tasks = tasks or {}
    groups = group_records(records)
    scored: dict[tuple[str, float], dict[str, dict[int, float]]] = defaultdict(dict)
    for (model, pert, strength, _), recs in groups.items():
        if pert == "clean":
            scored[(pert, strength)][model] = {r["sample_index"]: sample_score(r) for r in recs}
    for (label, model, strength), worst in worst_cases(groups, norms).items():
        scored[(label, strength)][model] = {i: sample_score(r) for i, r in worst.items()}
    rows: list[dict[str, Any]] = []
    for (pert, strength), by_model in sorted(scored.items()):
        family: list[dict[str, Any]] = []
        models = sorted(by_model)
        for i, a in enumerate(models):
            for b in models[i + 1 :]:
                common = sorted(set(by_model[a]) & set(by_model[b]))
                if not common:
                    continue
                sa = [by_model[a][k] for k in common]
                sb = [by_model[b][k] for k in common]
                segmentation = tasks.get(a) == "segmentation" or tasks.get(b) == "segmentation"
                lo, hi = stats.paired_difference_interval(sa, sb, key=("compare", a, b, pert, strength))
                row = {
                    "model_a": a,
                    "model_b": b,
                    "perturbation": pert,
                    "strength": float(strength),
                    "metric": "dice" if segmentation else "accuracy",
                    "n": len(common),
                    "value_a": _nanmean(sa),
                    "value_b": _nanmean(sb),
                    "difference": _nanmean(sa) - _nanmean(sb),
                    "ci_low": lo,
                    "ci_high": hi,
                    "only_a": None,
                    "only_b": None,
                    "samples_needed": None,
                }
                if segmentation:
                    row.update(test="wilcoxon", p=stats.wilcoxon(sa, sb))
                else:
                    only_a, only_b, p = stats.mcnemar([v > 0.5 for v in sa], [v > 0.5 for v in sb])
                    row.update(
                        test="mcnemar-exact",
                        p=p,
                        only_a=only_a,
                        only_b=only_b,
                        samples_needed=stats.mcnemar_samples(only_a, only_b, len(common)),
                    )
                family.append(row)
        for row, adjusted in zip(family, stats.holm([float(r["p"]) for r in family])):
            row["p_adjusted"] = adjusted
        rows += family
    return rows


def write_comparisons(rows: list[dict[str, Any]], run_dir: str | Path) -> list[Path]:
    """Write comparisons.json and comparisons.csv (the paired tests of :func:`compare_models`)."""
    run_dir = Path(run_dir)
    json_path, csv_path = run_dir / "comparisons.json", run_dir / "comparisons.csv"
    json_path.write_text(json.dumps([{k: clean_json(r.get(k)) for k in COMPARISON_KEYS} for r in rows], indent=1))
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COMPARISON_KEYS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if clean_json(r.get(k)) is None else r.get(k)) for k in COMPARISON_KEYS})
    return [json_path, csv_path]


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
