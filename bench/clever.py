"""CLEVER speed: medrobust.clever vs the Adversarial Robustness Toolbox's clever_u on the same model and images.

Settings: ART's defaults for clever_u (n_batches 10, batch_size 5, radius 5, L2; ART also draws its points from
a pool of 10 x batch_size per image). Model: the derm demo's small-cnn (runs/demo/models, ``make demo``); data:
the first ``--n`` derm-synth test images 3x64x64 (three classes, so two target classes per image).

ART is not a dependency; install it in a scratch folder and run by hand:

    .venv/bin/python -m pip install --no-deps --target /tmp/art adversarial-robustness-toolbox
    PYTHONPATH=/tmp/art .venv/bin/python bench/clever.py --write

Without ART the script times medrobust alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import medrobust
from medrobust.data.base import iterate_batches
from medrobust.metrics.clever import clever_estimate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
BEGIN, END = "<!-- section:clever-cpu -->", "<!-- /section:clever-cpu -->"


def art_clever(model, x: torch.Tensor, n_batches: int, batch_size: int, radius: float) -> tuple[list[float], float] | None:
    try:
        from art.estimators.classification import PyTorchClassifier
        from art.metrics import clever_u
    except ImportError as err:
        print(f"ART not importable ({err}); timing medrobust alone")
        return None
    classifier = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                   nb_classes=3, clip_values=model.bounds, device_type="cpu")
    scores = []
    t0 = time.perf_counter()
    for i in range(x.shape[0]):
        scores.append(float(clever_u(classifier, x[i].numpy(), nb_batches=n_batches, batch_size=batch_size,
                                     radius=radius, norm=2, pool_factor=10, verbose=False)))
    return scores, (time.perf_counter() - t0) / x.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="images (default 20)")
    parser.add_argument("--art-n", type=int, default=10, help="images for ART, the slow one (default 10)")
    parser.add_argument("--write", action="store_true", help="replace this script's section of bench/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    folder = next((ROOT / "runs" / "demo" / "models").glob("small-cnn-*"))
    model, card = medrobust.load_model(folder)
    batch = next(iterate_batches(medrobust.load_dataset("derm-synth", split="test"), args.n, args.n))
    x, y = batch.x, batch.y
    settings = {"n_batches": 10, "batch_size": 5, "radius": 5.0}
    clever_estimate(model, x[:2], y[:2], **settings)  # warm-up
    times = []
    for rep in range(3):
        t0 = time.perf_counter()
        est = clever_estimate(model, x, y, **settings, generator=torch.Generator().manual_seed(rep))
        times.append((time.perf_counter() - t0) / args.n)
    ours = statistics.median(times)
    print(f"medrobust: {ours:.4f} s/image (median of 3), fits {sorted(set(est.fit))}, flagged {int(est.flagged.sum())}")
    art = art_clever(model, x[: args.art_n], **settings)
    lines = [
        BEGIN,
        "## CLEVER speed (CPU)",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; command: `PYTHONPATH=/tmp/art .venv/bin/python bench/clever.py --write`",
        f"- machine: {platform.system()} {platform.release()} {platform.machine()}; os.cpu_count()={os.cpu_count()}; "
        f"torch {torch.__version__}, threads 2; 1-minute load {os.getloadavg()[0]:.2f}",
        f"- model: derm demo small-cnn `{folder.relative_to(ROOT)}`; first {args.n} derm-synth test images 3x64x64, "
        "3 classes (2 target classes per image)",
        "- settings: ART's clever_u defaults: n_batches 10, batch_size 5, radius 5, L2 (ART: pool_factor 10)",
        "",
        "| implementation | images | s / image | ratio to medrobust | median score |",
        "|---|---:|---:|---:|---:|",
        f"| medrobust.clever (batched over images and points) | {args.n} | {ours:.4f} | 1.0 | "
        f"{float(est.scores[est.scores > 0].median()):.4f} |",
    ]
    if art is not None:
        scores, seconds = art
        mine = est.scores[: args.art_n].numpy()
        ok = np.asarray([f != "misclassified" for f in est.fit[: args.art_n]])
        ratio = seconds / ours
        print(f"ART: {seconds:.4f} s/image; medrobust is {ratio:.1f}x faster")
        lines.append(f"| ART 1.x clever_u (one image at a time) | {args.art_n} | {seconds:.4f} | {ratio:.1f} | "
                     f"{float(np.median(np.asarray(scores)[ok])):.4f} |")
        lines += ["", f"Per-image scores on the first {args.art_n} images (both are random estimates; ART scores "
                  "misclassified images against the predicted class, medrobust gives them 0):", "",
                  "| image | medrobust | ART |", "|---:|---:|---:|"]
        lines += [f"| {i} | {mine[i]:.4f} | {scores[i]:.4f} |" for i in range(args.art_n)]
    lines += ["", END]
    print("\n".join(lines))
    if args.write:
        text = RESULTS.read_text()
        block = "\n".join(lines)
        if BEGIN in text:
            text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
