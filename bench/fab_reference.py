"""Cross-check medrobust's FAB-T against the authors' own FAB (the AutoAttack code, packaged on PyPI as pyautoattack).

FAB-T is the third member of AutoAttack's standard ensemble. This script runs, on the same models and images,
medrobust's ``FAB(targeted=True)`` and the authors' ``FABAttack_PT`` (targeted, 100 iterations, alpha_max 0.1,
eta 1.05, beta 0.9, one run per target class without random start: AutoAttack's settings), each as a
minimal-norm attack: per sample the smallest Linf or L2 perturbation that misclassifies it, over the target
classes ranked 1..min(9, K - 1) below the true class. Compared: the median minimal norm over the correctly
classified images (must agree within 5%), and the robust accuracy at each of the derm demo's strengths (must
agree within 1 point). Robust accuracy at eps is the share of images classified correctly with no adversarial
found within eps: that is what either implementation's AutoAttack mode returns (each sample's runs are
independent of the others, and with one restart nothing is random). As a check of medrobust's eps mode, the
attack is also run with eps at the headline strength (``detailed(..., eps=...)``, as AutoAttack calls it); its
robust accuracy must not exceed the one read off the minimal norms. It may be lower: ``Attack`` clips the closest
adversarial found beyond eps to eps, and the clipped point sometimes still fools the model (the authors' code
returns x there).

``--timing`` also times medrobust's standard AutoAttack (demo settings: Square with 1000 queries) per member at
the demo's AutoAttack strengths; "before" is the cascade without FAB-T (what the standard version ran before
FAB-T joined it): the total less FAB-T's time.

pyautoattack is not a dependency. Install it in a scratch folder and run by hand:

    .venv/bin/python -m pip install --no-deps --target /tmp/aa pyautoattack
    PYTHONPATH=/tmp/aa .venv/bin/python bench/fab_reference.py --timing --write

Models: the derm demo's three checkpoints (runs/demo/models, made by ``make demo``) on its first N test images.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, ClassVar

import torch
from results_md import write_section

import medrobust
from medrobust.attacks import FAB, AutoAttack
from medrobust.attacks.base import Attack, flat_norm
from medrobust.data.base import iterate_batches

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## FAB-T cross-check (bench/fab_reference.py)"
BEGIN, END = "<!-- section:fab-reference -->", "<!-- /section:fab-reference -->"
# the derm demo's strengths (examples/derm-demo.yaml): Linf in 1/255 steps, L2 for DeepFool, C&W and APGD-L2
STRENGTHS = {"linf": [0.5 / 255, 1 / 255, 2 / 255, 4 / 255], "l2": [0.1, 0.25, 0.5, 1.0]}
HEADLINE = {"linf": 2 / 255, "l2": 0.25}
AUTOATTACK_EPS = [2 / 255, 4 / 255]
REF_NORM = {"linf": "Linf", "l2": "L2"}


def derm_models() -> dict[str, Path]:
    out = {}
    for card in sorted((ROOT / "runs" / "demo" / "models").glob("*/model.json")):
        out[json.loads(card.read_text())["name"]] = card.parent
    if not out:
        sys.exit("no demo checkpoints under runs/demo/models: run `make demo` first")
    return out


def minimal_norms(model, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, norm: str) -> torch.Tensor:
    """Per sample: the norm of x_adv - x where x_adv misclassifies, inf where it does not; NaN where x itself is
    misclassified (not attacked)."""
    with torch.no_grad():
        clean_ok = model(x).argmax(1) == y
        fooled = model(x_adv).argmax(1) != y
    size = flat_norm(x_adv - x, norm)
    size = torch.where(fooled, size, torch.full_like(size, math.inf))
    return torch.where(clean_ok, size, torch.full_like(size, math.nan))


def reference_fab_t(model, x: torch.Tensor, y: torch.Tensor, norm: str, k: int, steps: int) -> torch.Tensor:
    """The authors' FAB-T: one run per target class (2nd, 3rd, ... largest logit), AutoAttack's settings;
    per sample the smallest norm over the targets (inf: none found)."""
    from pyautoattack.fab_pt import FABAttack_PT

    targets = min(9, k - 1)
    fab = FABAttack_PT(
        model,
        norm=REF_NORM[norm],
        n_restarts=1,
        n_iter=steps,
        targeted=True,
        n_target_classes=targets,
        device=x.device,
        seed=0,
    )
    found = []
    for target_class in range(2, targets + 2):
        fab.target_class = target_class
        adv = fab.attack_single_run(x, y, use_rand_start=False, is_targeted=True)
        found.append(minimal_norms(model, x, y, adv, norm))
    return torch.stack(found).amin(0)


def robust_at(norms: torch.Tensor, eps: float) -> float:
    """Share of all images classified correctly with no adversarial within eps (NaN: misclassified clean)."""
    robust = ~torch.isnan(norms) & (norms > eps * (1 + 1e-6))
    return float(robust.float().mean())


def median(norms: torch.Tensor) -> float:
    """Median over the correctly classified images; inf counts as the largest value."""
    kept = norms[~torch.isnan(norms)]
    return float(kept.median()) if kept.numel() else math.nan


def cross_check(folders: dict[str, Path], x: torch.Tensor, y: torch.Tensor, steps: int) -> list[dict[str, Any]]:
    rows = []
    for model_name, folder in folders.items():
        model, card = medrobust.load_model(folder)
        model.eval().requires_grad_(False)  # both sides: input gradients only
        with torch.no_grad():
            clean = float((model(x).argmax(1) == y).float().mean())
        for norm in ("linf", "l2"):
            attack = FAB(norm=norm, steps=steps, targeted=True, target_classes=9)
            t0 = time.perf_counter()
            adv = attack(model, "classification", x, y, generator=torch.Generator().manual_seed(0))
            t_ours = time.perf_counter() - t0
            ours = minimal_norms(model, x, y, adv, norm)
            t0 = time.perf_counter()
            ref = reference_fab_t(model, x, y, norm, card.num_classes, steps)
            t_ref = time.perf_counter() - t0
            eps = HEADLINE[norm]
            at_eps = attack.detailed(model, "classification", x, y, eps=eps, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                eps_mode = float((model(at_eps.x_adv).argmax(1) == y).float().mean())
            both = ~torch.isnan(ours) & torch.isfinite(ours) & torch.isfinite(ref)
            ratio = ours[both] / ref[both]
            rows.append(
                {
                    "model": model_name,
                    "norm": norm,
                    "n": x.shape[0],
                    "clean": clean,
                    "median_ours": median(ours),
                    "median_ref": median(ref),
                    "found_ours": int(torch.isfinite(ours).sum()),
                    "found_ref": int(torch.isfinite(ref).sum()),
                    "ratio_median": float(ratio.median()) if ratio.numel() else math.nan,
                    "ratio_low": float(ratio.min()) if ratio.numel() else math.nan,
                    "ratio_high": float(ratio.max()) if ratio.numel() else math.nan,
                    "robust": {f"{e:.6g}": (robust_at(ours, e), robust_at(ref, e)) for e in STRENGTHS[norm]},
                    "eps_mode": (eps, eps_mode, robust_at(ours, eps)),
                    "seconds_ours": t_ours,
                    "seconds_ref": t_ref,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


@dataclass(frozen=True)
class Timed(Attack):
    """Runs ``inner`` and adds its wall time to ``log[name]``."""

    inner: Any = None
    name: str = ""
    log: ClassVar[dict[str, float]] = {}

    @property
    def threat_norm(self) -> str:
        return self.inner.threat_norm

    def run(self, model, task, x, y, *, eps, generator):
        t0 = time.perf_counter()
        out = self.inner.detailed(model, task, x, y, eps=eps, generator=generator)
        Timed.log[self.name] = Timed.log.get(self.name, 0.0) + time.perf_counter() - t0
        return out


@dataclass(frozen=True)
class TimedAutoAttack(AutoAttack):
    def members(self, family=None):
        return [(n, Timed(inner=m, name=n)) for n, m in super().members(family)]


def timing(folders: dict[str, Path], x: torch.Tensor, y: torch.Tensor, queries: int) -> list[dict[str, Any]]:
    """The standard cascade once per model and strength, each member timed. The cascade before FAB-T joined it
    ran the same APGD members and Square, so its time is the total less FAB-T's (exact where FAB-T broke no
    sample; else Square would also have run on those)."""
    rows = []
    for model_name, folder in folders.items():
        model, _ = medrobust.load_model(folder)
        model.eval()
        for eps in AUTOATTACK_EPS:
            Timed.log.clear()
            attack = TimedAutoAttack(norm="linf", queries=queries)
            t0 = time.perf_counter()
            result = attack.detailed(model, "classification", x, y, eps=eps, generator=torch.Generator().manual_seed(0))
            total = time.perf_counter() - t0
            with torch.no_grad():
                robust = float((model(result.x_adv).argmax(1) == y).float().mean())
            broken = {m: result.info["broken_by"].count(m) for m in ("apgd-ce", "apgd-t", "fab-t", "square")}
            rows.append(
                {
                    "model": model_name,
                    "eps": eps,
                    "n": x.shape[0],
                    "seconds": total,
                    "members": dict(Timed.log),
                    "robust": robust,
                    "broken_by": broken,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict[str, Any]], times: list[dict[str, Any]], n: int, queries: int, steps: int) -> str:
    lines = [
        SECTION,
        "",
        f"{date.today().isoformat()}, {platform.machine()} CPU ({torch.get_num_threads()} threads), torch "
        f"{torch.__version__}. Command: `PYTHONPATH=/tmp/aa .venv/bin/python bench/fab_reference.py "
        f"{' '.join(sys.argv[1:])}`.",
        f"derm-synth demo models, first {n} test images. `ours`: medrobust `FAB(targeted=True)`; `ref`: the "
        f"authors' `FABAttack_PT` (pyautoattack 0.2.0, the AutoAttack code), targeted; both {steps} iterations and "
        "one run per target class (all K - 1 = 2 others here), no random start, minimal norm over the targets. "
        "Norms in input units ([0, 1] images; Linf also in 1/255). `ratio`: ours / ref per image (median [min, "
        "max]) over the images both fooled. Robust accuracy at each demo strength, ours / ref; `eps mode`: ours "
        "run with eps at the headline strength (as AutoAttack runs it) vs the same read off its minimal norms (may "
        "be lower: a closest adversarial beyond eps, clipped to eps, can still fool the model). Acceptance: medians "
        "within 5%, robust accuracies within 0.01, eps mode <= minimal norms.",
        "",
        "| model | norm | clean | median ours | median ref | fooled ours / ref | ratio | robust accuracy ours / ref "
        "| eps mode | s ours / s ref |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        scale = 255 if r["norm"] == "linf" else 1
        unit = "/255" if r["norm"] == "linf" else ""
        med_ok = abs(r["median_ours"] / r["median_ref"] - 1) <= 0.05
        acc = []
        for e, (a, b) in r["robust"].items():
            flag = "" if abs(a - b) <= 0.01 + 1e-9 else " **FAIL**"
            acc.append(f"{float(e) * scale:.3g}{unit}: {a:.2f} / {b:.2f}{flag}")
        eps, mode, derived = r["eps_mode"]
        lines.append(
            f"| {r['model']} | {r['norm']} | {r['clean']:.2f} | {r['median_ours'] * scale:.4g}{unit} "
            f"| {r['median_ref'] * scale:.4g}{unit}{'' if med_ok else ' **FAIL**'} "
            f"| {r['found_ours']} / {r['found_ref']} "
            f"| {r['ratio_median']:.4f} [{r['ratio_low']:.3f}, {r['ratio_high']:.3f}] | {'; '.join(acc)} "
            f"| {eps * scale:.3g}{unit}: {mode:.2f} vs {derived:.2f}{'' if mode <= derived + 1e-9 else ' **FAIL**'} "
            f"| {r['seconds_ours']:.0f} / {r['seconds_ref']:.0f} |"
        )
    if times:
        lines += [
            "",
            f"Standard AutoAttack (Linf, APGD 100 steps, FAB-T 100 steps, Square {queries} queries) on the same "
            f"{n} images, each member timed: wall seconds with FAB-T (now) and without it (before: the total less "
            "FAB-T's seconds, the same APGD members and Square; exact where FAB-T broke no sample), robust accuracy "
            "and the samples each member broke.",
            "",
            "| model | eps | s before | s now | s APGD-CE / APGD-T / FAB-T / Square | robust | broken by APGD-CE / "
            "APGD-T / FAB-T / Square |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in times:
            m, b = t["members"], t["broken_by"]
            names = ("apgd-ce", "apgd-t", "fab-t", "square")
            parts = " / ".join(f"{m.get(k, 0.0):.0f}" for k in names)
            lines.append(
                f"| {t['model']} | {t['eps'] * 255:.0f}/255 | {t['seconds'] - m.get('fab-t', 0.0):.0f} "
                f"| {t['seconds']:.0f} | {parts} | {t['robust']:.2f} | {' / '.join(str(b[k]) for k in names)} |"
            )
    return "\n".join(lines) + "\n"


def write(text: str) -> None:
    """Replace this script's section of bench/RESULTS.md (between its markers), keeping every other section."""
    write_section(BEGIN, END, [BEGIN, text.rstrip(), END])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100, help="FAB iterations, both sides (AutoAttack: 100)")
    parser.add_argument("--queries", type=int, default=1000, help="Square's queries in --timing (the demo's 1000)")
    parser.add_argument("--timing", action="store_true", help="also time the standard AutoAttack before/after")
    parser.add_argument("--write", action="store_true", help="write the tables into bench/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch = next(iterate_batches(medrobust.load_dataset("derm-synth", split="test"), args.n, args.n))
    folders = derm_models()
    rows = cross_check(folders, batch.x, batch.y, args.steps)
    times = timing(folders, batch.x, batch.y, args.queries) if args.timing else []
    text = table(rows, times, args.n, args.queries, args.steps)
    print(text)
    if args.write:
        write(text)


if __name__ == "__main__":
    main()
