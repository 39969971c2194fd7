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
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from medrobust.report.analysis import METRIC_AXES, METRIC_NAMES, NORM_NAMES, Curve, Gallery, Headline, SizeGroup

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType  # matplotlib >= 3.8

OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#E69F00", "#56B4E9", "#CC79A7", "#000000", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
STYLE: dict[RcKeyType, Any] = {
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
        ax.annotate(
            label,
            (x, y),
            xytext=(x + (0.04 if right else -0.04), ty),
            textcoords="data",
            fontsize=8,
            ha="left" if right else "right",
            va="center",
            arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6, "shrinkB": 4},
        )


def headline_figure(heads: list[Headline], styles: dict[str, ModelStyle], metric: str = "accuracy") -> str:
    """x = clean score, y = worst-case score over the attacks of a norm at its reference strength."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(4.0 * len(heads) + 0.6, 4.9), layout="constrained")
        axes = fig.subplots(1, len(heads), squeeze=False)[0]
        for ax, h in zip(axes, heads):
            ax.plot([0, 1], [0, 1], ls=":", color="0.55", lw=1)
            ax.text(
                0.5, 0.53, "no loss (y = x)", color="0.45", fontsize=7, ha="center", rotation=38, rotation_mode="anchor"
            )
            points = []
            for r in h.rows:
                if r["clean"] is None or r["worst"] is None:
                    continue
                st = styles[r["model"]]
                # 95% intervals of both scores as error bars (Wilson or bootstrap, from the summary)
                cx, wy = r.get("clean_ci"), r.get("worst_ci")
                if cx or wy:
                    ax.errorbar(
                        [r["clean"]],
                        [r["worst"]],
                        xerr=[[r["clean"] - cx[0]], [cx[1] - r["clean"]]] if cx else None,
                        yerr=[[r["worst"] - wy[0]], [wy[1] - r["worst"]]] if wy else None,
                        fmt="none",
                        ecolor=st.color,
                        elinewidth=1,
                        capsize=2,
                        alpha=0.8,
                        zorder=2,
                    )
                ax.scatter(
                    [r["clean"]],
                    [r["worst"]],
                    s=80,
                    color=st.color,
                    marker=st.marker,
                    edgecolor="black",
                    linewidth=0.6,
                    zorder=3,
                )
                points.append((r["clean"], r["worst"], text(r["model"], 24)))
            _label_points(ax, points)
            ax.set_xlim(-0.02, 1.02)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel(f"clean {METRIC_AXES.get(metric, metric)}")
            ax.set_ylabel(f"worst-case {METRIC_NAMES.get(metric, metric)}, {NORM_NAMES.get(h.norm, h.norm)} attacks")
            ax.set_title(
                f"{NORM_NAMES.get(h.norm, h.norm)} attacks at eps = {h.strength:.4g} (input units)\n"
                f"worst case over {len(h.attacks)}: {text(', '.join(h.attacks), 40)}"
            )
        fig.legend(handles=_model_handles(styles), loc="outside lower center", ncols=min(len(styles), 6), frameon=False)
        fig.suptitle("Generalizability (x) vs robustness (y): one point per model, bars: 95% intervals", fontsize=11)
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
                if len(series.get("band", [])) >= 2:  # the 95% interval of each point, as a shaded band
                    bx, blo, bhi = zip(*series["band"])
                    ax.fill_between(bx, blo, bhi, color=st.color, alpha=0.12, linewidth=0)
                if series["noise"]:
                    any_noise = True
                    xs, ys = zip(*series["noise"])
                    ax.plot(xs, ys, color=st.color, ls="--", lw=1.2, alpha=0.8)
            title = text(c.label, 48)
            if c.kind == "worst_case":
                title += f" (per sample, over all {NORM_NAMES.get(c.norm or '', c.norm)} attacks)"
            elif c.kind == "attack":
                title += f" ({NORM_NAMES.get(c.norm or '', c.norm)} attack)"
            else:
                title += " (corruption)"
            ax.set_title(title)
            ax.set_xlabel(c.axis)
            ax.set_ylabel(METRIC_AXES.get(metric, metric))
            ax.set_ylim(-0.02, 1.02)
            ax.xaxis.set_major_locator(MaxNLocator(5))
        for ax in axes[len(curves) :]:
            ax.set_visible(False)
        handles = _model_handles(styles)
        handles.append(Line2D([], [], color="0.3", ls="-", label="attack / corruption"))
        if any_noise:
            handles.append(
                Line2D([], [], color="0.3", ls="--", label="Gaussian noise, same per-sample L2 as the attack")
            )
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), frameon=False)
        fig.suptitle(
            f"Robustness curves: {METRIC_NAMES.get(metric, metric)} vs perturbation strength (strength 0 = clean)",
            fontsize=11,
        )
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
            bp = ax.boxplot(
                [data],
                positions=[pos],
                widths=width * 0.85,
                patch_artist=True,
                showfliers=True,
                flierprops={"markersize": 2, "markeredgecolor": styles[g.model].color},
                medianprops={"color": "black"},
            )
            for patch in bp["boxes"]:
                patch.set_facecolor(styles[g.model].color)
                patch.set_alpha(0.75)
    if log_scale and positive and max(positive) / min(positive) > 20:
        ax.set_yscale("log")
    ax.set_xlim(-0.6, len(groups) - 0.4)


def perceptibility_figure(
    at_ref: list[SizeGroup], styles: dict[str, ModelStyle], which: str = "successful"
) -> str | None:
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
                bp = ax.boxplot(
                    [data],
                    positions=[j],
                    widths=0.55,
                    patch_artist=True,
                    showfliers=False,
                    medianprops={"color": "black"},
                )
                bp["boxes"][0].set_facecolor(st.color)
                bp["boxes"][0].set_alpha(0.35)
                ax.scatter(
                    j + rng.uniform(-0.18, 0.18, len(data)),
                    data,
                    s=9,
                    color=st.color,
                    marker=st.marker,
                    alpha=0.8,
                    linewidths=0,
                )
            ax.set_xticks(range(len(groups)), [text(g.model, 14) for g in groups])
            ax.ticklabel_format(axis="y", useOffset=False, style="plain")
            budget = groups[0].strength
            if key in ("l2", "linf"):
                top = max([budget, *(v for g in groups for v in g.values[key] if v is not None and math.isfinite(v))])
                ax.set_ylim(0, 1.1 * top)  # from zero: a tight range would magnify float noise at the cut-off
                ax.axhline(budget, color="0.4", lw=0.8, ls=":")
                ax.annotate(
                    "budget (cut-off)",
                    (1.0, budget),
                    xycoords=("axes fraction", "data"),
                    ha="right",
                    va="bottom",
                    fontsize=7,
                    color="0.3",
                )
            unit = "features changed" if key == "l0" else "input units"
            ax.set_ylabel(f"minimal {NORM_NAMES.get(key, key)} perturbation ({unit})")
            ax.set_title(
                f"{text(attack, 30)}: minimal perturbations\n"
                f"(cut off at the largest budget, eps = {groups[0].strength:.3g})"
            )
        fig.suptitle("Minimal adversarial perturbation per sample (smaller = less robust)", fontsize=11)
        return to_data_uri(fig)


# --- gallery ----------------------------------------------------------------------------------------------

CHANGED = "#D55E00"  # Okabe-Ito vermilion: a prediction the perturbation changed
GALLERY_CHUNK = 4  # samples per gallery figure
LEGEND_MAX = 12


def sample_chunks(samples: list[int], size: int = GALLERY_CHUNK) -> list[list[int]]:
    """The gallery's samples in groups of ``size``, one figure each, so no figure grows without bound."""
    return [samples[k : k + size] for k in range(0, len(samples), size)] or [[]]


def _structure_colours(num_classes: int) -> np.ndarray:
    """RGBA per structure 1..K-1: Okabe-Ito for up to 8 structures, else evenly spaced hues (tab20, then HSV)."""
    n = max(num_classes - 1, 1)
    if n <= len(OKABE_ITO):
        return np.array([to_rgba(c) for c in OKABE_ITO[:n]])
    cmap = matplotlib.colormaps["tab20" if n <= 20 else "hsv"]
    return np.array([cmap(k / (20 if n <= 20 else n)) for k in range(n)])


def _slice_of(a: np.ndarray, index: int | None) -> np.ndarray:
    return a if index is None else a[..., index]


def _upright(a: np.ndarray, up: bool) -> np.ndarray:
    """An RAS slice (first axis right, second anterior or superior) turned so the second axis points up and the
    first to the right (neurological convention); other data is drawn as stored."""
    return np.rot90(a, axes=(0, 1)) if up else a


def _plane(a: np.ndarray, index: int | None = None, up: bool = False) -> np.ndarray:
    """(C, *spatial) -> (H, W) or (H, W, 3) for display; a volume (C, D, H, W) shows slice ``index`` of its last
    axis (the middle one if None)."""
    if a.ndim == 4:
        a = a[..., a.shape[-1] // 2 if index is None else index]
    if a.ndim == 3 and a.shape[0] in (1, 3):
        a = a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)
    elif a.ndim != 2:
        a = a[0]
    return _upright(a, up)


def _show_input(ax, x: np.ndarray, bounds: tuple[float, float], index: int | None = None, up: bool = False) -> None:
    lo, hi = bounds
    img = np.clip((_plane(x, index, up) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")


def _show_delta(ax, delta: np.ndarray, index: int | None = None, up: bool = False) -> float:
    """Diverging map (grey = no change), symmetric around 0 with range +-max|delta|; returns that range."""
    d = _plane(delta, index, up)
    m = float(np.nan_to_num(np.abs(d)).max(initial=0.0))
    scale = m if m > 0 else 1.0
    if d.ndim == 3:  # colour: 0.5 + delta / (2 max|delta|), so grey is no change
        ax.imshow(np.clip(0.5 + d / (2 * scale), 0, 1), interpolation="nearest")
    else:
        ax.imshow(d, cmap="PuOr", vmin=-scale, vmax=scale, interpolation="nearest")
    return m


def _overlay(ax, x, labels, bounds, colours: np.ndarray, index: int | None = None, up: bool = False) -> None:
    _show_input(ax, x, bounds, index, up)
    if labels is None:
        return
    lab = _upright(_slice_of(labels, index if labels.ndim == 3 else None), up).astype(np.int64)
    rgba = colours[(lab - 1) % len(colours)]
    rgba[..., 3] = np.where(lab > 0, 0.45, 0.0)
    ax.imshow(rgba, interpolation="nearest")


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.grid(False)


def _display_slice(g: Gallery, i: int) -> int | None:
    """For a volume, the slice of the last axis to show: the one with the most foreground in the ground truth
    (segmentation) or the middle one; None for 2D inputs."""
    x = g.image[i]
    if x.ndim != 4:
        return None
    label = g.label.get(i) if g.dense else None
    if label is not None and label.ndim == 3 and (label > 0).any():
        return int((label > 0).sum(axis=(0, 1)).argmax())
    return x.shape[-1] // 2


def gallery_figure(g: Gallery, samples: list[int] | None = None) -> str:
    """One figure for ``samples`` (default: all) of one model. Rows: clean, then each perturbation at its
    reference strength. Per sample the columns are the perturbation (diverging colours, range given), the
    perturbed input and, for segmentation, the predicted label map over it (clean row: ground truth, original
    input, clean prediction). Classification predictions are written under each input, in vermilion where the
    perturbation changed them; volumes show one slice (the one with the most foreground)."""
    samples = g.samples if samples is None else samples
    seg = g.dense
    per = 3 if seg else 2
    names = list(g.class_names)
    colours = _structure_colours(len(names))
    bounds = g.bounds
    lo, hi = bounds
    up = g.orientation == "RAS"

    def cls_name(k: Any) -> str:
        return text(names[k] if isinstance(k, int) and 0 <= k < len(names) else k, 22)

    n_rows, n_cols = 1 + len(g.rows), max(per * len(samples), 1)
    with matplotlib.rc_context({**STYLE, "font.size": 7, "axes.titlesize": 7}):
        fig = Figure(figsize=(1.45 * n_cols + 0.9, 1.5 * n_rows + 0.6), layout="constrained")
        axes = fig.subplots(n_rows, n_cols, squeeze=False)
        for ax in axes.flat:
            _bare(ax)
        for j, i in enumerate(samples):
            c0 = j * per
            x = g.image[i]
            k = _display_slice(g, i)
            sid = text(g.sample_ids.get(i, i), 24) + ("" if k is None else f" (slice {k})")
            # clean row
            if seg:
                _overlay(axes[0, c0], x, g.label.get(i), bounds, colours, k, up)
                axes[0, c0].set_title("ground truth")
                _show_input(axes[0, c0 + 1], x, bounds, k, up)
                axes[0, c0 + 1].set_title(f"input {sid}")
                _overlay(axes[0, c0 + 2], x, g.clean_pred.get(i), bounds, colours, k, up)
                axes[0, c0 + 2].set_title("prediction")
            else:
                axes[0, c0].set_title("perturbation")
                axes[0, c0].text(0.5, 0.5, "none", ha="center", va="center", transform=axes[0, c0].transAxes)
                _show_input(axes[0, c0 + 1], x, bounds, k, up)
                axes[0, c0 + 1].set_title(f"input {sid}")
                axes[0, c0 + 1].set_xlabel(f"true: {cls_name(g.label.get(i))}\npred: {cls_name(g.clean_pred.get(i))}")
            for r, row in enumerate(g.rows, start=1):
                if i not in row.delta:
                    continue
                delta = row.delta[i]
                m = _show_delta(axes[r, c0], delta, k, up)
                axes[r, c0].set_xlabel(f"perturbation, range \u00b1{m:.3g}")
                x_pert = np.clip(x + delta, lo, hi)
                _show_input(axes[r, c0 + 1], x_pert, bounds, k, up)
                if seg:
                    pred = row.pred.get(i)
                    _overlay(axes[r, c0 + 2], x_pert, pred, bounds, colours, k, up)
                    clean = g.clean_pred.get(i)
                    if pred is not None and clean is not None:
                        shown = _slice_of(pred != clean, k if pred.ndim == 3 else None)
                        where = "pixels" if k is None else "this slice's pixels"
                        axes[r, c0 + 2].set_xlabel(f"{100 * float(shown.mean()):.1f}% of {where} changed")
                else:
                    colour = CHANGED if row.changed.get(i) else "black"
                    axes[r, c0 + 1].set_xlabel(f"pred: {cls_name(row.pred.get(i))}", color=colour)
        axes[0, 0].set_ylabel("clean", fontsize=8)
        for r, row in enumerate(g.rows, start=1):
            axes[r, 0].set_ylabel(text(row.title, 26), fontsize=8)
        if seg and len(names) > 1:
            listed = list(enumerate(names))[1 : LEGEND_MAX + 1]
            handles = [Patch(color=colours[(k - 1) % len(colours)], alpha=0.6, label=text(n, 20)) for k, n in listed]
            if len(names) - 1 > LEGEND_MAX:
                handles.append(Patch(color="white", label=f"+ {len(names) - 1 - LEGEND_MAX} more"))
            fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), frameon=False)
        fig.suptitle(f"{text(g.model)}: examples (perturbation colours: range \u00b1 the value under each)", fontsize=9)
        return to_data_uri(fig)
