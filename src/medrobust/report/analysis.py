"""Numbers behind each report section, computed from the run's records and summary rows (no model is run).

Scores are accuracies in [0, 1]; strengths are in the units of the input (eps for attacks, the corruption's
strength parameter for corruptions); perturbation sizes are per-sample norms of x_adv - x in input units.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from medrobust import resampling, stats
from medrobust.attacks import strong_attacks
from medrobust.checks import TITLES as CHECK_TITLES
from medrobust.checks import CheckResult, black_box_outcomes
from medrobust.report.data import PerturbationInfo, RunData
from medrobust.results import worst_label
from medrobust.tasks.classification import successful

DEFAULT_MALIGNANT = ("melanoma", "mel", "bcc", "akiec")
NORM_NAMES = {"linf": "Linf", "l2": "L2", "l0": "L0"}
METRIC_NAMES = {
    "accuracy": "accuracy",
    "dice": "Dice",
    "balanced_accuracy": "balanced accuracy",
    "auc": "AUC",
    "quadratic_kappa": "quadratic weighted kappa",
    "mae": "grade error (MAE)",
}
METRIC_AXES = {
    "accuracy": "accuracy (fraction correct)",
    "dice": "mean foreground Dice",
    "balanced_accuracy": "balanced accuracy (mean recall)",
    "auc": "AUC (one vs rest)",
    "quadratic_kappa": "quadratic weighted kappa",
}


class Values:
    """Summary rows indexed by (model, perturbation, strength, metric); ``metric`` is the run's score."""

    def __init__(self, summary: list[dict[str, Any]], metric: str = "accuracy") -> None:
        self.metric = metric
        self.rows = {(r["model"], r["perturbation"], float(r["strength"]), r["metric"]): r for r in summary}
        self.strengths: dict[str, list[float]] = defaultdict(list)
        for _, pert, strength, _ in self.rows:
            if strength not in self.strengths[pert]:
                self.strengths[pert].append(strength)
        for pert in self.strengths:
            self.strengths[pert].sort()

    def interval(self, model: str, pert: str, strength: float, metric: str | None = None) -> tuple[float, float] | None:
        """The stored 95% interval of a value (``ci_low``, ``ci_high``), None where the summary has none."""
        row = self.rows.get((model, pert, float(strength), metric or self.metric))
        if row is None or is_nan(row.get("ci_low")) or is_nan(row.get("ci_high")):
            return None
        return float(row["ci_low"]), float(row["ci_high"])

    def get(self, model: str, pert: str, strength: float, metric: str | None = None) -> float | None:
        row = self.rows.get((model, pert, float(strength), metric or self.metric))
        if row is None or row["value"] is None or (isinstance(row["value"], float) and math.isnan(row["value"])):
            return None
        return row["value"]

    def clean(self, model: str, metric: str | None = None) -> float | None:
        return self.get(model, "clean", 0.0, metric)


def nearest_strength(strengths: Iterable[float], norm: str | None, reference: dict[str, float]) -> float:
    """:func:`pick_strength` for a perturbation, which always has strengths."""
    picked = pick_strength(list(strengths), norm, reference)
    if picked is None:
        raise ValueError("a perturbation without strengths has no reference strength")
    return picked


def pick_strength(strengths: list[float], norm: str | None, reference: dict[str, float]) -> float | None:
    """The strength nearest to ``reference[norm]``; without a reference, the middle strength."""
    if not strengths:
        return None
    strengths = sorted(strengths)
    if norm in reference:
        return min(strengths, key=lambda s: abs(s - reference[norm]))
    return strengths[len(strengths) // 2]


# --- 2. headline -----------------------------------------------------------------------------------------


@dataclass
class Headline:
    norm: str
    label: str  # worst-case label in the summary
    strength: float
    attacks: list[str]
    rows: list[dict[str, Any]]  # model, clean, worst, attacks: {label: (acc, matched-noise acc, ci)}, clever
    reference_given: bool
    clever: str | None = None  # label of the CLEVER scores in the summary ("clever[l2]"), if the run has them


def headline(run: RunData, values: Values, reference: dict[str, float]) -> list[Headline]:
    out = []
    for norm in run.norms:
        label = worst_label(norm, run.norms)
        strength = pick_strength(values.strengths.get(label, []), norm, reference)
        if strength is None:
            continue
        attacks = [
            p.label for p in run.attacks if p.norm == norm and any(math.isclose(s, strength) for s in p.strengths)
        ]
        rows = []
        for m in run.models:
            rows.append(
                {
                    "model": m.name,
                    "clean": values.clean(m.name),
                    "clean_ci": values.interval(m.name, "clean", 0.0),
                    "worst": values.get(m.name, label, strength),
                    "worst_ci": values.interval(m.name, label, strength),
                    "attacks": {
                        a: (
                            values.get(m.name, a, strength),
                            values.get(m.name, f"matched_noise[{a}]", strength),
                            values.interval(m.name, a, strength),
                        )
                        for a in attacks
                    },
                }
            )
        clever = next((p for p in values.strengths if p == f"clever[{norm}]"), None)
        for r in rows:
            name = str(r["model"])
            r["clever"] = values.get(name, clever, 0.0, "clever") if clever else None
            r["clever_ci"] = values.interval(name, clever, 0.0, "clever") if clever else None
            r["clever_flagged"] = values.get(name, clever, 0.0, "clever_flagged") if clever else None
            r["clever_above"] = values.get(name, clever, 0.0, "clever_above_attack") if clever else None
        out.append(Headline(norm, label, strength, attacks, rows, norm in reference, clever))
    return out


LABEL_METRICS = {
    "balanced_accuracy": "balanced accuracy",
    "quadratic_kappa": "quadratic weighted kappa",
    "mae": "mean absolute error (grades)",
}


def label_metrics(run: RunData, values: Values, heads: list[Headline]) -> list[dict[str, Any]]:
    """The metrics the labels call for besides the headline score (each model's Task decides from the clean
    class counts: balanced accuracy for imbalanced classes, kappa and grade error for ordinal grades), clean and
    under each headline's worst case: rows of model, metric, name, clean, clean_ci, worst [(value, ci)]."""
    counts = {m.name: [0] * len(m.class_names) for m in run.models}
    for r in run.records:
        if r["perturbation"] == "clean" and r["label"] >= 0 and r["model"] in counts:
            counts[r["model"]][r["label"]] += 1
    rows = []
    for m in run.models:
        for metric in m.adapter.report_metrics(counts.get(m.name, [])):
            if metric == values.metric:
                continue
            rows.append(
                {
                    "model": m.name,
                    "metric": metric,
                    "name": LABEL_METRICS.get(metric, metric),
                    "clean": values.clean(m.name, metric),
                    "clean_ci": values.interval(m.name, "clean", 0.0, metric),
                    "worst": [
                        (
                            values.get(m.name, h.label, h.strength, metric),
                            values.interval(m.name, h.label, h.strength, metric),
                        )
                        for h in heads
                    ],
                    "counts": counts.get(m.name, []),
                }
            )
    return rows


def pair_tests(run: RunData, heads: list[Headline], quantity: str = "value") -> list[dict[str, Any]]:
    """The paired comparisons the headline rests on: clean data, then each headline's worst case at its strength
    (``quantity`` "value": the scores, every compared metric, the headline's first; "drop": the loss from clean
    to the worst case, which model loses less)."""
    wanted = [("clean", 0.0, "clean")] if quantity == "value" else []
    wanted += [(h.label, h.strength, f"{h.label} @ {h.strength:.4g}") for h in heads]
    out = []
    for pert, strength, title in wanted:
        rows = [
            c
            for c in run.comparisons
            if c["perturbation"] == pert
            and math.isclose(c["strength"], strength)
            and c.get("quantity", "value") == quantity
        ]
        rows.sort(key=lambda c: c["metric"] != run.metric)  # the headline metric first, then as computed
        if rows:
            out.append({"title": title, "rows": rows})
    return out


def inference_note(run: RunData) -> str | None:
    """Why the comparisons carry no interval or p-value, when they carry none: too few independent units."""
    units = [c for c in run.comparisons if c.get("p") is None and str(c.get("test", "")).startswith("none")]
    if not units:
        return None
    count = min(int(c["units"]) for c in units)
    unit = run.group_unit
    return (
        f"No inference is possible: the {units[0]['n']} test samples come from {count} independent "
        f"{unit}{'' if count == 1 else 's'} (slices or images of one {unit} are not independent samples), and at "
        f"least {resampling.MIN_UNITS} are needed for an interval or a test. The numbers are descriptive only; "
        f"evaluate on more {unit}s to compare the models."
    )


def _metric_rows(
    comparisons: list[dict[str, Any]], pert: str, strength: float, metric: str, quantity: str = "value"
) -> list[dict[str, Any]]:
    return [
        c
        for c in comparisons
        if c["perturbation"] == pert
        and math.isclose(c["strength"], strength)
        and c.get("metric", metric) == metric
        and c.get("quantity", "value") == quantity
    ]


def _significance(
    comparisons: list[dict[str, Any]], pert: str, strength: float, name: str, metric: str, alpha: float = 0.05
) -> str:
    """What the paired tests of ``metric`` say about one (perturbation, strength): the significant differences,
    largest first, each with its interval and Holm-adjusted p, or that none is (with the samples a test would
    need for the largest observed difference), or that no inference is possible."""
    every = _metric_rows(comparisons, pert, strength, metric)
    rows = [c for c in every if c.get("p_adjusted") is not None]
    if not rows:
        if every and all(c.get("p") is None for c in every):
            count = min(int(c.get("units") or 0) for c in every)
            return f"no inference is possible from {count} independent unit{'' if count == 1 else 's'}"
        return ""
    points = "points" if name != "Dice" else "Dice points"
    significant = sorted((c for c in rows if c["p_adjusted"] < alpha), key=lambda c: -abs(c["difference"]))
    if significant:
        parts = []
        for c in significant[:3]:
            hi, lo = (c["model_a"], c["model_b"]) if c["difference"] > 0 else (c["model_b"], c["model_a"])
            gap = abs(c["difference"])
            ci = ""
            if not is_nan(c.get("ci_low")) and not is_nan(c.get("ci_high")):
                a, b = (-c["ci_high"], -c["ci_low"]) if c["difference"] < 0 else (c["ci_low"], c["ci_high"])
                ci = f", 95% interval {100 * a:.0f} to {100 * b:.0f}"
            parts.append(f"{lo} is {100 * gap:.0f} {points} below {hi} ({name}{ci}; p = {_p(c['p_adjusted'])})")
        more = f"; {len(significant) - 3} more pairs differ" if len(significant) > 3 else ""
        return "; ".join(parts) + more
    smallest = min(c["p_adjusted"] for c in rows)
    needed = [c["samples_needed"] for c in rows if c.get("samples_needed")]
    more = (
        f"; about {min(needed)} test samples would be needed to detect the largest observed difference"
        if needed
        else ""
    )
    return f"no pair differs significantly in {name} (Holm-adjusted p >= {_p(smallest)} at n = {rows[0]['n']}{more})"


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else "< 0.001"


def headline_sentence(
    heads: list[Headline], metric: str = "accuracy", comparisons: list[dict[str, Any]] | None = None
) -> str:
    """The paper's point in plain words: clean scores close, robust scores apart (or not), and which of the
    differences the paired tests of the headline metric itself (McNemar for accuracy, Wilcoxon for Dice, a
    permutation test for kappa, balanced accuracy and AUC; Holm-adjusted) call significant, each with its
    interval; or that no inference is possible from too few independent units."""
    if not heads:
        return "This run has no attacks, so there is no robustness headline; see the corruption curves below."
    h = heads[0]
    pairs = [(r["model"], r["clean"], r["worst"]) for r in h.rows if r["clean"] is not None and r["worst"] is not None]
    if not pairs:
        return ""
    cleans = [c for _, c, _ in pairs]
    worsts = [w for _, _, w in pairs]
    where = f"{NORM_NAMES.get(h.norm, h.norm)} eps = {h.strength:.4g}"
    name = METRIC_NAMES.get(metric, metric)
    if len(pairs) == 1:
        return (
            f"{pairs[0][0]} scores {cleans[0]:.3f} {name} on clean data and {worsts[0]:.3f} under the "
            f"per-sample worst case of the {NORM_NAMES.get(h.norm, h.norm)} attacks at eps = {h.strength:.4g}."
        )
    best = max(pairs, key=lambda p: p[2])[0]
    if comparisons is None:
        return (
            f"Clean {name} spans {min(cleans):.3f} to {max(cleans):.3f} across {len(pairs)} models; worst-case "
            f"{name} under attack at {where} spans {min(worsts):.3f} to {max(worsts):.3f} "
            f"(most robust: {best})."
        )
    clean_test = _significance(comparisons, "clean", 0.0, name, metric)
    worst_test = _significance(comparisons, h.label, h.strength, name, metric)
    return (
        f"Clean {name} spans {min(cleans):.3f} to {max(cleans):.3f} across {len(pairs)} models"
        + (f": {clean_test}" if clean_test else "")
        + f". Worst-case {name} under attack at {where} spans {min(worsts):.3f} to {max(worsts):.3f}"
        + (f": {worst_test}." if worst_test else f" (highest: {best}).")
    )


# --- 3. curves -------------------------------------------------------------------------------------------


@dataclass
class Curve:
    label: str
    kind: str
    norm: str | None
    axis: str  # x-axis label with units
    # model -> {main, noise: [(strength, score)], band: [(strength, low, high)]}
    series: dict[str, dict[str, list[Any]]] = field(default_factory=dict)


def strength_axis(p: PerturbationInfo | None, norm: str | None = None) -> str:
    if p is not None and p.kind == "corruption":
        param = p.threat.get("strength_param") or "strength"
        return f"{param} (input units)" if param != "amount" else "amount (fraction of pixels)"
    norm = norm or (p.norm if p else None)
    if norm == "l0":
        return "eps (L0 budget, fraction of input features)"
    return f"eps ({'Linf' if norm == 'linf' else 'L2'} budget, input units)"


def curves(run: RunData, values: Values) -> list[Curve]:
    out = []
    items: list[tuple[str, PerturbationInfo | None, str | None]] = [(p.label, p, p.norm) for p in run.perturbations]
    items += [(worst_label(n, run.norms), None, n) for n in run.norms]
    for label, p, norm in items:
        curve = Curve(label, p.kind if p else "worst_case", norm, strength_axis(p, norm))
        for m in run.models:
            clean = values.clean(m.name)
            start = [(0.0, clean)] if clean is not None else []
            main = [(s, values.get(m.name, label, s)) for s in values.strengths.get(label, [])]
            noise_label = f"matched_noise[{label}]"
            noise = [(s, values.get(m.name, noise_label, s)) for s in values.strengths.get(noise_label, [])]
            clean_ci = values.interval(m.name, "clean", 0.0)
            band = [(0.0, *clean_ci)] if clean is not None and clean_ci else []
            band += [(s, *ci) for s, _ in main if (ci := values.interval(m.name, label, s))]
            curve.series[m.name] = {
                "main": start + [(s, v) for s, v in main if v is not None],
                "noise": (start + [(s, v) for s, v in noise if v is not None]) if noise else [],
                "band": band,  # (strength, low, high): the 95% interval of each point
            }
        out.append(curve)
    return out


def curve_areas(run: RunData) -> list[dict[str, Any]]:
    """One number per model and perturbation: the mean score over the perturbation's strengths (the area under
    its robustness curve over the strengths, clean excluded), with a bootstrap 95% interval over samples (each
    sample's mean score over the strengths; samples scored at every strength)."""
    from medrobust.results import group_records, sample_score, worst_cases

    groups = group_records(run.records)
    scored: dict[tuple[str, str], dict[float, dict[int, float]]] = defaultdict(dict)
    unit_of: dict[int, str | None] = {}
    for (model, pert, strength, _), recs in groups.items():
        if pert == "clean":
            unit_of.update({r["sample_index"]: r.get("sample_group") for r in recs})
        elif not pert.startswith("matched_noise["):
            scored[(model, pert)][strength] = {r["sample_index"]: sample_score(r) for r in recs}
    norms = {p.label: p.norm for p in run.attacks if p.norm}
    tasks = {m.name: m.task for m in run.models}
    class_names = {m.name: list(m.class_names) for m in run.models}
    for (label, model, strength), worst in worst_cases(groups, norms, tasks, class_names).items():
        scored[(model, label)][strength] = {r["sample_index"]: sample_score(r) for r in worst.records}
    order = {p.label: i for i, p in enumerate(run.perturbations)}
    rows: list[dict[str, Any]] = []
    for (model, label), by_strength in scored.items():
        if len(by_strength) < 2:
            continue
        common = sorted(set.intersection(*(set(d) for d in by_strength.values())))
        if not common:
            continue
        means = {"v": np.asarray([statistics.fmean(by_strength[s][i] for s in by_strength) for i in common])}
        units = resampling.Units.of([unit_of.get(i) for i in common])
        ci = resampling.interval(lambda w: resampling.mean("v")(means, w), units, key=("area", model, label))
        lo, hi = ci if ci else (math.nan, math.nan)
        rows.append(
            {
                "model": model,
                "perturbation": label,
                "strengths": sorted(by_strength),
                "n": len(common),
                "area": float(means["v"].mean()),
                "ci_low": lo,
                "ci_high": hi,
            }
        )
    models = [m.name for m in run.models]
    rows.sort(
        key=lambda r: (
            order.get(r["perturbation"], len(order)),
            r["perturbation"],
            models.index(r["model"]) if r["model"] in models else len(models),
        )
    )
    return rows


def area_table(areas: list[dict[str, Any]], models: list[str]) -> list[dict[str, Any]]:
    """:func:`curve_areas` as one row per perturbation with a cell per model (None where absent)."""
    table: dict[str, dict[str, Any]] = {}
    for a in areas:
        row = table.setdefault(
            a["perturbation"], {"perturbation": a["perturbation"], "strengths": a["strengths"], "cells": {}}
        )
        row["cells"][a["model"]] = a
    return [{**row, "cells": [row["cells"].get(m) for m in models]} for row in table.values()]


# --- 4. perceptibility -----------------------------------------------------------------------------------

SIZE_KEYS = ("l2", "linf", "l0", "ssim", "psnr", "rho")


def _records_by(run: RunData) -> dict[tuple[str, str, float], list[dict[str, Any]]]:
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in run.records:
        groups[(r["model"], r["perturbation"], float(r["strength"]))].append(r)
    return groups


def _median(xs: Sequence[float | None]) -> float | None:
    kept = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.median(kept) if kept else None


def _mean(xs: Sequence[float | None]) -> float | None:
    kept = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.fmean(kept) if kept else None


@dataclass
class SizeGroup:
    model: str
    attack: str
    norm: str | None
    strength: float
    n_correct: int  # clean-correct samples (the attack's targets)
    values: dict[str, list[float]]  # per-sample sizes of the successful adversarial examples
    # per-sample sizes in the attack's norm of every attacked sample (clean-correct; all for dense tasks),
    # fooled or not
    attacked: list[float] = field(default_factory=list)

    @property
    def n_success(self) -> int:
        return len(self.values["l2"])

    def median(self, key: str) -> float | None:
        return _median(self.values[key])

    @property
    def at_budget(self) -> int | None:
        """Attacked samples whose perturbation reached the budget (L2/Linf only), fooled or not: for a minimal
        attack their minimal perturbation is at least the budget (the clip cut it off, or the attack stopped at
        its iteration limit there), so the attack neither failed on them nor measured them."""
        if self.norm not in ("l2", "linf"):
            return None
        return sum(v >= self.strength * (1 - 1e-4) for v in self.attacked)

    def mean(self, key: str) -> float | None:
        return _mean(self.values[key])


def _size_group(model: str, p: PerturbationInfo, strength: float, recs: list[dict[str, Any]], dense: bool) -> SizeGroup:
    """Sizes of the successful examples; for a model deciding per pixel (no single decision), of every sample."""
    ok = recs if dense else successful(recs)
    vals = {k: [r[k] for r in ok if r[k] is not None] for k in SIZE_KEYS}
    attacked = recs if dense else [r for r in recs if r["clean_pred"] == r["label"]]
    sizes = [r[p.norm] for r in attacked if p.norm in SIZE_KEYS and r[p.norm] is not None]
    return SizeGroup(model, p.label, p.norm, strength, len(attacked), vals, sizes)


def perceptibility(run: RunData, reference: dict[str, float]) -> tuple[list[SizeGroup], list[SizeGroup]]:
    """(successful attacks at each attack's reference strength, minimal attacks at their largest budget).

    A minimal attack's perturbation is stored clipped to each budget, so at the largest budget the sizes of
    its successful examples are the minimal perturbations found (those larger than the budget are cut off).
    """
    groups = _records_by(run)
    at_ref, minimal = [], []
    for p in run.attacks:
        s = nearest_strength(p.strengths, p.norm, reference)
        top = max(p.strengths)
        for m in run.models:
            at_ref.append(_size_group(m.name, p, s, groups.get((m.name, p.label, s), []), m.adapter.dense))
            if p.minimal:
                minimal.append(_size_group(m.name, p, top, groups.get((m.name, p.label, top), []), m.adapter.dense))
    return at_ref, minimal


# --- 5. clinical -----------------------------------------------------------------------------------------


@dataclass
class ClassTable:
    """Per model: one row per perturbation (clean first) with per-class recall and malignant-to-benign flips."""

    model: str
    class_names: tuple[str, ...]
    malignant: list[int]  # class indices in the malignant group
    support: list[int]  # clean samples per class
    rows: list[dict[str, Any]]  # name, perturbation, strength, recall [per class], flips, eligible, noise_flips


def _worst_records(groups, model: str, attacks: list[str], strength: float) -> list[dict[str, Any]]:
    """Per sample: the first record of ``attacks`` (at ``strength``) the model gets wrong, else any."""
    worst: dict[int, dict[str, Any]] = {}
    for a in attacks:
        for r in groups.get((model, a, strength), []):
            cur = worst.get(r["sample_index"])
            if cur is None or (cur["pred"] == cur["label"] and r["pred"] != r["label"]):
                worst[r["sample_index"]] = r
    return list(worst.values())


def _recall(recs: list[dict[str, Any]], k: int) -> float | None:
    of_k = [r for r in recs if r["label"] == k]
    return sum(r["pred"] == k for r in of_k) / len(of_k) if of_k else None


def _recall_ci(recs: list[dict[str, Any]], k: int) -> tuple[float, float] | None:
    """Wilson 95% interval of the sensitivity (recall) of class k."""
    of_k = [r for r in recs if r["label"] == k]
    return stats.wilson(sum(r["pred"] == k for r in of_k), len(of_k)) if of_k else None


def _flips(recs_by_sample: dict[int, list[dict[str, Any]]], malignant: set[int]) -> tuple[int, int]:
    """(malignant-to-benign flips, eligible): eligible samples are malignant and called malignant when clean; a
    flip is any of the sample's perturbed predictions falling in the benign group."""
    eligible = flips = 0
    for recs in recs_by_sample.values():
        r0 = recs[0]
        if r0["label"] in malignant and r0["clean_pred"] in malignant:
            eligible += 1
            flips += any(r["pred"] not in malignant for r in recs)
    return flips, eligible


def _by_sample(recs: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in recs:
        out[r["sample_index"]].append(r)
    return out


def malignant_indices(class_names: tuple[str, ...], malignant: list[str] | tuple[str, ...]) -> list[int]:
    wanted = {m.strip().lower() for m in malignant}
    return [k for k, name in enumerate(class_names) if name.strip().lower() in wanted]


def clinical(run: RunData, reference: dict[str, float], malignant: list[str] | tuple[str, ...]) -> list[ClassTable]:
    groups = _records_by(run)
    out = []
    for m in run.models:
        if m.adapter.dense:  # per-class tables are about one decision per image
            continue
        mal = set(malignant_indices(m.class_names, malignant))
        k_range = range(len(m.class_names))
        clean = groups.get((m.name, "clean", 0.0), [])

        def row(name: str, label: str, s: float, recs: list[dict[str, Any]], flip_recs, noise=None) -> dict[str, Any]:
            flips, eligible = _flips(_by_sample(flip_recs), mal) if flip_recs is not None and mal else (None, None)
            noise_flips = _flips(_by_sample(noise), mal)[0] if noise and mal else None
            return {
                "name": name,
                "perturbation": label,
                "strength": s,
                "recall": [_recall(recs, k) for k in k_range],
                "recall_ci": [_recall_ci(recs, k) for k in k_range],
                "flips": flips,
                "eligible": eligible,
                "noise_flips": noise_flips,
            }

        rows = [row("clean", "clean", 0.0, clean, None)]
        for p in run.attacks:
            s = nearest_strength(p.strengths, p.norm, reference)
            recs = groups.get((m.name, p.label, s), [])
            noise = groups.get((m.name, f"matched_noise[{p.label}]", s), [])
            rows.append(row(f"{p.label} @ {s:.4g}", p.label, s, recs, recs, noise))
        for norm in run.norms:
            label = worst_label(norm, run.norms)
            attacks = [p for p in run.attacks if p.norm == norm]
            s = nearest_strength({x for p in attacks for x in p.strengths}, norm, reference)
            names = [p.label for p in attacks if any(math.isclose(x, s) for x in p.strengths)]
            every = [r for a in names for r in groups.get((m.name, a, s), [])]
            rows.append(row(f"{label} @ {s:.4g}", label, s, _worst_records(groups, m.name, names, s), every))
        support = [sum(r["label"] == k for r in clean) for k in k_range]
        out.append(ClassTable(m.name, m.class_names, sorted(mal), support, rows))
    return out


@dataclass
class StructureTable:
    """Per segmentation model: one row per perturbation (clean first), per structure Dice, HD95 and the fraction of
    the structure's pixels whose predicted label the perturbation changed (None for clean)."""

    model: str
    structures: tuple[str, ...]
    rows: list[dict[str, Any]]  # name, dice, hd95, flip [each per structure]


def structures(run: RunData, values: Values, reference: dict[str, float]) -> list[StructureTable]:
    out = []
    for m in run.models:
        if not m.adapter.dense:
            continue
        names = tuple(m.class_names[1:])  # class 0 is background
        items = [("clean", "clean", 0.0)]
        for p in run.attacks:
            s = nearest_strength(p.strengths, p.norm, reference)
            items.append((f"{p.label} @ {s:.4g}", p.label, s))
        for norm in run.norms:
            label = worst_label(norm, run.norms)
            worst_at = pick_strength(values.strengths.get(label, []), norm, reference)
            if worst_at is not None:
                items.append((f"{label} @ {worst_at:.4g}", label, worst_at))
        rows = [
            {
                "name": title,
                "dice": [values.get(m.name, pert, s, f"dice:{k}") for k in names],
                "dice_ci": [values.interval(m.name, pert, s, f"dice:{k}") for k in names],
                "hd95": [values.get(m.name, pert, s, f"hd95:{k}") for k in names],
                "flip": [values.get(m.name, pert, s, f"flip_rate:{k}") for k in names],
            }
            for title, pert, s in items
        ]
        out.append(StructureTable(m.name, names, rows))
    return out


# --- 6. gallery ------------------------------------------------------------------------------------------


@dataclass
class GalleryRow:
    """One perturbation at one strength for the gallery's samples: per sample, the stored delta = x_pert - x,
    the prediction (class index, or label map for segmentation) and whether it differs from the clean one."""

    title: str
    perturbation: str
    kind: str
    strength: float
    delta: dict[int, np.ndarray]
    pred: dict[int, Any]
    changed: dict[int, bool]


@dataclass
class Gallery:
    model: str
    dense: bool  # label maps (segmentation) rather than one class per sample
    class_names: tuple[str, ...]
    samples: list[int]
    sample_ids: dict[int, str]
    image: dict[int, np.ndarray]
    label: dict[int, Any]  # true class, or ground-truth label map
    clean_pred: dict[int, Any]
    rows: list[GalleryRow]
    bounds: tuple[float, float] = (0.0, 1.0)
    orientation: str | None = None  # "RAS": slices are drawn anatomically upright


def gallery(run: RunData, reference: dict[str, float]) -> list[Gallery]:
    """Per model, the stored example samples: the clean input and, for every perturbation at its reference
    strength (attacks by norm, corruptions at their middle strength), the perturbation and the prediction."""
    from medrobust.store import decode_array

    stored = run.examples
    if not stored:
        return []

    def ex(key: tuple[str, str, float, int, str]) -> np.ndarray | None:
        """A stored array, decoded on use (the gallery shows one strength per perturbation), or None."""
        return decode_array(stored[key]) if key in stored else None

    records = {(r["model"], r["perturbation"], float(r["strength"]), r["sample_index"]): r for r in run.records}
    out = []
    for m in run.models:
        samples = sorted(
            {i for (model, pert, _, i, a) in stored if model == m.name and pert == "clean" and a == "image"}
        )
        if not samples:
            continue
        seg = m.adapter.dense
        # the clean image of every gallery sample is stored with its clean cell
        image = cast(dict[int, np.ndarray], {i: ex((m.name, "clean", 0.0, i, "image")) for i in samples})
        clean = {i: records.get((m.name, "clean", 0.0, i)) or {} for i in samples}
        ids = {i: r["sample_id"] for i, r in clean.items() if r}
        if seg:
            label = {i: ex((m.name, "clean", 0.0, i, "label")) for i in samples}
            clean_pred = {i: ex((m.name, "clean", 0.0, i, "pred")) for i in samples}
        else:
            label = {i: r["label"] for i, r in clean.items() if r}
            clean_pred = {i: r["pred"] for i, r in clean.items() if r}
        rows = []
        for p in run.perturbations:
            s = nearest_strength(p.strengths, p.norm, reference)
            delta = {
                i: d.astype(np.float32) for i in samples if (d := ex((m.name, p.label, s, i, "delta"))) is not None
            }
            if not delta:
                continue
            if seg:
                pred = {i: ex((m.name, p.label, s, i, "pred")) for i in delta}
                changed = {
                    i: pred[i] is not None
                    and clean_pred.get(i) is not None
                    and bool(np.any(np.asarray(pred[i]) != np.asarray(clean_pred[i])))
                    for i in delta
                }
            else:
                pred = {
                    i: records[(m.name, p.label, s, i)]["pred"] for i in delta if (m.name, p.label, s, i) in records
                }
                changed = {i: i in pred and pred[i] != clean_pred.get(i) for i in delta}
            rows.append(GalleryRow(f"{p.label} @ {s:.4g}", p.label, p.kind, s, delta, pred, changed))
        out.append(
            Gallery(
                m.name,
                m.adapter.dense,
                m.class_names,
                samples,
                ids,
                image,
                label,
                clean_pred,
                rows,
                run.bounds.get(m.name, (0.0, 1.0)),
                run.orientation.get(m.name),
            )
        )
    return out


# --- 7. warnings -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    check: str
    message: str
    meaning: str = ""  # what a failed sanity check means and what to do
    # what it is about, where a finding names one (model, structure) for other sections to read
    about: tuple[str, str] | None = None


@dataclass(frozen=True)
class ModelChecks:
    """The sanity checks of one model: names of those passed and failed; ``stored``: whether the model-level
    checks (medrobust.checks.run_model_checks) are in results.db for the weights shown."""

    model: str
    passed: list[str]
    failed: list[str]
    stored: bool

    def sentence(self) -> str:
        """E.g. "Sanity checks passed for m: logits, gradients; failed (see above): unbounded." """

        def names(xs: list[str]) -> str:
            return ", ".join(x.replace("_", " ") for x in xs)

        if not self.passed and not self.failed:
            return f"No sanity checks for {self.model}: its model-level checks are not in results.db."
        text = f"Sanity checks passed for {self.model}: {names(self.passed) or 'none'}"
        if self.failed:
            text += f"; failed (see above): {names(self.failed)}"
        text += "."
        if not self.stored:
            text += " Its model-level checks are not in results.db."
        return text


CHECKS = (
    "an attack must hurt at least as much as Gaussian noise of the same per-sample L2 size",
    "the score must not rise with attack strength (the clean score counts as strength 0)",
    "a minimal-norm attack must fool most clean-correct samples at its largest budget",
    "every cell of the spec is in the store",
    "every Linf and L2 worst case rests on a strong attack (autoattack or apgd) at its strength",
)


def model_checks(run: RunData) -> dict[str, list[CheckResult]]:
    """Per model (in the run's order): its stored model-level checks, then the black-box-vs-white-box check
    computed from its records (medrobust.checks.black_box_outcomes) where the run has both kinds of attack."""
    out: dict[str, list[CheckResult]] = {m.name: [] for m in run.models}
    for r in run.checks:
        if r["model"] in out:
            value = float("nan") if r["value"] is None else float(r["value"])
            out[r["model"]].append(CheckResult(r["name"], bool(r["passed"]), value, r["message"], r["meaning"]))
    attacks = run.attacks
    black_box = black_box_outcomes(
        run.records, {p.label: p.name for p in attacks}, {p.label: p.norm for p in attacks if p.norm}
    )
    for model, result in black_box.items():
        if model in out:
            out[model].append(result)
    return out


def check_summary(run: RunData, checks: dict[str, list[CheckResult]] | None = None) -> list[ModelChecks]:
    """One line per model for the report: which sanity checks passed and failed."""
    checks = model_checks(run) if checks is None else checks
    stored = {r["model"] for r in run.checks}
    return [
        ModelChecks(
            model, [r.name for r in results if r.passed], [r.name for r in results if not r.passed], model in stored
        )
        for model, results in checks.items()
    ]


def warnings(
    run: RunData,
    values: Values,
    tol: float = 0.02,
    min_success: float = 0.5,
    checks: dict[str, list[CheckResult]] | None = None,
) -> list[Finding]:
    """Sanity checks on the stored results, then every failed sanity check of each model (``checks``, default
    :func:`model_checks`). ``tol``: slack in the score (at least one sample more than 1/n)."""
    out = []
    n = max(run.n_samples, 1)
    slack = max(tol, 1.0 / n)
    name = METRIC_NAMES.get(values.metric, values.metric)
    for p in run.attacks:
        for m in run.models:
            clean = values.clean(m.name)
            weaker = []
            for s in p.strengths:
                acc = values.get(m.name, p.label, s)
                noise = values.get(m.name, f"matched_noise[{p.label}]", s)
                if acc is not None and noise is not None and acc > noise + slack:
                    weaker.append(f"eps={s:.4g}: {acc:.3f} vs noise {noise:.3f}")
            if weaker:
                out.append(
                    Finding(
                        "attack weaker than noise",
                        (
                            f"{p.label} on {m.name} leaves a higher {name} than Gaussian noise of the same L2 size ("
                            + "; ".join(weaker)
                            + "). The attack may be broken or the gradients masked."
                        ),
                    )
                )
            points = [(0.0, clean)] + [(s, values.get(m.name, p.label, s)) for s in p.strengths]
            accs = [(s, a) for s, a in points if a is not None]
            rises = [
                f"{a0:.3f} at {s0:.4g} -> {a1:.3f} at {s1:.4g}"
                for (s0, a0), (s1, a1) in zip(accs, accs[1:])
                if a1 > a0 + slack
            ]
            if rises:
                out.append(
                    Finding(
                        "non-monotone curve",
                        (
                            f"{name} under {p.label} on {m.name} rises with strength ("
                            + "; ".join(rises)
                            + "). A stronger attack should never do less harm; try more steps or restarts."
                        ),
                    )
                )
            if p.minimal and p.strengths:
                top = max(p.strengths)
                rate = values.get(m.name, p.label, top, "success_rate")
                if rate is not None and rate < min_success:
                    out.append(
                        Finding(
                            "minimal attack rarely succeeds",
                            (
                                f"{p.label} on {m.name} fooled only {rate:.0%} of the clean-correct samples within its "
                                f"largest budget eps={top:.4g}. Either that budget is small for this model "
                                "or the attack "
                                "stopped early (raise steps)."
                            ),
                        )
                    )
    out += unchecked_worst_cases(run, values)
    out += missing_classes(run)
    out += label_definitions(run, values)
    for model, results in (model_checks(run) if checks is None else checks).items():
        for r in results:
            if not r.passed:
                out.append(Finding(CHECK_TITLES.get(r.name, r.name), f"{model}: {r.message}", r.meaning))
    if run.missing_cells:
        out.append(
            Finding(
                "incomplete run",
                (
                    f"{run.missing_cells} cells of the spec (a model under a perturbation at one or more "
                    "strengths) are not in results.db; re-run the same spec in this directory to finish them."
                ),
            )
        )
    return out


MISSING_CLASSES_MEANING = (
    "A score is only as wide as the samples it counts: with classes missing from the test samples, accuracy "
    "says nothing about them, and with one class left a model that always answers it scores 1.0. Balanced "
    "accuracy and AUC need two classes and are left undefined then."
)


def missing_classes(run: RunData) -> list[Finding]:
    """A classifier scored on test samples that hold fewer classes than it predicts (per model, its clean
    records)."""
    out = []
    for m in run.models:
        if m.adapter.dense or len(m.class_names) < 2:  # one decision per sample only
            continue
        clean = [r for r in run.records if r["model"] == m.name and r["perturbation"] == "clean"]
        labels = {int(r["label"]) for r in clean}
        if labels and len(labels) < len(m.class_names):
            absent = ", ".join(c for k, c in enumerate(m.class_names) if k not in labels)
            undefined = "; balanced accuracy and AUC are undefined" if len(labels) < 2 else ""
            out.append(
                Finding(
                    "classes missing from the test samples",
                    f"{m.name}: its {len(clean)} test samples hold {len(labels)} of its {len(m.class_names)} "
                    f"classes (none of {absent}){undefined}.",
                    MISSING_CLASSES_MEANING,
                )
            )
    return out


LABEL_DEFINITION_MEANING = (
    "Label sets name structures alike but draw them differently: CSF as all cerebrospinal fluid (a rim around "
    "the brain and the ventricles) in one, the ventricles alone in another; a lesion with or without its border. "
    "A model then loses Dice on that structure however robust it is, and the mean Dice mixes a definition "
    "mismatch into every robustness number. Compare the model's training labels with these (the dataset's "
    "label_map), or read the robustness numbers of the other structures."
)


def definition_caveat(findings: list[Finding], run: RunData, heads: list[Headline]) -> str:
    """A sentence for the headline when its mean Dice includes a structure that may be defined differently in
    these labels (:func:`label_definitions`): the headline's numbers mix that mismatch in, so the sentence gives
    each such model's mean Dice without the structure, clean and under the headline's worst case."""
    flagged = [f.about for f in findings if f.check == "structure defined differently?" and f.about]
    if not flagged or run.metric != "dice" or not heads:
        return ""
    from medrobust.results import group_records, worst_cases

    h = heads[0]
    groups = group_records(run.records)
    norms = {p.label: p.norm for p in run.attacks if p.norm}
    tasks = {m.name: m.task for m in run.models}
    names = {m.name: list(m.class_names) for m in run.models}
    worst = worst_cases(groups, norms, tasks, names)
    parts = []
    for model, structure in flagged:
        j = names[model].index(structure) - 1
        clean = next((recs for (m, p, _, _), recs in groups.items() if m == model and p == "clean"), [])
        chosen = worst.get((h.label, model, h.strength))
        without = [_dice_without(recs, j) for recs in (clean, chosen.records if chosen else [])]
        parts.append(f"{model} without {structure}: clean {_num(without[0])}, {h.label} {_num(without[1])}")
    return (
        " Caution: the mean Dice includes a structure that may be defined differently in these labels than in the "
        "model's training labels (see the warnings); the mean Dice of the other structures: " + "; ".join(parts) + "."
    )


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _dice_without(records: list[dict[str, Any]], j: int) -> float | None:
    """Mean over samples of the mean Dice of every structure but the j-th (structures counted from 0)."""
    per_sample = []
    for r in records:
        detail = json.loads(r["detail_json"]) if r.get("detail_json") else {}
        others = [v for k, v in enumerate(detail.get("dice", [])) if k != j and v is not None]
        if others:
            per_sample.append(sum(others) / len(others))
    return _mean(per_sample)


def label_definitions(
    run: RunData, values: Values, low: float = 0.5, gap: float = 0.25, ratio: float = 1.5
) -> list[Finding]:
    """Per segmentation model, structures whose clean Dice is low (below ``low``) and far below the others'
    (by more than ``gap``) while the model labels a very different amount of it than the labels hold (or the
    labels hold none), or the structure's share of the labelled (non-background) units differs from its share
    in the model's training labels (by ``ratio`` or more either way; background is left out, since padding,
    cropping and the field of view change it): the structure may be defined differently in the model's
    training labels and in these. Needs the unit counts of the clean records (true_n, pred_n) and, for the
    training share, the card's ``label_fractions``."""
    out = []
    for m in run.models:
        if not m.adapter.dense:
            continue
        details = [
            json.loads(r["detail_json"])
            for r in run.records
            if r["model"] == m.name and r["perturbation"] == "clean" and r["detail_json"]
        ]
        details = [d for d in details if "true_n" in d and "pred_n" in d]
        names = list(m.class_names)[1:]
        if not details or len(names) < 2:
            continue
        dice = {k: values.get(m.name, "clean", 0.0, f"dice:{k}") for k in names}
        true_n = np.asarray([d["true_n"] for d in details], dtype=np.float64).sum(axis=0)
        pred_n = np.asarray([d["pred_n"] for d in details], dtype=np.float64).sum(axis=0)
        trained = m.card.get("dataset", {}).get("label_fractions")
        source = m.card.get("dataset", {}).get("name") or "its training data"
        for j, name in enumerate(names, start=1):
            others = [v for k, v in dice.items() if k != name and v is not None and not math.isnan(v)]
            mine = dice[name]
            if mine is None or math.isnan(mine) or not others or mine >= low or mine >= statistics.median(others) - gap:
                continue
            evidence = []
            if true_n[j] == 0 and pred_n[j] > 0:
                evidence.append(f"these labels have no {name} while the model labels {pred_n[j]:.0f} units of it")
            elif true_n[j] > 0 and not 1 / ratio < pred_n[j] / true_n[j] < ratio:
                evidence.append(f"the model labels {pred_n[j] / true_n[j]:.2g}x the units these labels call {name}")
            share = true_n[j] / max(true_n[1:].sum(), 1.0)
            if trained and len(trained) == len(true_n) and trained[j] > 0 and share > 0:
                learned = trained[j] / sum(trained[1:])
                if not 1 / ratio < share / learned < ratio:
                    evidence.append(
                        f"{name} is {share:.1%} of the labelled units here but {learned:.1%} in its training "
                        f"labels ({source})"
                    )
            if not evidence:
                continue
            without = _mean(
                [_mean([v for k, v in enumerate(d["dice"]) if k != j - 1 and v is not None]) for d in details]
            )
            rest = f"; the clean Dice without {name} is {without:.3f}" if without is not None else ""
            out.append(
                Finding(
                    "structure defined differently?",
                    (
                        f"{m.name}: {name} has clean Dice {mine:.3f} while the other structures reach "
                        f"{statistics.median(others):.3f} (median), and " + "; ".join(evidence) + ". "
                        f"{name} may be defined differently in these labels than in the model's{rest}."
                    ),
                    LABEL_DEFINITION_MEANING,
                    about=(m.name, name),
                )
            )
    return out


# The norms the strong attacks (``strong`` on the attack's class: AutoAttack, APGD, and the minimal-norm FMN and
# FAB, whose one run backs every strength of its norm; cross-checked in bench/RESULTS.md) cover.
STRONG_NORMS = ("linf", "l2")
UNCHECKED_MEANING = (
    "A robustness number is an upper bound: an attack that fails proves nothing. Worst cases from FGSM or PGD "
    "alone were optimistic by up to 17 points on the demo's own models against an APGD cascade. Add an "
    "`autoattack` perturbation at these strengths (or `apgd` where time is short, or the minimal `fmn`, whose one "
    "run covers every strength of its norm) to check them."
)


def unchecked_worst_cases(run: RunData, values: Values) -> list[Finding]:
    """One finding per norm whose worst case, at some strength, rests on no strong attack (``strong``);
    norms no strong attack covers (L0) are left out."""
    out = []
    strong = strong_attacks()
    for norm in run.norms:
        if norm not in STRONG_NORMS:
            continue
        label = worst_label(norm, run.norms)
        weak: dict[float, list[str]] = {}
        for s in values.strengths.get(label, []):
            at = [p for p in run.attacks if p.norm == norm and any(math.isclose(s, t) for t in p.strengths)]
            if at and not any(p.name in strong for p in at):
                weak[s] = [p.label for p in at]
        if weak:
            names = sorted({a for labels in weak.values() for a in labels})
            out.append(
                Finding(
                    "worst case not checked by a strong attack",
                    (
                        f"{label} at eps = {', '.join(f'{s:.4g}' for s in sorted(weak))} rests on "
                        f"{', '.join(names)} only; no strong attack ({', '.join(strong)}) ran at "
                        f"{'this strength' if len(weak) == 1 else 'these strengths'}, "
                        "so it may be optimistic."
                    ),
                    UNCHECKED_MEANING,
                )
            )
    return out


def is_nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))
