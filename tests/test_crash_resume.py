"""`medrobust run` as a process: killed with SIGKILL mid-run it resumes to the uninterrupted result, a second run
on the same folder is refused while the first runs, and results do not depend on the number of CPU threads.

Each test starts the CLI in subprocesses (about 5 s of imports each), so the specs are as small as the property
allows: a few PGD cells, each slow enough that a kill lands mid-run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_spec

from medrobust.config import load_config
from medrobust.runner import run_experiment


def _cells_in(db: Path) -> int:
    """Finished cells in a run's database, read-only (never creating the file the run is about to create)."""
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0


def _pgd_spec(checkpoint: Path, tmp_path: Path, strengths: list[float], steps: int) -> tuple[Path, list[str]]:
    """A spec with one independent PGD cell per strength (plus clean), and the CLI command that runs it."""
    spec = tiny_spec(checkpoint, perturbations=[
        {"attack": "pgd", "strengths": strengths, "params": {"steps": steps}, "sweep": "independent"},
    ])
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    return spec_path, [sys.executable, "-m", "medrobust", "run", str(spec_path), "--quiet", "--out"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_sigkill_mid_run_then_resume_matches_uninterrupted(tiny_checkpoint, tmp_path):
    strengths = [0.005, 0.01, 0.02, 0.04]
    spec_path, cmd = _pgd_spec(tiny_checkpoint, tmp_path, strengths, steps=200)
    run_experiment(load_config(spec_path), tmp_path / "whole", quiet=True)

    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, str(run_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    db = run_dir / "results.db"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and _cells_in(db) < 2:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make the spec slower"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    con = sqlite3.connect(db)
    killed_cells = con.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
    assert 2 <= killed_cells < 1 + len(strengths)
    # every stored cell is whole: 12 attack + 12 matched-noise records (or 12 for clean)
    per_cell = con.execute("SELECT perturbation, COUNT(*) FROM records GROUP BY cell_key").fetchall()
    assert all(n == (12 if p == "clean" else 24) for p, n in per_cell)
    con.close()

    resumed = run_experiment(load_config(spec_path), run_dir, quiet=True)  # in this process: no start-up cost
    assert (resumed.cells_skipped, resumed.cells_run) == (killed_cells, 1 + len(strengths) - killed_cells)
    assert (run_dir / "summary.json").read_text() == (tmp_path / "whole" / "summary.json").read_text()
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == 1 + len(strengths)
    dupes = con.execute(
        "SELECT COUNT(*) FROM (SELECT cell_key, perturbation, strength, sample_index, COUNT(*) c FROM records "
        "GROUP BY 1, 2, 3, 4 HAVING c > 1)"
    ).fetchone()[0]
    assert dupes == 0
    assert con.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 12 + len(strengths) * 24


def test_second_run_is_refused_while_the_first_runs_and_resumes_after_sigkill(tiny_checkpoint, tmp_path):
    strengths = [0.005, 0.01, 0.02, 0.04]
    spec_path, cmd = _pgd_spec(tiny_checkpoint, tmp_path, strengths, steps=600)
    run_dir = tmp_path / "run"
    cmd = [*cmd, str(run_dir)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None and _cells_in(run_dir / "results.db") < 1:
        time.sleep(0.02)
    assert first.poll() is None, f"the first run finished before the second started: {first.stderr.read()}"
    second = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    running = first.poll() is None
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert running, "the first run ended while the second was refused; make the spec slower"
    assert second.returncode == 2
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "is in use by another medrobust run" in lines[0], second.stderr
    killed = _cells_in(run_dir / "results.db")
    assert 1 <= killed < 1 + len(strengths)
    # the killed run left no lock behind that blocks the resume (run here, in this process, under the same lock)
    resumed = run_experiment(load_config(spec_path), run_dir, quiet=True)
    assert (resumed.cells_skipped, resumed.cells_run) == (killed, 1 + len(strengths) - killed)
    con = sqlite3.connect(run_dir / "results.db")
    assert con.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == 1 + len(strengths)
    assert con.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 12 + len(strengths) * 24


def test_checkpoint_results_are_bit_identical_across_thread_counts(tiny_checkpoint, tmp_path):
    """The README's promise: evaluating a checkpoint does not depend on the number of CPU threads. One run here
    on 1 torch thread, one in a process started with OMP_NUM_THREADS=2 (the CLI, as a user runs it)."""
    import torch

    spec = tiny_spec(tiny_checkpoint, perturbations=[
        {"attack": "pgd", "strengths": [0.02], "params": {"steps": 10}},
        {"attack": "deepfool", "strengths": [0.05, 0.2], "params": {"steps": 20}},
        {"corruption": "gaussian_noise", "strengths": [0.05]},
    ])
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    proc = subprocess.Popen(
        [sys.executable, "-m", "medrobust", "run", str(spec_path), "--out", str(tmp_path / "threads-2"), "--quiet"],
        env={**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # meanwhile, the same spec here on one thread
        run_experiment(load_config(spec_path), tmp_path / "threads-1", quiet=True)
    finally:
        torch.set_num_threads(before)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    rows = {}
    for threads in ("1", "2"):
        run_dir = tmp_path / f"threads-{threads}"
        con = sqlite3.connect(run_dir / "results.db")
        rows[threads] = con.execute(
            "SELECT perturbation, strength, sample_index, pred, probs_json, l2, linf, score FROM records "
            "ORDER BY perturbation, strength, sample_index").fetchall()
        con.close()
        rows[threads + "summary"] = (run_dir / "summary.json").read_text()
    assert len(rows["1"]) == 12 * (1 + 2 + 2 + 2 + 1)
    assert rows["1"] == rows["2"]
    assert rows["1summary"] == rows["2summary"]


@pytest.mark.slow
def test_sigkill_during_report_keeps_a_whole_report(tiny_checkpoint, tmp_path):
    """`medrobust report` killed with SIGKILL at points spread over its lifetime (imports, reading, writing each
    file): every report file is, after each kill, either the previous one byte for byte or a complete new one
    (JSON that parses, HTML that closes); the next report succeeds. `make test-all`: about 10 processes."""
    from medrobust.report import build_report

    spec_path, _ = _pgd_spec(tiny_checkpoint, tmp_path, [0.005, 0.01], steps=2)
    run_dir = tmp_path / "run"
    run_experiment(load_config(spec_path), run_dir, quiet=True)
    build_report(run_dir, reference_strength={"linf": 0.005})  # the first report
    cmd = [sys.executable, "-m", "medrobust", "report", str(run_dir), "--reference", "linf=0.01"]
    names = ("summary.json", "summary.csv", "comparisons.json", "report.html", "summary.md")
    old = {n: (run_dir / n).read_bytes() for n in names}
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env=ENV, stdout=subprocess.DEVNULL)  # the whole report: how long it takes
    whole = time.perf_counter() - started
    new = {n: (run_dir / n).read_bytes() for n in names}
    assert new["report.html"] != old["report.html"]  # the caption names the reference: the kill points can tell
    kinds = {"old": 0, "new": 0}
    for fraction in (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98):
        for n in names:  # back to the first report before each kill
            (run_dir / n).write_bytes(old[n])
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(fraction * whole)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for n in names:
            now = (run_dir / n).read_bytes()
            if n == "report.html":  # old, or a whole new one (it records when it was made)
                assert now == old[n] or now.rstrip().endswith(b"</html>") and len(now) > len(new[n]) // 2, fraction
                kinds["old" if now == old[n] else "new"] += 1
            else:
                assert now in (old[n], new[n]), (fraction, n)
                if n.endswith(".json"):
                    json.loads(now)
    assert kinds["old"] >= 1  # some kills landed before the report was replaced
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert all((run_dir / n).read_bytes() == new[n] for n in names if n != "report.html")
