"""Benchmark of the executors: one fixed sweep on the local executor and on Ray, and what a Ray unit costs.

Run by hand (not a test):

    .venv/bin/python bench/executors.py              # print the table
    .venv/bin/python bench/executors.py --write      # ... and replace this script's section of RESULTS.md

The sweep: two small-cnn checkpoints (width 16, trained once before timing, 3 epochs) on the first 96 derm-synth
test images (3x64x64, batch 24); Gaussian noise at 2 strengths, PGD-10 (Linf) at 3, DeepFool-50 (minimal, one
run clipped to 2 budgets), with matched noise: 14 cells. Arms, each on a fresh run folder:

- local, 2 torch threads (one process); local, 1 thread;
- ray, 2 workers of 1 thread each (a local Ray instance with 2 CPUs, started once before timing), one unit per
  cell; and the same with 24-sample shards (4 units per cell);

Wall time is the whole ``run_experiment`` call (sanity checks, units, summary, report not included). For every
arm the time the driver spends writing units to results.db is summed (``Store.write_cell``). The per-unit
overhead of Ray is measured apart: 200 tasks that take the same arguments as a unit (model, dataset and source
references, settings) and return at once, their round trip from the driver, median per task; and the summed
compute seconds of the units against the Ray arm's wall time times its 2 workers.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from results_md import write_section

from medrobust.config import load_config
from medrobust.runner import run_experiment
from medrobust.store import Store
from medrobust.train import TrainSettings, train

BEGIN, END = "<!-- section:executors-cpu -->", "<!-- /section:executors-cpu -->"


def spec(models: dict[str, Path], executor: dict, threads: int, device: str = "cpu", limit: int = 96) -> dict:
    return {
        "device": device,
        "name": "executor-bench",
        "seed": 0,
        "batch_size": 24,
        "limit": limit,
        "threads": threads,
        "gallery": 0,
        "dataset": {"name": "derm-synth", "split": "test"},
        "models": [{"name": k, "checkpoint": str(v)} for k, v in models.items()],
        "perturbations": [
            {"corruption": "gaussian_noise", "strengths": [0.02, 0.05]},
            {"attack": "pgd", "strengths": [2 / 255, 4 / 255, 8 / 255], "params": {"steps": 10}},
            {"attack": "deepfool", "strengths": [0.25, 1.0], "params": {"steps": 50}},
        ],
        "executor": executor,
    }


def checkpoints(folder: Path) -> dict[str, Path]:
    """The sweep's two small-cnn checkpoints (3 epochs, seeds 0 and 1), trained before any timing."""
    models = {}
    for seed in (0, 1):
        out = folder / f"m{seed}"
        train(TrainSettings(architecture="small-cnn", dataset="derm-synth", epochs=3, seed=seed), out)
        models[f"m{seed}"] = out
    return models


def timed_run(s: dict, out: Path) -> tuple[float, float, int, float]:
    """(wall seconds, driver seconds writing results.db, units written, summed unit compute seconds)."""
    writes: list[float] = []
    compute: list[float] = []
    original = Store.write_cell

    def write_cell(self, *args, **kwargs):
        t0 = time.perf_counter()
        compute.append(kwargs.get("seconds") or 0.0)
        done = original(self, *args, **kwargs)
        writes.append(time.perf_counter() - t0)
        return done

    Store.write_cell = write_cell  # type: ignore[method-assign]
    try:
        import medrobust.runner as runner

        checks, runner.sanity_checks = runner.sanity_checks, lambda *a, **k: None  # not part of the sweep
        t0 = time.perf_counter()
        run_experiment(load_config(s), out, quiet=True)
        wall = time.perf_counter() - t0
        runner.sanity_checks = checks
    finally:
        Store.write_cell = original  # type: ignore[method-assign]
    return wall, sum(writes), len(writes), sum(compute)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="replace this script's section of bench/RESULTS.md")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: the GPU arms (num_gpus per unit)")
    parser.add_argument("--limit", type=int, default=96, help="test images (default 96)")
    args = parser.parse_args()
    if args.device != "cpu":
        return gpu_main(args)
    import ray

    from medrobust.executors import Settings, Unit

    rows = []
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        models = checkpoints(tmp_path)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        arms = [
            ("local, 2 threads", {"name": "local"}, 2),
            ("local, 1 thread", {"name": "local"}, 1),
            ("ray, 2 workers x 1 thread, unit = cell", {"name": "ray"}, 1),
            ("ray, 2 workers x 1 thread, unit = 24 samples", {"name": "ray", "shard_size": 24}, 1),
        ]
        results = {}
        for i, (label, executor, threads) in enumerate(arms):
            wall, writes, units, compute = timed_run(spec(models, executor, threads), tmp_path / f"run{i}")
            results[label] = (wall, units, compute)
            print(f"{label}: {wall:.1f} s wall, {units} units, driver writes {writes:.2f} s, compute {compute:.1f} s")
            rows.append(
                f"| {label} | {wall:.1f} | {units} | {compute:.1f} | {writes:.2f} | {1000 * writes / units:.1f} |"
            )
        # the round trip of a unit that does nothing but carries a unit's arguments
        from medrobust.models import load_model

        model, _ = load_model(models["m0"])
        from medrobust.data import load_dataset

        dataset = load_dataset("derm-synth", split="test")
        refs = (ray.put(model), ray.put(dataset), ray.put({}))
        settings = Settings(seed=0, batch_size=24, device="cpu", limit=96, matched_noise=True, gallery=0)

        @ray.remote(num_cpus=1)
        def noop(threads, unit, model, dataset, settings, sources):
            return None, 0.0

        from medrobust.cells import Cell

        unit = Unit(Cell("k", "m0", "clean", None, (0.0,)), range(0, 1), 0, 24, 0, 4)
        ray.get([noop.remote(1, unit, *refs[:2], settings, refs[2]) for _ in range(20)])  # warm the workers
        times = []
        for _ in range(200):
            t0 = time.perf_counter()
            ray.get(noop.remote(1, unit, *refs[:2], settings, refs[2]))
            times.append(time.perf_counter() - t0)
        round_trip = statistics.median(times)
        ray.shutdown()
    wall_ray, units_ray, compute_ray = results["ray, 2 workers x 1 thread, unit = 24 samples"]
    idle = 2 * wall_ray - compute_ray
    print(f"ray no-op unit round trip {1000 * round_trip:.2f} ms; sharded arm: 2 x wall - compute = {idle:.1f} s")
    lines = [
        BEGIN,
        "## Executors: local vs Ray (CPU, bench/executors.py)",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; command: `.venv/bin/python bench/executors.py "
        "--write`",
        f"- machine: {platform.system()} {platform.release()} {platform.machine()}; os.cpu_count()={os.cpu_count()}; "
        f"torch {torch.__version__}, ray {ray.__version__}; 1-minute load at start / end {load:.2f} / "
        f"{os.getloadavg()[0]:.2f}",
        "- sweep: 2 small-cnn checkpoints x (clean, noise x2, PGD-10 x3, DeepFool-50 clipped to 2 budgets) with "
        "matched noise on 96 derm-synth test images 3x64x64, batch 24: 14 cells; sanity checks off",
        "",
        "| arm | wall s | units | unit compute s (sum) | driver writing results.db s | ms per unit write |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"- Ray scheduling overhead per unit: a no-op task with a unit's arguments (references to the model, the "
        f"dataset and the sources, the settings) makes its round trip in {1000 * round_trip:.2f} ms (median of 200, "
        "one at a time); in the sharded Ray arm the 2 workers were busy computing "
        f"{compute_ray:.1f} of {2 * wall_ray:.1f} worker-seconds ({units_ray} units).",
        "",
        END,
    ]
    print("\n".join(lines))
    if args.write:
        write_section(BEGIN, END, lines)


def gpu_main(args: argparse.Namespace) -> None:
    """The same sweep on a GPU: local (one process on the GPU) against Ray units requesting 1, 0.5 and 0.25 GPUs
    (1, 2 and 4 units at a time on one GPU), with 24-sample shards."""
    import ray

    begin, end = "<!-- section:executors-gpu -->", "<!-- /section:executors-gpu -->"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        models = checkpoints(tmp_path)
        ray.init(num_cpus=8, num_gpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
        # untimed warm-up: start 4 workers and their CUDA contexts (a long sweep pays this once)
        warm = {"name": "ray", "num_gpus": 0.25, "shard_size": 24}
        timed_run(spec(models, warm, 4, args.device, 96), tmp_path / "warm")
        arms = [
            ("local, cuda", {"name": "local"}),
            ("ray, num_gpus 1 per unit, unit = cell", {"name": "ray", "num_gpus": 1.0}),
            ("ray, num_gpus 1 per unit, unit = 24 samples", {"name": "ray", "num_gpus": 1.0, "shard_size": 24}),
            ("ray, num_gpus 0.5 per unit, unit = 24 samples", {"name": "ray", "num_gpus": 0.5, "shard_size": 24}),
            ("ray, num_gpus 0.25 per unit, unit = 24 samples", {"name": "ray", "num_gpus": 0.25, "shard_size": 24}),
        ]
        summaries = {}
        for i, (label, executor) in enumerate(arms):
            out = tmp_path / f"run{i}"
            wall, writes, units, compute = timed_run(spec(models, executor, 4, args.device, args.limit), out)
            summaries[label] = (out / "summary.json").read_bytes()
            print(f"{label}: {wall:.1f} s wall, {units} units, driver writes {writes:.2f} s, compute {compute:.1f} s")
            rows.append(f"| {label} | {wall:.1f} | {units} | {compute:.1f} | {writes:.2f} |")
        ray.shutdown()
    same = len(set(summaries.values())) == 1
    lines = [
        begin,
        f"## Executors on a GPU ({torch.cuda.get_device_name(0)}, bench/executors.py --device cuda)",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; command: `python bench/executors.py --device "
        f"cuda --limit {args.limit} --write`; torch {torch.__version__}, ray {ray.__version__}, "
        f"os.cpu_count()={os.cpu_count()}, torch threads 4 per process or unit",
        f"- the CPU section's sweep (2 small-cnn, 14 cells) with `device: cuda` on {args.limit} images; Ray: a local "
        "instance with 8 CPUs and the 1 GPU, each unit requesting 1 CPU and the GPU share shown; an untimed Ray "
        "sweep first starts 4 workers and their CUDA contexts",
        f"- summary.json identical across all arms: {'yes' if same else 'NO'}",
        "",
        "| arm | wall s | units | unit compute s (sum) | driver writing results.db s |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        end,
    ]
    print("\n".join(lines))
    if args.write:
        write_section(begin, end, lines)


if __name__ == "__main__":
    main()
