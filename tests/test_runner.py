"""The experiment runner and store: grid expansion, resumption after SIGKILL, determinism, clear errors."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
import yaml
from conftest import TINY_DATA, tiny_spec
from typer.testing import CliRunner

from medrobust.cli import app
from medrobust.config import SpecError, load_config
from medrobust.runner import run_experiment
from medrobust.store import Store

DATA = TINY_DATA
make_spec = tiny_spec


@pytest.fixture()
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint  # the session's shared small-cnn (conftest.py)


def summary(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "summary.json").read_text())


def value(rows, pert, strength, metric):
    (hit,) = [r["value"] for r in rows if r["perturbation"] == pert and r["strength"] == pytest.approx(strength) and r["metric"] == metric]
    return hit


def test_spec_errors_name_the_key_path():
    with pytest.raises(SpecError, match=r"models\.0\.train\.epoch: unknown key; did you mean 'epochs'"):
        load_config({"models": [{"name": "a", "train": {"architecture": "small-cnn", "epoch": 3}}]})
    with pytest.raises(SpecError, match=r"modles: unknown key; did you mean 'models'"):
        load_config({"modles": []})
    with pytest.raises(SpecError, match=r"models\.0\.train\.epochs: Input should be greater than or equal to 1"):
        load_config({"models": [{"name": "a", "train": {"architecture": "small-cnn", "epochs": 0}}]})
    with pytest.raises(SpecError, match=r"perturbations\.0: unknown attack 'fgsn'; did you mean 'fgsm'"):
        load_config({"models": [{"name": "a", "checkpoint": "x"}], "perturbations": [{"attack": "fgsn", "strengths": [0.1]}]})
    with pytest.raises(SpecError, match=r"pgd has no parameter 'stepz'; did you mean 'steps'"):
        load_config({"models": [{"name": "a", "checkpoint": "x"}],
                     "perturbations": [{"attack": "pgd", "strengths": [0.1], "params": {"stepz": 3}}]})
    with pytest.raises(SpecError, match="exactly one of 'checkpoint' or 'train'"):
        load_config({"models": [{"name": "a"}]})
    with pytest.raises(SpecError, match=r"dataset\.name: unknown dataset 'derm'"):
        load_config({"models": [{"name": "a", "checkpoint": "x"}], "dataset": {"name": "derm"}})


def test_shipped_specs_validate():
    root = Path(__file__).resolve().parents[1]
    for path in sorted((root / "examples").glob("*.yaml")):
        load_config(path)


def test_run_summary_contract_and_numbers(checkpoint, tmp_path):
    spec = load_config(make_spec(checkpoint))
    result = run_experiment(spec, tmp_path / "run", quiet=True)
    # 1 clean + 1 fgsm (a pruned sweep: its strengths in one cell) + 1 deepfool (all strengths in one cell) + 2 noise
    assert (result.cells_total, result.cells_run) == (5, 5)
    rows = summary(tmp_path / "run")
    assert all(set(r) == {"model", "perturbation", "strength", "metric", "value", "n", "ci_low", "ci_high"} for r in rows)
    # accuracy-type values carry a 95% interval around them (Wilson for accuracy); sizes carry none
    from medrobust.stats import wilson

    for r in rows:
        if r["metric"] in ("accuracy", "balanced_accuracy", "success_rate") and r["value"] is not None:
            assert r["ci_low"] <= r["value"] <= r["ci_high"], r
        if r["metric"] in ("l2", "linf", "ssim"):
            assert r["ci_low"] is None and r["ci_high"] is None
    clean_row = next(r for r in rows if r["perturbation"] == "clean" and r["metric"] == "accuracy")
    assert (clean_row["ci_low"], clean_row["ci_high"]) == pytest.approx(wilson(round(clean_row["value"] * 12), 12))
    assert json.loads((tmp_path / "run" / "comparisons.json").read_text()) == []  # one model: no pairs
    assert {r["metric"] for r in rows} >= {"accuracy", "balanced_accuracy", "auc", "success_rate", "l2", "linf", "ssim"}
    assert all(r["n"] == 12 for r in rows)
    clean = value(rows, "clean", 0.0, "accuracy")
    # FGSM perturbations have Linf exactly eps; its matched noise has the same median L2. The sweep is pruned:
    # at 0.05 the samples FGSM broke at 0.01 keep their 0.01 example, the others get a 0.05 step
    assert value(rows, "fgsm", 0.01, "linf") == pytest.approx(0.01, abs=1e-6)
    store = Store(tmp_path / "run" / "results.db")
    fgsm = {(r["strength"], r["sample_index"]): r for r in store.records() if r["perturbation"] == "fgsm"}
    store.close()
    for i in range(12):
        small, large = fgsm[(0.01, i)], fgsm[(0.05, i)]
        broken = small["pred"] != small["label"]  # wrong at 0.01 (also samples wrong from the start)
        assert large["linf"] == pytest.approx(0.01 if broken else 0.05, abs=1e-6)
    assert value(rows, "matched_noise[fgsm]", 0.05, "accuracy") >= value(rows, "fgsm", 0.05, "accuracy")
    # DeepFool evaluated by clipping: accuracy can only fall as the L2 budget grows, sizes stay within it
    accs = [value(rows, "deepfool", s, "accuracy") for s in (0.05, 0.2, 1.0)]
    assert accs[0] <= clean and accs[1] <= accs[0] and accs[2] <= accs[1]
    assert value(rows, "deepfool", 0.2, "l2") <= 0.2 + 1e-6
    # worst case over the two attack norms exists and is no better than each attack
    assert value(rows, "worst_case[linf]", 0.05, "accuracy") == value(rows, "fgsm", 0.05, "accuracy")
    con = sqlite3.connect(tmp_path / "run" / "results.db")
    n_records = con.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    # clean 12 + fgsm 2x(12+12 matched) + deepfool 3x(12+12) + noise 2x12
    assert n_records == 12 + 48 + 72 + 24
    threat = json.loads(con.execute("SELECT threat_json FROM cells WHERE perturbation='fgsm' LIMIT 1").fetchone()[0])
    assert threat["norm"] == "linf" and threat["bounds"] == [0.0, 1.0] and threat["seed"] == 3


def test_same_spec_same_summary_and_resume(checkpoint, tmp_path):
    spec = load_config(make_spec(checkpoint))
    run_experiment(spec, tmp_path / "a", quiet=True)
    run_experiment(spec, tmp_path / "b", quiet=True)
    assert (tmp_path / "a" / "summary.json").read_text() == (tmp_path / "b" / "summary.json").read_text()
    again = run_experiment(spec, tmp_path / "a", quiet=True)
    assert (again.cells_run, again.cells_skipped) == (0, 5)
    changed = make_spec(checkpoint)
    changed["perturbations"][0]["strengths"] = [0.01, 0.05, 0.1]  # a new pruned fgsm sweep: one new cell
    more = run_experiment(load_config(changed), tmp_path / "a", quiet=True)
    assert (more.cells_run, more.cells_skipped) == (1, 4)
    # with independent strengths only the new strength is a new cell
    changed["perturbations"][0]["sweep"] = "independent"
    more = run_experiment(load_config(changed), tmp_path / "a", quiet=True)
    assert (more.cells_run, more.cells_skipped) == (3, 4)


def test_cli_errors_keep_stored_results(checkpoint, tmp_path):
    runner = CliRunner()
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(make_spec(checkpoint)))
    run_dir = tmp_path / "run"
    first = runner.invoke(app, ["run", str(good), "--out", str(run_dir), "--quiet"])
    assert first.exit_code == 0
    # the time of each stage, at the end
    (line,) = [x for x in first.stdout.splitlines() if x.startswith("time per stage: ")]
    stages = re.findall(r"([A-Za-z ]+) ([0-9.]+) s", line.removeprefix("time per stage: "))
    names = [n.strip().lstrip(", ") for n, _ in stages]
    assert names == ["setup", "training", "sanity checks", "CLEVER", "cells", "summary", "report"]
    (total,) = re.findall(r"cells run, 0 reused, ([0-9]+) s", first.stdout)
    assert sum(float(t) for _, t in stages[:-1]) <= float(total) + 1
    before = (run_dir / "summary.json").read_text()
    cases = {
        "missing checkpoint": (make_spec(tmp_path / "nope"), "not found"),
        "dataset path": (make_spec(checkpoint, dataset={"name": "medmnist", "params": {"path": "/no/such.npz"}}), "/no/such.npz"),
        "unknown attack": (make_spec(checkpoint, perturbations=[{"attack": "deepfoo", "strengths": [1.0]}]), "did you mean 'deepfool'"),
    }
    for name, (spec, message) in cases.items():
        bad = tmp_path / f"{name.replace(' ', '_')}.yaml"
        bad.write_text(yaml.safe_dump(spec))
        result = runner.invoke(app, ["run", str(bad), "--out", str(run_dir), "--quiet"])
        assert result.exit_code == 2, name
        assert message in result.output, (name, result.output)
        assert "Traceback" not in result.output
    assert (run_dir / "summary.json").read_text() == before
    # clean, fgsm (its two strengths: one pruned cell), deepfool, noise at two strengths
    assert sqlite3.connect(run_dir / "results.db").execute("SELECT COUNT(*) FROM cells").fetchone()[0] == 5


def test_export_formats(checkpoint, tmp_path):
    spec = load_config(make_spec(checkpoint))
    run_experiment(spec, tmp_path / "run", quiet=True)
    runner = CliRunner()
    assert runner.invoke(app, ["export", str(tmp_path / "run"), "--format", "json"]).exit_code == 0
    rows = json.loads((tmp_path / "run" / "records.json").read_text())
    assert len(rows) == 156 and {"sample_id", "label", "clean_pred", "pred", "l2"} <= set(rows[0])
    assert runner.invoke(app, ["export", str(tmp_path / "run"), "--format", "csv"]).exit_code == 0
    assert len((tmp_path / "run" / "records.csv").read_text().splitlines()) == 157
    bad = runner.invoke(app, ["export", str(tmp_path / "run"), "--format", "xls"])
    assert bad.exit_code == 2 and "expected one of csv, json, parquet" in bad.output


def test_gallery_examples_span_batches(checkpoint, tmp_path):
    import numpy as np

    from medrobust.data import load_dataset
    from medrobust.store import Store

    spec = make_spec(checkpoint, batch_size=2, limit=5, gallery=3,
                     perturbations=[{"attack": "fgsm", "strengths": [0.01, 0.05]}])
    run_experiment(load_config(spec), tmp_path / "run", quiet=True)
    store = Store(tmp_path / "run" / "results.db")
    ex = store.examples([k for (k,) in store.conn.execute("SELECT key FROM cells")])
    linf = dict(((s, i), v) for s, i, v in store.conn.execute(
        "SELECT strength, sample_index, linf FROM records WHERE perturbation='fgsm'"))
    store.close()
    ds = load_dataset(DATA["name"], split="test", **DATA["params"])
    # samples 0, 1 (first batch) and 2 (second batch); nothing for samples 3 and 4
    assert sorted(k for k in ex if k[4] == "image") == [("tiny", "clean", 0.0, i, "image") for i in range(3)]
    for i in range(3):
        np.testing.assert_array_equal(ex[("tiny", "clean", 0.0, i, "image")], ds[i][0].numpy())
        for s in (0.01, 0.05):
            delta = ex[("tiny", "fgsm", s, i, "delta")]
            assert delta.dtype == np.float16
            assert float(np.abs(delta.astype(np.float32)).max()) == pytest.approx(linf[(s, i)], rel=2e-3)
    assert len(ex) == 3 + 3 * 2  # no examples for matched noise, none for samples past the gallery


def test_autoattack_and_transfer_cells(tmp_path, checkpoint):
    # two models: the checkpoint and a second one trained in the run; a transfer attack from the checkpoint is
    # evaluated on the other model only; autoattack records which member broke each sample
    spec = load_config(make_spec(
        checkpoint,
        models=[{"name": "tiny", "checkpoint": str(checkpoint)},
                {"name": "other", "train": {"architecture": "small-cnn", "arch_kwargs": {"width": 4}, "epochs": 2}}],
        perturbations=[
            {"attack": "autoattack", "strengths": [0.03], "params": {"steps": 10, "queries": 50}},
            {"attack": "transfer", "strengths": [0.03], "params": {"sources": ["tiny"], "attack": "pgd"}},
        ],
    ))
    run_experiment(spec, tmp_path, quiet=True)
    con = sqlite3.connect(tmp_path / "results.db")
    cells = {(m, p) for m, p in con.execute("SELECT model, perturbation FROM cells")}
    assert ("other", "transfer") in cells and ("tiny", "transfer") not in cells
    rows = con.execute("SELECT clean_pred, label, pred, detail_json FROM records WHERE perturbation='autoattack'").fetchall()
    assert len(rows) == 24
    for clean_pred, label, pred, detail in rows:
        broken_by = json.loads(detail)["broken_by"]
        # a member is named exactly for the clean-correct samples the ensemble made wrong
        assert (broken_by is not None) == (clean_pred == label and pred != label)
        assert broken_by in (None, "apgd-ce", "apgd-t", "square")
    threat = json.loads(con.execute("SELECT threat_json FROM cells WHERE perturbation='transfer'").fetchone()[0])
    assert threat["sources"] == ["tiny"] and threat["norm"] == "linf"
    rows = summary(tmp_path)
    # the worst case per sample includes autoattack and transfer: never above either
    for model in ("tiny", "other"):
        worst = [r["value"] for r in rows if r["model"] == model and r["perturbation"] == "worst_case" and r["metric"] == "accuracy"]
        aa = [r["value"] for r in rows if r["model"] == model and r["perturbation"] == "autoattack" and r["metric"] == "accuracy"]
        assert worst[0] <= aa[0]


def test_clever_scores_are_stored_summarised_reused_and_reported(checkpoint, tmp_path, monkeypatch):
    import numpy as np

    from medrobust.report import build_report
    from medrobust.store import Store

    spec = load_config(make_spec(checkpoint, clever={"norm": "l2", "n_batches": 6, "batch_size": 4, "radius": 2.0}))
    run_experiment(spec, tmp_path / "run", quiet=True)
    store = Store(tmp_path / "run" / "results.db")
    (stored,) = store.all_model_scores()
    store.close()
    scores = stored["scores"]
    assert [s["sample_index"] for s in scores] == list(range(12)) and stored["name"] == "clever[l2]"
    kept = [s["score"] for s in scores if s["fit"] != "misclassified"]
    clean_correct = round(value(summary(tmp_path / "run"), "clean", 0.0, "accuracy") * 12)
    assert len(kept) == clean_correct and all(0 < v <= 2.0 for v in kept)
    rows = summary(tmp_path / "run")
    assert value(rows, "clever[l2]", 0.0, "clever") == pytest.approx(float(np.median(kept)))
    # a re-run reuses the stored scores instead of recomputing them
    import medrobust.runner as R

    def refuse(*args, **kwargs):
        raise AssertionError("CLEVER recomputed")

    monkeypatch.setattr(R, "clever_estimate", refuse)
    run_experiment(spec, tmp_path / "run", quiet=True)
    written = (tmp_path / "run" / "summary.json").read_bytes()
    html = build_report(tmp_path / "run")[0].read_text()
    assert (tmp_path / "run" / "summary.json").read_bytes() == written  # the report writes the same bytes again
    (shown,) = re.findall(r'data-model="tiny" data-clever="([^"]+)"', html)
    assert float(shown) == pytest.approx(float(np.median(kept)))
    # the share of scores above the distance DeepFool (the run's minimal L2 attack) needed, by hand from the store
    store = Store(tmp_path / "run" / "results.db")
    broken: dict[int, float] = {}
    for r in store.records():
        if r["perturbation"] == "deepfool" and r["clean_pred"] == r["label"] and r["pred"] != r["label"]:
            broken[r["sample_index"]] = min(r["l2"], broken.get(r["sample_index"], np.inf))
    store.close()
    above = sum(s["score"] > broken.get(s["sample_index"], np.inf) for s in scores if s["fit"] != "misclassified")
    assert broken and value(rows, "clever[l2]", 0.0, "clever_above_attack") == pytest.approx(above / len(kept))
    (shown_above,) = re.findall(r'data-clever-above="([^"]+)"', html)
    assert float(shown_above) == pytest.approx(above / len(kept))
    assert "CLEVER above an attack's distance" in (tmp_path / "run" / "summary.md").read_text()


def test_clever_refuses_segmentation(tmp_path):
    spec = load_config({"name": "seg", "dataset": {"name": "mni152-tissue", "params": {}}, "clever": {},
                        "models": [{"name": "u", "train": {"architecture": "unet", "epochs": 1}}]})
    with pytest.raises(ValueError, match="CLEVER scores classifiers"):
        run_experiment(spec, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()  # a failed first run leaves no folder


def test_a_model_that_cannot_take_the_input_fails_before_any_training(tmp_path, monkeypatch):
    import medrobust.runner as R

    def refuse(*args, **kwargs):
        raise AssertionError("a model was trained before the input check")

    monkeypatch.setattr(R, "train", refuse)
    spec = load_config({"dataset": {"name": "derm-synth", "params": {"size": 16, "n": 30}}, "models": [
        {"name": "fine", "train": {"architecture": "small-cnn", "epochs": 1}},
        {"name": "too-deep", "train": {"architecture": "efficientnet", "epochs": 1}}], "perturbations": []})
    with pytest.raises(ValueError, match=r"^model 'too-deep' \(efficientnet\) cannot take the inputs of dataset "
                                         r"'derm-synth' \(one sample: \[3, 16, 16\]\): "):
        run_experiment(spec, tmp_path / "run", quiet=True)  # train() refuses: nothing trained before the check
    assert not (tmp_path / "run").exists()
