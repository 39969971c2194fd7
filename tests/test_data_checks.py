"""Data a validation team brings, checked before it is scored: a sample id listed twice with two labels is an
error naming the id and both labels (over the whole CSV, whichever splits the rows land in), and the same
check holds inside every split of every dataset."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medrobust.data import load_dataset
from medrobust.data.base import check_duplicate_ids


def _ham_folder(tmp_path, rows: list[tuple[str, str]]):
    """A HAM10000-style folder: images/<id>.jpg and a metadata CSV (image_id, lesion_id, dx)."""
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for image_id, _ in rows:
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{image_id}.jpg")
    lines = ["image_id,lesion_id,dx"] + [f"{i},L{n},{dx}" for n, (i, dx) in enumerate(rows)]
    (tmp_path / "HAM10000_metadata.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_an_id_listed_twice_with_two_labels_is_refused(tmp_path):
    rows = [(f"ISIC_{k:07d}", dx) for k, dx in enumerate(["mel", "nv"] * 10)]
    rows.append(("ISIC_0000003", "mel"))  # ISIC_0000003 is "nv" above
    root = _ham_folder(tmp_path, rows)
    with pytest.raises(ValueError, match=r"sample id 'ISIC_0000003' is listed twice with different labels "
                                         r"\('nv' and 'mel'\)"):
        load_dataset("isic", root=root, size=16)


def test_an_id_listed_twice_with_one_label_loads(tmp_path):
    rows = [(f"ISIC_{k:07d}", dx) for k, dx in enumerate(["mel", "nv"] * 10)]
    rows.append(("ISIC_0000003", "nv"))
    root = _ham_folder(tmp_path, rows)
    sizes = [len(load_dataset("isic", root=root, size=16, split=s)) for s in ("train", "val", "test")]
    assert sum(sizes) == 21


@pytest.mark.parametrize(
    ("ids", "labels", "bad"),
    [
        (["a", "b", "a"], [0, 1, 0], None),
        (["a", "b", "a"], [0, 1, 1], "'a' is listed twice with different labels (0 and 1)"),
        (["x", "y", "z", "y"], ["mel", "nv", "bkl", "bkl"], "'y' is listed twice with different labels ('nv' and 'bkl')"),
        ([], [], None),
    ],
)
def test_duplicate_ids_by_hand(ids, labels, bad):
    if bad is None:
        check_duplicate_ids(ids, labels, "here")
    else:
        with pytest.raises(ValueError, match="^here: sample id " + __import__("re").escape(bad)):
            check_duplicate_ids(ids, labels, "here")


def test_balanced_accuracy_needs_two_classes():
    import math

    import torch

    from medrobust.metrics.classification import balanced_accuracy

    y = torch.tensor([0, 0, 0, 0])
    assert math.isnan(balanced_accuracy(torch.tensor([0, 0, 0, 0]), y, 3))  # a constant model: not 1.0
    # two of three classes present: the mean sensitivity over those two, (2/3 + 1/1) / 2
    assert balanced_accuracy(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 0, 0, 2]), 3) == pytest.approx(5 / 6)
    # the resampled statistic (intervals, paired tests) follows the same rule
    from medrobust import resampling

    one = resampling.balanced_accuracy({"pred": np.zeros(4, int), "label": np.zeros(4, int), "k": 3}, None)
    two = resampling.balanced_accuracy({"pred": np.array([0, 0, 1, 2]), "label": np.array([0, 0, 0, 2]), "k": 3}, None)
    assert np.isnan(one).all() and two == pytest.approx([5 / 6])


def test_a_one_class_test_split_is_flagged_and_not_scored_as_balanced(tiny_checkpoint, tmp_path):
    import json

    import yaml
    from conftest import tiny_spec
    from typer.testing import CliRunner

    from medrobust.cli import app

    spec = tiny_spec(tiny_checkpoint, dataset={"name": "derm-synth", "params": {"size": 16, "n": 30,
                                                                              "class_prior": [1, 0, 0]}},
                     perturbations=[{"corruption": "gaussian_noise", "strengths": [0.05]}])
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "run"), "--quiet"])
    assert done.exit_code == 0, done.output
    assert "warning: the 12 test samples hold 1 of the 3 classes (none of " in done.output
    assert "balanced accuracy and AUC are undefined" in done.output
    rows = json.loads((tmp_path / "run" / "summary.json").read_text())
    clean = {r["metric"]: r for r in rows if r["perturbation"] == "clean"}
    assert clean["balanced_accuracy"]["value"] is None and clean["balanced_accuracy"]["ci_low"] is None
    assert clean["auc"]["value"] is None
    # accuracy stays what it is: the share of the 12 (all class 0) predicted as class 0
    con = __import__("sqlite3").connect(tmp_path / "run" / "results.db")
    preds = [p for (p,) in con.execute("SELECT pred FROM records WHERE perturbation='clean'")]
    con.close()
    assert len(preds) == 12 and clean["accuracy"]["value"] == pytest.approx(sum(p == 0 for p in preds) / 12)
    summary_md = (tmp_path / "run" / "summary.md").read_text()
    assert "classes missing from the test samples" in summary_md
    assert "its 12 test samples hold 1 of its 3 classes" in summary_md


def _crafted_nifti(path, shape, payload_bytes: int = 64):
    """A NIfTI file whose header declares ``shape`` (float32) but which holds only ``payload_bytes`` of voxels."""
    import gzip

    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * (352 - len(header.binaryblock)) + b"\1" * payload_bytes
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def _small_nifti(path, shape=(4, 4, 4)):
    import nibabel as nib

    data = np.ones(shape, dtype=np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


@pytest.mark.parametrize(("name", "shape", "match"), [
    ("huge.nii.gz", (4096, 4096, 4096), r"declares shape \(4096, 4096, 4096\) \(68,719,476,736 voxels\), above the "
                                        r"limit of 268,435,456; .*MEDROBUST_MAX_VOXELS"),
    ("short.nii", (64, 64, 64), r"declares shape \(64, 64, 64\) \(1,048,928 bytes with its header\) but holds 416 "
                                r"bytes: truncated"),
])
def test_a_nifti_header_is_checked_against_its_file_before_reading(tmp_path, name, shape, match):
    from medrobust.data.nifti import read_pair

    image = _crafted_nifti(tmp_path / name, shape)
    label = _small_nifti(tmp_path / "label.nii.gz")
    with pytest.raises(ValueError, match=match):
        read_pair(image, label)
    with pytest.raises(ValueError, match=match):  # the same for a label file
        read_pair(_small_nifti(tmp_path / "image.nii.gz"), image)


def test_the_voxel_limit_can_be_raised(tmp_path, monkeypatch):
    from medrobust.data.nifti import read_pair

    image, label = _small_nifti(tmp_path / "i.nii.gz"), _small_nifti(tmp_path / "l.nii.gz")
    monkeypatch.setenv("MEDROBUST_MAX_VOXELS", "63")
    with pytest.raises(ValueError, match=r"\(64 voxels\), above the limit of 63"):
        read_pair(image, label)
    monkeypatch.setenv("MEDROBUST_MAX_VOXELS", "64")
    data, codes = read_pair(image, label)
    assert data.shape == (4, 4, 4) and codes.shape == (4, 4, 4)


def _png_header(path, width: int, height: int):
    """A PNG file of a few dozen bytes whose header declares width x height RGB pixels (no pixel data)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(("width", "height", "message"), [
    # above twice Pillow's own limit Pillow refuses at open: one line now, not a traceback
    (30_000, 30_000, r"Image size \(900000000 pixels\) exceeds limit of 178956970 pixels"),
    # between Pillow's warning and its error, ours refuses before decoding
    (12_000, 10_000, r"it declares 12000 x 10000 = 120,000,000 pixels, above the limit of 100,000,000"),
])
def test_an_image_header_promising_gigabytes_is_refused_before_decoding(tmp_path, width, height, message):
    from medrobust.data.image_folder import load_image

    path = _png_header(tmp_path / "bomb.png", width, height)
    assert path.stat().st_size < 100
    with pytest.raises(ValueError, match=r"cannot read image .*bomb\.png: " + message):
        load_image(path, size=16)


def test_the_pixel_limit_can_be_raised(tmp_path, monkeypatch):
    from medrobust.data.image_folder import load_image

    path = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 20, 3), dtype=np.uint8)).save(path)
    monkeypatch.setenv("MEDROBUST_MAX_PIXELS", "199")
    with pytest.raises(ValueError, match=r"10 = 200 pixels, above the limit of 199"):
        load_image(path, size=8)
    monkeypatch.setenv("MEDROBUST_MAX_PIXELS", "200")
    assert tuple(load_image(path, size=8).shape) == (3, 8, 8)
