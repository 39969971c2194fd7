"""Dataset builders: derm-synth, medmnist, isic, image-folder, and load_dataset."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medrobust.data import DATASETS, list_datasets, load_all, load_dataset
from medrobust.data import derm_synth
from conftest import shared_data

HAM_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


# ----------------------------------------------------------------------------------------------- registry
def test_registry_lists_the_builders():
    assert {"derm-synth", "medmnist", "isic", "image-folder"} <= set(list_datasets())
    assert list_datasets() == DATASETS.names()


def test_unknown_dataset_suggests_a_name():
    with pytest.raises(KeyError, match="did you mean 'derm-synth'") as err:
        load_dataset("derm-synt")
    assert "image-folder" in str(err.value) and "medmnist" in str(err.value)


def test_bad_split_and_unknown_param_are_clear():
    with pytest.raises(ValueError, match="train, val, test"):
        load_dataset("derm-synth", split="training")
    with pytest.raises(ValueError, match="derm-synth has no parameter 'colour'.* Valid: split, size"):
        load_dataset("derm-synth", colour="red")


# ----------------------------------------------------------------------------------------------- derm-synth
@pytest.fixture(scope="module")
def derm():
    return {s: load_dataset("derm-synth", split=s) for s in ("train", "val", "test")}


def test_derm_synth_shapes_range_ids_and_balance(derm):
    test = derm["test"]
    assert [len(derm[s]) for s in ("train", "val", "test")] == [1200, 300, 300]
    assert test.class_names == ("nevus", "melanoma", "seborrheic_keratosis")
    x, y, sample_id = test[123]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert sample_id == "derm-synth-test-000123" and test.ids[0] == "derm-synth-test-000000"
    batch = load_all(test)
    assert float(batch.x.min()) >= 0.0 and float(batch.x.max()) <= 1.0
    assert float(batch.x.std()) > 0.1  # real images, not a constant
    # Exactly balanced by default (every block of three samples holds one of each class).
    assert torch.bincount(test.labels, minlength=3).tolist() == [100, 100, 100]
    assert torch.bincount(derm["train"].labels, minlength=3).tolist() == [400, 400, 400]


def test_derm_synth_is_deterministic_and_seeded():
    regenerate = derm_synth._generate.__wrapped__  # bypass the in-process cache
    a_x, a_y = regenerate(0, "val", 60, 32, derm_synth.DEFAULT_OVERLAP, None)
    b_x, b_y = regenerate(0, "val", 60, 32, derm_synth.DEFAULT_OVERLAP, None)
    assert torch.equal(a_x, b_x) and torch.equal(a_y, b_y)
    c_x, c_y = regenerate(1, "val", 60, 32, derm_synth.DEFAULT_OVERLAP, None)
    assert not torch.equal(a_x, c_x)
    assert (a_x.float() - c_x.float()).abs().mean() > 10  # on the 0..255 scale: clearly different images
    # Sample i does not depend on n: the first 30 of 60 are the 30 of n=30.
    d_x, d_y = regenerate(0, "val", 30, 32, derm_synth.DEFAULT_OVERLAP, None)
    assert torch.equal(d_x, a_x[:30]) and torch.equal(d_y, a_y[:30])
    # Builds are cached: the same tensor object comes back.
    assert load_dataset("derm-synth", n=60, size=32).images is load_dataset("derm-synth", n=60, size=32).images


def test_derm_synth_splits_are_different_streams(derm):
    def fingerprints(ds):
        return {bytes(img.numpy().tobytes()) for img in ds.images}

    train, val, test = (fingerprints(derm[s]) for s in ("train", "val", "test"))
    assert len(test) == 300 and len(train) == 1200
    assert not (train & test) and not (train & val) and not (val & test)
    assert not set(derm["train"].ids) & set(derm["test"].ids)


def test_derm_synth_params_and_errors():
    ds = load_dataset("derm-synth", split="val", n=90, size=32, class_prior=[0.8, 0.1, 0.1])
    assert ds.input_shape == (3, 32, 32) and len(ds) == 90
    counts = torch.bincount(ds.labels, minlength=3).tolist()
    assert counts[0] > 50 and counts[1] + counts[2] < 40
    with pytest.raises(ValueError, match="size=8"):
        load_dataset("derm-synth", size=8)
    with pytest.raises(ValueError, match="overlap=1.5"):
        load_dataset("derm-synth", overlap=1.5)
    with pytest.raises(ValueError, match="class_prior"):
        load_dataset("derm-synth", class_prior=[1, 0])
    with pytest.raises(ValueError, match="n=0"):
        load_dataset("derm-synth", n=0)


def _simple_features(x: torch.Tensor) -> torch.Tensor:
    """Mean and std colour, plus the lesion's area: pixels clearly darker than the surrounding skin."""
    lum = x.mean(1)
    c = (torch.arange(x.shape[-1]) + 0.5) / x.shape[-1] * 2 - 1
    r = torch.hypot(c[None, :], c[:, None])
    skin = lum[:, (r > 0.55) & (r < 0.85)].median(1).values
    area = ((lum < 0.8 * skin[:, None, None]) & (r < 0.9)).float().mean((1, 2))
    return torch.cat([x.mean((2, 3)), x.std((2, 3)), area[:, None]], 1)


def _baseline_accuracy(train, test) -> float:
    """Multinomial logistic regression (torch, LBFGS) on the simple features: train on train, score on test."""
    f_tr, f_te = _simple_features(train.images.float() / 255), _simple_features(test.images.float() / 255)
    mu, sd = f_tr.mean(0), f_tr.std(0)
    f_tr, f_te = (f_tr - mu) / sd, (f_te - mu) / sd
    lin = torch.nn.Linear(f_tr.shape[1], 3, dtype=f_tr.dtype)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(f_tr), train.labels) + 1e-3 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((lin(f_te).argmax(1) == test.labels).float().mean())


def test_derm_synth_classes_are_separable_but_not_trivially(derm):
    acc = _baseline_accuracy(derm["train"], derm["test"])
    assert 0.45 < acc < 0.97, acc  # chance is 1/3; measured 0.66 with the default overlap
    # The overlap knob controls the difficulty: without it the same baseline does clearly better.
    clean_train = load_dataset("derm-synth", split="train", n=600, overlap=0.0)
    clean_test = load_dataset("derm-synth", split="test", overlap=0.0)
    assert _baseline_accuracy(clean_train, clean_test) > acc + 0.04  # measured 0.74 vs 0.66


# ----------------------------------------------------------------------------------------------- medmnist
def test_medmnist_pneumonia_matches_the_file():
    path = shared_data("pneumoniamnist.npz")
    raw = np.load(path)
    for split, n in (("train", 3882), ("val", 524), ("test", 624)):
        ds = load_dataset("medmnist", split=split, path=path)
        assert len(ds) == n
        assert ds.class_names == ("normal", "pneumonia")
        expected = np.bincount(raw[f"{split}_labels"].reshape(-1), minlength=2)
        assert torch.bincount(ds.labels, minlength=2).tolist() == expected.tolist()
        assert ds.ids[42] == f"pneumoniamnist-{split}-00042"
    batch = load_all(ds)  # the test split
    assert batch.x.shape == (624, 1, 28, 28) and batch.x.dtype == torch.float32
    expected_x = raw["test_images"].astype(np.float64)[:, None] / 255.0
    assert np.abs(batch.x.numpy().astype(np.float64) - expected_x).max() < 1e-7
    assert torch.equal(batch.x, torch.from_numpy(raw["test_images"]).float()[:, None] / 255)  # exact in float32
    assert float(batch.x.max()) == pytest.approx(raw["test_images"].max() / 255, abs=1e-7)  # 254: not stretched
    assert torch.equal(batch.y, torch.from_numpy(raw["test_labels"].reshape(-1).astype(np.int64)))


def test_medmnist_folder_and_flag(tmp_path):
    src = shared_data("pneumoniamnist.npz")
    shutil.copy(src, tmp_path / "pneumoniamnist.npz")
    ds = load_dataset("medmnist", split="val", path=tmp_path, flag="pneumoniamnist")
    assert len(ds) == 524 and ds.info["flag"] == "pneumoniamnist"
    with pytest.raises(ValueError, match="flag="):
        load_dataset("medmnist", path=tmp_path)


def _write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_medmnist_rgb_and_generic_class_names(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 8), ("val", 4), ("test", 5)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 4, (n, 1))
    arrays["train_labels"][0, 0] = 3
    path = _write_npz(tmp_path / "mystery.npz", **arrays)
    ds = load_dataset("medmnist", split="test", path=path)
    assert ds.class_names == ("class_0", "class_1", "class_2", "class_3")
    assert ds.ids[0] == "mystery-test-00000"
    x = ds.image(2)
    assert x.shape == (3, 28, 28)
    assert torch.equal(x, torch.from_numpy(arrays["test_images"][2]).permute(2, 0, 1).float() / 255)
    named = load_dataset("medmnist", split="test", path=path, class_names=["a", "b", "c", "d"])
    assert named.class_names == ("a", "b", "c", "d")
    with pytest.raises(ValueError, match="labels up to 3"):
        load_dataset("medmnist", split="test", path=path, class_names=["a", "b"])


def test_medmnist_errors(tmp_path):
    missing = tmp_path / "nothere.npz"
    with pytest.raises(FileNotFoundError, match="nothere.npz") as err:
        load_dataset("medmnist", path=missing)
    assert "path=" in str(err.value)
    only_train = _write_npz(
        tmp_path / "partial.npz", train_images=np.zeros((3, 28, 28), np.uint8), train_labels=np.zeros((3, 1), int)
    )
    with pytest.raises(KeyError, match="test_images.*train_images"):
        load_dataset("medmnist", split="test", path=only_train)
    multi = _write_npz(
        tmp_path / "chestmnist.npz", test_images=np.zeros((3, 28, 28), np.uint8), test_labels=np.zeros((3, 14), int)
    )
    with pytest.raises(ValueError, match="multi-label"):
        load_dataset("medmnist", path=multi)
    empty = _write_npz(
        tmp_path / "empty.npz", test_images=np.zeros((0, 28, 28), np.uint8), test_labels=np.zeros((0, 1), int),
        train_images=np.zeros((2, 28, 28), np.uint8), train_labels=np.ones((2, 1), int),
    )  # fmt: skip
    with pytest.raises(ValueError, match="'test' is empty"):
        load_dataset("medmnist", path=empty)


def test_medmnist_download_without_the_package_says_to_pass_a_path(tmp_path):
    try:
        import medmnist  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("the medmnist package is installed; a download would need the network")
    with pytest.raises(ImportError, match="path="):
        load_dataset("medmnist", path=tmp_path, flag="pneumoniamnist", download=True)


# ----------------------------------------------------------------------------------------------- isic
def _ham_rows(root: Path) -> list[dict[str, str]]:
    with open(root / "HAM10000_metadata.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_isic_ham_sample_splits():
    root = shared_data("ham10000_sample")
    rows = _ham_rows(root)
    dx = {r["image_id"]: r["dx"] for r in rows}
    splits = {s: load_dataset("isic", split=s, root=root, size=32) for s in ("train", "val", "test")}
    ids = {s: ds.ids for s, ds in splits.items()}
    assert sum(len(v) for v in ids.values()) == 70
    assert set().union(*map(set, ids.values())) == set(dx)  # cover everything
    train, val, test = (set(ids[s]) for s in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)  # disjoint
    for s, per_class in (("train", 6), ("val", 2), ("test", 2)):  # 10 per class: round(1.5) = 2 each to val, test
        ds = splits[s]
        assert list(ds.class_names) == HAM_CLASSES
        assert torch.bincount(ds.labels, minlength=7).tolist() == [per_class] * 7
        assert [ds.class_names[int(y)] for y in ds.labels] == [dx[i] for i in ds.ids]
        assert ds.ids == [r["image_id"] for r in rows if r["image_id"] in set(ds.ids)]  # CSV order
    lesion = {r["image_id"]: r["lesion_id"] for r in rows}
    for ds in splits.values():  # the lesion is the sampling unit of intervals and tests
        assert ds.group_unit == "lesion" and ds.groups == [lesion[i] for i in ds.ids]
    x, y, sample_id = splits["test"][0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.std()) > 0.01
    # The same seed gives the same split; another seed another one.
    assert load_dataset("isic", split="test", root=root).ids == load_dataset("isic", split="test", root=root).ids
    assert load_dataset("isic", split="test", root=root, seed=1).ids != ids["test"]


def test_isic_pixels_match_an_independent_resize():
    root = shared_data("ham10000_sample")
    ds = load_dataset("isic", split="val", root=root, size=48)
    path = root / "images" / f"{ds.ids[3]}.jpg"
    with Image.open(path) as im:
        ref = np.asarray(im.convert("RGB").resize((48, 48), Image.BILINEAR), dtype=np.float32) / 255
    assert np.abs(ds.image(3).permute(1, 2, 0).numpy() - ref).max() < 1e-6
    assert ds.image(3).data_ptr() != ds.image(3).data_ptr()  # callers may modify what they get


def _copy_ham(tmp_path: Path) -> Path:
    dst = tmp_path / "ham"
    shutil.copytree(shared_data("ham10000_sample"), dst)
    return dst


def test_isic_errors(tmp_path):
    root = _copy_ham(tmp_path)
    with pytest.raises(ValueError, match=r"no label column 'diagnosis'.*'dx'"):
        load_dataset("isic", root=root, label_column="diagnosis")
    outside = r"has label '(akiec|bcc|bkl|df|vasc)', which is not one of classes=\['mel', 'nv'\]"
    with pytest.raises(ValueError, match=outside):
        load_dataset("isic", root=root, classes=["mel", "nv"])
    with pytest.raises(ValueError, match="'test' is empty"):
        load_dataset("isic", root=root, test_fraction=0.0)
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("isic", root=root, val_fraction=0.5, test_fraction=0.5)
    rows = _ham_rows(root)
    bad = root / "images" / f"{rows[5]['image_id']}.jpg"
    bad.write_bytes(b"this is not a jpeg")
    seen = 0
    for split in ("train", "val", "test"):  # the build only checks that files exist; reading fails on access
        ds = load_dataset("isic", split=split, root=root, size=16)
        if rows[5]["image_id"] in ds.ids:
            seen += 1
            with pytest.raises(ValueError, match=f"cannot read image .*{bad.name}"):
                ds.image(ds.ids.index(rows[5]["image_id"]))
    assert seen == 1
    (root / "images" / f"{rows[7]['image_id']}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=f"1 of 70 images .*{rows[7]['image_id']}"):
        load_dataset("isic", root=root)


def test_isic_csv_discovery_errors(tmp_path):
    root = _copy_ham(tmp_path)
    shutil.copy(root / "HAM10000_metadata.csv", root / "other.csv")
    with pytest.raises(ValueError, match="2 .csv files"):
        load_dataset("isic", root=root)
    assert len(load_dataset("isic", root=root, csv="other.csv")) == 14
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_dataset("isic", root=root, csv="nope.csv")


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_isic_2017_one_hot_labels_and_split_column(tmp_path):
    # ISIC 2017 ground truth: image_id, melanoma, seborrheic_keratosis (nevus when both are 0); PNG files at root.
    rows = []
    for i in range(12):
        mel, sk = (1, 0) if i % 3 == 1 else (0, 1) if i % 3 == 2 else (0, 0)
        split = ("train", "validation", "test")[i % 4 % 3]
        Image.fromarray(np.full((20, 30, 3), 10 * i, np.uint8)).save(tmp_path / f"ISIC_{i:07d}.png")
        rows.append([f"ISIC_{i:07d}", f"{mel}.0", f"{sk}.0", split])
    _write_csv(tmp_path / "gt.csv", ["image_id", "melanoma", "seborrheic_keratosis", "split"], rows)
    ds = load_dataset("isic", split="val", root=tmp_path, split_column="split", size=8)
    assert ds.class_names == ("nevus", "melanoma", "seborrheic_keratosis")
    assert ds.ids == [r[0] for r in rows if r[3] == "validation"]
    assert ds.labels.tolist() == [int(r[0][-7:]) % 3 for r in rows if r[3] == "validation"]
    assert torch.all(ds.image(0) == 10 * int(ds.ids[0][-7:]) / 255)
    rows[0][3] = "holdout"
    _write_csv(tmp_path / "gt.csv", ["image_id", "melanoma", "seborrheic_keratosis", "split"], rows)
    with pytest.raises(ValueError, match="'holdout'"):
        load_dataset("isic", root=tmp_path, split_column="split")
    with pytest.raises(ValueError, match="no split column 'fold'"):
        load_dataset("isic", root=tmp_path, split_column="fold")


# ----------------------------------------------------------------------------------------------- image-folder
_COLOURS = {"benign": (200, 30, 30), "malignant": (30, 200, 30), "normal": (30, 30, 200)}


def _make_folder(root: Path, per_class: int = 10) -> None:
    for c, colour in _COLOURS.items():
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((24, 20, 3), colour, np.uint8)).save(root / c / f"img{i:02d}.png")


def test_image_folder_seeded_split(tmp_path):
    _make_folder(tmp_path)
    splits = {s: load_dataset("image-folder", split=s, root=tmp_path, size=16) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [18, 6, 6]
    all_ids = sum((splits[s].ids for s in splits), [])
    assert len(set(all_ids)) == 30 and "benign/img00" in all_ids
    test = splits["test"]
    assert test.class_names == ("benign", "malignant", "normal")
    assert torch.bincount(test.labels, minlength=3).tolist() == [2, 2, 2]
    for i in range(len(test)):
        x, y, sample_id = test[i]
        assert x.shape == (3, 16, 16)
        assert sample_id.split("/")[0] == test.class_names[y]
        expected = torch.tensor(_COLOURS[test.class_names[y]], dtype=torch.float32) / 255
        assert torch.equal(x[:, 5, 5], expected)
    gray = load_dataset("image-folder", split="test", root=tmp_path, size=16, channels=1)
    assert gray.image(0).shape == (1, 16, 16)
    assert gray.ids == test.ids


def test_image_folder_presplit_layout_and_errors(tmp_path):
    for s, n in (("train", 4), ("val", 2), ("test", 3)):
        _make_folder(tmp_path / "data" / s, per_class=n)
    ds = load_dataset("image-folder", split="val", root=tmp_path / "data", size=8)
    assert len(ds) == 6 and ds.ids[0] == "benign/img00"
    assert len(load_dataset("image-folder", split="test", root=tmp_path / "data", size=8)) == 9
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset("image-folder", root=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="channels=2"):
        load_dataset("image-folder", root=tmp_path / "data", channels=2)
    with pytest.raises(ValueError, match="'normal' is not one of classes"):
        load_dataset("image-folder", root=tmp_path / "data", classes=["benign", "malignant"])
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        load_dataset("image-folder", root=tmp_path / "empty")
