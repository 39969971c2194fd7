"""Every JSON medrobust writes is standard JSON: a classification run (with CLEVER scores) and a segmentation run,
reported and exported, leave no NaN or Infinity in any *.json file of the run folder nor in any JSON column of
results.db; the one helper (medrobust.files.strict_dumps) turns non-finite numbers into null and refuses to let one
through."""

from __future__ import annotations

import json
import math
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY_DATA
from typer.testing import CliRunner

from medrobust.cli import app
from medrobust.config import load_config
from medrobust.files import finite_json, strict_dumps, write_json
from medrobust.runner import run_experiment

runner = CliRunner()
DATA = TINY_DATA


def refuse_constant(name: str) -> float:
    raise ValueError(f"non-standard JSON constant {name}")


def strict_loads(text: str, where: str) -> object:
    """``json.loads`` that refuses NaN, Infinity and -Infinity, naming where the text came from."""
    try:
        return json.loads(text, parse_constant=refuse_constant)
    except ValueError as err:
        raise AssertionError(f"{where}: {err}") from None


def json_columns(db: Path) -> dict[str, list[str]]:
    """table.column -> its non-null texts, for every column of results.db whose name ends in _json."""
    out: dict[str, list[str]] = {}
    with sqlite3.connect(db) as con:
        tables = [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for column in [c[1] for c in con.execute(f"PRAGMA table_info({table})") if c[1].endswith("_json")]:
                out[f"{table}.{column}"] = [
                    v for (v,) in con.execute(f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL")
                ]
    return out


def assert_strict(run_dir: Path, *extra: Path) -> dict[str, list[str]]:
    """Every *.json file under ``run_dir`` (and ``extra``) and every JSON column of its results.db parses
    strictly; returns the columns for further checks."""
    files = sorted(run_dir.rglob("*.json")) + list(extra)
    assert files, f"no JSON files under {run_dir}"
    for path in files:
        strict_loads(path.read_text(encoding="utf-8"), str(path))
    columns = json_columns(run_dir / "results.db")
    for where, texts in columns.items():
        for text in texts:
            strict_loads(text, where)
    return columns


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_the_helper_turns_non_finite_numbers_into_null_at_any_depth(tmp_path):
    value = {"a": [1.0, math.nan, (math.inf, -math.inf)], "b": {"c": np.float32("nan"), "d": np.float64(2.5)}, "e": 3}
    assert finite_json(value) == {"a": [1.0, None, [None, None]], "b": {"c": None, "d": 2.5}, "e": 3}
    assert strict_dumps(value, sort_keys=True) == '{"a": [1.0, null, [null, null]], "b": {"c": null, "d": 2.5}, "e": 3}'
    # finite data gives json.dumps's own text (stored keys such as settings_json keep matching)
    plain = {"z": [0.1, 2], "a": {"k": "v", "n": None}}
    assert strict_dumps(plain, sort_keys=True) == json.dumps(plain, sort_keys=True)
    # a value the default hook turns into a non-finite number is refused, not written
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        strict_dumps({"x": object()}, default=lambda o: math.nan)
    path = tmp_path / "out.json"
    write_json(path, [math.nan, 1.5], indent=1)
    assert strict_loads(path.read_text(), str(path)) == [None, 1.5]
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file and a rename


@pytest.fixture()
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint  # the session's shared small-cnn (conftest.py)


def test_a_classification_run_writes_strict_json(checkpoint, tmp_path):
    spec = {
        "name": "strict", "seed": 3, "batch_size": 6, "limit": 12, "dataset": DATA,
        "models": [{"name": "tiny", "checkpoint": str(checkpoint)}],
        "perturbations": [
            {"attack": "fgsm", "strengths": [0.05]},
            {"corruption": "gaussian_noise", "strengths": [0.1]},
        ],
        "clever": {"norm": "l2", "n_batches": 2, "batch_size": 4, "radius": 2.0},
    }
    run_dir = tmp_path / "run"
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    output = invoke("run", str(tmp_path / "spec.yaml"), "--out", str(run_dir), "--quiet")  # writes the report
    # the terminal: CLEVER is a size, so it has its own table and is no row of the accuracy table
    _, title, tables = output.partition("Generalizability vs robustness (accuracy)")
    accuracy, _, rest = tables.partition("CLEVER: estimated minimal perturbation")
    assert title and "fgsm @ 0.05" in accuracy and rest
    assert "clever" not in accuracy.lower()
    assert re.search(r"tiny\s+│\s+clever\[l2\]\s+│\s+\d\.\d{4}\s+│\s+\[\d\.\d{4}, \d\.\d{4}\]", rest), rest
    invoke("export", str(run_dir), "--format", "json")
    rows_json = tmp_path / "rows.json"
    invoke("evaluate", "--model", str(checkpoint), "--limit", "6", "--attack", "fgsm:eps=0.5", "--json", str(rows_json))
    columns = assert_strict(run_dir, rows_json, *checkpoint.glob("*.json"))
    assert {"records.probs_json", "runs.spec_json", "models.card_json", "cells.threat_json",
            "model_scores.scores_json"} <= set(columns)
    assert {p.name for p in run_dir.glob("*.json")} >= {"summary.json", "comparisons.json", "spec.json", "records.json"}
    assert (run_dir / "summary.md").exists()
    # the two-epoch model gives every sample one class, so FGSM flips none: no successful attack to take the
    # median size of, written as null (it was NaN)
    (fgsm,) = [r for r in json.loads(rows_json.read_text()) if r["perturbation"] == "fgsm(eps=0.5)"]
    assert fgsm["success_rate"] == 0.0 and fgsm["l2"] is None and fgsm["ssim"] is None
    # the stored CLEVER scores read back; the summary's median is over the clean-correct samples
    (scores,) = [json.loads(t) for t in columns["model_scores.scores_json"]]
    assert len(scores) == 12 and all(s["score"] == 0.0 for s in scores if s["fit"] == "misclassified")
    kept = sorted(s["score"] for s in scores if s["fit"] != "misclassified")
    summary = json.loads((run_dir / "summary.json").read_text())
    (median,) = [r["value"] for r in summary if r["perturbation"] == "clever[l2]" and r["metric"] == "clever"]
    assert kept and median == pytest.approx(float(np.median(kept)))


SEGMENTATION = {
    "name": "strict-seg", "seed": 1, "batch_size": 3, "limit": 3,
    # coronal slices at the edge of the template: the first two hold no brain, the third no white matter, so
    # their HD95 and the flip rates of the structures they lack have no value
    "dataset": {"name": "mni152-tissue", "split": "test",
                "params": {"axis": "coronal", "min_brain": 0.0, "block": 1}},
    "models": [{"name": "tiny-unet", "train": {
        "architecture": "unet", "arch_kwargs": {"channels": [4, 8], "strides": [2], "num_res_units": 0},
        "epochs": 1, "batch_size": 32, "lr": 0.01,
    }}],
    "perturbations": [{"corruption": "gaussian_noise", "strengths": [0.1]}],
}


def test_a_segmentation_run_writes_strict_json(tmp_path):
    run_dir = tmp_path / "run"
    run_experiment(load_config(SEGMENTATION), run_dir, quiet=True)
    invoke("report", str(run_dir))
    invoke("export", str(run_dir), "--format", "json")
    columns = assert_strict(run_dir)
    details = {}
    with sqlite3.connect(run_dir / "results.db") as con:
        for pert, index, text in con.execute("SELECT perturbation, sample_index, detail_json FROM records"):
            details[(pert, index)] = json.loads(text)
    assert len(details) == len(columns["records.detail_json"]) == 2 * 3  # clean and noise, 3 slices
    # the slices without brain: every HD95 and every flip rate is null, where NaN used to be written
    for pert in ("clean", "gaussian_noise"):
        for index in (0, 1):
            assert details[(pert, index)]["hd95"] == [None, None, None]
            assert details[(pert, index)]["true_n"][1:] == [0, 0, 0]
    noise = [details[("gaussian_noise", i)] for i in range(3)]
    assert [d["flip"] is None for d in noise] == [True, True, False]
    assert noise[0]["flip_s"] == [None, None, None]
    assert noise[2]["flip_s"][2] is None  # no white matter in the labels of the third slice
    # readers take null as they took NaN: "no value", left out of the summary's means and medians
    summary = {(r["perturbation"], r["metric"]): r["value"]
               for r in json.loads((run_dir / "summary.json").read_text())}
    assert summary[("clean", "hd95:csf")] == pytest.approx(details[("clean", 2)]["hd95"][0])
    assert summary[("gaussian_noise", "flip_rate")] == pytest.approx(noise[2]["flip"])
    assert summary[("gaussian_noise", "flip_rate:wm")] is None  # no slice with white matter: no value, null
