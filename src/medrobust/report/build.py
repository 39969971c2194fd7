"""``build_report(run_dir)``: the run's results database -> one self-contained report.html and summary.md.

A pure function of the store (plus spec.json and the model cards): it never runs a model or an attack.
"""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medrobust.checks import DESCRIPTIONS as CHECK_DESCRIPTIONS
from medrobust.files import check_inside, write_atomic
from medrobust.report import analysis as A
from medrobust.report import figures as F
from medrobust.report.data import RunData, load_run
from medrobust.report.markdown import summary_markdown
from medrobust.results import write_comparisons, write_summary
from medrobust.store import column_json

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
THREAT_KEYS = ("steps", "restarts", "step_size", "random_start", "binary_search_steps", "gamma", "candidates")


def num(value: Any, digits: int = 3) -> str:
    if A.is_nan(value):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.3g}"
    return str(value)


def exact(value: Any) -> str:
    """Full-precision number for data-* attributes (machine-readable; the text shows rounded values)."""
    return "" if A.is_nan(value) else repr(float(value))


def when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def strength_text(s: float, norm: str | None, bounds: list[float] | None) -> str:
    """eps in input units; Linf budgets on [0, 1] images also as k/255 when they are a multiple of 0.5/255."""
    out = f"{s:.4g}"
    if norm == "linf" and bounds and math.isclose(bounds[1] - bounds[0], 1.0) and s > 0:
        k = s * 255
        if abs(k * 2 - round(k * 2)) < 1e-6:
            out += f" ({k:g}/255)"
    return out


def threat_rows(run: RunData) -> list[dict[str, Any]]:
    seed = run.spec.get("seed")
    rows = []
    for p in run.perturbations:
        t = p.threat
        extra = {k: v for k, v in (t.get("params") or {}).items() if k not in THREAT_KEYS}
        rows.append(
            {
                "label": p.label,
                "kind": "attack" if p.kind == "attack" else "corruption",
                "name": p.name,
                "norm": F.NORM_NAMES.get(p.norm, p.norm) if p.norm else "-",
                "what": (
                    "minimal: run once, clipped to each eps"
                    if p.minimal
                    else "budget: eps ascending, each on the samples smaller eps left robust"
                    if t.get("sweep") == "pruned"
                    else "budget: run per eps"
                )
                if p.kind == "attack"
                else f"strength = {t.get('strength_param') or '-'}",
                "strengths": ", ".join(strength_text(s, p.norm, t.get("bounds")) for s in p.strengths),
                "bounds": "[{:g}, {:g}]".format(*t["bounds"]) if len(t.get("bounds") or []) == 2 else "-",
                "settings": ", ".join(f"{k}={'default' if t[k] is None else t[k]}" for k in THREAT_KEYS if k in t)
                + (", " if extra and any(k in t for k in THREAT_KEYS) else "")
                + ", ".join(f"{k}={v}" for k, v in sorted(extra.items())),
                "seed": t.get("seed", seed),
            }
        )
    return rows


def provenance(run: RunData) -> dict[str, Any]:
    ds = run.spec.get("dataset") or {}
    started = [r["started"] for r in run.runs if r.get("started")]
    finished = [r["finished"] for r in run.runs if r.get("finished")]
    runs = []
    for r in run.runs:
        # an interrupted run (killed, or stopped by an error) counts until the last cell it stored
        end = r.get("finished") or run.last_write.get(r["id"])
        wall = end - r["started"] if end else None
        runs.append(
            {
                "id": r["id"],
                "started": when(r["started"]),
                "finished": when(r["finished"])
                if r.get("finished")
                else f"interrupted (last cell stored {when(end)})"
                if end
                else "interrupted",
                "wall": wall,
                "device": r["device"],
                "seed": r["seed"],
                "versions": ", ".join(
                    f"{k} {v}"
                    for k, v in column_json(
                        r["versions_json"], f"results.db: run {r['id']}: versions_json", dict
                    ).items()
                ),
            }
        )
    from medrobust._version import __version__

    return {
        "name": run.spec.get("name", run.run_dir.name),
        "dataset": ds.get("name", "-"),
        "split": ds.get("split", "-"),
        "dataset_params": json.dumps(ds.get("params") or {}, sort_keys=True),
        "limit": run.spec.get("limit"),
        "n_samples": run.n_samples,
        "seed": run.spec.get("seed"),
        "matched_noise": run.spec.get("matched_noise", True),
        "first_start": when(min(started)) if started else "-",
        "last_finish": when(max(finished)) if finished else "-",
        "wall": sum(r["wall"] for r in runs if r["wall"] is not None),
        "compute": run.compute_seconds,
        "runs": runs,
        "generated": when(time.time()),
        "version": __version__,
        "run_dir": str(run.run_dir),
    }


def _env():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    from medrobust.metrics.clever import WITHHOLD

    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        num=num,
        exact=exact,
        pct=lambda v: "-" if A.is_nan(v) else f"{v:.0%}",
        pvalue=lambda v: "-" if A.is_nan(v) else f"{v:.2g}",
    )
    env.globals["withhold"] = WITHHOLD
    return env


def _norm_name(norm: str | None) -> str:
    return F.NORM_NAMES.get(norm, norm) if norm else "-"


#: the files ``report`` writes into the run folder
REPORT_FILES = ("summary.json", "summary.csv", "comparisons.json", "comparisons.csv", "report.html", "summary.md")


def check_reference(run: RunData, given: dict[str, float]) -> None:
    """A headline strength the caller names (``--reference``) must be one the run's attacks of that norm ran:
    another one would be shown in its place under the caller's name."""
    for norm, eps in given.items():
        ran = sorted({s for p in run.attacks if p.norm == norm for s in p.strengths})
        if not ran:
            raise ValueError(
                f"--reference {norm}={eps:g}: no attack of this run has norm {norm!r}; its norms: "
                f"{', '.join(run.norms) or 'none'}"
            )
        if not any(math.isclose(s, eps, rel_tol=1e-6) for s in ran):
            raise ValueError(
                f"--reference {norm}={eps:g}: the run has no {norm} strength {eps:g}; its {norm} strengths: "
                f"{', '.join(f'{s:g}' for s in ran)}"
            )


def build_report(
    run_dir: str | Path,
    *,
    reference_strength: dict[str, float] | None = None,
    malignant: list[str] | tuple[str, ...] | None = None,
) -> tuple[Path, Path]:
    """Write ``RUN_DIR/report.html`` (self-contained) and ``RUN_DIR/summary.md``, and write summary.csv/json and
    comparisons.csv/json again from the store; returns the report's two paths.

    reference_strength: norm -> eps (input units) for the headline, overriding the spec's
    ``reference_strength``; a norm without one uses the middle strength. malignant: class names counted as
    malignant in the clinical breakdown (case-insensitive; default melanoma, mel, bcc, akiec); every other
    class counts as benign.
    """
    t0 = time.perf_counter()
    for name in REPORT_FILES:  # a folder received from someone else: no link among what this writes, checked first
        check_inside(Path(run_dir) / name, run_dir)
    run = load_run(run_dir)
    check_reference(run, reference_strength or {})
    # the summary files are a pure function of the store: written again, they are the run's own bytes
    write_summary(run.summary, run.run_dir)
    write_comparisons(run.comparisons, run.run_dir)
    reference = {**(run.spec.get("reference_strength") or {}), **(reference_strength or {})}
    declared = malignant or run.spec.get("malignant")
    if declared:
        malignant = tuple(declared)
    else:  # the dermatology default only where the classes are dermatology's
        names = {c.strip().lower() for m in run.models for c in m.class_names}
        malignant = A.DEFAULT_MALIGNANT if names & set(A.DEFAULT_MALIGNANT) else ()
    values = A.Values(run.summary, run.metric)
    styles = F.model_styles(m.name for m in run.models)

    heads = A.headline(run, values, reference)
    curves = A.curves(run, values)
    at_ref, minimal = A.perceptibility(run, reference)
    clinical = A.clinical(run, reference, malignant)
    structures = A.structures(run, values, reference)
    checks = A.model_checks(run)
    findings = A.warnings(run, values, checks=checks)
    galleries = A.gallery(run, reference)
    areas = A.curve_areas(run)
    # models that decide per pixel: sizes over every sample, label maps in the gallery, a rank test
    dense = [m.name for m in run.models if m.adapter.dense]
    which = "successful" if not dense else "all"

    plottable = any(r["worst"] is not None for h in heads for r in h.rows)
    figures = {
        "headline": F.headline_figure(heads, styles, run.metric) if plottable else None,
        "curves": F.curves_figure(curves, styles, run.metric) if curves and run.models else None,
        "perceptibility": F.perceptibility_figure(at_ref, styles, which),
        "minimal": F.minimal_figure(minimal, styles),
        "gallery": {g.model: [F.gallery_figure(g, chunk) for chunk in F.sample_chunks(g.samples)] for g in galleries},
    }
    context = {
        "run": run,
        "prov": provenance(run),
        "threats": threat_rows(run),
        "heads": heads,
        "sentence": A.headline_sentence(heads, run.metric, run.comparisons) + A.definition_caveat(findings, run, heads),
        "pair_tests": A.pair_tests(run, heads),
        "drop_tests": A.pair_tests(run, heads, "drop"),
        "inference_note": A.inference_note(run),
        "metric_names": A.METRIC_NAMES,
        "label_metrics": A.label_metrics(run, values, heads),
        "metric": run.metric,
        "score": A.METRIC_NAMES.get(run.metric, run.metric),
        "structures": structures,
        "reference": reference,
        "curves": curves,
        "curve_table": curve_table(run, values),
        "areas": areas,
        "area_table": A.area_table(areas, [m.name for m in run.models]),
        "clean_acc": {m.name: values.clean(m.name) for m in run.models},
        "at_ref": at_ref,
        "minimal": minimal,
        "clinical": clinical,
        "malignant": malignant,
        "dense": dense,
        "findings": findings,
        "galleries": galleries,
        "checks": A.CHECKS,
        "model_checks": A.check_summary(run, checks),
        "check_descriptions": CHECK_DESCRIPTIONS,
        "figures": figures,
        "styles": styles,
        "norm_name": _norm_name,
    }
    out_dir = Path(run_dir)
    html = _env().get_template("report.html.j2").render(**context)
    html_path = out_dir / "report.html"
    write_atomic(html_path, html)
    md_path = out_dir / "summary.md"
    write_atomic(md_path, summary_markdown(context))
    log.info("report written to %s in %.1f s", html_path, time.perf_counter() - t0)
    return html_path, md_path


def curve_table(run: RunData, values: A.Values) -> list[dict[str, Any]]:
    """Rows (perturbation, strength) with each model's (score, matched-noise score, 95% interval of the score)."""
    rows = []
    labels = [p.label for p in run.perturbations] + [A.worst_label(n, run.norms) for n in run.norms]
    for label in labels:
        for s in values.strengths.get(label, []):
            rows.append(
                {
                    "perturbation": label,
                    "strength": s,
                    "cells": [
                        (
                            values.get(m.name, label, s),
                            values.get(m.name, f"matched_noise[{label}]", s),
                            values.interval(m.name, label, s),
                        )
                        for m in run.models
                    ],
                }
            )
    return rows
