"""Benchmark of the registered attacks: speed, gradient evaluations, memory, and the "floor" ratio.

Run by hand (not a test):

    .venv/bin/python bench/attacks.py              # 64 images 3x64x64 on the CPU
    .venv/bin/python bench/attacks.py --quick      # 16 images, fewer training steps
    .venv/bin/python bench/attacks.py --device cuda

What it does
1. Trains a fixed SmallCNN (width 16, 3 classes) for a few hundred Adam steps on derm-synth (or, with
   ``--data blobs`` or when derm-synth cannot be loaded, on a deterministic colour-blob problem made here), and
   takes a fixed batch from a held-out split. All seeds are fixed.
2. Runs every attack configuration in a fresh subprocess (so that ``ru_maxrss`` measures that attack alone):
   - one counting run with hooks on the wrapped model: every forward adds its batch size to ``fwd``; a tensor
     hook on every output that requires grad adds the batch size to ``bwd`` each time a gradient flows back
     through the model (one backward pass per row). Its peak memory is the rise of ``ru_maxrss`` (CPU) or
     ``torch.cuda.max_memory_allocated`` (CUDA) over the loaded-model baseline; its output gives success and
     norms. It doubles as the warm-up run.
   - timed runs without hooks (median of several for fast attacks, one for slow ones), interleaved with timed
     "floor" passes: plain forward + cross-entropy + input-gradient backward of the same model on the same batch.
   - floor time = (backward rows / N) * (median time of one full-batch floor pass); ratio = attack / floor.
3. Writes bench/RESULTS.md (the section for this device is replaced, other devices' sections are kept).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
RESULT_TAG = "BENCH_RESULT "
SIZE = 64
NUM_CLASSES = 3


@dataclass(frozen=True)
class Config:
    """One benchmarked attack configuration."""

    key: str
    attack: str  # registered name in medrobust.attacks.ATTACKS
    params: dict
    eps: float | None
    label: str
    repeats: int  # timed runs after the warm-up (median reported)


CONFIGS = [
    Config("fgsm-2", "fgsm", {"norm": "linf"}, 2 / 255, "Linf, eps=2/255", 15),
    Config("fgsm-8", "fgsm", {"norm": "linf"}, 8 / 255, "Linf, eps=8/255", 15),
    Config("pgd-linf", "pgd", {"norm": "linf", "steps": 10, "random_start": True}, 8 / 255,
           "Linf, eps=8/255, 10 steps, random start", 7),
    Config("pgd-l2", "pgd", {"norm": "l2", "steps": 10, "random_start": True}, 0.5,
           "L2, eps=0.5, 10 steps, random start", 7),
    Config("deepfool", "deepfool", {"steps": 50}, None,
           "L2, steps=50, overshoot=0.02, candidates=10 (capped to K-1=2)", 3),
    Config("jsma", "jsma", {"gamma": 0.05}, None, "L0, theta=1, gamma=0.05, candidates=64, untargeted", 1),
    Config("cw", "cw", {"steps": 100, "binary_search_steps": 5}, None,
           "L2, steps=100, binary_search_steps=5, lr=0.01, c0=0.01, abort_early", 1),
]


# ----------------------------------------------------------------------------------------------- data & model


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic 3-class problem: a soft blob on a textured skin-like background; the class sets the blob's
    hue (red-brown / dark brown / blue-grey) with enough jitter and noise that the classes overlap a little."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % NUM_CLASSES
    y = y[torch.randperm(n, generator=g)]
    hues = torch.tensor([[0.55, 0.25, 0.20], [0.35, 0.22, 0.15], [0.30, 0.33, 0.42]])
    c = (torch.arange(SIZE) + 0.5) / SIZE
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    skin = 0.75 + 0.15 * torch.rand(n, 3, 1, 1, generator=g)
    centre = 0.3 + 0.4 * torch.rand(n, 2, 1, 1, generator=g)
    radius = 0.10 + 0.12 * torch.rand(n, 1, 1, generator=g)
    r2 = (xx - centre[:, 0]) ** 2 + (yy - centre[:, 1]) ** 2
    mask = torch.exp(-r2 / (2 * radius**2)).unsqueeze(1)  # (n, 1, H, W)
    colour = hues[y].view(n, 3, 1, 1) + 0.08 * torch.randn(n, 3, 1, 1, generator=g)
    texture = F.interpolate(torch.randn(n, 3, 8, 8, generator=g), size=SIZE, mode="bilinear", align_corners=False)
    img = skin * (1 - mask) + colour * mask + 0.04 * texture + 0.02 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    return img.clamp(0, 1), y


def derm_synth(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from medrobust.data import load_dataset

    ds = load_dataset("derm-synth", split=split, size=SIZE, n=n)
    items = [ds[i] for i in range(n)]
    return torch.stack([it[0] for it in items]).float(), torch.tensor([int(it[1]) for it in items])


def build_model():
    from medrobust.models import Model
    from medrobust.models.zoo import build_network

    net = build_network("small-cnn", in_channels=3, num_classes=NUM_CLASSES, width=16)
    return Model(net, bounds=(0.0, 1.0))


def prepare(args, path: Path) -> dict:
    """Train the model and pick the benchmark batch; save both to ``path``. Returns a description."""
    torch.manual_seed(0)
    n_train = 384 if args.quick else 960
    data = args.data
    if data == "derm-synth":
        try:
            x_train, y_train = derm_synth("train", n_train)
            x_bench, y_bench = derm_synth("test", args.batch)
        except Exception as err:  # noqa: BLE001 - the benchmark must still run if the data package is broken
            print(f"derm-synth unavailable ({type(err).__name__}: {err}); using the colour-blob problem", flush=True)
            data = "blobs"
    if data == "blobs":
        x_train, y_train = blobs(n_train, seed=1)
        x_bench, y_bench = blobs(args.batch, seed=2)

    model = build_model()
    steps = 150 if args.quick else 400
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    # Cosine decay to 0: the final weights (and BatchNorm statistics) settle instead of depending on the last step.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, n_train, (32,), generator=g)
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        train_acc = float((model(x_train).argmax(1) == y_train).float().mean())
        bench_acc = float((model(x_bench).argmax(1) == y_bench).float().mean())
    info = {
        "data": data,
        "train_samples": n_train,
        "train_steps": steps,
        "train_seconds": time.perf_counter() - t0,
        "train_acc": train_acc,
        "bench_acc": bench_acc,
        "batch": args.batch,
    }
    torch.save({"state": model.state_dict(), "x": x_bench, "y": y_bench, "info": info}, path)
    return info


# ----------------------------------------------------------------------------------------------- measurement


class PassCounter:
    """Counts rows forwarded through ``module`` and rows whose gradient is propagated back through it."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.forward = 0
        self.backward = 0
        self.handle = module.register_forward_hook(self._on_forward)

    def _on_forward(self, module, inputs, output) -> None:
        self.forward += int(output.shape[0])
        if output.requires_grad:
            output.register_hook(self._on_backward)

    def _on_backward(self, grad: torch.Tensor) -> None:
        self.backward += int(grad.shape[0])

    def remove(self) -> None:
        self.handle.remove()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(fn, device: torch.device) -> tuple[float, object]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def floor_pass(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The plain input-gradient pass every gradient attack is built on: forward, cross-entropy, backward to x."""
    xg = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(xg), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, xg)
    return grad


def maxrss_mib() -> float:
    """Peak resident memory of this process in MiB: VmHWM from /proc/self/status where there is one.

    Not ``ru_maxrss`` where avoidable: Linux carries ``ru_maxrss`` over execve, so a worker started by the (large,
    model-training) parent would report the parent's peak, and ``ru_maxrss`` cannot be reset below that. VmHWM
    belongs to this process image alone and can be reset (see ``reset_peak_rss``)."""
    try:
        match = re.search(r"^VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.M)
        if match:
            return int(match.group(1)) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def reset_peak_rss() -> bool:
    """Reset this process's resident-set high-water mark (Linux >= 4.0), so that the peak measured next belongs to
    the attack, not to imports or loading. False where not supported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(args) -> dict:
    """Benchmark one configuration (``args.worker``) in this fresh process."""
    from medrobust.attacks import ATTACKS

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    saved = torch.load(args.state, weights_only=False)
    model = build_model()
    model.load_state_dict(saved["state"])
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)  # as the attacks' attack_mode does, so the floor pass does the same work
    x, y = saved["x"].to(device), saved["y"].to(device)
    n = x.shape[0]

    # Initialise the libraries (oneDNN primitives, thread pool, CUDA context) on a tiny batch before the baseline.
    floor_pass(model, x[:2], y[:2])
    sync(device)
    rss_reset = False
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        rss_reset = reset_peak_rss()
        base = maxrss_mib()

    def peak() -> float:
        if device.type == "cuda":
            return (torch.cuda.max_memory_allocated(device) - base) / 2**20
        return maxrss_mib() - base

    if args.worker == "floor":
        counter = PassCounter(model)
        t_first, _ = timed(lambda: floor_pass(model, x, y), device)
        counter.remove()
        mem = peak()
        times, faults = [], []
        for _ in range(25):
            f0 = minor_faults()
            times.append(timed(lambda: floor_pass(model, x, y), device)[0])
            faults.append(minor_faults() - f0)
        t = statistics.median(times)
        return {"key": "floor", "time": t, "floor_time": t, "ratio": 1.0, "min_ratio": 1.0, "times": times,
                "faults": statistics.median(faults), "floor_faults": statistics.median(faults),
                "fwd": counter.forward / n, "bwd": counter.backward / n, "mem_mib": mem, "n": n,
                "first_run": t_first, "rss_reset": rss_reset}

    cfg = next(c for c in CONFIGS if c.key == args.worker)
    attack = ATTACKS.build(cfg.attack, **cfg.params)

    def run_attack() -> torch.Tensor:
        gen = torch.Generator(device=device).manual_seed(0)
        return attack(model, "classification", x, y, eps=cfg.eps, generator=gen)

    counter = PassCounter(model)
    t_first, x_adv = timed(run_attack, device)
    counter.remove()
    mem = peak()
    bwd_rows = counter.backward
    # Floor passes per timed repeat: as many full-batch passes as the attack's backward rows, at least one.
    floor_k = max(1, round(bwd_rows / n))

    attack_times, pass_times, deterministic = [], [], True
    attack_faults, pass_faults = [], []  # minor page faults (fresh memory from the kernel) per run / per pass
    for _ in range(cfg.repeats):
        f0 = minor_faults()
        t, out = timed(run_attack, device)
        attack_faults.append(minor_faults() - f0)
        attack_times.append(t)
        deterministic &= bool(torch.equal(out, x_adv))
        del out
        f0 = minor_faults()
        t_floor, _ = timed(lambda: [floor_pass(model, x, y) for _ in range(floor_k)], device)
        pass_faults.append((minor_faults() - f0) / floor_k)
        pass_times.append(t_floor / floor_k)
    while len(pass_times) < 5:  # slow attacks: a few more floor samples for a stable per-pass time
        t_floor, _ = timed(lambda: [floor_pass(model, x, y) for _ in range(min(floor_k, 5))], device)
        pass_times.append(t_floor / min(floor_k, 5))
    t_attack = statistics.median(attack_times)
    t_pass = statistics.median(pass_times)
    floor_time = bwd_rows / n * t_pass
    # The ratio is the median over repeats of (attack run / the floor passes timed right after it), so that load
    # from other processes, which comes and goes, cancels as far as possible; min_ratio compares the fastest runs.
    paired = [t / (bwd_rows / n * p) for t, p in zip(attack_times, pass_times)]
    ratio = statistics.median(paired)
    # Fastest against fastest only means something with several attack runs (one run vs the best of 5 floors is
    # biased against the attack).
    min_ratio = min(attack_times) / (bwd_rows / n * min(pass_times)) if len(attack_times) >= 3 else None

    with torch.no_grad():
        correct = model(x).argmax(1) == y
        fooled = model(x_adv).argmax(1) != y
    success = correct & fooled
    delta = (x_adv - x).flatten(1)
    l2 = delta.norm(dim=1)[success]
    l0 = (delta != 0).sum(dim=1)[success].float()
    linf = delta.abs().amax(dim=1)[success]
    return {
        "key": cfg.key,
        "time": t_attack,
        "times": attack_times,
        "first_run": t_first,
        "floor_time": floor_time,
        "pass_time": t_pass,
        "ratio": ratio,
        "min_ratio": min_ratio,
        "faults": statistics.median(attack_faults),
        "floor_faults": bwd_rows / n * statistics.median(pass_faults),
        "rss_reset": rss_reset,
        "fwd": counter.forward / n,
        "bwd": bwd_rows / n,
        "mem_mib": mem,
        "n": n,
        "correct": int(correct.sum()),
        "success": int(success.sum()),
        "median_l2": float(l2.median()) if l2.numel() else None,
        "median_l0": float(l0.median()) if l0.numel() else None,
        "median_linf": float(linf.median()) if linf.numel() else None,
        "features": int(delta.shape[1]),
        "deterministic": deterministic,
    }


# glibc settings that keep freed memory in the process instead of trimming it and faulting it back in.
NO_TRIM_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**30)}


def run_worker(key: str, args, state: Path, env_extra: dict | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", key, "--state", str(state),
           "--device", args.device, "--threads", str(args.threads or 0)]
    env = dict(os.environ, **(env_extra or {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
            result["variant"] = "no-trim malloc" if env_extra else ""
            return result
    raise RuntimeError(f"worker {key!r} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


# ----------------------------------------------------------------------------------------------- report


def machine(device: torch.device) -> list[str]:
    cpu = platform.processor() or ""
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = match.group(1).strip() if match else cpu
    except OSError:
        pass
    u = platform.uname()
    lines = [
        f"- machine: {u.system} {u.release} {u.machine}; CPU: {cpu or 'unknown'}",
        f"- CPUs: os.cpu_count()={os.cpu_count()}, usable={len(os.sched_getaffinity(0))}; "
        f"torch threads={torch.get_num_threads()}, interop threads={torch.get_num_interop_threads()}",
        f"- python {platform.python_version()}, torch {torch.__version__}",
    ]
    if device.type == "cuda":
        lines.append(f"- GPU: {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}")
    return lines


def fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def table(rows: list[dict]) -> list[str]:
    out = [
        "| attack | params | time/batch s | images/s | grad evals/image | fwd evals/image | floor ratio "
        "(fastest) | page faults k (attack / floor) | peak mem MiB | success | median L2 | median L0 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {c.key: (c.attack, c.label) for c in CONFIGS}
    labels["floor"] = ("floor", "plain forward + CE + input-gradient backward, one pass")
    for r in rows:
        name, params = labels[r["key"]]
        if r.get("variant"):
            name = f"{name} ({r['variant']})"
        ratio = f"{r['ratio']:.2f}" + ("" if r["min_ratio"] is None else f" ({r['min_ratio']:.2f})")
        success = "-"
        if "success" in r:
            success = f"{r['success']}/{r['correct']} ({100 * r['success'] / max(r['correct'], 1):.0f}%)"
        l0 = "-"
        if r["key"] == "jsma" and r.get("median_l0") is not None:
            l0 = f"{r['median_l0']:.0f} ({100 * r['median_l0'] / r['features']:.2f}%)"
        out.append(
            f"| {name} | {params} | {r['time']:.3f} | {r['n'] / r['time']:.1f} | {r['bwd']:.2f} | {r['fwd']:.2f} "
            f"| {ratio} | {r['faults'] / 1000:.1f} / {r['floor_faults'] / 1000:.1f} "
            f"| {r['mem_mib']:.1f} | {success} | {fmt(r.get('median_l2'), '.3f')} | {l0} |"
        )
    return out


def write_results(args, info: dict, rows: list[dict], total_s: float) -> None:
    device = torch.device(args.device)
    begin, end = f"<!-- section:{device.type} -->", f"<!-- /section:{device.type} -->"
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join([".venv/bin/python", "bench/attacks.py", *sys.argv[1:]])
    bench_acc = info["bench_acc"]
    section = [
        begin,
        f"## {device.type.upper()}",
        "",
        f"- date: {now}; command: `{command}`; total wall time {total_s:.0f} s",
        *machine(device),
        f"- 1-minute load average at start / end: {args.load_start[0]:.2f} / {args.load_end[0]:.2f} "
        "(other processes shared this machine)",
        f"- model: SmallCNN width 16, 3 classes, in a `medrobust.models.Model` with bounds (0, 1); trained "
        f"{info['train_steps']} Adam steps (batch 32, lr 3e-3 with cosine decay) on {info['train_samples']} "
        f"`{info['data']}` "
        f"images in {info['train_seconds']:.0f} s (train accuracy {100 * info['train_acc']:.0f}%)",
        f"- batch: {info['batch']} held-out images 3x64x64, clean accuracy {100 * bench_acc:.0f}%; "
        "success counts samples the model classified correctly before the attack; L2 and L0 are medians over "
        "the successful ones (input units; L0 counts changed features of 3*64*64=12288)",
        "",
        *table(rows),
        "",
        *[f"- WARNING: {r['key']} returned different x_adv across repeated runs with the same seed"
          for r in rows if r.get("deterministic") is False],
        end,
    ]
    header = HEADER.strip().splitlines()
    old = RESULTS.read_text() if RESULTS.exists() else ""
    kept = [
        m.group(0)
        for m in re.finditer(r"<!-- section:([\w-]+) -->.*?<!-- /section:\1 -->", old, re.S)
        if m.group(1) != device.type
    ]
    body = "\n\n".join(kept + ["\n".join(section)])
    RESULTS.write_text("\n".join(header) + "\n\n" + body + "\n\n" + NOTES.strip() + "\n")


HEADER = """
# Attack benchmark

Produced by `bench/attacks.py` (run by hand; `--quick` for a 16-image batch, `--device cuda` for a GPU). Each
device has its own section below; a new run replaces the section of its device only (other benchmarks'
sections, such as bench/sliding_window.py's, are kept).
"""

NOTES = """
## How the numbers are measured

- **time/batch, images/s**: each attack runs in a fresh subprocess; the first (counting) run is the warm-up, then
  the median of several timed runs (15 for FGSM, 7 for PGD, 3 for DeepFool) or one timed run (JSMA, C&W).
  Randomness (PGD's random start) comes from a `torch.Generator` seeded 0 for every run; the script checks that
  every timed run returns the same x_adv as the first.
- **grad evals/image**: rows of the batch whose gradient was propagated back through the model, divided by the
  batch size. A forward hook on the wrapped `Model` registers a tensor hook on each output that requires grad;
  the tensor hook fires once per backward pass through that output and adds the output's batch size. So
  DeepFool's one backward over `n * m` class replicas counts `m` per active sample, JSMA's two `autograd.grad`
  calls per iteration count 2, C&W's samples that stalled but stay in the lock-step batch still count, and
  samples that left an attack's active set count nothing. **fwd evals/image** counts forwarded rows the same way
  (including no-grad forwards such as clean predictions). Hooks are only attached in the counting run.
- **floor ratio**: attack time / floor time, with floor time = (grad evals/image) x (time of one plain
  full-batch pass: forward, summed cross-entropy, `torch.autograd.grad` to the input, parameters frozen, eval
  mode). After each timed attack run the same process times `round(grad evals/image)` floor passes (at least 1);
  the ratio reported is the median over repeats of these paired ratios, so that load from other processes, which
  comes and goes, cancels as far as it can. In parentheses: fastest attack run / fastest floor pass, which is
  what an idle machine would approach (left out for attacks timed only once). For FGSM and PGD this is exactly
  "the same number of plain passes on the same batch" (target: <= 1.10). For the minimal-norm attacks it prices
  their backward rows at full-batch efficiency, so their ratios also reflect working on shrinking active sets or
  replicas and, for JSMA, one forward per two backwards (below 1 is possible there), not only Python overhead.
- **peak mem MiB**: on the CPU, the rise of the process's resident-set high-water mark (`VmHWM` in
  `/proc/self/status`, reset through `/proc/self/clear_refs` just before the run) during the first attack run,
  above the resident set after loading the model and batch and one 2-image warm-up pass (so imports and one-off
  library initialisation are not charged to the attack). `ru_maxrss` is used only where `/proc` is missing: Linux
  carries it over `execve`, so the workers would inherit the training parent's peak. Resident memory includes
  allocator slack; treat it as approximate. On CUDA, `torch.cuda.max_memory_allocated` above the allocated
  baseline.
- **page faults k (attack / floor)**: minor page faults (thousands) of the process per timed attack run (median)
  and for the equivalent floor passes. Each fault is memory handed back by the kernel after glibc returned it;
  on the CPU that costs kernel time (zeroing and mapping pages) on top of the arithmetic.
- **rows marked "no-trim malloc"** (CPU on Linux; skip with `--no-allocator-check`): floor, FGSM and PGD again in
  workers started with `MALLOC_MMAP_THRESHOLD_=MALLOC_TRIM_THRESHOLD_=2**30`, so glibc keeps freed memory and
  nothing is faulted in again. Same arithmetic, no allocator churn: these rows isolate the attacks' own overhead
  over the floor. With the default allocator the number of faults depends on each process's heap layout (it
  varies several-fold between identical processes), so default-allocator ratios of FGSM and PGD moved by
  10-20% between otherwise identical runs on a 2-core VM.
- **threads**: `--threads N` sets `torch.set_num_threads` in every process. On a machine shared with other busy
  processes, use `--threads 1`: with 2 threads on 2 cores, one descheduled thread stalls every parallel region and
  times grow several-fold.
- **success**: fooled / classified correctly before the attack (untargeted). Minimal attacks (DeepFool, JSMA,
  C&W) get no eps, so their unclipped minimal perturbations are measured; L2 for FGSM/PGD is set by eps.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--quick", action="store_true", help="16 images and fewer training steps")
    parser.add_argument("--data", choices=("derm-synth", "blobs"), default="derm-synth",
                        help="training data for the model (blobs: a synthetic problem made in this script)")
    parser.add_argument("--only", nargs="*", help="benchmark only these configuration keys (floor is always run)")
    parser.add_argument("--no-write", action="store_true", help="print the table, do not write RESULTS.md")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch.set_num_threads for the measurements (default 0: torch's default)")
    parser.add_argument("--no-allocator-check", action="store_true",
                        help="skip re-running floor, FGSM and PGD with glibc trimming off (CPU on Linux only)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batch = 16 if args.quick else 64

    if args.worker:
        print(RESULT_TAG + json.dumps(worker(args)), flush=True)
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda given but torch.cuda.is_available() is False")

    from medrobust.attacks import ATTACKS

    missing = [name for name in ATTACKS.names() if name not in {c.attack for c in CONFIGS}]
    if missing:
        print(f"note: registered attacks without a benchmark configuration: {', '.join(missing)}", flush=True)
    unknown = sorted(set(args.only or ()) - {c.key for c in CONFIGS})
    if unknown:
        parser.error(f"unknown --only keys {unknown}; valid: {', '.join(c.key for c in CONFIGS)}")
    configs = [c for c in CONFIGS if not args.only or c.key in args.only]

    if args.threads:
        torch.set_num_threads(args.threads)
    args.load_start = os.getloadavg()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.pt"
        info = prepare(args, state)
        print(f"trained on {info['data']} in {info['train_seconds']:.0f} s: train acc {info['train_acc']:.2f}, "
              f"bench batch acc {info['bench_acc']:.2f}", flush=True)
        jobs = [(key, None) for key in ["floor"] + [c.key for c in configs]]
        if args.device == "cpu" and sys.platform.startswith("linux") and not args.no_allocator_check:
            # The same budget attacks again with glibc keeping freed memory: separates allocator cost
            # (page faults) from the attacks' own arithmetic.
            jobs += [(key, NO_TRIM_MALLOC) for key, _ in jobs if key == "floor" or key.startswith(("fgsm", "pgd"))]
        rows = []
        for key, env in jobs:
            r = run_worker(key, args, state, env)
            rows.append(r)
            print(f"{key:10s} {r['variant'] or 'default':15s} {r['time']:8.3f} s  ratio {r['ratio']:.2f} "
                  f"(fastest {fmt(r['min_ratio'], '.2f')})  bwd/img {r['bwd']:.2f}  faults {r['faults']:.0f}/"
                  f"{r['floor_faults']:.0f}  mem {r['mem_mib']:.1f} MiB"
                  + (f"  success {r['success']}/{r['correct']}" if "success" in r else ""),
                  flush=True)
    total = time.perf_counter() - t0
    args.load_end = os.getloadavg()
    print("\n".join(table(rows)))
    if not args.no_write:
        write_results(args, info, rows, total)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
