"""Benchmark of robust training: seconds per epoch of each defense relative to standard training.

Run by hand (not a test):

    .venv/bin/python bench/defenses.py              # print the table
    .venv/bin/python bench/defenses.py --write      # ... and replace this script's section of RESULTS.md

Each mode trains the defenses demo's architecture (small-cnn, width 16) on derm-synth's train split (1,200 images
3x64x64, batch 64) for ``--epochs`` epochs with ``medrobust.train`` (a fresh model, seed 0, 2 torch threads). The
time per epoch is the wall time of the whole ``train`` call divided by the epochs: it includes the per-epoch
validation scoring and the final test scoring, the same work in every mode. The ensemble mode crafts on the model
and on one static source, a small-cnn trained by the standard mode first. An untimed one-epoch run first generates
the data. Ratios are to standard training's seconds per epoch.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from results_md import write_section

from medrobust.cells import file_digest
from medrobust.train import TrainSettings, train

BEGIN, END = "<!-- section:defenses-cpu -->", "<!-- /section:defenses-cpu -->"
EPS = 2 / 255
MODES = [
    ("standard", {}),
    ("adversarial, PGD 5 steps (the demo's)", {"kind": "adversarial", "method": "pgd", "eps": EPS, "steps": 5}),
    ("adversarial, PGD 7 steps", {"kind": "adversarial", "method": "pgd", "eps": EPS, "steps": 7}),
    ("adversarial, fast (FGSM with random start)", {"kind": "adversarial", "method": "fast", "eps": EPS}),
    ("adversarial, TRADES 5 steps", {"kind": "adversarial", "method": "trades", "eps": EPS, "steps": 5}),
    (
        "ensemble adversarial, fast, 1 source",
        {"kind": "ensemble_adversarial", "method": "fast", "eps": EPS, "sources": ["standard"]},
    ),
    ("Jacobian, 1 projection", {"kind": "jacobian", "weight": 0.05, "projections": 1}),
    ("Jacobian, 3 projections", {"kind": "jacobian", "weight": 0.05, "projections": 3}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="replace this script's section of bench/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows, base = [], None
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        # untimed warm-up: generates and caches derm-synth's splits, so no mode pays for the data
        train(TrainSettings(architecture="small-cnn", dataset="derm-synth", epochs=1, seed=0))
        sources = {}
        for label, defense in MODES:
            settings = TrainSettings(
                architecture="small-cnn", dataset="derm-synth", epochs=args.epochs, seed=0, defense=defense
            )
            use = {k: sources[k] for k in defense.get("sources", [])}
            t0 = time.perf_counter()
            model, card = train(settings, Path(tmp) / label.replace(" ", "_"), sources=use)
            per_epoch = (time.perf_counter() - t0) / args.epochs
            if not defense:
                base = per_epoch
                folder = Path(tmp) / label.replace(" ", "_")
                sources["standard"] = (model, file_digest(folder / card.weights))
            assert base is not None
            ratio = per_epoch / base
            print(f"{label}: {per_epoch:.2f} s/epoch, {ratio:.2f}x standard")
            rows.append(f"| {label} | {per_epoch:.2f} | {ratio:.2f} | {card.metrics['test']['accuracy']:.3f} |")
    lines = [
        BEGIN,
        "## Robust training cost (CPU, bench/defenses.py)",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; command: `.venv/bin/python bench/defenses.py "
        f"--epochs {args.epochs} --write`",
        f"- machine: {platform.system()} {platform.release()} {platform.machine()}; os.cpu_count()={os.cpu_count()}; "
        f"torch {torch.__version__}, threads 2; 1-minute load at start / end {load:.2f} / {os.getloadavg()[0]:.2f}",
        f"- small-cnn on derm-synth train (1,200 images 3x64x64, batch 64), {args.epochs} epochs per mode, eps "
        "2/255 Linf; seconds per epoch include the per-epoch validation and the final test scoring (the same for "
        "every mode; robust checkpoint selection is off)",
        "",
        "| mode | s / epoch | relative to standard | test accuracy after these epochs |",
        "|---|---:|---:|---:|",
        *rows,
        "",
        "PGD adversarial training costs about its steps + 1 forward-backward passes per batch; the fast variant "
        "two; TRADES steps + 2 with a KL pass; ensemble adversarial training one crafting pass on the model or a "
        "source in turn; the Jacobian penalty one extra double-backward pass per projection.",
        "",
        END,
    ]
    print("\n".join(lines))
    if args.write:
        write_section(BEGIN, END, lines)


if __name__ == "__main__":
    main()
