"""The ray executor on a local Ray instance started here (2 CPUs, no network): the same summary.json, byte for
byte, as the local executor, with cells split into sample shards and models trained as Ray tasks; a driver killed
mid-run resumes from the store with nothing lost or repeated; a clear error without Ray."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from medrobust.config import load_config
from medrobust.runner import run_experiment

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'medrobust[ray]'; make setup does)")

def small(**changes) -> dict:
    """Training settings of a tiny model, a new dict each time (a dict shared by two models would be dumped as a
    YAML alias, which specs refuse)."""
    return {"architecture": "small-cnn", "arch_kwargs": {"width": 4}, "epochs": 1, "batch_size": 16, **changes}


def make_spec(**executor) -> dict:
    return {
        "name": "ray-test", "seed": 2, "batch_size": 6, "limit": 24, "threads": 1,
        "dataset": {"name": "derm-synth", "params": {"size": 16, "n": 60}},
        "models": [{"name": "a", "train": small()}, {"name": "b", "train": small(lr=0.01)}],
        "perturbations": [
            {"corruption": "gaussian_noise", "strengths": [0.05, 0.1]},
            {"attack": "pgd", "strengths": [0.01, 0.03], "params": {"steps": 20}, "sweep": "independent"},
            {"attack": "deepfool", "strengths": [0.2, 1.0], "params": {"steps": 20}},
            {"attack": "transfer", "strengths": [0.03], "params": {"sources": ["a"], "attack": "pgd", "attack_params": {"steps": 5}}},
        ],
        "executor": executor or {"name": "local"},
    }


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance for this module; drivers in subprocesses connect to it by address. Up to 4 idle
    workers are kept (Ray's default: one per CPU), so this process's warm workers outlive a subprocess driver's."""
    ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                   _system_config={"num_workers_soft_limit": 4})
    yield ctx.address_info["address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "run"
    run_experiment(load_config(make_spec()), out, quiet=True)
    return out


def _records(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    rows = con.execute(
        "SELECT model, perturbation, strength, sample_index, pred, probs_json, l2, score FROM records ORDER BY 1, 2, 3, 4"
    ).fetchall()
    con.close()
    return rows


def test_ray_executor_gives_the_local_summary_byte_for_byte(cluster, reference, tmp_path):
    result = run_experiment(load_config(make_spec(name="ray", shard_size=12)), tmp_path / "ray", quiet=True)
    assert (tmp_path / "ray" / "summary.json").read_bytes() == (reference / "summary.json").read_bytes()
    assert (tmp_path / "ray" / "comparisons.json").read_bytes() == (reference / "comparisons.json").read_bytes()
    assert _records(tmp_path / "ray" / "results.db") == _records(reference / "results.db")
    # 2 models x (clean + 2 noise + 2 pgd + 1 deepfool) + 1 transfer cell (on b only) = 13 cells, 2 shards each
    assert result.cells_total == 13 and result.cells_run == 13
    con = sqlite3.connect(tmp_path / "ray" / "results.db")
    assert con.execute("SELECT COUNT(*) FROM shards").fetchone()[0] == 0  # every cell finished whole
    assert con.execute("SELECT COUNT(*) FROM cells WHERE status='done'").fetchone()[0] == 13
    # the trained models are those of the local run (trained as Ray tasks, saved by the driver)
    local = sorted(p.name for p in (reference / "models").iterdir())
    assert sorted(p.name for p in (tmp_path / "ray" / "models").iterdir()) == local
    con.close()


def test_changed_sharding_restarts_only_the_unfinished_cells(cluster, reference, tmp_path):
    """Shards stored under another shard size are dropped; finished cells are kept."""
    from medrobust.store import Store

    spec = load_config(make_spec(name="ray", shard_size=12))
    shutil.copytree(reference / "models", tmp_path / "run" / "models")  # trained once, by the reference run
    run_experiment(spec, tmp_path / "run", quiet=True)
    store = Store(tmp_path / "run" / "results.db")
    key = next(c["key"] for c in store.cells() if c["perturbation"] == "pgd")
    with store.conn:  # make one cell half-done, as a run sharded by 6 samples would leave it
        store.conn.execute("DELETE FROM cells WHERE key=?", (key,))
        store.conn.execute("DELETE FROM records WHERE cell_key=? AND sample_index>=6", (key,))
        store.conn.execute("INSERT INTO shards VALUES (?, 0, 6, 0, 1.0)", (key,))
    store.close()
    again = run_experiment(spec, tmp_path / "run", quiet=True)
    assert (again.cells_run, again.cells_skipped) == (1, 12)
    assert (tmp_path / "run" / "summary.json").read_bytes() == (reference / "summary.json").read_bytes()


def test_killed_ray_driver_resumes_with_nothing_lost_or_repeated(cluster, reference, tmp_path):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(make_spec(name="ray", shard_size=6)))
    run_dir = tmp_path / "killed"
    # the models the reference trained, in the run folder's model cache: this test is about the cells' resume
    shutil.copytree(reference / "models", run_dir / "models")
    cmd = [sys.executable, "-m", "medrobust", "run", str(spec_path), "--out", str(run_dir), "--quiet",
           "--address", cluster, "--trust-code"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    db = run_dir / "results.db"
    deadline, stored = time.time() + 180, 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                stored = sqlite3.connect(db, timeout=1).execute("SELECT COUNT(*) FROM shards").fetchone()[0]
            except sqlite3.OperationalError:
                stored = 0
            if stored >= 1:
                break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    con = sqlite3.connect(db)
    cells_then = con.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
    shards_then = con.execute("SELECT COUNT(*) FROM shards").fetchone()[0]
    con.close()
    # killed mid-run: some work stored (a shard, or a cell its last shard completed), not all of it
    assert cells_then < 13 and cells_then + shards_then >= 1
    # Ray reclaims the dead driver's workers once it notices; until then a new driver's units would wait for CPUs
    deadline = time.time() + 120
    while time.time() < deadline and ray.available_resources().get("CPU", 0) < 2:
        time.sleep(0.2)
    # the resume is driven from this process (already connected to the cluster, its workers warm)
    resumed = run_experiment(load_config(spec_path), run_dir, quiet=True)
    assert resumed.cells_skipped == cells_then and resumed.cells_run == 13 - cells_then
    assert (run_dir / "summary.json").read_bytes() == (reference / "summary.json").read_bytes()
    assert _records(db) == _records(reference / "results.db")
    con = sqlite3.connect(db)
    dupes = con.execute(
        "SELECT COUNT(*) FROM (SELECT cell_key, perturbation, strength, sample_index, COUNT(*) c FROM records "
        "GROUP BY 1, 2, 3, 4 HAVING c > 1)"
    ).fetchone()[0]
    assert dupes == 0 and con.execute("SELECT COUNT(*) FROM shards").fetchone()[0] == 0
    con.close()


def test_a_cluster_address_needs_trust(tmp_path):
    spec = load_config({**make_spec(name="ray", address="10.0.0.1:6379")})
    with pytest.raises(ValueError, match="pickled results .* pass --trust-code to connect"):
        run_experiment(spec, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_missing_ray_is_one_clear_line(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    from medrobust.config import ExecutorSpec
    from medrobust.executors import make_executor

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ValueError, match=r"the ray executor needs Ray: pip install 'medrobust\[ray\]'"):
        make_executor(ExecutorSpec(name="ray"))
