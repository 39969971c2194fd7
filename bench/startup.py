"""Start-up cost of the command line and of ``import medrobust``: wall time and what gets imported.

Run by hand (not a test; tests/test_startup.py checks the module sets without timing):

    .venv/bin/python bench/startup.py                          # print the numbers
    .venv/bin/python bench/startup.py --json /tmp/before.json  # ... and keep them (e.g. before a change)
    .venv/bin/python bench/startup.py --before /tmp/before.json --write   # replace this script's section of
                                                                           # RESULTS.md, with a before column

Each command runs ``--runs`` times (after one untimed warm-up run that fills the file cache) in a fresh
subprocess; the table gives the median, min and max wall time. ``python -X importtime`` of ``import medrobust``
and of ``import medrobust.cli`` gives the imports with the largest cumulative time, and a subprocess that runs
each light command in-process (``app([...])``) reports which heavy modules ended up in ``sys.modules``; the light
commands (``--help``, ``list``, ``describe``) must import none of FORBIDDEN.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from results_md import write_section

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PY = str(BIN / "python")
CLI = str(BIN / "medrobust")
BEGIN, END = "<!-- section:startup -->", "<!-- /section:startup -->"

# the light commands must import none of these
FORBIDDEN = ("monai", "torchio", "matplotlib", "scipy", "pandas", "ray", "mlflow")
# nor, where they do not need them, these
AVOIDED = ("nibabel", "pydicom", "jinja2", "safetensors", "PIL")
WATCHED = ("torch", *FORBIDDEN, *AVOIDED)

LIGHT = {
    "medrobust --help": ["--help"],
    "medrobust list": ["list"],
    "medrobust describe attack pgd": ["describe", "attack", "pgd"],
    "medrobust describe dataset nifti": ["describe", "dataset", "nifti"],
}
# statements timed with -X importtime; the last one runs `medrobust list` in-process
IMPORTS = ("import medrobust", "import medrobust.cli", "from medrobust.cli import app; app(['list'])")
COMMANDS = {
    **{label: [CLI, *args] for label, args in LIGHT.items()},
    "import medrobust": [PY, "-c", "import medrobust"],
}

# runs one light command in-process, then prints the watched modules that are loaded (last line, JSON)
PROBE = """
import json, sys
from medrobust.cli import app
try:
    app({args!r}, prog_name="medrobust")
except SystemExit:
    pass
watched = {watched!r}
print("\\nMODULES " + json.dumps(sorted(m for m in watched if m in sys.modules)))
"""


def wall_times(cmd: list[str], runs: int) -> list[float]:
    subprocess.run(cmd, capture_output=True, check=True, timeout=300)  # warm-up: file cache, .pyc files
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True, timeout=300)
        out.append(time.perf_counter() - t0)
    return out


def loaded_modules(args: list[str]) -> list[str]:
    code = PROBE.format(args=args, watched=WATCHED)
    done = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("MODULES ")][-1]
    return json.loads(line[len("MODULES ") :])


def startup_modules() -> set[str]:
    """The modules the interpreter has loaded before the statement runs (site, encodings, ...)."""
    code = "import json, sys; print(json.dumps(sorted(sys.modules)))"
    return set(json.loads(subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True).stdout))


def import_times(statement: str, top: int) -> tuple[float, list[tuple[str, float]]]:
    """``python -X importtime -c statement``: (the seconds of every import the statement made, nested ones
    included; the ``top`` top-level packages by cumulative seconds). Modules the interpreter loaded before the
    statement (site, encodings) are left out. A module is listed at its first import only, so a package's time
    includes what it pulled in that was not loaded yet."""
    done = subprocess.run(
        [PY, "-X", "importtime", "-c", statement], capture_output=True, text=True, check=True, timeout=300
    )
    rows: dict[str, float] = {}
    total = 0.0
    before = startup_modules()
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, raw = line[len("import time:") :].split("|")
        name, level = raw.strip(), (len(raw) - len(raw.lstrip()) - 1) // 2  # importtime indents 2 per level
        seconds = int(cumulative) / 1e6
        package = name.split(".")[0]
        if package in before:  # loaded by the interpreter before the statement ran
            continue
        if level == 0:  # the statement's own imports (and those its functions import), nested ones included
            total += seconds
        if name == package or package not in rows:  # the package line comes after its submodules' lines
            rows[package] = max(rows.get(package, 0.0), seconds)
    ranked = sorted(((k, v) for k, v in rows.items() if k != "medrobust"), key=lambda kv: -kv[1])
    return total, ranked[:top]


def measure(runs: int, top: int) -> dict:
    load_start = os.getloadavg()[0]
    times = {label: wall_times(cmd, runs) for label, cmd in COMMANDS.items()}
    modules = {label: loaded_modules(args) for label, args in LIGHT.items()}
    code = f"import json, sys, medrobust; print(json.dumps(sorted(m for m in {WATCHED!r} if m in sys.modules)))"
    done = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    modules["import medrobust"] = json.loads(done.stdout.strip().splitlines()[-1])
    imports = {stmt: import_times(stmt, top) for stmt in IMPORTS}
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.platform()}; {platform.processor() or platform.machine()}; CPUs: {os.cpu_count()}",
        "python": platform.python_version(),
        "commit": commit(),
        "load": [load_start, os.getloadavg()[0]],
        "runs": runs,
        "times": times,
        "modules": modules,
        "imports": {k: {"total": v[0], "top": v[1]} for k, v in imports.items()},
    }


def commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, text=True, cwd=ROOT)
    except OSError:
        return "?"
    return done.stdout.strip() + (" + uncommitted changes in src/" if dirty.stdout.strip() else "")


def stats(times: list[float]) -> str:
    return f"{statistics.median(times):.2f} ({min(times):.2f}-{max(times):.2f})"


def problems(result: dict) -> list[str]:
    """The light commands must import none of FORBIDDEN; ``import medrobust`` none of FORBIDDEN either."""
    return [
        f"{label} imports {', '.join(bad)}"
        for label, mods in result["modules"].items()
        if (bad := [m for m in mods if m in FORBIDDEN])
    ]


def lines(now: dict, before: dict | None) -> list[str]:
    out = [
        BEGIN,
        "## Startup (bench/startup.py)",
        "",
        f"- date: {now['date']}; command: `.venv/bin/python bench/startup.py"
        + (" --before BEFORE.json" if before else "")
        + " --write`",
        f"- machine: {now['machine']}; python {now['python']}; 1-minute load at start / end: "
        f"{now['load'][0]:.2f} / {now['load'][1]:.2f} (other processes shared this machine)",
        f"- wall time of a fresh subprocess, s: median (min-max) of {now['runs']} runs after one untimed warm-up",
    ]
    if before:
        out.append(
            f"- before: {before['date']}, commit {before['commit']}, load {before['load'][0]:.2f} / "
            f"{before['load'][1]:.2f}; after: commit {now['commit']}"
        )
    if before:
        out += [
            "",
            "| command | before s | after s | watched modules loaded before | after |",
            "|---|---:|---:|---|---|",
        ]
    else:
        out += ["", "| command | s | watched modules loaded |", "|---|---:|---|"]
    for label, times in now["times"].items():
        mods = ", ".join(now["modules"].get(label, [])) or "none"
        if before:
            was = stats(before["times"][label]) if label in before["times"] else "-"
            was_mods = (", ".join(before["modules"][label]) or "none") if label in before["modules"] else "-"
            out.append(f"| `{label}` | {was} | {stats(times)} | {was_mods} | {mods} |")
        else:
            out.append(f"| `{label}` | {stats(times)} | {mods} |")
    out += ["", f"Watched: {', '.join(WATCHED)}; the light commands must load none of {', '.join(FORBIDDEN)}."]
    for stmt, data in now["imports"].items():
        prior = before["imports"].get(stmt) if before else None
        top = ", ".join(f"{name} {sec:.2f}" for name, sec in data["top"])
        out += ["", f'`python -X importtime -c "{stmt}"`: {data["total"]:.2f} s cumulative', ""]
        out.append(f"- top-level packages by cumulative import time, s: {top}")
        if prior:
            was = ", ".join(f"{name} {sec:.2f}" for name, sec in prior["top"])
            out.append(f"- before: {prior['total']:.2f} s cumulative; {was}")
    out += ["", END]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="timed runs per command")
    parser.add_argument("--top", type=int, default=12, help="packages listed by cumulative import time")
    parser.add_argument("--json", type=Path, help="also write the measurement to this JSON file")
    parser.add_argument("--before", type=Path, help="a --json file of an earlier run, shown as 'before'")
    parser.add_argument("--write", action="store_true", help="replace this script's section of bench/RESULTS.md")
    args = parser.parse_args()
    now = measure(args.runs, args.top)
    before = json.loads(args.before.read_text()) if args.before else None
    if args.json:
        args.json.write_text(json.dumps(now, indent=1))
    text = lines(now, before)
    print("\n".join(text[1:-1]))
    if args.write:
        write_section(BEGIN, END, text)
        print(f"wrote {ROOT / 'bench' / 'RESULTS.md'}")
    bad = problems(now)
    for line in bad:
        print(f"FORBIDDEN IMPORT: {line}", file=sys.stderr)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
