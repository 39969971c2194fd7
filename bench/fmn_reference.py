"""Cross-check medrobust's FMN attack against foolbox 3.3.4's implementation of the same paper.

FMN (Pintor et al., NeurIPS 2021) is a minimal-norm attack: it runs once and each strength is evaluated by clipping
the perturbation, in medrobust (``Attack.sweep``) as in foolbox (``MinimizationAttack.__call__``). On the derm
demo's three models and the first N test images this script runs both, in L2 and Linf, with the same parameters
(100 steps, step size 1 annealed to 0.01, gamma 0.05 annealed to 0.001, no initial attack), and reports:

- the median minimal norm over the samples classified correctly before the attack (a sample never fooled counts
  as infinitely robust), ours vs foolbox's; acceptance: within 5%;
- robust accuracy at each demo strength (L2: 0.1, 0.25, 0.5, 1.0; Linf: 0.5, 1, 2, 4 /255, those of
  examples/derm-demo.yaml); acceptance: within 1 point (0.01);
- seconds per call on the N images, and for reference those of DeepFool and C&W at the demo's settings.

foolbox 3.3.4's ``L2FMNAttack.project`` scales the perturbation by ``min(1, norms / norms)``, which is 1: the L2
ball is never enforced, so its L2 variant is a normalised gradient descent on the margin that keeps the smallest
adversarial iterate. Its L2 numbers are therefore shown twice: as shipped, and with that projection replaced by
the paper's (delta * min(1, eps / ||delta||_2)), patched in this process only. Acceptance for L2 is against the
patched foolbox; Linf needs no patch.

foolbox is not a dependency. Install it in a scratch folder and run by hand:

    .venv/bin/python -m pip install --no-deps --target /tmp/fb foolbox==3.3.4 eagerpy
    PYTHONPATH=/tmp/fb .venv/bin/python bench/fmn_reference.py --write

Models: the derm demo's checkpoints (runs/demo/models, made by ``medrobust demo`` / ``make demo``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from results_md import write_section

import medrobust
from medrobust.attacks import FMN, CarliniWagnerL2, DeepFool
from medrobust.attacks.base import clip_perturbation, flat_norm
from medrobust.data.base import iterate_batches

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## FMN cross-check (bench/fmn_reference.py)"
BEGIN, END = "<!-- section:fmn-reference -->", "<!-- /section:fmn-reference -->"
STRENGTHS = {
    "l2": [0.1, 0.25, 0.5, 1.0],
    "linf": [0.5 / 255, 1 / 255, 2 / 255, 4 / 255],
}
STEPS = 100


def derm_models() -> dict[str, Path]:
    out = {}
    for card in sorted((ROOT / "runs" / "demo" / "models").glob("*/model.json")):
        out[json.loads(card.read_text())["name"]] = card.parent
    if not out:
        sys.exit("no demo checkpoints under runs/demo/models: run `make demo` first")
    return out


def fixed_l2_project(self, x, x0, epsilon):
    """The L2 projection of the paper, for foolbox's eagerpy tensors: x0 + (x - x0) * min(1, eps / ||x - x0||)."""
    import eagerpy as ep
    from foolbox.devutils import atleast_kd, flatten

    norms = ep.maximum(flatten(x - x0).norms.l2(axis=-1), 1e-12)
    factor = atleast_kd(ep.minimum(1, epsilon / norms), x.ndim)
    return x0 + (x - x0) * factor


def foolbox_fmn(model, x, y, norm: str, patched: bool) -> torch.Tensor:
    """foolbox's FMN at its defaults (steps 100, step size 1 -> 0.01, gamma 0.05); returns the unclipped x_adv."""
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=model.bounds)
    cls = fb.attacks.L2FMNAttack if norm == "l2" else fb.attacks.LInfFMNAttack
    original = cls.project
    if patched:
        cls.project = fixed_l2_project
    try:
        attack = cls(steps=STEPS, max_stepsize=1.0, gamma=0.05)
        return attack.run(fmodel, x, fb.criteria.Misclassification(y))
    finally:
        cls.project = original


def timed(fn: Callable[..., torch.Tensor], *args, **kwargs) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def summarise(model, x, y, x_adv: torch.Tensor, norm: str, correct: torch.Tensor) -> dict:
    """Median minimal norm over the clean-correct samples (never fooled: inf) and robust accuracy per strength."""
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    size = flat_norm(x_adv - x, norm)
    size = torch.where(fooled, size, torch.full_like(size, math.inf))[correct]
    robust = []
    for eps in STRENGTHS[norm]:
        clipped = clip_perturbation(x, x_adv, eps, norm, model.bounds)
        with torch.no_grad():
            robust.append(float((model(clipped).argmax(1) == y).float().mean()))
    return {
        "median": float(size.median()),
        "unbroken": int(torch.isinf(size).sum()),
        "sizes": size,
        "robust": robust,
    }


def evaluate(folders: dict[str, Path], n: int, with_baselines: bool) -> list[dict]:
    dataset = medrobust.load_dataset("derm-synth", split="test")
    batch = next(iterate_batches(dataset, n, n))
    x, y = batch.x, batch.y
    rows = []
    for model_name, folder in folders.items():
        model, _ = medrobust.load_model(folder)
        model.eval()
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        seconds_baselines: dict[str, float] = {}
        median_baselines: dict[str, float] = {}
        if with_baselines:  # the demo's settings (examples/derm-demo.yaml)
            for name, baseline in (
                ("deepfool", DeepFool(steps=50)),
                ("cw", CarliniWagnerL2(steps=50, binary_search_steps=4)),
            ):
                out, seconds_baselines[name] = timed(baseline, model, "classification", x, y)
                median_baselines[name] = summarise(model, x, y, out, "l2", correct)["median"]
        for norm in ("l2", "linf"):
            ours, t_ours = timed(FMN(norm=norm, steps=STEPS), model, "classification", x, y)
            ref, t_ref = timed(foolbox_fmn, model, x, y, norm, patched=norm == "l2")
            row = {
                "model": model_name,
                "norm": norm,
                "n": n,
                "clean": float(correct.float().mean()),
                "ours": summarise(model, x, y, ours, norm, correct),
                "foolbox": summarise(model, x, y, ref, norm, correct),
                "seconds": {"ours": t_ours, "foolbox": t_ref, **seconds_baselines},
                "baseline_medians": median_baselines,
            }
            if norm == "l2":
                shipped, t_shipped = timed(foolbox_fmn, model, x, y, norm, patched=False)
                row["foolbox_shipped"] = summarise(model, x, y, shipped, norm, correct)
                row["seconds"]["foolbox_shipped"] = t_shipped
            a, b = row["ours"]["sizes"], row["foolbox"]["sizes"]
            both = torch.isfinite(a) & torch.isfinite(b)
            row["per_sample_ratio_median"] = float((a[both] / b[both]).median()) if bool(both.any()) else math.nan
            row["ours_smaller"] = int((a[both] < b[both] * 0.999).sum())
            row["foolbox_smaller"] = int((b[both] < a[both] * 0.999).sum())
            rows.append(row)
            printable = {k: v for k, v in row.items() if k not in ("ours", "foolbox", "foolbox_shipped")}
            for key in ("ours", "foolbox", "foolbox_shipped"):
                if key in row:
                    printable[key] = {k: v for k, v in row[key].items() if k != "sizes"}
            print(json.dumps(printable), flush=True)
    return rows


def check(row: dict) -> tuple[bool, bool]:
    """(median within 5%, every robust accuracy within 1 point) of ours against the (patched) foolbox."""
    a, b = row["ours"]["median"], row["foolbox"]["median"]
    median_ok = math.isfinite(a) and math.isfinite(b) and abs(a - b) <= 0.05 * b
    robust_ok = all(abs(p - q) <= 0.01 + 1e-9 for p, q in zip(row["ours"]["robust"], row["foolbox"]["robust"]))
    return median_ok, robust_ok


def fmt_eps(eps: float, norm: str) -> str:
    return f"{eps * 255:g}/255" if norm == "linf" else f"{eps:g}"


def fmt_size(value: float, norm: str) -> str:
    return f"{value:.4g} ({value * 255:.3f}/255)" if norm == "linf" else f"{value:.4g}"


def table(rows: list[dict], threads: int) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        SECTION,
        "",
        f"{stamp}; {platform.platform()}, {platform.machine()} CPU ({threads} torch thread(s); the machine was shared "
        f"with other jobs, so seconds are indicative), python {platform.python_version()}, torch {torch.__version__}. "
        f"Command: `PYTHONPATH=/tmp/fb .venv/bin/python bench/fmn_reference.py {' '.join(sys.argv[1:])}`.",
        "",
        f"medrobust `fmn` vs foolbox 3.3.4 `L2FMNAttack` / `LInfFMNAttack`, both {STEPS} steps, step size 1 -> 0.01, "
        "gamma 0.05 -> 0.001, no initial attack, float32, on the first N derm-synth test images. `median norm`: over "
        "the samples classified correctly before the attack (a sample never fooled counts as infinitely robust; "
        "`unbroken` counts them). foolbox's L2 projection ignores eps (it scales by `norms / norms`); the L2 rows "
        "compare against foolbox with the paper's projection patched in, and `as shipped` shows the unpatched one. "
        "`ratio`: median over samples both broke of ours / foolbox. `smaller`: samples where one is >0.1% smaller. "
        "Acceptance: median norm within 5%, robust accuracy within 0.01 at every strength.",
        "",
        "| model | norm | N | clean | median norm ours / foolbox (as shipped) | unbroken ours / foolbox | ratio "
        "| smaller ours / foolbox | robust accuracy at strengths: ours / foolbox | check |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        norm = r["norm"]
        shipped = f" ({r['foolbox_shipped']['median']:.4g})" if "foolbox_shipped" in r else ""
        robust = ", ".join(
            f"{fmt_eps(e, norm)}: {p:.2f} / {q:.2f}"
            for e, p, q in zip(STRENGTHS[norm], r["ours"]["robust"], r["foolbox"]["robust"])
        )
        median_ok, robust_ok = check(r)
        verdict = (
            "ok"
            if median_ok and robust_ok
            else "**FAIL**" + ("" if median_ok else " median") + ("" if robust_ok else " robust")
        )
        lines.append(
            f"| {r['model']} | {norm} | {r['n']} | {r['clean']:.2f} "
            f"| {fmt_size(r['ours']['median'], norm)} / {fmt_size(r['foolbox']['median'], norm)}{shipped} "
            f"| {r['ours']['unbroken']} / {r['foolbox']['unbroken']} | {r['per_sample_ratio_median']:.4f} "
            f"| {r['ours_smaller']} / {r['foolbox_smaller']} | {robust} | {verdict} |"
        )
    lines += [
        "",
        "Seconds per call on the N images (one call per model and norm; DeepFool 50 steps and C&W 50 steps x 4 binary "
        "search steps are the demo's L2 minimal attacks, timed once per model):",
        "",
        "| model | norm | FMN ours | FMN foolbox | foolbox as shipped | DeepFool | C&W "
        "| median L2: FMN / DeepFool / C&W |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["seconds"]

        def cell(key: str, s: dict = s) -> str:
            return f"{s[key]:.1f}" if key in s else "-"

        medians = "-"
        if r["norm"] == "l2" and r.get("baseline_medians"):
            b = r["baseline_medians"]
            medians = f"{r['ours']['median']:.4g} / {b['deepfool']:.4g} / {b['cw']:.4g}"
        lines.append(
            f"| {r['model']} | {r['norm']} | {cell('ours')} | {cell('foolbox')} | {cell('foolbox_shipped')} "
            f"| {cell('deepfool')} | {cell('cw')} | {medians} |"
        )
    return "\n".join(lines) + "\n"


def write(text: str) -> None:
    """Replace this script's section of bench/RESULTS.md (between its markers), keeping every other section."""
    write_section(BEGIN, END, [BEGIN, text.rstrip(), END])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared 2-core machine)")
    parser.add_argument("--models", nargs="*", help="only these demo models (default: all)")
    parser.add_argument("--no-baselines", action="store_true", help="skip timing DeepFool and C&W")
    parser.add_argument("--write", action="store_true", help="write the tables into bench/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folders = derm_models()
    if args.models:
        folders = {k: v for k, v in folders.items() if k in args.models}
    rows = evaluate(folders, args.n, not args.no_baselines)
    text = table(rows, args.threads)
    print(text)
    if args.write:
        write(text)


if __name__ == "__main__":
    main()
