"""How long the demo takes: `make demo` on a fresh clone (install included), then both demos again into fresh run
folders with the venv present, with the time of each stage and of each attack's cells.

Run by hand on a quiet machine (not a test):

    .venv/bin/python bench/demo.py                 # both demos into fresh folders, this checkout's venv
    .venv/bin/python bench/demo.py --fresh-clone   # ... after `time make demo` on a fresh clone of this checkout
    .venv/bin/python bench/demo.py --executors     # the classification demo's cells: 1 process x 2 threads vs
                                                   # 2 worker processes x 1 thread (models trained once)
    .venv/bin/python bench/demo.py --write         # ... and replace this script's section of RESULTS.md

Each demo's `time per stage` line (setup, training, sanity checks, CLEVER, cells, summary, report) is read from
its output, and the cells' compute seconds per perturbation from its results.db.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

from results_md import write_section

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- section:demo -->", "<!-- /section:demo -->"
TASKS = ("classification", "segmentation")


def load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg()[:1])


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout + done.stderr


def stages(output: str) -> dict[str, float]:
    (line,) = [x for x in output.splitlines() if x.startswith("time per stage: ")]
    return {name.strip(" ,"): float(t) for name, t in re.findall(r"([A-Za-z ]+) ([0-9.]+) s", line[16:])}


def cell_seconds(run_dir: Path) -> dict[str, float]:
    con = sqlite3.connect(f"file:{run_dir / 'results.db'}?mode=ro", uri=True)
    out: dict[str, float] = defaultdict(float)
    for pert, seconds in con.execute("SELECT perturbation, seconds FROM cells WHERE status = 'done'"):
        out[pert] += seconds or 0.0
    con.close()
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def demos(checkout: Path, out: Path, extra: list[str] | None = None) -> list[tuple[str, float, dict, dict]]:
    rows = []
    for task in TASKS:
        run_dir = out / f"demo-{task}"
        seconds, output = run(
            [
                str(checkout / ".venv/bin/medrobust"),
                "demo",
                "--task",
                task,
                "--out",
                str(run_dir),
                "--quiet",
                *(extra or []),
            ],
            checkout,
        )
        rows.append((task, seconds, stages(output), cell_seconds(run_dir)))
    return rows


def table(rows: list[tuple[str, float, dict, dict]]) -> list[str]:
    names = list(dict.fromkeys(n for _, _, st, _ in rows for n in st))
    lines = ["| demo | wall s | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for task, seconds, st, _ in rows:
        lines.append(f"| {task} | {seconds:.0f} | " + " | ".join(f"{st.get(n, 0):.1f}" for n in names) + " |")
    lines.append("")
    for task, _, _, cells in rows:
        top = ", ".join(f"{p} {s:.1f}" for p, s in list(cells.items())[:8])
        lines.append(
            f"- {task} cells, compute s per perturbation (largest first): {top}; all {sum(cells.values()):.0f}"
        )
    return lines


def executors(checkout: Path, out: Path) -> list[str]:
    """The classification demo's run (models trained once, copied into each arm's folder) on each executor."""
    import shutil

    spec = checkout / "src/medrobust/specs/derm-demo.yaml"
    first = out / "train"
    run([str(checkout / ".venv/bin/medrobust"), "run", str(spec), "--out", str(first), "--quiet"], checkout)
    lines = ["| executor | wall s | sanity checks | CLEVER | cells | summary |", "|---|---:|---:|---:|---:|---:|"]
    for name, flags in (
        ("local, 1 process x 2 threads", ["--executor", "local"]),
        ("processes, 2 workers x 1 thread", ["--executor", "processes"]),
    ):
        arm = out / name.split(",")[0]
        shutil.copytree(first / "models", arm / "models")
        seconds, output = run(
            [str(checkout / ".venv/bin/medrobust"), "run", str(spec), "--out", str(arm), "--quiet", *flags], checkout
        )
        st = stages(output)
        lines.append(
            f"| {name} | {seconds:.0f} | {st['sanity checks']:.1f} | {st['CLEVER']:.1f} | "
            f"{st['cells']:.1f} | {st['summary']:.1f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fresh-clone", action="store_true")
    parser.add_argument("--executors", action="store_true")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [BEGIN, "## Demo: time to the first report (bench/demo.py)", ""]
    lines.append(
        f"- date: {started}; machine: {platform.platform()}; os.cpu_count()={os.cpu_count()}; "
        f"1-minute load at start {load()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        if args.fresh_clone:
            clone = Path(tmp) / "clone"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
            seconds, output = run(["make", "demo"], clone)
            lines.append(f"- fresh clone, `make demo` (install, then both demos): **{seconds:.0f} s**")
            checkout = clone
        else:
            checkout = ROOT
        if args.executors:
            lines += ["", "The classification demo's spec (models trained before timing) on each executor:", ""]
            lines += executors(checkout, Path(tmp) / "executors")
            lines.append("")
        rows = demos(checkout, Path(tmp))
        total = sum(s for _, s, _, _ in rows)
        lines.append(f"- both demos again into fresh run folders, venv present: **{total:.0f} s**")
        lines += ["", *table(rows)]
    lines.append(f"- 1-minute load at end {load()}")
    lines += ["", END]
    print("\n".join(lines))
    if args.write:
        write_section(BEGIN, END, lines)
    sys.exit(0)


if __name__ == "__main__":
    main()
