"""The command line end to end: train a model, evaluate it under attacks, clear errors for bad input."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from medrobust.cli import app
from medrobust.models import load_model

runner = CliRunner()
SMALL = ["-d", "size=32", "-d", "n=150"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "small"
    result = runner.invoke(
        app, ["train", "--arch", "small-cnn", "-a", "width=8", *SMALL, "--epochs", "3", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return out


def test_train_writes_card_with_metrics(checkpoint):
    model, card = load_model(checkpoint)
    assert card.architecture == "small-cnn" and card.arch_kwargs == {"width": 8}
    assert card.class_names == ["nevus", "melanoma", "seborrheic_keratosis"]
    assert card.input_shape == [3, 32, 32]
    assert 1 <= card.training["best_epoch"] <= 3
    assert len(card.training["history"]) == 3
    for split in ("val", "test"):
        assert 0.0 <= card.metrics[split]["accuracy"] <= 1.0
    best = max(h["val_balanced_accuracy"] for h in card.training["history"])
    assert card.metrics["val"]["balanced_accuracy"] == pytest.approx(best, abs=1e-6)


def test_evaluate_prints_table_and_json(checkpoint, tmp_path):
    out = tmp_path / "rows.json"
    result = runner.invoke(
        app,
        [
            "evaluate", "--model", str(checkpoint), "--limit", "40",
            "--attack", "fgsm:eps=0.02", "--attack", "deepfool:steps=20",
            "--corruption", "gaussian_noise:sigma=0.05", "--json", str(out),
        ],
        env={"COLUMNS": "250"},
    )
    assert result.exit_code == 0, result.output
    assert "fgsm(eps=0.02)" in result.output and "noise acc" in result.output
    rows = {r["perturbation"]: r for r in json.loads(out.read_text())}
    assert rows["clean"]["n"] == 40 and rows["clean"]["l2"] == 0.0
    assert rows["fgsm(eps=0.02)"]["linf"] == pytest.approx(0.02, abs=1e-6)
    assert rows["fgsm(eps=0.02)"]["accuracy"] <= rows["clean"]["accuracy"]
    # DeepFool is a minimal attack: it fools (almost) every correctly classified sample
    assert rows["deepfool(steps=20)"]["success_rate"] >= 0.9
    # matched noise has the attack's L2 size and hurts less than the attack
    fg, noise = rows["fgsm(eps=0.02)"], rows["matched_noise[fgsm(eps=0.02)]"]
    assert noise["l2"] == pytest.approx(fg["l2"], rel=0.05)
    assert noise["accuracy"] >= fg["accuracy"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["evaluate", "--model", "/nonexistent/ckpt"], "not found"),
        (["evaluate", "--model", "CKPT", "--attack", "fgsn:eps=0.1"], "did you mean 'fgsm'"),
        (["evaluate", "--model", "CKPT", "--attack", "pgd"], "needs a budget"),
        (["train", "--dataset", "derm-synt", "--out", "OUT"], "did you mean 'derm-synth'"),
        (["list", "atacks"], "did you mean 'attacks'"),
    ],
)
def test_bad_input_gives_one_clear_line(checkpoint, tmp_path, args, message):
    args = [str(checkpoint) if a == "CKPT" else str(tmp_path / "o") if a == "OUT" else a for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_list_names_everything():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    for name in ("fgsm", "pgd", "deepfool", "jsma", "cw", "gaussian_noise", "matched_noise", "derm-synth", "densenet"):
        assert name in result.output


def test_describe_prints_parameters_from_the_signature():
    result = runner.invoke(app, ["describe", "dataset", "nifti"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for param, default in (("min_foreground", "0.01"), ("split_fractions", "(0.7, 0.15, 0.15)"), ("label_map", "None")):
        assert re.search(rf"{param}\s.*{re.escape(default)}", result.output), param
    assert not re.search(r"│ split\s+│", result.output)  # filled in by medrobust, not a user parameter
    pgd = runner.invoke(app, ["describe", "attack", "pgd"], env={"COLUMNS": "200"})
    assert pgd.exit_code == 0 and re.search(r"steps\s.*int\s.*10", pgd.output)
    bad = runner.invoke(app, ["describe", "atack", "pgd"])
    assert bad.exit_code == 2 and "did you mean 'attack'" in bad.output
    unknown = runner.invoke(app, ["describe", "dataset", "niftii"])
    assert unknown.exit_code == 2 and "did you mean 'nifti'" in unknown.output
