"""Ordinal labels: quadratic weighted kappa by hand, an ordinal task declared by the data (RetinaMNIST) or the
spec, and its summary rows (kappa with an interval, mean absolute error in grades) through a whole run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from medrobust.config import load_config
from medrobust.data import load_dataset
from medrobust.metrics import mean_absolute_error, quadratic_kappa
from medrobust.runner import run_experiment
from medrobust.train import TrainSettings, train


def test_quadratic_kappa_of_a_hand_computed_3x3_example():
    # true 0 0 1 1 2 2, predicted 0 1 1 2 2 2: O = [[1,1,0],[0,1,1],[0,0,2]], rows 2 2 2, columns 1 2 3, N = 6
    # E = rows x columns / 6 = [1/3, 2/3, 1] in every row; W = (i - j)^2 / 4
    # sum W O = 0.25 + 0.25 = 0.5; sum W E = (1/6 + 1) + (1/12 + 1/4) + (1/3 + 1/6) = 2; kappa = 1 - 0.5 / 2 = 0.75
    y, pred = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 1, 2, 2, 2])
    assert quadratic_kappa(pred, y, 3) == pytest.approx(0.75)
    assert mean_absolute_error(pred, y) == pytest.approx(2 / 6)
    assert quadratic_kappa(y, y, 3) == pytest.approx(1.0)
    # predicting the reverse grade is worse than chance
    assert quadratic_kappa(2 - y, y, 3) == pytest.approx(-1.0)
    assert math.isnan(quadratic_kappa(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), 3))


def test_resampled_kappa_equals_kappa_of_each_resample():
    from medrobust import resampling

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 80)
    pred = np.clip(y + rng.integers(-1, 2, 80), 0, 4)
    idx = rng.integers(0, 80, (20, 80))
    weights = np.stack([np.bincount(i, minlength=80) for i in idx]).astype(float)  # resampled indices as counts
    got = resampling.quadratic_kappa({"pred": pred, "label": y, "k": 5}, weights)
    want = [quadratic_kappa(torch.from_numpy(pred[i]), torch.from_numpy(y[i]), 5) for i in idx]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # per-permutation predictions (P, n) without weights: each row's own kappa
    rows = np.stack([pred, y, np.clip(pred + 1, 0, 4)])
    got = resampling.quadratic_kappa({"pred": rows, "label": y, "k": 5}, None)
    want = [quadratic_kappa(torch.from_numpy(r), torch.from_numpy(y), 5) for r in rows]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # one class only in a resample: undefined, as the scalar says
    zeros = np.zeros(4, dtype=np.int64)
    assert math.isnan(resampling.quadratic_kappa({"pred": zeros, "label": zeros, "k": 3}, np.ones((1, 4)))[0])


def retina_like(path, n_classes=5, seed=0):
    """A MedMNIST-layout .npz of graded images: the grade sets the brightness of a blob, plus noise."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", 200), ("val", 60), ("test", 60)):
        labels = rng.integers(0, n_classes, size=(n, 1))
        images = rng.normal(60, 20, size=(n, 28, 28, 3))
        images[:, 8:20, 8:20, :] += labels[:, :, None, None] * 35
        arrays[f"{split}_images"] = images.clip(0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels.astype(np.uint8)
    np.savez(path, **arrays)
    return path


def test_retinamnist_is_ordinal_and_a_spec_can_say_so(tmp_path):
    file = retina_like(tmp_path / "retinamnist.npz")
    assert load_dataset("medmnist", split="test", path=str(file)).task == "ordinal"
    other = retina_like(tmp_path / "grades.npz")
    assert load_dataset("medmnist", split="test", path=str(other)).task == "classification"
    assert load_dataset("medmnist", split="test", path=str(other), ordinal=True).task == "ordinal"
    with pytest.raises(ValueError, match="ordinal: true applies to classification data"):
        load_dataset("mni152-tissue", split="test", ordinal=True)


def test_an_ordinal_run_summarises_kappa_and_grade_error(tmp_path):
    file = retina_like(tmp_path / "grades.npz")
    params = {"path": str(file), "ordinal": True}
    model, card = train(TrainSettings(architecture="small-cnn", arch_kwargs={"width": 8}, dataset="medmnist",
                                      dataset_params=params, epochs=10, lr=0.01, seed=0), tmp_path / "m")
    assert card.task == "ordinal"
    spec = load_config({"seed": 0, "batch_size": 30, "dataset": {"name": "medmnist", "params": params},
                        "models": [{"name": "m", "checkpoint": str(tmp_path / "m")}],
                        "perturbations": [{"attack": "fgsm", "strengths": [0.02]}]})
    run_experiment(spec, tmp_path / "run", quiet=True)
    rows = {(r["perturbation"], r["metric"]): r for r in json.loads((tmp_path / "run" / "summary.json").read_text())}
    import sqlite3

    con = sqlite3.connect(tmp_path / "run" / "results.db")
    for pert in ("clean", "fgsm"):
        y, pred = map(torch.tensor, zip(*con.execute(
            "SELECT label, pred FROM records WHERE perturbation=? ORDER BY sample_index", (pert,)).fetchall()))
        kappa = rows[(pert, "quadratic_kappa")]
        assert kappa["value"] == pytest.approx(quadratic_kappa(pred, y, 5))
        assert kappa["ci_low"] <= kappa["value"] <= kappa["ci_high"]
        assert rows[(pert, "mae")]["value"] == pytest.approx(mean_absolute_error(pred, y))
        assert (pert, "balanced_accuracy") in rows
    assert rows[("clean", "quadratic_kappa")]["value"] > 0.5  # the grades are learnable


def test_the_report_shows_what_the_labels_call_for(tmp_path):
    """An ordinal, imbalanced test set: the report adds balanced accuracy, kappa and grade error beside accuracy,
    with the values of summary.json; no dermatology default on retina grades; a spec may lead with kappa."""
    from medrobust.report import build_report

    file = retina_like(tmp_path / "retinamnist.npz")
    with np.load(file) as z:  # make grade 0 five times as common as the others in the test split
        arrays = dict(z)
    arrays["test_labels"][: len(arrays["test_labels"]) // 2] = 0
    np.savez(file, **arrays)
    train(TrainSettings(architecture="small-cnn", arch_kwargs={"width": 8}, dataset="medmnist",
                        dataset_params={"path": str(file)}, epochs=6, lr=0.01, seed=0), tmp_path / "m")
    spec = {"seed": 0, "batch_size": 30, "dataset": {"name": "medmnist", "params": {"path": str(file)}},
            "models": [{"name": "m", "checkpoint": str(tmp_path / "m")}],
            "perturbations": [{"attack": "fgsm", "strengths": [0.02]}]}
    run_experiment(load_config(spec), tmp_path / "run", quiet=True)
    html = build_report(tmp_path / "run")[0].read_text()
    rows = {(r["perturbation"], r["metric"]): r["value"]
            for r in json.loads((tmp_path / "run" / "summary.json").read_text())}
    import re

    shown = dict(re.findall(r'data-label-metric="([a-z_]+)" data-model="m" data-clean="([^"]+)"', html))
    assert set(shown) == {"balanced_accuracy", "quadratic_kappa", "mae"}
    for metric, value in shown.items():
        assert float(value) == pytest.approx(rows[("clean", metric)])
    assert "melanoma" not in html and "No clinical group is declared for these classes" in html
    spec["headline_metric"] = "quadratic_kappa"
    run_experiment(load_config(spec), tmp_path / "run", quiet=True)
    html = build_report(tmp_path / "run")[0].read_text()
    assert 'data-metric="quadratic_kappa"' in html and "clean quadratic weighted kappa" in html
