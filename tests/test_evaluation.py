"""One evaluation core, two doors: ``medrobust run`` (stored) and ``medrobust evaluate`` (in memory) give the same
records and summary numbers for the same model, data, perturbations and seed, for classification and
segmentation; the attack sweep reports per-sample success; no module outside tasks/ and data/ asks for a task by
name."""

from __future__ import annotations

import json
import math
import re
import sqlite3
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medrobust.attacks import ATTACKS
from medrobust.cli import app
from medrobust.config import load_config
from medrobust.data import load_dataset
from medrobust.evaluate import Perturbation, evaluate
from medrobust.models import load_model
from medrobust.runner import run_experiment
from medrobust.seeding import make_generator
from medrobust.tasks import get_task
from medrobust.train import TrainSettings, train

DERM = {"size": 16, "n": 60}
UNET = {"channels": [4, 8], "strides": [2], "num_res_units": 0}


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cls") / "tiny"
    train(TrainSettings(architecture="small-cnn", arch_kwargs={"width": 4}, dataset="derm-synth", dataset_params=DERM,
                        epochs=2, seed=0, name="tiny"), folder)
    return folder


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("seg") / "unet"
    train(TrainSettings(architecture="unet", arch_kwargs=UNET, dataset="mni152-tissue", epochs=1, batch_size=8,
                        lr=0.01, seed=0, name="unet"), folder)
    return folder


def _both_doors(checkpoint: Path, dataset: dict, perturbations: list[dict], tmp_path: Path):
    """(records and summary rows stored by a spec run, records and summary rows of ``evaluate``)."""
    spec = load_config({"seed": 3, "batch_size": 3, "limit": 5, "dataset": dataset,
                        "models": [{"name": "m", "checkpoint": str(checkpoint)}], "perturbations": perturbations})
    run_experiment(spec, tmp_path / "run", quiet=True)
    con = sqlite3.connect(tmp_path / "run" / "results.db")
    con.row_factory = sqlite3.Row
    stored = [dict(r) for r in con.execute("SELECT * FROM records")]
    con.close()
    model, _ = load_model(checkpoint)
    ds = load_dataset(dataset["name"], split=dataset.get("split", "test"), **dataset.get("params", {}))
    perts = [Perturbation("attack" if "attack" in p else "corruption", p.get("attack") or p["corruption"],
                          p.get("params", {}), s) for p in perturbations for s in p["strengths"]]
    result = evaluate(model, ds, perts, batch_size=3, limit=5, seed=3, name="m")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    return stored, summary, result


def _same_records(stored, evaluated):
    def key(r):
        return r["perturbation"], r["strength"], r["sample_index"]

    fields = ("label", "clean_pred", "pred", "probs_json", "l2", "linf", "l0", "ssim", "psnr", "rho", "score",
              "detail_json")
    a = {key(r): tuple(r[f] for f in fields) for r in stored}
    b = {key(r): tuple(r[f] for f in fields) for r in evaluated}
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert a[k] == b[k], k


def _same_summary(stored, evaluated):
    def index(rows):
        return {(r["model"], r["perturbation"], r["strength"], r["metric"]): r["value"] for r in rows}

    a, b = index(stored), index(evaluated)
    assert a.keys() == b.keys()
    for k, v in a.items():
        w = b[k]
        assert (v is None and (w is None or math.isnan(w))) or v == w, (k, v, w)


def test_run_and_evaluate_give_the_same_numbers_for_a_classifier(classifier, tmp_path):
    perturbations = [
        {"attack": "pgd", "strengths": [0.01, 0.03], "params": {"steps": 3}},
        {"attack": "deepfool", "strengths": [0.2, 0.5], "params": {"steps": 10}},
        {"corruption": "gaussian_noise", "strengths": [0.05]},
    ]
    stored, summary, result = _both_doors(classifier, {"name": "derm-synth", "params": DERM}, perturbations, tmp_path)
    _same_records(stored, result.records)
    _same_summary(summary, result.summary)
    # random draws differ between strengths and perturbations (PGD's random start, the noise): a shared draw
    # would make these equal
    noise = {r["sample_index"]: r["l2"] for r in result.records if r["perturbation"] == "matched_noise[pgd]"}
    assert len(set(noise.values())) > 1
    rows = {r["perturbation"]: r for r in result.rows}
    assert set(rows) == {"clean", "pgd(eps=0.01,steps=3)", "pgd(eps=0.03,steps=3)", "deepfool(eps=0.2,steps=10)",
                         "deepfool(eps=0.5,steps=10)", "gaussian_noise(sigma=0.05)",
                         *(f"matched_noise[{a}]" for a in ("pgd(eps=0.01,steps=3)", "pgd(eps=0.03,steps=3)",
                                                           "deepfool(eps=0.2,steps=10)", "deepfool(eps=0.5,steps=10)"))}
    assert rows["matched_noise[pgd(eps=0.01,steps=3)]"]["threat_matched_to"] == "pgd(eps=0.01,steps=3)"
    assert rows["clean"]["n"] == 5


def test_run_and_evaluate_give_the_same_numbers_for_a_segmenter(segmenter, tmp_path):
    perturbations = [
        {"attack": "pgd", "strengths": [0.03], "params": {"steps": 2}},
        {"attack": "dag", "strengths": [1.0], "params": {"steps": 5, "gamma": 0.2}},
        {"corruption": "rician_noise", "strengths": [0.1]},
    ]
    stored, summary, result = _both_doors(segmenter, {"name": "mni152-tissue", "split": "test"}, perturbations,
                                          tmp_path)
    _same_records(stored, result.records)
    _same_summary(summary, result.summary)
    assert {r["metric"] for r in result.summary} >= {"dice", "dice_drop", "flip_rate", "dice:gm", "hd95:wm"}


def test_evaluate_command_works_for_a_segmentation_model(segmenter, tmp_path):
    out = tmp_path / "rows.json"
    result = CliRunner().invoke(app, ["evaluate", "--model", str(segmenter), "--limit", "3", "--batch-size", "3",
                                      "--attack", "pgd:eps=0.03,steps=2", "--json", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Dice" in result.output and "pgd(eps=0.03,steps=2)" in result.output
    for structure in ("csf", "gm", "wm"):  # Dice per structure, clean and under attack
        assert f"Dice {structure}" in result.output
    rows = {r["perturbation"]: r for r in json.loads(out.read_text())}
    for row in (rows["clean"], rows["pgd(eps=0.03,steps=2)"]):
        assert all(0.0 <= row[f"dice:{s}"] <= 1.0 for s in ("csf", "gm", "wm"))
    assert rows["clean"]["n"] == 3 and 0.0 <= rows["clean"]["dice"] <= 1.0
    assert rows["pgd(eps=0.03,steps=2)"]["dice_drop"] == pytest.approx(
        rows["clean"]["dice"] - rows["pgd(eps=0.03,steps=2)"]["dice"], abs=1e-9)


def test_sweep_reports_logits_and_success_per_sample(classifier):
    model, _ = load_model(classifier)
    ds = load_dataset("derm-synth", split="test", **DERM)
    x = torch.stack([ds[i][0] for i in range(6)])
    y = torch.tensor([int(ds[i][1]) for i in range(6)])
    task = get_task("classification")
    for name, params, strengths in (("fgsm", {}, (0.0, 0.05)), ("deepfool", {"steps": 10}, (0.01, math.inf))):
        attack = ATTACKS.build(name, **params)
        results = list(attack.sweep(model, task, x, y, strengths, lambda eps: make_generator(0, name, eps)))
        assert [s for s, _ in results] == list(strengths)
        for _, r in results:
            with torch.no_grad():
                logits = model(r.x_adv)
            torch.testing.assert_close(r.logits, logits)
            assert r.success.tolist() == (logits.argmax(1) != y).tolist()
    # DeepFool unclipped (inf) fools every sample the model had right
    assert bool(results[-1][1].success.all())


TASK_NAME_TEST = re.compile(
    r'(==|!=)\s*"(classification|segmentation)"|"(classification|segmentation)"\s*(==|!=)|\.task\s*(==|!=)'
    r"|task\.name\s*(==|!=)"
)


def test_no_module_outside_tasks_and_data_branches_on_the_task_name():
    src = Path(__file__).resolve().parents[1] / "src" / "medrobust"
    found = []
    for path in sorted(src.rglob("*.py")):
        part = path.relative_to(src).parts[0]
        if part in ("tasks", "data"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if TASK_NAME_TEST.search(line):
                found.append(f"{path.relative_to(src)}:{n}: {line.strip()}")
    assert found == []
    report = src / "report"
    assert not [p for p in report.rglob("*.py") if re.search(r"medrobust\.runner|from \.\.runner", p.read_text())]


MRI_ARTIFACTS = ("rician_noise", "bias_field", "ghosting", "motion", "spike", "gibbs", "downsample")


def _severity_records(name: str, seed: int):
    """Records of one MRI artifact over its graded severities, through the evaluation core, on 6 MNI slices."""
    from medrobust.cells import Cell
    from medrobust.config import PerturbationSpec
    from medrobust.corruptions import CORRUPTIONS
    from medrobust.evaluation import evaluate_cell
    from medrobust.models.wrapper import Model

    severities = tuple(CORRUPTIONS.get(name).severities)
    pert = PerturbationSpec(corruption=name, strengths=list(severities))
    torch.manual_seed(0)
    model = Model(torch.nn.Conv2d(1, 4, 1), bounds=(0.0, 1.0)).eval()  # the sizes do not depend on the model
    ds = load_dataset("mni152-tissue", split="test")
    out = evaluate_cell(Cell("k", "m", name, pert, severities), model, ds, seed=seed, batch_size=6, limit=6)
    return severities, out.records


@pytest.mark.parametrize("name", MRI_ARTIFACTS)
def test_mri_artifact_severity_curves_are_monotone(name):
    """Common random numbers: every severity gets the same draw, scaled. Over 5 seeds the mean distortion
    (1 - SSIM) grows with the severity for every artifact, and for the artifacts whose draw is scaled linearly the
    distance to the clean slice grows with it on every single sample."""
    per_seed = []
    for seed in range(5):
        severities, records = _severity_records(name, seed)
        dist = {s: [1 - r.ssim for r in records if r.strength == s] for s in severities}
        per_seed.append([sum(dist[s]) / len(dist[s]) for s in severities])
        if name in ("rician_noise", "bias_field", "ghosting", "spike"):
            l2 = {s: {r.sample_index: r.l2 for r in records if r.strength == s} for s in severities}
            for lo, hi in zip(severities, severities[1:]):
                assert all(l2[hi][i] >= l2[lo][i] - 1e-6 for i in l2[lo]), (name, seed, lo, hi)
    mean = [sum(v) / len(v) for v in zip(*per_seed)]
    assert all(b >= a for a, b in zip(mean, mean[1:])), (name, mean)
