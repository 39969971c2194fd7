"""Peak memory and time of a whole-volume attack through sliding-window inference (run by hand).

A 3D MONAI UNet (untrained weights: memory and time do not depend on them) on the 2-mm MNI152 volume
(99 x 117 x 95) through ``SlidingWindow`` with 64^3 windows, attacked by PGD (Linf, 2 steps); once with
per-window checkpointing and once without. Each setting runs in its own process. On the CPU, peak memory is the
rise of the resident-set high-water mark (VmHWM, reset via /proc/self/clear_refs) during the attack; on CUDA it is
the rise of torch.cuda.max_memory_allocated above the loaded model and volume. Writes (or replaces) the matching
section of bench/RESULTS.md.

    .venv/bin/python bench/sliding_window.py                      # CPU, 2-mm volume
    python bench/sliding_window.py --device cuda --resolution 1   # on a GPU machine, 1-mm volume
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


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


def worker(checkpoint: bool, device: str, resolution: int) -> dict:
    import torch

    import medrobust
    from medrobust.data import load_dataset
    from medrobust.models import Model, build_network
    from medrobust.models.sliding import SlidingWindow

    torch.manual_seed(0)
    cuda = device.startswith("cuda")
    ds = load_dataset("mni152-tissue", split="test", mode="3d", resolution=resolution)
    x, y, _ = ds[0]
    x, y = x.unsqueeze(0).to(device), y.unsqueeze(0).to(device)
    net = build_network("unet", in_channels=1, num_classes=4, spatial_dims=3).to(device)
    model = Model(SlidingWindow(net, (64, 64, 64), sw_batch_size=2, overlap=0.25, checkpoint=checkpoint)).eval()
    with torch.no_grad():
        model(x)  # warm-up (cuDNN autotuning and allocator caches are not counted)
    generator = torch.Generator(device=device).manual_seed(0)
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        base = rss_mib()
        Path("/proc/self/clear_refs").write_text("5")
    t0 = time.perf_counter()
    x_adv = medrobust.attack("pgd", model, x, y, task="segmentation", eps=8 / 255, steps=2, generator=generator)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 - base if cuda else hwm_mib() - base
    assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6
    return {"checkpoint": checkpoint, "shape": list(x.shape), "seconds": seconds, "peak_mib": peak,
            "baseline_mib": base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--resolution", type=int, choices=(1, 2), default=2, help="MNI152 voxel size in mm")
    parser.add_argument("--worker", choices=("0", "1"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker == "1", args.device, args.resolution)))
        return
    rows = []
    for ckpt in (True, False):
        cmd = [sys.executable, __file__, "--worker", "1" if ckpt else "0", "--device", args.device,
               "--resolution", str(args.resolution)]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
        if out.returncode != 0:
            raise SystemExit(out.stderr)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1])
    import torch

    cuda = args.device.startswith("cuda")
    key = f"sliding-window-{'cuda' if cuda else 'cpu'}" + ("" if args.resolution == 2 else f"-{args.resolution}mm")
    mark, end_mark = f"<!-- section:{key} -->", f"<!-- /section:{key} -->"
    where = torch.cuda.get_device_name() if cuda else "CPU"
    command = "python bench/sliding_window.py" + ("" if args.device == "cpu" else f" --device {args.device}")
    command += "" if args.resolution == 2 else f" --resolution {args.resolution}"
    memory = "peak CUDA memory allocated above the loaded model and volume MiB" if cuda else (
        "peak memory above the loaded model MiB")
    lines = [
        mark,
        f"## Sliding-window 3D attack ({where}, {args.resolution}-mm volume)",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; command: `{command}`",
        f"- machine: {platform.platform()}; CPUs: {os.cpu_count()}; torch {torch.__version__}",
        f"- volume: MNI152 {args.resolution} mm, shape {rows[0]['shape']}; 3D MONAI UNet (channels 16-32-64-128, "
        "1 residual unit), 64^3 windows, sw_batch_size 2, overlap 0.25, Gaussian blending; PGD Linf eps 8/255, 2 steps",
        "",
        f"| per-window checkpointing | attack time s | {memory} |",
        "|---|---:|---:|",
        *[f"| {'yes' if r['checkpoint'] else 'no'} | {r['seconds']:.2f} | {r['peak_mib']:.0f} |" for r in rows],
        "",
        end_mark,
    ]
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
    if mark in text:
        start = text.index(mark)
        end = text.index(end_mark) + len(end_mark)
        text = text[:start] + "\n".join(lines) + text[end:]
    else:
        text = text.rstrip() + "\n\n" + "\n".join(lines) + "\n"
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
