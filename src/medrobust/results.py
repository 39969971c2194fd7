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
from pathlib import Path
from typing import Any

import numpy as np

from medrobust import stats
from medrobust.tasks import get_task
from medrobust.tasks.base import Group

SUMMARY_KEYS = ("model", "perturbation", "strength", "metric", "value", "n", "ci_low", "ci_high")


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
    """Per-sample score: correctness (0/1) or Dice, as the model's Task scored it."""
    return float(r["score"])


def summarise(
    records: list[dict[str, Any]],
    norms: dict[str, str],
    tasks: dict[str, str],
    class_names: dict[str, list[str]],
) -> list[dict[str, Any]]:
    """Summary rows from store records. ``norms``: attack label -> threat norm; ``tasks`` (task name) and
    ``class_names``: per model. Each group's metrics come from the model's Task (:meth:`Task.summary`)."""
    groups = group_records(records)
    clean_records = {
        model: {r["sample_index"]: r for r in recs} for (model, pert, _, _), recs in groups.items() if pert == "clean"
    }

    def rows_for(model: str, pert: str, strength: float, kind: str, recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        recs = sorted(recs, key=lambda r: r["sample_index"])
        group = Group(recs, kind, class_names[model], clean_records.get(model, {}), (model, pert, float(strength)))
        metrics, intervals = get_task(tasks[model]).summary(group)
        return _rows(model, pert, strength, metrics, intervals, len(recs))

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


def compare_models(records: list[dict[str, Any]], norms: dict[str, str], tasks: dict[str, str]) -> list[dict[str, Any]]:
    """Paired tests between every two models on the samples both were scored on, for clean data and every
    worst case at every strength. Classification: exact McNemar on per-sample correctness (metric accuracy);
    segmentation: Wilcoxon signed-rank on per-sample Dice. ``difference`` = value_a - value_b with a bootstrap
    95% interval over samples; ``p_adjusted``: Holm over the model pairs of one (perturbation, strength);
    ``samples_needed``: for McNemar, the samples a test at 0.05 with power 0.8 would need for the observed
    discordance (None when the models disagree symmetrically). The test is the Task's (:meth:`Task.paired_test`),
    of model a's task."""
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
                task = get_task(tasks[a])
                lo, hi = stats.paired_difference_interval(sa, sb, key=("compare", a, b, pert, strength))
                row = {
                    "model_a": a,
                    "model_b": b,
                    "perturbation": pert,
                    "strength": float(strength),
                    "metric": task.metric,
                    "n": len(common),
                    "value_a": stats.mean(sa),
                    "value_b": stats.mean(sb),
                    "difference": stats.mean(sa) - stats.mean(sb),
                    "ci_low": lo,
                    "ci_high": hi,
                    **task.paired_test(sa, sb),
                }
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
