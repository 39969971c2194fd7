"""The dicom dataset on the DICOM files pydicom's wheel ships (CT_small: a 128x128 CT slice with a rescale
intercept; MR_small: a 64x64 MR slice): modality rescale and windowing against a hand computation from the raw
pixels, labels and splits from a generated CSV, clear errors; and a whole run on it."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch

pydicom = pytest.importorskip("pydicom", reason="pydicom is not installed (pip install 'medrobust[dicom]')")

from medrobust.data import load_dataset  # noqa: E402
from medrobust.data.dicom import read_dicom  # noqa: E402


def shipped(name: str):
    from pydicom.data import get_testdata_file

    return get_testdata_file(name)


@pytest.fixture
def folder(tmp_path):
    """6 copies of CT_small labelled ct and 6 of MR_small labelled mr, with a split column."""
    rows = []
    for k in range(6):
        for name, label in (("CT_small.dcm", "ct"), ("MR_small.dcm", "mr")):
            target = tmp_path / f"{label}{k}.dcm"
            shutil.copy(shipped(name), target)
            rows.append({"file": target.name, "label": label, "split": ["train", "train", "train", "train", "val",
                                                                         "test"][k]})
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path


def test_rescale_and_window_match_a_hand_computation(tmp_path):
    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    raw = ds.pixel_array.astype(np.float64)
    hu = raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert float(ds.RescaleIntercept) != 0  # a real rescale to Hounsfield units
    # a soft-tissue window (center 40, width 400): -160 HU -> 0, 240 HU -> 1
    x = read_dicom(shipped("CT_small.dcm"), (40.0, 400.0), 128)
    expected = np.clip((hu + 160.0) / 400.0, 0.0, 1.0)
    assert x.shape == (1, 128, 128) and x.dtype == torch.float32
    np.testing.assert_allclose(x[0].numpy(), expected, atol=1e-6)
    # without a window: the file's own WindowCenter / WindowWidth
    mr = pydicom.dcmread(shipped("MR_small.dcm"))
    values = mr.pixel_array.astype(np.float64) * float(getattr(mr, "RescaleSlope", 1)) + float(
        getattr(mr, "RescaleIntercept", 0))
    c, w = float(np.ravel(mr.WindowCenter)[0]), float(np.ravel(mr.WindowWidth)[0])
    y = read_dicom(shipped("MR_small.dcm"), None, 64)
    np.testing.assert_allclose(y[0].numpy(), np.clip((values - (c - w / 2)) / w, 0, 1), atol=1e-6)
    # and without one in the file either: the image's own range
    del mr.WindowCenter, mr.WindowWidth
    bare = tmp_path / "bare.dcm"
    mr.save_as(bare)
    y = read_dicom(bare, None, 64)
    np.testing.assert_allclose(y[0].numpy(), (values - values.min()) / (values.max() - values.min()), atol=1e-6)
    assert float(y.min()) == 0.0 and float(y.max()) == pytest.approx(1.0)
    # resized to the asked size, still in [0, 1]
    z = read_dicom(shipped("CT_small.dcm"), (40.0, 400.0), 32)
    assert z.shape == (1, 32, 32) and 0.0 <= float(z.min()) and float(z.max()) <= 1.0


def test_labels_splits_and_errors(folder, tmp_path):
    train = load_dataset("dicom", split="train", root=str(folder), window=[40, 400], size=32)
    test = load_dataset("dicom", split="test", root=str(folder), window=[40, 400], size=32)
    assert len(train) == 8 and len(test) == 2 and train.class_names == ("ct", "mr")
    assert sorted(int(v) for v in test.labels) == [0, 1] and test[0][0].shape == (1, 32, 32)
    with pytest.raises(ValueError, match="needs the columns file and label"):
        (tmp_path / "bad.csv").write_text("path,label\nx.dcm,ct\n")
        load_dataset("dicom", root=str(folder), labels_csv=str(tmp_path / "bad.csv"))
    with pytest.raises(ValueError, match=r"not found \(first: "):
        (tmp_path / "gone.csv").write_text("file,label\nnothere.dcm,ct\n")
        load_dataset("dicom", root=str(tmp_path), labels_csv="gone.csv")
    (folder / "broken.dcm").write_bytes(b"not a dicom file")
    (folder / "broken.csv").write_text("file,label,split\nbroken.dcm,ct,test\n")
    broken = load_dataset("dicom", split="test", root=str(folder), labels_csv="broken.csv")
    with pytest.raises(ValueError, match="cannot read DICOM file .*broken.dcm"):
        broken[0]


def test_a_run_on_dicom_files(folder, tmp_path):
    from medrobust.config import load_config
    from medrobust.runner import run_experiment

    params = {"root": str(folder), "window": [40, 400], "size": 32}
    spec = load_config({"seed": 0, "batch_size": 4, "dataset": {"name": "dicom", "params": params},
                        "models": [{"name": "cnn", "train": {"architecture": "small-cnn", "arch_kwargs": {"width": 4},
                                                             "epochs": 1, "batch_size": 4}}],
                        "perturbations": [{"attack": "fgsm", "strengths": [0.01]}]})
    result = run_experiment(spec, tmp_path / "run", quiet=True)
    rows = {(r["perturbation"], r["metric"]): r["value"] for r in result.summary}
    assert 0.0 <= rows[("clean", "accuracy")] <= 1.0 and ("fgsm", "accuracy") in rows


def test_the_patient_is_the_sampling_unit(folder):
    """Images carry their patient (PatientID from the header) as the group that intervals and tests resample; a
    group column in the CSV wins."""
    ds = load_dataset("dicom", split="train", root=str(folder))
    want = {"ct": f"PatientID:{pydicom.dcmread(shipped('CT_small.dcm')).PatientID}",
            "mr": f"PatientID:{pydicom.dcmread(shipped('MR_small.dcm')).PatientID}"}
    assert ds.group_unit == "patient"
    assert ds.groups == [want[i.rstrip("0123456789")] for i in ds.ids]
    rows = list(csv.DictReader((folder / "labels.csv").open()))
    with (folder / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "label", "split", "group"])
        writer.writeheader()
        writer.writerows([{**r, "group": f"p{i % 3}"} for i, r in enumerate(rows)])
    ds = load_dataset("dicom", split="train", root=str(folder))
    assert sorted(set(ds.groups)) == ["p0", "p1", "p2"]
