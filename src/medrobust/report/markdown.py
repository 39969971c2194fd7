"""summary.md: the report's tables in Markdown, to paste into a paper or an issue."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from medrobust.report.analysis import is_nan


def cell(value: Any, digits: int = 3) -> str:
    if isinstance(value, float) or value is None:
        return "-" if is_nan(value) else f"{value:.{digits}f}"
    s = str(value).replace("\n", " ").replace("|", "\\|")
    # only what could start HTML is escaped (a tag, a comment, an entity); "p < 0.001" and ">=" stay readable
    s = re.sub(r"&(?=#?\w+;)", "&amp;", s)
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", s)


def _ci(interval: tuple[float, float] | None) -> str:
    if interval is None or any(is_nan(v) for v in interval):
        return "-"
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


def _int(value: float | None) -> str:
    return "-" if is_nan(value) else f"{value:.0f}"


def _acc(triple: tuple[float | None, float | None, tuple[float, float] | None]) -> str:
    """A score, its 95% interval in square brackets and the matched-noise score in round brackets."""
    acc, noise, ci = triple
    return cell(acc) + ("" if ci is None else f" {_ci(ci)}") + ("" if noise is None else f" ({cell(noise)})")


def _pvalue(p: float | None) -> str:
    return "-" if is_nan(p) else f"{p:.2g}"


def _score(value: float | None, ci: tuple[float, float] | None) -> str:
    return cell(value) + ("" if ci is None else f" {_ci(ci)}")


def _clever(row: dict[str, Any]) -> list[str]:
    """The CLEVER median (or why it is withheld), the share of degenerate fits beside it and the share of
    scores above the distance at which the run's minimal attacks of that norm broke the sample."""
    flagged, above = row.get("clever_flagged"), row.get("clever_above")
    share = "-" if is_nan(flagged) else f"{flagged:.0%}"
    above_share = "-" if is_nan(above) else f"{above:.0%}"
    if row.get("clever") is None:
        return ["withheld" if not is_nan(flagged) else "-", share, above_share]
    return [f"{row['clever']:.4g}", share, above_share]


def summary_markdown(ctx: dict[str, Any]) -> str:
    prov, run = ctx["prov"], ctx["run"]
    models = [m.name for m in run.models]
    out = [f"# medrobust report: {cell(prov['name'])}", ""]
    out += [
        f"- dataset: {cell(prov['dataset'])} ({cell(prov['split'])} split, params {cell(prov['dataset_params'])}), "
        f"{prov['n_samples']} samples per cell, seed {prov['seed']}",
        f"- models: {', '.join(cell(m) for m in models)}",
        f"- run: {prov['first_start']} to {prov['last_finish']}, wall time {prov['wall']:.1f} s "
        f"({prov['compute']:.1f} s in cells); medrobust {prov['version']}",
        "",
    ]
    if ctx["sentence"]:
        out += [cell(ctx["sentence"]), ""]
    out += ["## Threat model", ""]
    out += table(
        ["perturbation", "kind", "norm", "strengths (input units)", "bounds", "settings", "seed"],
        [
            [t["label"], t["kind"], t["norm"], t["strengths"], t["bounds"], t["settings"] or "-", str(t["seed"])]
            for t in ctx["threats"]
        ],
    )
    out += [
        "The models (source, training, weights' fingerprints, card) and the software versions are tabled in "
        "report.html, section 1.",
        "",
    ]
    score = ctx["score"]
    out += [f"## Generalizability vs robustness ({score})", ""]
    if not ctx["heads"]:
        out += ["No attacks in this run.", ""]
    for h in ctx["heads"]:
        out += [
            f"Worst case over {h.norm} attacks at eps = {h.strength:.4g} "
            "(attack columns: score [95% interval] (matched Gaussian noise)).",
            "",
        ]
        clever = (
            [f"CLEVER ({h.norm}) median", "CLEVER degenerate fits", "CLEVER above an attack's distance"]
            if h.clever
            else []
        )
        out += table(
            ["model", "clean", "95% interval", f"{h.label} @ {h.strength:.4g}", "95% interval", *h.attacks, *clever],
            [
                [
                    r["model"],
                    r["clean"],
                    _ci(r["clean_ci"]),
                    r["worst"],
                    _ci(r["worst_ci"]),
                    *[_acc(r["attacks"][a]) for a in h.attacks],
                    *(_clever(r) if h.clever else []),
                ]
                for r in h.rows
            ],
        )
    if ctx.get("label_metrics"):
        out += [f"What these labels call for besides {score} (clean and under each worst case above):", ""]
        out += table(
            ["model", "metric", "clean", *[f"{h.label} @ {h.strength:.4g}" for h in ctx["heads"]]],
            [
                [
                    r["model"],
                    r["name"],
                    cell(r["clean"]) + f" {_ci(r['clean_ci'])}",
                    *[_score(v, ci) for v, ci in r["worst"]],
                ]
                for r in ctx["label_metrics"]
            ],
        )
    if ctx.get("inference_note"):
        out += [cell(ctx["inference_note"]), ""]
    names = ctx.get("metric_names", {})
    if ctx["pair_tests"]:
        out += [
            "Paired tests on the same samples, per metric (difference A - B with a 95% bootstrap interval over "
            "independent units; McNemar for accuracy, Wilcoxon for Dice, a permutation test otherwise; p after "
            "Holm's correction over the pairs of one perturbation and metric):",
            "",
        ]
        out += table(
            ["perturbation", "metric", "model A", "model B", "A - B", "95% interval", "test", "p", "p (Holm)"],
            [
                [
                    g["title"],
                    names.get(c["metric"], c["metric"]),
                    c["model_a"],
                    c["model_b"],
                    f"{c['difference']:+.3f}",
                    _ci((c["ci_low"], c["ci_high"])),
                    c["test"],
                    _pvalue(c["p"]),
                    _pvalue(c["p_adjusted"]),
                ]
                for g in ctx["pair_tests"]
                for c in g["rows"]
            ],
        )
    if ctx.get("drop_tests"):
        out += [
            "Which model loses less: the drop from clean to the worst case (clean - worst) per model, and the "
            "difference of the drops A - B (negative: A loses less), with a 95% interval and a paired test:",
            "",
        ]
        out += table(
            [
                "worst case",
                "metric",
                "model A",
                "model B",
                "drop A",
                "drop B",
                "A - B",
                "95% interval",
                "test",
                "p",
                "p (Holm)",
            ],
            [
                [
                    g["title"],
                    names.get(c["metric"], c["metric"]),
                    c["model_a"],
                    c["model_b"],
                    c["value_a"],
                    c["value_b"],
                    f"{c['difference']:+.3f}",
                    _ci((c["ci_low"], c["ci_high"])),
                    c["test"],
                    _pvalue(c["p"]),
                    _pvalue(c["p_adjusted"]),
                ]
                for g in ctx["drop_tests"]
                for c in g["rows"]
            ],
        )
    out += [f"## Robustness curves ({score} [95% interval] (matched Gaussian noise))", ""]
    out += table(
        ["perturbation", "strength", *models],
        [[r["perturbation"], f"{r['strength']:.4g}", *[_acc(c) for c in r["cells"]]] for r in ctx["curve_table"]],
    )
    if ctx["areas"]:
        out += [
            f"Mean {score} over each curve's strengths (clean excluded), with a 95% bootstrap interval over samples:",
            "",
        ]
        out += table(
            ["model", "perturbation", "strengths", f"mean {score}", "95% interval"],
            [
                [a["model"], a["perturbation"], str(len(a["strengths"])), a["area"], _ci((a["ci_low"], a["ci_high"]))]
                for a in ctx["areas"]
            ],
        )
    out += [
        "## Perturbation size of " + ("successful attacks" if not ctx["dense"] else "attacks (all samples)"),
        "",
    ]
    out += table(
        [
            "model",
            "attack",
            "eps",
            "samples" if ctx["dense"] else "successful",
            "median L2",
            "median Linf",
            "median L0",
            "mean SSIM",
            "median PSNR (dB)",
        ],
        [
            [
                g.model,
                g.attack,
                f"{g.strength:.4g}",
                f"{g.n_success}/{g.n_correct}",
                g.median("l2"),
                g.median("linf"),
                _int(g.median("l0")),
                g.mean("ssim"),
                g.median("psnr"),
            ]
            for g in ctx["at_ref"]
        ],
    )
    if ctx["minimal"]:
        out += ["## Minimal perturbations (largest budget) and empirical robustness rho = ||r||2 / ||x||2", ""]
        out += table(
            [
                "model",
                "attack",
                "budget",
                "samples" if ctx["dense"] else "successful",
                "median size",
                "at the budget",
                "mean rho",
                "median rho",
            ],
            [
                [
                    g.model,
                    g.attack,
                    f"{g.strength:.4g}",
                    f"{g.n_success}/{g.n_correct}",
                    _int(g.median("l0")) if g.norm == "l0" else g.median(g.norm if g.norm in ("l2", "linf") else "l2"),
                    "-" if g.at_budget is None else f"{g.at_budget}/{g.n_correct}",
                    g.mean("rho"),
                    g.median("rho"),
                ]
                for g in ctx["minimal"]
            ],
        )
    out += ["## Clinically relevant breakdown", ""]
    for ct in ctx["clinical"]:
        names = [
            n + (" (malignant)" if k in ct.malignant else "") + f" n={ct.support[k]}"
            for k, n in enumerate(ct.class_names)
        ]
        out += [f"### {cell(ct.model)}: per-class sensitivity (recall) and malignant-to-benign flips", ""]
        flips = ["malignant to benign", "matched noise"] if ct.malignant else []
        out += table(
            ["perturbation", *names, *flips],
            [
                [
                    r["name"],
                    *[cell(v) + ("" if ci is None else f" {_ci(ci)}") for v, ci in zip(r["recall"], r["recall_ci"])],
                    *(
                        [
                            ("-" if r["flips"] is None else f"{r['flips']}/{r['eligible']}"),
                            ("-" if r["noise_flips"] is None else str(r["noise_flips"])),
                        ]
                        if ct.malignant
                        else []
                    ),
                ]
                for r in ct.rows
            ],
        )
        if not ct.malignant and ctx["malignant"]:
            out += [
                f"No class of {cell(ct.model)} is in the malignant group "
                f"({', '.join(cell(m) for m in ctx['malignant'])}).",
                "",
            ]
        elif not ctx["malignant"]:
            out += ["No clinical group is declared for these classes (spec `malignant`, or `--malignant`).", ""]
    for st in ctx["structures"]:
        out += [f"### {cell(st.model)}: per-structure Dice / HD95 / flipped", ""]
        out += table(
            ["perturbation", *[f"{n} Dice / HD95 / flipped" for n in st.structures]],
            [
                [
                    r["name"],
                    *[
                        f"{cell(d)}{'' if ci is None else ' ' + _ci(ci)} / {cell(h, 1)} / {cell(f)}"
                        for d, ci, h, f in zip(r["dice"], r["dice_ci"], r["hd95"], r["flip"])
                    ],
                ]
                for r in st.rows
            ],
        )
    if ctx.get("galleries"):
        n = len(ctx["galleries"][0].samples)
        out += [
            "## Gallery",
            "",
            f"Example images ({n} samples per model, clean and perturbed) are in report.html.",
            "",
        ]
    out += ["## Warnings", ""]
    out += [
        f"- **{cell(w.check)}**: {cell(w.message)}" + (f" *What it means:* {cell(w.meaning)}" if w.meaning else "")
        for w in ctx["findings"]
    ] or ["No warnings."]
    out += [""] + [f"- {cell(c.sentence())}" for c in ctx["model_checks"]]
    return "\n".join(out) + "\n"
