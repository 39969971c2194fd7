"""Report figures: matplotlib (Agg canvas, no pyplot state) rendered to base64 PNG data URIs.

Colours are the Okabe-Ito palette (distinguishable with the common colour-vision deficiencies), and each
model also has its own marker, so the figures survive grey-scale printing.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from medrobust.report.analysis import METRIC_AXES, METRIC_NAMES, NORM_NAMES, Curve, Headline, SizeGroup

OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#E69F00", "#56B4E9", "#CC79A7", "#000000", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.dpi": 100,
}
DPI = 100


@dataclass(frozen=True)
class ModelStyle:
    color: str
    marker: str


def model_styles(names: Iterable[str]) -> dict[str, ModelStyle]:
    return {n: ModelStyle(OKABE_ITO[i % len(OKABE_ITO)], MARKERS[i % len(MARKERS)]) for i, n in enumerate(names)}


def text(value: Any, limit: int = 40) -> str:
    """A user string safe for matplotlib: no mathtext ($), not hidden from legends (leading _), not too long."""
    s = str(value)
    s = s if len(s) <= limit else s[: limit - 1] + "\u2026"
    s = s.replace("$", r"\$")
    return "\u200b" + s if s.startswith("_") else s


def to_data_uri(fig: Figure) -> str:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _model_handles(styles: dict[str, ModelStyle]) -> list[Line2D]:
    return [Line2D([], [], color=s.color, marker=s.marker, ls="-", label=text(name)) for name, s in styles.items()]


def _label_points(ax, points: list[tuple[float, float, str]]) -> None:
    """Name each point beside it, nudging labels apart vertically so close points stay readable."""
    placed: list[tuple[float, float]] = []
    for x, y, label in sorted(points, key=lambda p: p[1]):
        ty = y
        while any(abs(ty - py) < 0.045 and abs(x - px) < 0.3 for px, py in placed):
            ty += 0.045
        placed.append((x, ty))
        right = x < 0.35
        ax.annotate(label, (x, y), xytext=(x + (0.04 if right else -0.04), ty), textcoords="data", fontsize=8,
                    ha="left" if right else "right", va="center",
                    arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6, "shrinkB": 4})


def headline_figure(heads: list[Headline], styles: dict[str, ModelStyle], metric: str = "accuracy") -> str:
    """x = clean score, y = worst-case score over the attacks of a norm at its reference strength."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(4.0 * len(heads) + 0.6, 4.9), layout="constrained")
        axes = fig.subplots(1, len(heads), squeeze=False)[0]
        for ax, h in zip(axes, heads):
            ax.plot([0, 1], [0, 1], ls=":", color="0.55", lw=1)
            ax.text(0.5, 0.53, "no loss (y = x)", color="0.45", fontsize=7, ha="center", rotation=38, rotation_mode="anchor")
            points = []
            for r in h.rows:
                if r["clean"] is None or r["worst"] is None:
                    continue
                st = styles[r["model"]]
                ax.scatter([r["clean"]], [r["worst"]], s=80, color=st.color, marker=st.marker, edgecolor="black",
                           linewidth=0.6, zorder=3)
                points.append((r["clean"], r["worst"], text(r["model"], 24)))
            _label_points(ax, points)
            ax.set_xlim(-0.02, 1.02)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel(f"clean {METRIC_AXES.get(metric, metric)}")
            ax.set_ylabel(f"worst-case {METRIC_NAMES.get(metric, metric)}, {NORM_NAMES.get(h.norm, h.norm)} attacks")
            ax.set_title(f"{NORM_NAMES.get(h.norm, h.norm)} attacks at eps = {h.strength:.4g} (input units)\n"
                         f"worst case over {len(h.attacks)}: {text(', '.join(h.attacks), 40)}")
        fig.legend(handles=_model_handles(styles), loc="outside lower center", ncols=min(len(styles), 6), frameon=False)
        fig.suptitle("Generalizability (x) vs robustness (y): one point per model", fontsize=11)
        return to_data_uri(fig)


def curves_figure(curves: list[Curve], styles: dict[str, ModelStyle], metric: str = "accuracy") -> str:
    """Score vs strength per perturbation; strength 0 is the clean score; matched noise dashed."""
    ncols = min(3, len(curves))
    nrows = math.ceil(len(curves) / ncols)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(4.3 * ncols, 3.2 * nrows + 0.6), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        any_noise = False
        for ax, c in zip(axes, curves):
            for model, series in c.series.items():
                st = styles[model]
                if series["main"]:
                    xs, ys = zip(*series["main"])
                    ax.plot(xs, ys, color=st.color, marker=st.marker, ms=4, lw=1.6)
                if series["noise"]:
                    any_noise = True
                    xs, ys = zip(*series["noise"])
                    ax.plot(xs, ys, color=st.color, ls="--", lw=1.2, alpha=0.8)
            title = text(c.label, 48)
            if c.kind == "worst_case":
                title += f" (per sample, over all {NORM_NAMES.get(c.norm, c.norm)} attacks)"
            elif c.kind == "attack":
                title += f" ({NORM_NAMES.get(c.norm, c.norm)} attack)"
            else:
                title += " (corruption)"
            ax.set_title(title)
            ax.set_xlabel(c.axis)
            ax.set_ylabel(METRIC_AXES.get(metric, metric))
            ax.set_ylim(-0.02, 1.02)
            ax.xaxis.set_major_locator(MaxNLocator(5))
        for ax in axes[len(curves):]:
            ax.set_visible(False)
        handles = _model_handles(styles)
        handles.append(Line2D([], [], color="0.3", ls="-", label="attack / corruption"))
        if any_noise:
            handles.append(Line2D([], [], color="0.3", ls="--", label="Gaussian noise, same per-sample L2 as the attack"))
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), frameon=False)
        fig.suptitle(f"Robustness curves: {METRIC_NAMES.get(metric, metric)} vs perturbation strength (strength 0 = clean)",
                     fontsize=11)
        return to_data_uri(fig)


SIZE_PANELS = (
    ("l2", "L2 norm of x_adv \u2212 x (input units)", True),
    ("linf", "Linf norm of x_adv \u2212 x (input units)", True),
    ("ssim", "SSIM to the clean image (1 = identical)", False),
    ("psnr", "PSNR to the clean image (dB)", False),
)


def _boxes(ax, groups: list[list[SizeGroup]], key: str, styles: dict[str, ModelStyle], log_scale: bool) -> None:
    """groups[i]: one SizeGroup per model for x position i; boxes side by side, coloured by model."""
    width = 0.8 / max(len(styles), 1)
    positive = []
    for i, per_model in enumerate(groups):
        for j, g in enumerate(per_model):
            data = [v for v in g.values[key] if v is not None and math.isfinite(v)]
            if not data:
                continue
            positive += [v for v in data if v > 0]
            pos = i - 0.4 + width * (j + 0.5)
            bp = ax.boxplot([data], positions=[pos], widths=width * 0.85, patch_artist=True, showfliers=True,
                            flierprops={"markersize": 2, "markeredgecolor": styles[g.model].color},
                            medianprops={"color": "black"})
            for patch in bp["boxes"]:
                patch.set_facecolor(styles[g.model].color)
                patch.set_alpha(0.75)
    if log_scale and positive and max(positive) / min(positive) > 20:
        ax.set_yscale("log")
    ax.set_xlim(-0.6, len(groups) - 0.4)


def perceptibility_figure(at_ref: list[SizeGroup], styles: dict[str, ModelStyle], which: str = "successful") -> str | None:
    attacks = list(dict.fromkeys(g.attack for g in at_ref))
    if not attacks or not any(g.n_success for g in at_ref):
        return None
    grouped = [[g for g in at_ref if g.attack == a] for a in attacks]
    labels = [f"{text(a, 18)}\n@ {grouped[i][0].strength:.3g}" for i, a in enumerate(attacks)]
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(max(9.0, 1.6 * len(attacks) * 2), 7.4), layout="constrained")
        axes = fig.subplots(2, 2).ravel()
        for ax, (key, ylabel, log_scale) in zip(axes, SIZE_PANELS):
            _boxes(ax, grouped, key, styles, log_scale)
            ax.set_xticks(range(len(attacks)), labels)
            ax.set_ylabel(ylabel)
            ax.set_title(f"{ylabel.split(' (')[0]}")
            ax.set_xlabel("attack @ eps (input units; L0: fraction of features)")
        fig.legend(handles=_model_handles(styles), loc="outside lower center", ncols=min(len(styles), 6), frameon=False)
        fig.suptitle(f"Size of {which} adversarial perturbations at each attack's reference strength", fontsize=11)
        return to_data_uri(fig)


def minimal_figure(minimal: list[SizeGroup], styles: dict[str, ModelStyle]) -> str | None:
    attacks = list(dict.fromkeys(g.attack for g in minimal))
    if not attacks or not any(g.n_success for g in minimal):
        return None
    rng = np.random.default_rng(0)  # horizontal jitter of plotted points only
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(4.2 * len(attacks), 3.8), layout="constrained")
        axes = fig.subplots(1, len(attacks), squeeze=False)[0]
        for ax, attack in zip(axes, attacks):
            groups = [g for g in minimal if g.attack == attack]
            norm = groups[0].norm or "l2"
            key = norm if norm in ("l2", "linf", "l0") else "l2"
            for j, g in enumerate(groups):
                data = [v for v in g.values[key] if v is not None and math.isfinite(v)]
                if not data:
                    continue
                st = styles[g.model]
                bp = ax.boxplot([data], positions=[j], widths=0.55, patch_artist=True, showfliers=False,
                                medianprops={"color": "black"})
                bp["boxes"][0].set_facecolor(st.color)
                bp["boxes"][0].set_alpha(0.35)
                ax.scatter(j + rng.uniform(-0.18, 0.18, len(data)), data, s=9, color=st.color, marker=st.marker,
                           alpha=0.8, linewidths=0)
            ax.set_xticks(range(len(groups)), [text(g.model, 14) for g in groups])
            unit = "features changed" if key == "l0" else "input units"
            ax.set_ylabel(f"minimal {NORM_NAMES.get(key, key)} perturbation ({unit})")
            ax.set_title(f"{text(attack, 30)}: minimal perturbations\n(successful within eps \u2264 {groups[0].strength:.3g})")
        fig.suptitle("Minimal adversarial perturbation per sample (smaller = less robust)", fontsize=11)
        return to_data_uri(fig)
