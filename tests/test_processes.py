"""The processes executor (worker processes on this machine): the same records and summary.json, byte for byte,
as the local executor at the same thread count, with models trained side by side in the workers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from medrobust.config import load_config
from medrobust.runner import run_experiment

SMALL = {"architecture": "small-cnn", "arch_kwargs": {"width": 4}, "epochs": 1, "batch_size": 16}


def make_spec(**executor) -> dict:
    return {
        "name": "processes-test", "seed": 2, "batch_size": 6, "limit": 18, "threads": 1,
        "dataset": {"name": "derm-synth", "params": {"size": 16, "n": 40}},
        "models": [{"name": "a", "train": SMALL}, {"name": "b", "train": {**SMALL, "lr": 0.01}}],
        "perturbations": [
            {"corruption": "gaussian_noise", "strengths": [0.05, 0.1]},
            {"attack": "pgd", "strengths": [0.01, 0.03], "params": {"steps": 5}},
            {"attack": "deepfool", "strengths": [0.2, 1.0], "params": {"steps": 10}},
        ],
        "executor": executor or {"name": "local"},
    }


def _records(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    rows = con.execute(
        "SELECT model, perturbation, strength, sample_index, pred, probs_json, l2, score FROM records "
        "ORDER BY 1, 2, 3, 4"
    ).fetchall()
    con.close()
    return rows


def test_processes_give_the_local_records_and_summary_byte_for_byte(tmp_path):
    local = run_experiment(load_config(make_spec()), tmp_path / "local", quiet=True)
    spread = run_experiment(
        load_config(make_spec(name="processes", workers=2, shard_size=12)), tmp_path / "spread", quiet=True
    )
    assert spread.cells_run == local.cells_run == 2 * 5 and spread.cells_total == local.cells_total
    rows = _records(tmp_path / "local" / "results.db")
    assert len(rows) == 2 * 18 * (1 + 2 + 2 * 2 + 2 * 2)  # clean, noise, pgd + matched noise, deepfool + noise
    assert _records(tmp_path / "spread" / "results.db") == rows
    assert (tmp_path / "spread" / "summary.json").read_bytes() == (tmp_path / "local" / "summary.json").read_bytes()
    # both models were trained in the workers and cached like the local run's, weights equal
    for name in ("a", "b"):
        (mine,) = (tmp_path / "spread" / "models").glob(f"{name}-*")
        (theirs,) = (tmp_path / "local" / "models").glob(f"{name}-*")
        assert mine.name == theirs.name
        assert (mine / "model.safetensors").read_bytes() == (theirs / "model.safetensors").read_bytes()
