"""Records -> the summary every run writes (``summary.csv``, ``summary.json``): a pure function of the store.

summary.json is a stable contract: a list of objects with keys model, perturbation, strength, metric, value, n,
ci_low, ci_high. ``ci_low``/``ci_high`` bound a 95% interval of every accuracy-type value (``medrobust.stats``,
``medrobust.resampling``): Wilson for proportions (accuracy, success_rate over the clean-correct samples), a
percentile bootstrap (1,000 resamples, seeded by the row) for balanced_accuracy, auc, quadratic_kappa, mae and
per-sample means (dice, flip_rate, dice_drop); null for sizes and counts. The bootstrap resamples independent
units: where records carry a ``sample_group`` (the volume of a slice, the patient of an image) whole groups are
drawn (and proportions get the cluster bootstrap instead of Wilson); with fewer than
``resampling.MIN_UNITS`` groups there is no interval (null): no inference is possible.
Clean results have perturbation "clean" and strength 0. Black-box attacks add "queries", the median number of
model queries per attacked sample. Attack sizes (l2, linf, l0, ssim, rho) are medians
(ssim: mean) over the attack's successful adversarial examples; for noise and corruptions over all samples.
"worst_case[NORM]" rows count a sample as robust at a strength only if it survives every attack of that norm at
that strength (AutoAttack's per-sample worst case); with a single norm in the run the row is "worst_case". Each
metric's worst case keeps, per sample, the outcome that hurts that metric most (:func:`worst_cases`), so it is
never better than any single attack's value.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medrobust import resampling, stats
from medrobust.files import write_csv, write_json
from medrobust.resampling import Units
from medrobust.tasks import Task, get_task
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


def units_of(recs: list[dict[str, Any]]) -> Units:
    """The independent unit of each record (its ``sample_group``: patient, volume; else the sample itself)."""
    return Units.of([r.get("sample_group") for r in recs])


def summarise(
    records: list[dict[str, Any]],
    norms: dict[str, str],
    tasks: dict[str, str],
    class_names: dict[str, list[str]],
) -> list[dict[str, Any]]:
    """Summary rows from store records. ``norms``: attack label -> threat norm; ``tasks`` (task name) and
    ``class_names``: per model. Each group's metrics come from the model's Task (:meth:`Task.summary`); the
    worst case of each metric is computed on the records chosen for that metric (:func:`worst_cases`)."""
    groups = group_records(records)
    clean_records = {
        model: {r["sample_index"]: r for r in recs} for (model, pert, _, _), recs in groups.items() if pert == "clean"
    }

    def summary_of(model: str, pert: str, strength: float, kind: str, recs: list[dict[str, Any]]) -> Any:
        recs = sorted(recs, key=lambda r: r["sample_index"])
        key = (model, pert, float(strength))
        group = Group(recs, kind, class_names[model], clean_records.get(model, {}), key, units_of(recs))
        return get_task(tasks[model]).summary(group)

    rows: list[dict[str, Any]] = []
    for (model, pert, strength, kind), recs in sorted(groups.items()):
        metrics, intervals = summary_of(model, pert, strength, kind, recs)
        rows += _rows(model, pert, strength, metrics, intervals, len(recs))
    for (label, model, strength), worst in sorted(worst_cases(groups, norms, tasks, class_names).items()):
        metrics, intervals = summary_of(model, label, strength, "attack", worst.records)
        # a metric whose worst case is another set of outcomes (the grade furthest off, a single attack that
        # did worse on kappa) takes its value and interval from that set's summary
        others: dict[int, Any] = {}
        for metric, recs in worst.by_metric.items():
            if recs is not worst.records and metric in metrics:
                if id(recs) not in others:
                    others[id(recs)] = summary_of(model, label, strength, "attack", recs)
                metrics[metric] = others[id(recs)][0][metric]
                intervals[metric] = others[id(recs)][1].get(metric)
        rows += _rows(model, label, strength, metrics, intervals, len(worst.records))
    return rows


def clever_rows(
    model: str, label: str, scores: list[dict[str, Any]], distances: dict[int, float] | None = None
) -> list[dict[str, Any]]:
    """Summary rows of a model's CLEVER scores (``label`` e.g. "clever[l2]", strength 0), all over the
    clean-correct samples (``n``):

    - ``clever``: the median score with a bootstrap 95% interval of the median, or, when the median is withheld,
      NaN (null in summary.json) and no interval;
    - ``clever_flagged``: the share of samples whose fit stayed degenerate (Wilson interval);
    - ``clever_withheld``: 1.0 when the median is withheld because more than
      :data:`medrobust.metrics.clever.WITHHOLD` (20%) of the fits are degenerate (the reason: ``clever_flagged``
      beside it), else 0.0; the reader shows the reason instead of a number;
    - ``clever_above_attack``, only when ``distances`` is given (sample index -> the smallest adversarial
      perturbation the run's minimal attacks of the same norm found, :func:`medrobust.metrics.clever.attack_distances`;
      None when the run has no such attack): the share of samples whose CLEVER score exceeds that distance
      (Wilson interval), an estimate shown too large by a real attack. Samples no attack broke count as not
      above."""
    from medrobust.metrics.clever import WITHHOLD

    kept = [s for s in scores if s["fit"] != "misclassified"]
    values = np.asarray([s["score"] for s in kept], dtype=np.float64)
    n_flagged = sum(bool(s["flagged"]) for s in kept)
    flagged = n_flagged / len(kept) if kept else math.nan
    withheld = bool(kept) and flagged > WITHHOLD
    median = float(np.median(values)) if values.size and not withheld else math.nan
    ci = (
        None
        if withheld
        else stats.bootstrap(lambda idx: np.median(values[idx], axis=1), values.size, key=("clever", model, label))
    )
    metrics = {"clever": median, "clever_flagged": flagged, "clever_withheld": float(withheld)}
    intervals = {"clever": ci, "clever_flagged": stats.wilson(n_flagged, len(kept)) if kept else None}
    if distances is not None:
        above = sum(s["score"] > distances.get(int(s["sample_index"]), math.inf) for s in kept)
        metrics["clever_above_attack"] = above / len(kept) if kept else math.nan
        intervals["clever_above_attack"] = stats.wilson(above, len(kept)) if kept else None
    return _rows(model, label, 0.0, metrics, intervals, len(kept))


def group_records(records: list[dict[str, Any]]) -> dict[tuple[str, str, float, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str, float, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["model"], r["perturbation"], float(r["strength"]), r["kind"])].append(r)
    return groups


def worst_label(norm: str, norms: list[str]) -> str:
    """The summary's name for the per-sample worst case over the attacks of ``norm`` among the run's ``norms``:
    "worst_case" when the run has one norm, else "worst_case[NORM]"."""
    return "worst_case" if len(norms) == 1 else f"worst_case[{norm}]"


@dataclass(frozen=True)
class WorstCase:
    """The per-sample worst case over the attacks of one norm at one strength, for one model. ``records``: the
    outcome of each sample that hurts the task's score most (sorted by sample index, relabelled);
    ``by_metric``: for every scored metric of the task, the outcomes its worst case is computed on: the
    per-sample worst by that metric's own harm (:meth:`Task.harm`: the grade furthest off for kappa and grade
    error), or a single attack's outcomes where that attack alone did worse (kappa and AUC are not sums over
    samples); ``source``: metric -> "per-sample" or that attack's label."""

    records: list[dict[str, Any]]
    by_metric: dict[str, list[dict[str, Any]]]
    source: dict[str, str]


def worst_cases(
    groups: dict[tuple[str, str, float, str], list[dict[str, Any]]],
    norms: dict[str, str],
    tasks: dict[str, str],
    class_names: dict[str, list[str]],
) -> dict[tuple[str, str, float], WorstCase]:
    """Per-sample worst case over all attacks of the same norm at the same strength, per model: (label, model,
    strength) -> :class:`WorstCase`. Every metric's worst-case value is at most (for grade error: at least)
    each single attack's."""
    out: dict[tuple[str, str, float], WorstCase] = {}
    norm_groups = sorted({norms[p] for (_, p, _, k) in groups if k == "attack" and p in norms})
    for norm in norm_groups:
        label = worst_label(norm, norm_groups)
        members: dict[tuple[str, float], list[tuple[str, list[dict[str, Any]]]]] = defaultdict(list)
        for (model, pert, strength, kind), recs in sorted(groups.items()):
            if kind == "attack" and norms.get(pert) == norm:
                members[(model, strength)].append((pert, recs))
        for (model, strength), attacks in members.items():
            out[(label, model, strength)] = _worst(attacks, get_task(tasks[model]), len(class_names[model]), label)
    return out


def _worst(attacks: list[tuple[str, list[dict[str, Any]]]], task: Task, k: int, label: str) -> WorstCase:
    indices = sorted({r["sample_index"] for _, recs in attacks for r in recs})
    position = {idx: i for i, idx in enumerate(indices)}
    by_attack = [{r["sample_index"]: r for r in recs} for _, recs in attacks]
    data = [task.unit_data(recs, k) for _, recs in attacks]
    cols = [np.asarray([position[r["sample_index"]] for r in recs], dtype=np.int64) for _, recs in attacks]
    whole = [len(recs) == len(indices) for _, recs in attacks]

    def relabel(chosen: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**r, "perturbation": label} for r in chosen]

    def select(metric: str) -> list[dict[str, Any]]:
        harm = np.full((len(attacks), len(indices)), -np.inf)
        for a in range(len(attacks)):
            harm[a, cols[a]] = task.harm(metric, data[a])
        choice = harm.argmax(axis=0)  # the first attack of largest harm
        return [by_attack[a][idx] for a, idx in zip(choice.tolist(), indices)]

    by_metric: dict[str, list[dict[str, Any]]] = {}
    source: dict[str, str] = {}
    selections: dict[tuple[int, ...], list[dict[str, Any]]] = {}
    for metric, higher_is_better in task.scored_metrics.items():
        chosen = select(metric)
        ident = tuple(id(r) for r in chosen)
        chosen = selections.setdefault(ident, relabel(chosen))
        statistic = task.statistic(metric)
        best, best_value, where = chosen, float(statistic(task.unit_data(chosen, k), None)[0]), "per-sample"
        sign = 1.0 if higher_is_better else -1.0
        for (pert, recs), d, complete in zip(attacks, data, whole):
            v = float(statistic(d, None)[0]) if complete else math.nan
            if math.isfinite(v) and (not math.isfinite(best_value) or sign * v < sign * best_value - 1e-12):
                best, best_value, where = relabel(sorted(recs, key=lambda r: r["sample_index"])), v, pert
        by_metric[metric], source[metric] = best, where
    primary = by_metric.get(task.metric) or relabel(select(task.metric))
    return WorstCase(primary, by_metric, source)


COMPARISON_KEYS = (
    "model_a",
    "model_b",
    "perturbation",
    "strength",
    "metric",
    "quantity",
    "n",
    "units",
    "unit",
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
    records: list[dict[str, Any]],
    norms: dict[str, str],
    tasks: dict[str, str],
    class_names: dict[str, list[str]],
    headline: str | None = None,
) -> list[dict[str, Any]]:
    """Paired comparisons between every two models on the samples both were scored on, on every metric the
    models are compared on (:meth:`Task.compared_metrics`: the task's score, the metrics the labels call for,
    the ``headline`` metric), for clean data and every worst case at every strength.

    ``quantity`` "value": the metric itself; "drop" (worst cases only): its loss from clean to perturbed,
    (clean - perturbed) of model a minus that of model b (which model loses less). ``difference`` = a - b with a
    95% bootstrap interval over units; the test: where every sample is its own unit, exact McNemar for accuracy
    (with ``samples_needed`` for power 0.8 at 0.05), Wilcoxon signed-rank for Dice, a paired permutation test
    for every other statistic (kappa, grade error, balanced accuracy, AUC, drops); where samples share units
    (slices of a volume, images of a patient) a permutation test that swaps whole units, and with fewer than
    ``resampling.MIN_UNITS`` units no interval and no test (``test`` "none", p null): no inference is possible.
    ``p_adjusted``: Holm over the model pairs of one (perturbation, strength, metric, quantity)."""
    groups = group_records(records)
    clean: dict[str, dict[int, dict[str, Any]]] = {}
    for (model, pert, _, _), recs in groups.items():
        if pert == "clean":
            clean[model] = {r["sample_index"]: r for r in recs}
    scored: dict[tuple[str, float], dict[str, dict[str, dict[int, dict[str, Any]]]]] = defaultdict(dict)
    for model, by_index in clean.items():
        metrics = get_task(tasks[model]).scored_metrics
        scored[("clean", 0.0)][model] = {m: by_index for m in metrics}
    for (label, model, strength), worst in worst_cases(groups, norms, tasks, class_names).items():
        scored[(label, strength)][model] = {
            m: {r["sample_index"]: r for r in recs} for m, recs in worst.by_metric.items()
        }
    compared = {
        model: get_task(tasks[model]).compared_metrics(_class_counts(by_index, len(class_names[model])), headline)
        for model, by_index in clean.items()
    }
    rows: list[dict[str, Any]] = []
    for (pert, strength), by_model in sorted(scored.items()):
        models = sorted(by_model)
        names = list(dict.fromkeys(m for model in models for m in compared.get(model, [])))
        for metric in names:
            for quantity in ("value",) if pert == "clean" else ("value", "drop"):
                family = []
                for i, a in enumerate(models):
                    for b in models[i + 1 :]:
                        if metric not in by_model[a] or metric not in by_model[b]:
                            continue
                        sides = (by_model[a][metric], by_model[b][metric])
                        base = (clean.get(a, {}), clean.get(b, {})) if quantity == "drop" else None
                        row = _compare(a, b, pert, strength, metric, quantity, sides, base, tasks, class_names)
                        if row is not None:
                            family.append(row)
                tested = [r for r in family if r["p"] is not None]
                for row, adjusted in zip(tested, stats.holm([float(r["p"]) for r in tested])):
                    row["p_adjusted"] = adjusted
                rows += family
    return rows


def _class_counts(by_index: dict[int, dict[str, Any]], k: int) -> list[int]:
    counts = [0] * k
    for r in by_index.values():
        if 0 <= int(r["label"]) < k:
            counts[int(r["label"])] += 1
    return counts


def _compare(
    a: str,
    b: str,
    pert: str,
    strength: float,
    metric: str,
    quantity: str,
    sides: tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]],
    base: tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]] | None,
    tasks: dict[str, str],
    class_names: dict[str, list[str]],
) -> dict[str, Any] | None:
    """One comparison row of :func:`compare_models` (None when the models share no sample)."""
    common = set(sides[0]) & set(sides[1])
    if base is not None:
        common &= set(base[0]) & set(base[1])
    if not common:
        return None
    order = sorted(common)
    task, k = get_task(tasks[a]), len(class_names[a])
    units = units_of([sides[0][i] for i in order])

    def data(side: int) -> dict[str, Any]:
        perturbed = task.unit_data([sides[side][i] for i in order], k)
        if base is None:
            return perturbed
        return {"clean": task.unit_data([base[side][i] for i in order], k), "perturbed": perturbed}

    da, db = data(0), data(1)
    statistic = task.statistic(metric)
    if quantity == "drop":
        statistic = resampling.drop(statistic)
    value_a, value_b = float(statistic(da, None)[0]), float(statistic(db, None)[0])
    key = ("compare", a, b, pert, float(strength), metric, quantity)
    ci = resampling.interval(lambda w: statistic(da, w) - statistic(db, w), units, key=key) if units.inference else None
    test: dict[str, Any] = {"test": "none", "p": None, "only_a": None, "only_b": None, "samples_needed": None}
    kind = task.paired_test_kind(metric, quantity)
    if not units.inference:
        test["test"] = f"none: {units.count} independent unit{'s' if units.count != 1 else ''}"
    elif units.grouped or kind == "permutation":
        test["p"], test["test"] = resampling.permutation_p(statistic, da, db, units, key=key)
    elif kind == "mcnemar":
        test.update(task.paired_test(da["score"].tolist(), db["score"].tolist()))
    else:
        scores_a = da["score"] if base is None else da["clean"]["score"] - da["perturbed"]["score"]
        scores_b = db["score"] if base is None else db["clean"]["score"] - db["perturbed"]["score"]
        test.update(task.paired_test(scores_a.tolist(), scores_b.tolist()))
    return {
        "model_a": a,
        "model_b": b,
        "perturbation": pert,
        "strength": float(strength),
        "metric": metric,
        "quantity": quantity,
        "n": len(order),
        "units": units.count,
        "unit": "group" if units.grouped else "sample",
        "value_a": value_a,
        "value_b": value_b,
        "difference": value_a - value_b,
        "ci_low": ci[0] if ci else None,
        "ci_high": ci[1] if ci else None,
        **test,
        "p_adjusted": None,
    }


def write_comparisons(rows: list[dict[str, Any]], run_dir: str | Path) -> list[Path]:
    """Write comparisons.json and comparisons.csv (the paired tests of :func:`compare_models`)."""
    run_dir = Path(run_dir)
    json_path, csv_path = run_dir / "comparisons.json", run_dir / "comparisons.csv"
    write_json(json_path, [{k: r.get(k) for k in COMPARISON_KEYS} for r in rows], indent=1)
    write_csv(
        csv_path,
        COMPARISON_KEYS,
        ({k: ("" if clean_json(r.get(k)) is None else r.get(k)) for k in COMPARISON_KEYS} for r in rows),
    )
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
        write_json(path, [{k: r[k] for k in SUMMARY_KEYS} for r in rows], indent=1)
        written.append(path)
    if fmt in ("both", "csv"):
        path = run_dir / "summary.csv"
        write_csv(
            path, SUMMARY_KEYS, ({k: ("" if clean_json(r[k]) is None else r[k]) for k in SUMMARY_KEYS} for r in rows)
        )
        written.append(path)
    return written
