"""A structure defined differently in the model's training labels and in the data it is scored on (CSF as all
cerebrospinal fluid vs the ventricles alone): the report says so, with the numbers behind it, and leaves a
well-matched label set alone. The model is exact on its own definition (an intensity classifier), so every number
in the finding is computable from the label volumes."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from medrobust.config import load_config
from medrobust.models.card import ModelCard, build_model, save_checkpoint
from medrobust.report import build_report
from medrobust.report.analysis import Values, label_definitions
from medrobust.report.data import load_run
from medrobust.runner import run_experiment

TISSUES = ["background", "csf", "gm", "wm"]
SHAPE = (33, 35, 31)
ZOO = '''
import torch
from torch import nn


class Intensity(nn.Module):
    """Class k where the intensity is nearest to centre k (the test's data: intensity = class / 3)."""

    def __init__(self, num_classes):
        super().__init__()
        self.centres = nn.Parameter(torch.linspace(0, 1, num_classes))

    def forward(self, x):
        return 1.0 - ((x - self.centres.view(1, -1, 1, 1)) ** 2) / 0.01  # logits, not log-probabilities


def build(num_classes):
    return Intensity(num_classes)
'''


def radius() -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"))
    return np.sqrt((grid**2).sum(0))


def tissue(r: np.ndarray, csf_out_to: float) -> np.ndarray:
    """CSF inside r < 0.3 (labelled only inside ``csf_out_to``), WM to 0.55, GM to 0.8."""
    labels = np.select([r < csf_out_to, r < 0.3, r < 0.55, r < 0.8], [1, 0, 3, 2], 0)
    return labels.astype(np.int16)


def shares(labels: np.ndarray) -> list[float]:
    return (np.bincount(labels.ravel(), minlength=4) / labels.size).tolist()


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    (folder / "tissuezoo.py").write_text(ZOO)
    card = ModelCard(name="oracle", architecture="tissuezoo:build", task="segmentation", in_channels=1,
                     num_classes=4, class_names=TISSUES, input_shape=[1, SHAPE[0], SHAPE[1]],
                     dataset={"name": "mni152-tissue", "label_fractions": shares(tissue(radius(), 0.3))})
    import sys

    sys.path.insert(0, str(folder))
    try:
        save_checkpoint(build_model(card, trust_code=True), card, folder / "oracle")
        yield folder / "oracle"
    finally:
        sys.path.remove(str(folder))


def scored(tmp_path, oracle, csf_out_to: float, csf_shift: int = 0):
    data = tmp_path / "data"
    data.mkdir(parents=True)
    r = radius()
    image = (tissue(r, 0.3) / 3.0).astype(np.float32)  # the image shows all CSF
    labels = tissue(r, csf_out_to)  # the labels may call only its centre CSF
    if csf_shift:  # or put the CSF elsewhere (in the WM), as much of it
        csf = labels == 1
        labels[csf] = 3
        labels[np.roll(csf, csf_shift, axis=0)] = 1
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(data / "s1_T1.nii.gz"))
    nib.save(nib.Nifti1Image(labels, np.eye(4)), str(data / "s1_seg.nii.gz"))
    spec = load_config({"seed": 0, "batch_size": 16, "trust_code": True, "dataset": {"name": "nifti", "params": {
        "root": str(data), "class_names": TISSUES, "split_fractions": [0, 0, 1], "min_foreground": 0.0,
        "percentiles": None}}, "models": [{"name": "oracle", "checkpoint": str(oracle)}],
        "perturbations": [{"attack": "fgsm", "strengths": [0.01]}]})
    result = run_experiment(spec, tmp_path / "run", quiet=True)
    return result, labels, r


def test_a_structure_defined_differently_is_named_with_its_numbers(tmp_path, oracle):
    result, labels, r = scored(tmp_path, oracle, csf_out_to=0.15)
    rows = {r_["metric"]: r_["value"] for r_ in result.summary if r_["perturbation"] == "clean"}
    assert rows["dice:gm"] == 1.0 and rows["dice:wm"] == 1.0  # exact on its own definition
    # the model calls all of r < 0.3 CSF; the labels only r < 0.15
    ratio = (r < 0.3).sum() / (r < 0.15).sum()
    share = (labels == 1).sum() / (labels > 0).sum()
    full = tissue(r, 0.3)
    learned = (full == 1).sum() / (full > 0).sum()
    run = load_run(result.run_dir)
    findings = label_definitions(run, Values(run.summary, "dice"))
    assert len(findings) == 1
    message = findings[0].message
    assert message.startswith(f"oracle: csf has clean Dice {rows['dice:csf']:.3f} while the other structures "
                              "reach 1.000 (median), and ")
    assert f"the model labels {ratio:.2g}x the units these labels call csf" in message
    assert f"csf is {share:.1%} of the labelled units here but {learned:.1%} in its training labels (mni152-tissue)" \
        in message
    assert message.endswith("the clean Dice without csf is 1.000.")
    # the clean records carry the unit counts the finding rests on
    clean = [json.loads(x["detail_json"]) for x in run.records if x["perturbation"] == "clean"]
    assert np.sum([d["true_n"] for d in clean], axis=0).tolist() == np.bincount(labels.ravel(), minlength=4).tolist()
    assert sum(d["pred_n"][1] for d in clean) == (r < 0.3).sum()
    # and the report shows it among its warnings
    build_report(result.run_dir)
    summary_md = (result.run_dir / "summary.md").read_text()
    assert "structure defined differently?" in summary_md and "the clean Dice without csf is 1.000" in summary_md
    # the headline's mean Dice includes csf: it says so and gives the Dice of the other structures, clean and under
    # the worst case (here FGSM alone), by hand from the records
    attacked = [json.loads(x["detail_json"])["dice"] for x in run.records if x["perturbation"] == "fgsm"]
    others = [[v for k, v in enumerate(d) if k != 0 and v is not None] for d in attacked]
    worst = np.mean([np.mean(o) for o in others if o])  # slices without gm and wm have no Dice of them
    assert f"oracle without csf: clean 1.000, worst_case {worst:.3f}" in summary_md


def test_matching_definitions_raise_nothing(tmp_path, oracle):
    result, _, _ = scored(tmp_path / "same", oracle, csf_out_to=0.3)
    run = load_run(result.run_dir)
    assert label_definitions(run, Values(run.summary, "dice")) == []
    assert {r["metric"]: r["value"] for r in result.summary if r["perturbation"] == "clean"}["dice"] == 1.0
    # a low CSF Dice alone (the model misplaces it, in the right amount) is not a definition mismatch
    result, labels, _ = scored(tmp_path / "moved", oracle, csf_out_to=0.3, csf_shift=4)
    dice = {r["metric"]: r["value"] for r in result.summary if r["perturbation"] == "clean"}
    assert dice["dice:csf"] < 0.5 and dice["dice:csf"] < min(dice["dice:gm"], dice["dice:wm"]) - 0.25
    assert shares(labels) == shares(tissue(radius(), 0.3))
    run = load_run(result.run_dir)
    assert label_definitions(run, Values(run.summary, "dice")) == []


def test_a_structure_absent_from_the_labels_but_predicted(tmp_path, oracle):
    result, labels, r = scored(tmp_path, oracle, csf_out_to=0.0)  # these labels have no CSF at all
    run = load_run(result.run_dir)
    (finding,) = label_definitions(run, Values(run.summary, "dice"))
    assert f"these labels have no csf while the model labels {(r < 0.3).sum()} units of it" in finding.message


def test_class_counts_by_hand():
    from medrobust.metrics import class_counts

    maps = torch.tensor([[[0, 1], [1, 2]], [[2, 2], [2, 2]]])
    assert class_counts(maps, 4).tolist() == [[1, 2, 1, 0], [0, 0, 4, 0]]
