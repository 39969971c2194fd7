"""Benchmark of the AutoAttack ensemble: what the cascade costs against its members, and APGD's overhead.

Run by hand (not a test):

    .venv/bin/python bench/autoattack.py                 # print the tables
    .venv/bin/python bench/autoattack.py --write         # ... and replace this script's section of RESULTS.md
    .venv/bin/python bench/autoattack.py --n 32 --queries 500 --reps 1 --pairs 3   # a quick look

Models: every folder under runs/demo/models/ (``medrobust.load_model``; the demo trains small-cnn, resnet and
densenet there), or the folders given with ``--models``. Without any, a small-cnn is trained for 3 epochs into a
temporary folder. Data: the first ``--n`` images of the derm-synth test split.

1. Ensemble vs members (per model and eps): ``AutoAttack(norm="linf", version="standard")`` on the batch, timed
   as one call; then its members run one by one exactly as the cascade runs them (APGD-CE on the clean-correct
   samples, APGD-T on those APGD-CE left robust, Square on those still robust; one generator seeded like the
   ensemble's, so the same samples and the same random draws), each member call timed alone; and, to show what
   the cascade saves, every member on the whole batch ("no cascade"). The three arms rotate their order in each
   repetition; times are medians, ratios medians of per-repetition ratios. Target: ensemble / members close to 1.
2. APGD overhead: APGD-CE (Linf, 100 steps) with eps so small (1e-4) that no clean-correct sample is broken, so
   none leaves the batch early, against a plain loop of the same number of forward + cross-entropy +
   ``torch.autograd.grad``-to-the-input passes of the same model on the same samples. Pairs interleaved, order
   alternating; the median of the paired ratios APGD / floor is reported (target <= 1.10), with minor page faults
   per run. It runs in fresh subprocesses: once with glibc's default allocator and once with heap trimming and
   mmap of large blocks off, set inside the process with ``mallopt`` (the same as
   ``MALLOC_MMAP_THRESHOLD_=MALLOC_TRIM_THRESHOLD_=2**30``), which separates allocator churn (page faults) from
   the arithmetic. When the ratio is above the target (or with ``--profile``) a torch.profiler table of one APGD
   run against the floor loop is printed: the operators where APGD spends time the floor does not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS.md"
RESULT_TAG = "BENCH_RESULT "
TARGET = 1.10
# glibc mallopt parameters (malloc.h): keep freed memory in the process instead of trimming it and faulting it back
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
ALLOCATORS = ("default", "no-trim mallopt")
MEMBERS = ("apgd-ce", "apgd-t", "square")


# ----------------------------------------------------------------------------------------------- helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(fn, device: torch.device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def parse_eps(text: str) -> float:
    return float(Fraction(text))


def model_folders(args) -> list[Path]:
    if args.models:
        return [Path(p) for p in args.models]
    root = ROOT / "runs" / "demo" / "models"
    order = {"small-cnn": 0, "resnet": 1, "densenet": 2}
    found = [p for p in root.glob("*") if (p / "model.json").exists()] if root.exists() else []
    return sorted(found, key=lambda p: (order.get(p.name.rsplit("-", 1)[0], 9), p.name))


def train_fallback(folder: Path) -> Path:
    """A small-cnn trained quickly, for when the demo has not produced one."""
    import medrobust

    print("no trained model found; training small-cnn on derm-synth for 3 epochs", flush=True)
    medrobust.train(medrobust.TrainSettings(architecture="small-cnn", dataset="derm-synth", epochs=3), folder)
    return folder


def load(folder: Path, n: int, device: torch.device):
    """(model, card, x, y): the model in eval mode and the first ``n`` derm-synth test images."""
    import medrobust
    from medrobust.data.base import load_all

    model, card = medrobust.load_model(folder, device=device)
    ds = medrobust.load_dataset(card.dataset.get("name", "derm-synth") if isinstance(card.dataset, dict)
                                else "derm-synth", split="test")
    batch = load_all(ds, limit=n)
    return model.eval(), card, batch.x.to(device), batch.y.to(device)


def describe(card, model) -> str:
    params = sum(p.numel() for p in model.parameters())
    test = (card.metrics or {}).get("test", {}).get("accuracy") if hasattr(card, "metrics") else None
    acc = "" if test is None else f", test accuracy {100 * test:.0f}%"
    return f"{card.architecture} ({params / 1e3:.0f}k parameters{acc})"


# ----------------------------------------------------------------------------------------------- part 1


def cascade_by_hand(aa, model, x, y, eps, seed):
    """AutoAttack.run's cascade, with each member call timed alone. Returns (x_adv, times, counts, broken_by)."""
    from medrobust.attacks.base import keep_better, outcome
    from medrobust.tasks import get_task

    task = get_task("classification")
    gen = torch.Generator(device=x.device).manual_seed(seed)
    best = x.clone()
    with torch.no_grad():
        best_score, best_loss = outcome(model, task, x, y)
    times, counts, broken_by = {}, {}, [None] * x.shape[0]
    for name, member in aa.members():
        todo = (best_score > 0).nonzero().flatten()
        counts[name] = int(todo.numel())
        if todo.numel() == 0:
            times[name] = 0.0
            continue
        t, result = timed(lambda: member.detailed(model, task, x[todo], y[todo], eps=eps, generator=gen), x.device)
        times[name] = t
        before = best_score[todo].clone()
        keep_better(best, best_score, best_loss, result.x_adv, *outcome(model, task, result.x_adv, y[todo]), todo)
        for i in todo[best_score[todo] < before].tolist():
            broken_by[i] = name
    return best, times, counts, broken_by


def every_member(aa, model, x, y, eps, seed):
    """Each member alone on the whole batch (no cascade). Returns (times, counts)."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    with torch.no_grad():
        counts = dict.fromkeys(MEMBERS, int((model(x).argmax(1) == y).sum()))  # members skip misclassified ones
    times = {}
    for name, member in aa.members():
        times[name] = timed(lambda: member(model, "classification", x, y, eps=eps, generator=gen), x.device)[0]
    return times, counts


def ensemble_vs_members(args, model, x, y, eps: float, device) -> dict:
    from medrobust.attacks import AutoAttack

    aa = AutoAttack(norm="linf", version="standard", steps=args.steps, queries=args.queries)
    n = x.shape[0]
    ens, cas, full = [], [], []
    cas_members = {m: [] for m in MEMBERS}
    full_members = {m: [] for m in MEMBERS}
    same, counts, hand_agrees = True, None, None
    ens_x = ens_broken = None
    for r in range(args.reps):
        arms = ["ensemble", "cascade", "full"]
        arms = arms[r % 3:] + arms[: r % 3]
        for arm in arms:
            if arm == "ensemble":
                gen = torch.Generator(device=device).manual_seed(args.seed)
                t, res = timed(lambda: aa.detailed(model, "classification", x, y, eps=eps, generator=gen), device)
                ens.append(t)
                ens_x, ens_broken = res.x_adv, res.info["broken_by"]
            elif arm == "cascade":
                hand_x, times, counts, hand_broken = cascade_by_hand(aa, model, x, y, eps, args.seed)
                cas.append(sum(times.values()))
                for m in MEMBERS:
                    cas_members[m].append(times.get(m, 0.0))
            else:
                times, full_counts = every_member(aa, model, x, y, eps, args.seed)
                full.append(sum(times.values()))
                for m in MEMBERS:
                    full_members[m].append(times.get(m, 0.0))
        same &= bool(torch.equal(ens_x, hand_x))
        hand_agrees = ens_broken == hand_broken  # informative only: the rule that names the member may change
    with torch.no_grad():
        clean_correct = int((model(x).argmax(1) == y).sum())
        robust = int((model(ens_x).argmax(1) == y).sum())
    broken = {m: sum(b == m for b in ens_broken) for m in MEMBERS}
    return {
        "eps": eps,
        "n": n,
        "clean_correct": clean_correct,
        "robust": robust,
        "broken": broken,
        "counts": counts,
        "full_counts": full_counts,
        "ensemble": statistics.median(ens),
        "cascade": statistics.median(cas),
        "full": statistics.median(full),
        "cascade_members": {m: statistics.median(v) for m, v in cas_members.items()},
        "full_members": {m: statistics.median(v) for m, v in full_members.items()},
        "ratio": statistics.median(e / c for e, c in zip(ens, cas)),
        "ratio_all": [e / c for e, c in zip(ens, cas)],
        "saving": statistics.median(f / e for f, e in zip(full, ens)),
        "same": same,
        "broken_by_agrees": hand_agrees,
    }


# ----------------------------------------------------------------------------------------------- part 2


class GradCounter:
    """Rows whose gradient flows back through ``module`` (one backward pass per row)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.rows = 0
        self.handle = module.register_forward_hook(self._on_forward)

    def _on_forward(self, module, inputs, output) -> None:
        if output.requires_grad:
            output.register_hook(self._on_backward)

    def _on_backward(self, grad):
        self.rows += int(grad.shape[0])

    def remove(self) -> None:
        self.handle.remove()


def floor_pass(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The plain input-gradient pass APGD is built on: forward, cross-entropy, backward to x."""
    xg = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(xg), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, xg)
    return grad


def keep_freed_memory() -> bool:
    """glibc only: never trim the heap nor mmap large blocks, as MALLOC_TRIM_THRESHOLD_ and MALLOC_MMAP_THRESHOLD_
    of 2**30 would, but set from inside the running process. False where it cannot be set."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_TRIM_THRESHOLD, 2**30)) and bool(libc.mallopt(M_MMAP_THRESHOLD, 2**30))
    except (OSError, AttributeError):
        return False


def overhead_worker(args) -> dict:
    """Part 2 in this (fresh) process: APGD vs the floor, paired, for the model in ``args.worker``."""
    from medrobust.attacks import APGD

    allocator = "default"
    if args.allocator != "default":
        allocator = args.allocator if keep_freed_memory() else "default (mallopt failed)"
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    model, card, x, y = load(Path(args.worker), args.n, device)
    for p in model.parameters():
        p.requires_grad_(False)  # as attack_mode does, so the floor does the same work
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    x, y = x[keep], y[keep]  # APGD attacks only the clean-correct samples; the floor gets the same ones
    n = x.shape[0]
    apgd = APGD(steps=args.steps, norm="linf", loss="ce")
    eps = args.tiny_eps

    def run_apgd():
        gen = torch.Generator(device=device).manual_seed(args.seed)
        return apgd(model, "classification", x, y, eps=eps, generator=gen)

    counter = GradCounter(model)
    x_adv = run_apgd()  # also the warm-up
    counter.remove()
    passes = counter.rows / n
    k = max(1, round(passes))
    scale = passes / k  # prices the floor at exactly APGD's gradient rows (a sample broken early does fewer)
    with torch.no_grad():
        still = int((model(x_adv).argmax(1) == y).sum())

    def run_floor():
        for _ in range(k):
            floor_pass(model, x, y)

    run_floor()  # warm-up
    t_apgd, t_floor, f_apgd, f_floor, ratios = [], [], [], [], []
    for i in range(args.pairs):
        order = ("apgd", "floor") if i % 2 == 0 else ("floor", "apgd")
        got = {}
        for which in order:
            f0 = minor_faults()
            got[which] = timed(run_apgd if which == "apgd" else run_floor, device)[0]
            (f_apgd if which == "apgd" else f_floor).append(minor_faults() - f0)
        got["floor"] *= scale
        f_floor[-1] *= scale
        t_apgd.append(got["apgd"])
        t_floor.append(got["floor"])
        ratios.append(got["apgd"] / got["floor"])
    out = {
        "allocator": allocator,
        "model": describe(card, model),
        "folder": str(args.worker),
        "n": n,
        "passes": passes,
        "robust_after": still,
        "apgd": statistics.median(t_apgd),
        "floor": statistics.median(t_floor),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "min_ratio": min(t_apgd) / min(t_floor),
        "faults_apgd": statistics.median(f_apgd),
        "faults_floor": statistics.median(f_floor),
    }
    if args.profile or out["ratio"] > TARGET:
        out["profile"] = profile(run_apgd, run_floor)  # after the timed pairs, so it does not disturb them
    return out


def profile(run_apgd, run_floor, top: int = 18, repeats: int = 3) -> list[dict]:
    """Self CPU time per operator in an APGD run and in the floor loop (median over ``repeats`` profiled runs of
    each, alternating); sorted by APGD's excess over the floor."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    runs: dict[str, list[dict]] = {"apgd": [], "floor": []}
    for i in range(repeats):
        for name in ("apgd", "floor") if i % 2 == 0 else ("floor", "apgd"):
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                (run_apgd if name == "apgd" else run_floor)()
            runs[name].append({e.key: (e.self_cpu_time_total, e.count) for e in prof.key_averages()})

    def median_table(tables: list[dict]) -> dict:
        keys = set().union(*tables)
        return {k: (statistics.median(t.get(k, (0.0, 0))[0] for t in tables), tables[0].get(k, (0.0, 0))[1])
                for k in keys}

    apgd, floor = median_table(runs["apgd"]), median_table(runs["floor"])
    rows = []
    for key in set(apgd) | set(floor):
        a, ac = apgd.get(key, (0.0, 0))
        f, fc = floor.get(key, (0.0, 0))
        rows.append({"op": key, "apgd_ms": a / 1e3, "apgd_calls": ac, "floor_ms": f / 1e3, "floor_calls": fc})
    rows.sort(key=lambda r: r["apgd_ms"] - r["floor_ms"], reverse=True)

    def total(name: str, chosen: list[dict]) -> dict:
        return {"op": name, **{k: sum(r[k] for r in chosen) for k in ("apgd_ms", "apgd_calls", "floor_ms",
                                                                       "floor_calls")}}

    # Operators the floor also calls are the model's forward/backward (plus the loss): excess there is slower
    # kernels (page faults on fresh memory, load); operators only APGD calls are its own arithmetic.
    shared = [r for r in rows if r["floor_calls"] > 0]
    own = [r for r in rows if r["floor_calls"] == 0]
    summary = [total("**all operators**", rows), total("**operators the floor also calls**", shared),
               total("**operators only APGD calls**", own)]
    return summary + rows[:top]


def run_overhead(args, folder: Path, allocator: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(folder), "--device", args.device,
           "--threads", str(args.threads), "--n", str(args.n), "--steps", str(args.steps), "--pairs",
           str(args.pairs), "--tiny-eps", repr(args.tiny_eps), "--seed", str(args.seed), "--allocator", allocator]
    if args.profile:
        cmd.append("--profile")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # the default really is glibc's
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    raise RuntimeError(f"overhead worker for {folder} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


# ----------------------------------------------------------------------------------------------- report


def eps_label(eps: float) -> str:
    frac = Fraction(eps).limit_denominator(1000)
    return f"{frac.numerator}/{frac.denominator}" if abs(float(frac) - eps) < 1e-12 else f"{eps:g}"


def ensemble_table(rows: list[dict]) -> list[str]:
    out = [
        "| model | eps | clean correct / robust after | samples run on (APGD-CE / APGD-T / Square) "
        "| broken by (CE / T / Square) | ensemble s/img | members s/img (CE + T + Square) | ensemble / members "
        "| no cascade s/img (CE + T + Square) | no cascade / ensemble | same x_adv |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        n = r["n"]
        c, m, f = r["counts"], r["cascade_members"], r["full_members"]
        out.append(
            f"| {r['model']} | {eps_label(r['eps'])} | {r['clean_correct']}/{n} / {r['robust']}/{n} "
            f"| {c['apgd-ce']} / {c['apgd-t']} / {c['square']} "
            f"| {r['broken']['apgd-ce']} / {r['broken']['apgd-t']} / {r['broken']['square']} "
            f"| {r['ensemble'] / n:.4f} "
            f"| {r['cascade'] / n:.4f} ({m['apgd-ce'] / n:.4f} + {m['apgd-t'] / n:.4f} + {m['square'] / n:.4f}) "
            f"| {r['ratio']:.3f} "
            f"| {r['full'] / n:.4f} ({f['apgd-ce'] / n:.4f} + {f['apgd-t'] / n:.4f} + {f['square'] / n:.4f}) "
            f"| {r['saving']:.2f}x | {'yes' if r['same'] else 'NO'} |"
        )
    return out


def overhead_table(rows: list[dict]) -> list[str]:
    out = [
        "| model | allocator | samples | grad passes/sample | still robust | APGD s | floor s | APGD / floor "
        "(median of pairs) | fastest / fastest | page faults k (APGD / floor) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['allocator']} | {r['n']} | {r['passes']:.2f} | {r['robust_after']}/{r['n']} "
            f"| {r['apgd']:.3f} | {r['floor']:.3f} | {r['ratio']:.3f} | {r['min_ratio']:.3f} "
            f"| {r['faults_apgd'] / 1e3:.1f} / {r['faults_floor'] / 1e3:.1f} |"
        )
    return out


def profile_table(r: dict) -> list[str]:
    out = [
        f"Profile of an APGD run vs the floor loop ({r['model']}, {r['allocator']} allocator; torch.profiler "
        "self CPU time, median of 3 runs each, operators sorted by APGD's excess; wall time not spent inside an "
        "operator, i.e. Python and dispatch, is not in this table):",
        "",
        "| operator | APGD ms (calls) | floor ms (calls) | excess ms |",
        "|---|---:|---:|---:|",
    ]
    for p in r["profile"]:
        out.append(f"| {p['op']} | {p['apgd_ms']:.1f} ({p['apgd_calls']}) | {p['floor_ms']:.1f} ({p['floor_calls']}) "
                   f"| {p['apgd_ms'] - p['floor_ms']:.1f} |")
    return out


def machine() -> list[str]:
    cpu = platform.processor() or ""
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = match.group(1).strip() if match else cpu
    except OSError:
        pass
    u = platform.uname()
    return [
        f"- machine: {u.system} {u.release} {u.machine}; CPU: {cpu or 'unknown'}; os.cpu_count()={os.cpu_count()}",
        f"- python {platform.python_version()}, torch {torch.__version__}; torch threads={torch.get_num_threads()}",
    ]


NOTES = """
How it is measured: part 1 times `AutoAttack(norm="linf", version="standard", steps, queries).detailed(...)` as
one call; "members" re-runs the cascade by hand (clean outcome, then per member: the still-robust rows, the
member's `detailed` call, `keep_better`) with one generator seeded like the ensemble's, so it runs on the same
samples with the same random draws ("same x_adv" checks the result is identical), and sums only the member
calls; "no cascade" runs each member alone on the whole batch (each member itself skips clean-misclassified
samples). s/img divides by the whole batch. The three arms rotate their order per repetition; times are medians,
ratios medians of per-repetition ratios. Part 2: APGD-CE, Linf, eps 1e-4 (so small that almost no sample is
broken and leaves the batch early; "still robust" counts them) on the clean-correct samples vs a loop of plain
forward + summed cross-entropy + `torch.autograd.grad`-to-the-input passes of the same model on the same samples,
priced at exactly APGD's counted gradient rows per sample ("grad passes/sample", from a backward hook on the model
output), parameters frozen, eval mode; pairs interleaved with alternating order, each in a
fresh subprocess, with glibc's default allocator and with "no-trim mallopt": `mallopt(M_TRIM_THRESHOLD, 2**30)`
and `mallopt(M_MMAP_THRESHOLD, 2**30)` called at the start of the process (as the environment variables
`MALLOC_TRIM_THRESHOLD_`/`MALLOC_MMAP_THRESHOLD_` of bench/attacks.py's "no-trim malloc" rows do), so freed memory
is reused instead of being returned to the kernel and faulted in again. The profile (torch.profiler, self CPU
time per operator, median of 3 profiled APGD runs and 3 floor loops after the timed pairs) is shown when a ratio
is above the target; page faults are charged to whichever kernel first touches the fresh memory (mostly the
model's convolution and batch-norm kernels), not to a separate line. Threads: with `--threads 2` on this 2-core
machine shared with other busy processes, one descheduled thread stalls every parallel region (a first try took
several times longer, with per-operator times that differed 4x between identical calls), so the recorded run uses
`--threads 1`.
"""


def section(args, env: dict, ens_rows: list[dict], ovh_rows: list[dict], total_s: float) -> list[str]:
    key = f"autoattack-{torch.device(args.device).type}"
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join([".venv/bin/python", "bench/autoattack.py", *sys.argv[1:]])
    lines = [
        f"<!-- section:{key} -->",
        f"## AutoAttack ensemble cost and APGD overhead ({args.device.upper()})",
        "",
        f"- date: {now}; command: `{command}`; total wall time {total_s:.0f} s",
        *machine(),
        f"- 1-minute load average at start / end: {env['load_start']:.2f} / {env['load_end']:.2f} "
        "(other processes shared this machine)",
        f"- models: {'; '.join(env['models'])}",
        f"- batch: the first {args.n} derm-synth test images 3x64x64; AutoAttack Linf standard (APGD-CE, "
        f"APGD-T over the K-1=2 other classes, Square), steps {args.steps}, Square queries {args.queries}, "
        f"restarts 1, seed {args.seed}; {args.reps} repetitions per cell",
        "",
        "Ensemble vs the sum of its members on the samples they run on (target ensemble / members close to 1):",
        "",
        *ensemble_table(ens_rows),
        "",
        f"APGD-CE overhead over the forward+backward floor ({args.steps} steps, Linf, eps {args.tiny_eps:g}, "
        f"{args.pairs} interleaved pairs; target <= {TARGET:.2f}):",
        "",
        *overhead_table(ovh_rows),
        "",
    ]
    for r in ovh_rows:
        if r.get("profile"):
            lines += profile_table(r) + [""]
    lines += [NOTES.strip(), f"<!-- /section:{key} -->"]
    return lines


def write_results(lines: list[str]) -> None:
    """Replace this script's section of RESULTS.md, or add it before the attack notes; other sections are kept."""
    begin, end = lines[0], lines[-1]
    block = "\n".join(lines)
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    elif "\n## How the numbers are measured" in text:
        at = text.index("\n## How the numbers are measured")
        text = text[:at].rstrip() + "\n\n" + block + "\n\n" + text[at + 1:]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", help="model folders (default: every runs/demo/models/*)")
    parser.add_argument("--n", type=int, default=64, help="test images per batch (default 64)")
    parser.add_argument("--eps", nargs="*", type=parse_eps, default=[2 / 255, 4 / 255],
                        help="Linf budgets for part 1 (default 2/255 4/255)")
    parser.add_argument("--steps", type=int, default=100, help="APGD steps (default 100)")
    parser.add_argument("--queries", type=int, default=1000, help="Square queries per sample (default 1000)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each part-1 arm (default 3)")
    parser.add_argument("--pairs", type=int, default=7, help="APGD/floor pairs in part 2 (default 7)")
    parser.add_argument("--tiny-eps", type=float, default=1e-4, help="part-2 eps (default 1e-4)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--skip-ensemble", action="store_true", help="part 2 only")
    parser.add_argument("--skip-overhead", action="store_true", help="part 1 only")
    parser.add_argument("--profile", action="store_true",
                        help="show the APGD vs floor profile even when the ratio is under the target")
    parser.add_argument("--write", action="store_true", help="replace this script's section of bench/RESULTS.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--allocator", choices=ALLOCATORS, default="default", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(RESULT_TAG + json.dumps(overhead_worker(args)), flush=True)
        return
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t_start = time.perf_counter()
    env = {"load_start": os.getloadavg()[0], "models": []}
    with tempfile.TemporaryDirectory() as tmp:
        folders = model_folders(args) or [train_fallback(Path(tmp) / "small-cnn")]
        ens_rows, ovh_rows = [], []
        for folder in folders:
            model, card, x, y = load(folder, args.n, device)
            name = describe(card, model)
            env["models"].append(f"{name} from `{folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder}`")
            if not args.skip_ensemble:
                for eps in args.eps:
                    r = ensemble_vs_members(args, model, x, y, eps, device)
                    r["model"] = card.architecture
                    ens_rows.append(r)
                    print(f"{card.architecture} eps {eps_label(eps)}: ensemble {r['ensemble']:.2f} s, members "
                          f"{r['cascade']:.2f} s, ratio {r['ratio']:.3f} {['%.3f' % v for v in r['ratio_all']]}, "
                          f"no cascade {r['full']:.2f} s; ran on {r['counts']}; broken {r['broken']}; "
                          f"robust {r['robust']}/{r['n']}; same {r['same']}", flush=True)
            if not args.skip_overhead:
                for allocator in ALLOCATORS if torch.device(args.device).type == "cpu" else ALLOCATORS[:1]:
                    r = run_overhead(args, folder, allocator)
                    r["model"] = card.architecture
                    ovh_rows.append(r)
                    print(f"{card.architecture} APGD overhead ({r['allocator']}): ratio {r['ratio']:.3f} "
                          f"{['%.3f' % v for v in r['ratios']]}, fastest {r['min_ratio']:.3f}, passes "
                          f"{r['passes']:.2f}, faults {r['faults_apgd']:.0f}/{r['faults_floor']:.0f}", flush=True)
    env["load_end"] = os.getloadavg()[0]
    lines = section(args, env, ens_rows, ovh_rows, time.perf_counter() - t_start)
    print("\n".join(lines[1:-1]))
    if args.write:
        write_results(lines)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
