"""Peak memory and time of a whole-volume attack through sliding-window inference (run by hand).

A 3D MONAI UNet (untrained weights: memory and time do not depend on them) on the 2-mm MNI152 volume
(99 x 117 x 95) through ``SlidingWindow`` with 64^3 windows, attacked by PGD (Linf, 2 steps); once with
per-window checkpointing and once without. Each setting runs in its own process; peak memory is the rise of the
resident-set high-water mark (VmHWM, reset via /proc/self/clear_refs) during the attack. Appends a section to
bench/RESULTS.md.

    .venv/bin/python bench/sliding_window.py
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
MARK = "<!-- section:sliding-window-cpu -->"


def hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(checkpoint: bool) -> dict:
    import torch

    import medrobust
    from medrobust.data import load_dataset
    from medrobust.models import Model, build_network
    from medrobust.models.sliding import SlidingWindow

    torch.manual_seed(0)
    ds = load_dataset("mni152-tissue", split="test", mode="3d")
    x, y, _ = ds[0]
    x, y = x.unsqueeze(0), y.unsqueeze(0)
    net = build_network("unet", in_channels=1, num_classes=4, spatial_dims=3)
    model = Model(SlidingWindow(net, (64, 64, 64), sw_batch_size=2, overlap=0.25, checkpoint=checkpoint)).eval()
    with torch.no_grad():
        model(x)
    base = rss_mib()
    Path("/proc/self/clear_refs").write_text("5")
    t0 = time.perf_counter()
    x_adv = medrobust.attack("pgd", model, x, y, task="segmentation", eps=8 / 255, steps=2)
    seconds = time.perf_counter() - t0
    assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6
    return {"checkpoint": checkpoint, "shape": list(x.shape), "seconds": seconds, "peak_mib": hwm_mib() - base,
            "baseline_rss_mib": base}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2] == "1")))
        return
    rows = []
    for ckpt in (True, False):
        out = subprocess.run([sys.executable, __file__, "--worker", "1" if ckpt else "0"], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "2"})
        if out.returncode != 0:
            raise SystemExit(out.stderr)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1])
    import torch

    lines = [
        MARK,
        "## Sliding-window 3D attack (CPU)",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; command: `.venv/bin/python bench/sliding_window.py`",
        f"- machine: {platform.platform()}; CPUs: {os.cpu_count()}; torch {torch.__version__}",
        f"- volume: MNI152 2 mm, shape {rows[0]['shape']}; 3D MONAI UNet (channels 16-32-64-128, 1 residual unit), "
        "64^3 windows, sw_batch_size 2, overlap 0.25, Gaussian blending; PGD Linf eps 8/255, 2 steps",
        "",
        "| per-window checkpointing | attack time s | peak memory above the loaded model MiB |",
        "|---|---:|---:|",
        *[f"| {'yes' if r['checkpoint'] else 'no'} | {r['seconds']:.1f} | {r['peak_mib']:.0f} |" for r in rows],
        "",
        "<!-- /section:sliding-window-cpu -->",
    ]
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
    if MARK in text:
        start = text.index(MARK)
        end = text.index("<!-- /section:sliding-window-cpu -->") + len("<!-- /section:sliding-window-cpu -->")
        text = text[:start] + "\n".join(lines) + text[end:]
    else:
        text = text.rstrip() + "\n\n" + "\n".join(lines) + "\n"
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
