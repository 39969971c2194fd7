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
        (["x", "y", "z", "y"], ["mel", "nv", "bkl", "bkl"],
         "'y' is listed twice with different labels ('nv' and 'bkl')"),
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


# ------------------------------------------------------------------------------------------------ hardening, pass 2
@pytest.mark.parametrize(("call", "message"), [
    (lambda b: b.int_param("abc", "size", "here", low=1, high=1024, unit="pixels"),
     "here: size='abc' must be a whole number of pixels in [1, 1024]"),
    (lambda b: b.int_param(True, "n", low=1), "n=True must be a whole number >= 1"),
    (lambda b: b.int_param(1.5, "n", low=1), "n=1.5 must be a whole number >= 1"),
    (lambda b: b.float_param(float("nan"), "val_fraction", "x", low=0, high=1),
     "x: val_fraction=nan must be a finite number in [0, 1]"),
    (lambda b: b.float_param(0, "severity", low=0, above=True), "severity=0 must be a finite number > 0"),
    (lambda b: b.seed_param(2**63, "d"), "d: seed=9223372036854775808 must be an integer in [0, 9223372036854775807]"),
    (lambda b: b.bool_param("no", "center_crop"), "center_crop='no' must be true or false"),
    (lambda b: b.names_param("abc", "classes"),
     "classes='abc' must be a list of class names, e.g. [benign, malignant]"),
    (lambda b: b.names_param(["a", ["b"]], "classes"),
     "classes=['a', ['b']] must be a list of class names; ['b'] is not one"),
    (lambda b: b.numbers_param([1, "a"], "window", 2, "dicom", "center, width"),
     "dicom: window=[1, 'a'] must be a list of 2 finite numbers (center, width)"),
])
def test_builder_parameters_are_refused_with_one_line(call, message):
    from medrobust.data import base

    with pytest.raises(ValueError) as err:
        call(base)
    assert str(err.value) == message


def test_accepted_parameters_come_back_typed():
    from medrobust.data.base import float_param, int_param, names_param, seed_param

    assert int_param(np.int64(16), "size", low=1, high=1024) == 16 and type(int_param(np.int64(3), "n")) is int
    assert float_param(1, "x", low=0, high=1) == 1.0 and seed_param(2**63 - 1) == 2**63 - 1
    assert names_param((0, "b"), "classes") == ["0", "b"]


def test_duplicate_class_names_are_refused_by_every_dataset():
    import torch

    from medrobust.data.base import TensorImageDataset
    from medrobust.data.segmentation import SegmentationDataset

    with pytest.raises(ValueError, match=r"^class names \['a', 'b', 'a'\] list 'a' twice; class names must be "
                                         r"distinct$"):
        TensorImageDataset(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), ["x", "y"], ["a", "b", "a"], "test")
    with pytest.raises(ValueError, match=r"list 'bg' twice"):
        SegmentationDataset(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.uint8), ["x"], ["bg", "bg"],
                            "test")


def _png_folder(root, n: int = 2):
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for k in range(n):
            Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(root / c / f"{k}.png")
    return root


@pytest.mark.parametrize(("size", "cached"), [(16, 2048), (1024, 170)])
def test_the_image_cache_holds_at_most_512_mib(tmp_path, size, cached):
    ds = load_dataset("image-folder", root=_png_folder(tmp_path), size=size, test_fraction=0.5)
    assert ds._cache_size == cached  # 512 MiB // (3 * 1024 * 1024) = 170 images of 1024 x 1024 RGB


def test_a_16_bit_image_is_refused_not_clipped(tmp_path):
    from medrobust.data.image_folder import load_image

    path = tmp_path / "scan.png"
    Image.fromarray((np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)).save(path)
    with pytest.raises(ValueError, match=r"scan\.png: it has Pillow mode 'I;16' \(more than 8 bits per channel\), "
                                         r"which 8-bit reading would clip"):
        load_image(path, size=8, channels=1)


def test_a_bad_limit_in_the_environment_is_named(tmp_path, monkeypatch):
    from medrobust.data.image_folder import load_image

    monkeypatch.setenv("MEDROBUST_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match=r"^MEDROBUST_MAX_PIXELS='lots' must be an integer \(a number of pixels\)$"):
        load_image(tmp_path / "x.png", size=8)
    monkeypatch.setenv("MEDROBUST_MAX_BYTES", "0")
    from medrobust.data.base import max_bytes

    with pytest.raises(ValueError, match=r"^MEDROBUST_MAX_BYTES='0' must be an integer >= 1 \(a number of bytes\)$"):
        max_bytes()


def test_csv_readers_name_the_file_in_one_line(tmp_path):
    from medrobust.data.base import read_csv_rows

    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufefffile , label\nx.dcm, a\ny.dcm\n".encode())
    assert read_csv_rows(bom) == (["file", "label"], [{"file": "x.dcm", "label": "a"}, {"file": "y.dcm", "label": ""}])
    huge = tmp_path / "huge.csv"
    huge.write_text("file,label\n" + "x" * 140_000 + ",a\n")
    with pytest.raises(ValueError, match=r"huge\.csv is not a valid CSV file: field larger than field limit "
                                         r"\(131072\)"):
        read_csv_rows(huge, "labels CSV")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"file,label\n\x89PNG\xff,a\n")
    with pytest.raises(ValueError, match=r"^labels CSV .*binary\.csv is not UTF-8 text; expected a CSV file$"):
        read_csv_rows(binary, "labels CSV")


# --- DICOM: files confined to root, headers checked before the pixels ----------------------------------------------
def _dicom_root(tmp_path, files):
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    root = tmp_path / "root"
    root.mkdir()
    for k in range(2):
        __import__("shutil").copy(get_testdata_file("CT_small.dcm"), root / f"a{k}.dcm")
    rows = [f"{f},{'ab'[k % 2]},test" for k, f in enumerate(files)]
    (root / "labels.csv").write_text("file,label,split\n" + "\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("name", ["../out.dcm", "sub/../../out.dcm", "{outside}"])
def test_dicom_files_outside_root_are_refused(tmp_path, name):
    (tmp_path / "out.dcm").write_bytes(b"x")
    name = name.format(outside=tmp_path / "out.dcm")
    root = _dicom_root(tmp_path, ["a0.dcm", name])
    with pytest.raises(ValueError) as err:
        load_dataset("dicom", root=str(root), size=16)
    real = (tmp_path / "out.dcm").resolve()
    assert str(err.value) == (
        f"dicom: {str(root / 'labels.csv')!r} row 3: file {name!r} leads outside root {str(root)!r} (to "
        f"{str(real)!r}); the files a labels CSV names must lie inside root"
    )


def test_dicom_links_are_followed_to_where_they_lead(tmp_path):
    root = _dicom_root(tmp_path, ["a0.dcm", "inside.dcm", "sub/a1.dcm"])
    (root / "inside.dcm").symlink_to(root / "a1.dcm")  # a link that stays inside root is fine
    (root / "sub").mkdir()
    (root / "sub" / "a1.dcm").symlink_to(root / "a0.dcm")
    assert len(load_dataset("dicom", root=str(root), size=16)) == 3
    (root / "sub" / "a1.dcm").unlink()
    (root / "sub").rmdir()
    (root / "sub").symlink_to(tmp_path)  # a folder link leading out
    __import__("shutil").copy(root / "a0.dcm", tmp_path / "a1.dcm")
    with pytest.raises(ValueError, match=r"row 4: file 'sub/a1\.dcm' leads outside root"):
        load_dataset("dicom", root=str(root), size=16)


def test_dicom_headers_are_checked_before_decoding(tmp_path, monkeypatch):
    import pydicom

    from medrobust.data.dicom import check_dicom_header, read_dicom

    root = _dicom_root(tmp_path, ["a0.dcm", "a1.dcm"])
    path = root / "a0.dcm"
    ds = pydicom.dcmread(path)
    check_dicom_header(ds, path)  # 128 x 128, 16 bits, 32,768 bytes of pixel data in a 39 kB file
    monkeypatch.setenv("MEDROBUST_MAX_PIXELS", "16383")
    with pytest.raises(ValueError, match=r"a0\.dcm: it declares 128 x 128 x 1 = 16,384 pixels \(rows x columns x "
                                         r"frames\), above the limit of 16,383"):
        load_dataset("dicom", root=str(root), size=16)  # refused when the dataset is built, not when a sample is read
    monkeypatch.delenv("MEDROBUST_MAX_PIXELS")
    ds.NumberOfFrames = 3  # 3 frames would need 98,304 bytes
    ds.save_as(path)
    with pytest.raises(ValueError, match=r"declares 128 x 128 x 3 pixels \(98,304 bytes of pixel data\) but holds "
                                         r"[\d,]+ bytes: truncated"):
        read_dicom(path, None, 16)
    del ds.Rows
    ds.save_as(path)
    with pytest.raises(ValueError, match=r"a0\.dcm holds no image \(no Rows, Columns or PixelData\)"):
        read_dicom(path, None, 16)


def test_dicom_ids_keep_files_of_one_name_apart(tmp_path):
    root = _dicom_root(tmp_path, ["a0.dcm", "sub/a0.dcm"])
    (root / "sub").mkdir()
    __import__("shutil").copy(root / "a0.dcm", root / "sub" / "a0.dcm")
    assert load_dataset("dicom", root=str(root), size=16).ids == ["a0", "sub/a0"]


# --- MedMNIST .npz: headers read before the arrays ------------------------------------------------------------------
def test_npz_arrays_are_bounded_before_they_are_read(tmp_path, monkeypatch):
    path = tmp_path / "d.npz"
    np.savez(path, test_images=np.zeros((4, 8, 8), np.uint8), test_labels=np.array([0, 1, 0, 1]))
    assert len(load_dataset("medmnist", path=path)) == 4
    monkeypatch.setenv("MEDROBUST_MAX_BYTES", "255")
    with pytest.raises(ValueError, match=r"test_images declares shape \(4, 8, 8\) of uint8 \(256 bytes\), above the "
                                         r"limit of 255 bytes \(set MEDROBUST_MAX_BYTES"):
        load_dataset("medmnist", path=path)


# --- NIfTI: what parameters make of a volume is bounded before it is made --------------------------------------------
def _nifti_pair(tmp_path, shape=(4, 4, 4)):
    import nibabel as nib

    root = tmp_path / "nii"
    root.mkdir()
    image = np.random.default_rng(0).random(shape).astype(np.float32) + 0.1
    label = np.zeros(shape, np.int16)
    label[1:3, 1:3, :] = 1
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / "v0_T1.nii.gz"))
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "v0_seg.nii.gz"))
    return {"root": str(root), "class_names": ["bg", "fg"], "split_fractions": [0, 0, 1]}


def test_nifti_resampling_and_padding_are_bounded(tmp_path, monkeypatch):
    common = _nifti_pair(tmp_path)
    monkeypatch.setenv("MEDROBUST_MAX_VOXELS", "511")
    with pytest.raises(ValueError, match=r"spacing=0\.5 resamples .*v0_T1\.nii\.gz to shape \(8, 8, 8\) "
                                         r"\(512 voxels\), above the limit of 511"):
        load_dataset("nifti", spacing=0.5, **common)
    with pytest.raises(ValueError, match=r"pad_to_multiple=8 pads .* to shape \(8, 8, 8\) \(512 voxels\)"):
        load_dataset("nifti", pad_to_multiple=8, **common)
    monkeypatch.setenv("MEDROBUST_MAX_VOXELS", "512")
    assert load_dataset("nifti", spacing=0.5, mode="3d", **common)[0][0].shape == (1, 8, 8, 8)


def test_nifti_overlapping_patches_are_bounded_in_bytes(tmp_path, monkeypatch):
    common = _nifti_pair(tmp_path, shape=(6, 6, 6))
    # patches of 2x2x2 every voxel: 5 x 5 x 5 = 125 patches of 8 float32 voxels + 8 uint8 labels = 40 bytes each
    ds = load_dataset("nifti", mode="3d", patch_size=2, stride=1, min_foreground=0.0, **common)
    assert len(ds) == 125
    monkeypatch.setenv("MEDROBUST_MAX_BYTES", str(40 * 125 - 1))
    with pytest.raises(ValueError, match=r"^nifti: split 'test' would hold more than 4,999 bytes of samples \(reached "
                                         r"at 'v0-patch-4-4-4', 125 samples\); use a larger stride"):
        load_dataset("nifti", mode="3d", patch_size=2, stride=1, min_foreground=0.0, **common)


def test_a_nifti_label_map_cannot_ask_for_a_billion_classes():
    from medrobust.data.nifti import load_label_map

    with pytest.raises(ValueError, match=r"^label_map maps to class 1000000000, implying 1,000,000,001 classes, but "
                                         r"lists 2 codes; pass class_names"):
        load_label_map({0: 0, 4: 10**9}, None)
    with pytest.raises(ValueError, match=r"label_map: code 4 maps to 1\.5; expected a class index or name"):
        load_label_map({0: 0, 4: 1.5}, ["bg", "fg"])
    assert load_label_map({0: 0, 4: 1, 5: 2}, None) == ({0: 0, 4: 1, 5: 2}, ["class_0", "class_1", "class_2"])
