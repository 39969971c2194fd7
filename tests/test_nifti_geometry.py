"""A user's NIfTI pair at 1.5 mm with an odd shape, scored by a model trained on 2-mm MNI slices: a clear error
naming the voxel sizes, resampling to the model's spacing (MONAI Resize), an up-front one-line error for a size
the network cannot take, and padding to a multiple (MONAI DivisiblePad) that makes it run."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pytest

from medrobust.config import load_config
from medrobust.data import load_dataset
from medrobust.runner import run_experiment
from medrobust.train import TrainSettings, train

TISSUES = ["background", "csf", "gm", "wm"]
SHAPE = (41, 47, 39)  # odd in every axis; at 1.5 mm


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nifti")
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    labels = np.select([r < 0.3, r < 0.55, r < 0.8], [1, 3, 2], 0).astype(np.int16)
    image = (labels * 0.3 + rng.normal(0, 0.05, SHAPE)).astype(np.float32)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    nib.save(nib.Nifti1Image(image, affine), str(folder / "s1_T1.nii.gz"))
    nib.save(nib.Nifti1Image(labels, affine), str(folder / "s1_seg.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def model_2mm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unet") / "unet"
    train(TrainSettings(architecture="unet", arch_kwargs={"channels": [4, 8], "strides": [2], "num_res_units": 0},
                        dataset="mni152-tissue", epochs=1, batch_size=16, lr=0.01, seed=0), folder)
    card = json.loads((folder / "model.json").read_text())
    assert card["dataset"]["spacing"] == [2.0, 2.0, 2.0]  # the card records the voxel size it learned on
    return folder


def spec(pair, model, **params):
    data = {"root": str(pair), "class_names": TISSUES, "split_fractions": [0, 0, 1], "min_foreground": 0.05, **params}
    return load_config({"seed": 0, "batch_size": 8, "dataset": {"name": "nifti", "params": data},
                        "models": [{"name": "unet-2mm", "checkpoint": str(model)}],
                        "perturbations": [{"attack": "fgsm", "strengths": [0.02]}]})


def test_resampling_records_the_spacing_and_the_shape_it_gives(pair):
    plain = load_dataset("nifti", split="test", root=str(pair), class_names=TISSUES, split_fractions=[0, 0, 1])
    assert plain.info["spacing"] == [1.5, 1.5, 1.5] and plain[0][0].shape == (1, 41, 47)
    at2 = load_dataset("nifti", split="test", root=str(pair), class_names=TISSUES, split_fractions=[0, 0, 1],
                       spacing=2.0)
    assert at2.info["spacing"] == [2.0, 2.0, 2.0] and at2[0][0].shape == (1, 31, 35)  # round(41 * 1.5 / 2) ...
    padded = load_dataset("nifti", split="test", root=str(pair), class_names=TISSUES, split_fractions=[0, 0, 1],
                          spacing=2.0, pad_to_multiple=8)
    x, y, _ = padded[0]
    assert x.shape == (1, 32, 40) and y.shape == (32, 40) and int(y[0, 0]) == 0 and float(x[0, 0, 0]) == 0.0


def test_a_2mm_model_on_1_5mm_data(pair, model_2mm, tmp_path):
    # the voxel sizes differ: one line that says so and how to resample
    with pytest.raises(ValueError, match=r"model 'unet-2mm' was trained on voxels of \[2.0, 2.0, 2.0\] mm but "
                                         r"dataset 'nifti' has \[1.5, 1.5, 1.5\] mm; resample .* spacing: \[2.0"):
        run_experiment(spec(pair, model_2mm), tmp_path / "a", quiet=True)
    # resampled but 31 x 35 slices: the UNet's stride cannot take them; said up front, not by a MONAI traceback
    with pytest.raises(ValueError, match=r"^model 'unet-2mm' \(trained on \[1, 80, 96\]\) cannot take the inputs of "
                                         r"dataset 'nifti' \(one sample: \[1, 31, 35\]\)"):
        run_experiment(spec(pair, model_2mm, spacing=2.0), tmp_path / "b", quiet=True)
    # resampled and padded to a multiple: it runs and scores every slice
    result = run_experiment(spec(pair, model_2mm, spacing=2.0, pad_to_multiple=4), tmp_path / "c", quiet=True)
    rows = {(r["perturbation"], r["metric"]): r for r in result.summary}
    assert 0.0 <= rows[("clean", "dice")]["value"] <= 1.0 and rows[("clean", "dice")]["n"] > 5
    assert ("fgsm", "dice_drop") in rows


def test_a_single_volume_is_the_test_set(pair):
    """One volume and the default split fractions: it is evaluated (test), not silently trained on."""
    test = load_dataset("nifti", split="test", root=str(pair), class_names=TISSUES)
    assert test.info["volumes"] == ["s1"]
    with pytest.raises(ValueError, match="no volume falls in split 'train'"):
        load_dataset("nifti", split="train", root=str(pair), class_names=TISSUES)


def test_the_card_records_orientation_and_plane_and_a_run_compares_them(pair, model_2mm, tmp_path):
    from medrobust.models import load_model
    from medrobust.models.compat import check_geometry

    _, card = load_model(model_2mm)
    assert card.dataset["orientation"] == "RAS" and card.dataset["plane"] == "axial"
    fractions = card.dataset["label_fractions"]  # background, CSF, GM, WM share of the training voxels
    assert len(fractions) == 4 and sum(fractions) == pytest.approx(1.0, abs=1e-5) and fractions[0] > 0.5
    # coronal slices for an axial model: scored, with one warning naming both planes
    said: list[str] = []
    result = run_experiment(spec(pair, model_2mm, spacing=2.0, pad_to_multiple=4, axis="coronal"), tmp_path / "c",
                            quiet=True, notify=said.append)
    assert result.summary and [m for m in said if "planes" in m] == [
        "warning: model 'unet-2mm' was trained on axial slices but dataset 'nifti' gives coronal slices: its scores "
        "measure transfer across planes (set axis: axial to score it on its own plane)"]
    # orientations that differ are an error; data that record none get a warning
    data = load_dataset("nifti", split="test", root=str(pair), class_names=TISSUES, split_fractions=[0, 0, 1],
                        spacing=2.0)
    data.orientation = "LPS"
    with pytest.raises(ValueError, match=r"^model 'u' was trained on RAS-oriented volumes but dataset 'nifti' is "
                                         r"LPS-oriented; reorient the data to RAS$"):
        check_geometry("u", card, data, "nifti")
    data.orientation = None
    check_geometry("u", card, data, "nifti", said.append)
    assert said[-1].startswith("warning: model 'u' was trained on RAS-oriented volumes; dataset 'nifti' records no")


@pytest.mark.parametrize("dataset, message", [
    ({"spacing": "2mm"}, "dataset.spacing '2mm' must be three voxel sizes in mm > 0"),
    ({"spacing": [2.0, 0.0, 2.0]}, "dataset.spacing"),
    ({"orientation": "RAA"}, "dataset.orientation 'RAA' must be three axis letters such as RAS"),
    ({"plane": "oblique"}, "dataset.plane 'oblique' must be one of axial, coronal, sagittal"),
    ({"label_fractions": [0.5, 0.5]}, "dataset.label_fractions [0.5, 0.5] must be 4 shares >= 0, one per class"),
    ({"label_fractions": [1.0, float("nan"), 0.0, 0.0]}, "dataset.label_fractions"),
])
def test_a_card_geometry_is_checked_not_trusted(tmp_path, dataset, message):
    from medrobust.models.card import read_card

    card = {"name": "u", "architecture": "unet", "task": "segmentation", "in_channels": 1, "num_classes": 4,
            "class_names": TISSUES, "input_shape": [1, 32, 32], "dataset": dataset}
    (tmp_path / "model.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"model card .* is not valid: .*" + re.escape(message)):
        read_card(tmp_path)
    card["dataset"] = {"spacing": [1.5, 1.5, 2], "orientation": "LPS", "plane": "axial",
                       "label_fractions": [0.7, 0.1, 0.1, 0.1]}
    (tmp_path / "model.json").write_text(json.dumps(card))
    assert read_card(tmp_path)[0].dataset["orientation"] == "LPS"
