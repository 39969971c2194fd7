"""Segmentation data: SegmentationDataset, the ``nifti`` builder on generated volume pairs, ``mni152-tissue``."""

from __future__ import annotations

import json
import socket

import nibabel as nib
import numpy as np
import pytest
import torch

from medrobust.data import SPLITS, iterate_batches, load_dataset
from medrobust.data import mni152
from medrobust.data.segmentation import SegmentationDataset

# Voxel axis 0 -> world +y (anterior), axis 1 -> +z (superior), axis 2 -> -x (left); 2 / 1.2 / 1.5 mm voxels.
AFFINE = np.array([[0.0, 0.0, -1.5, 90.0], [2.0, 0.0, 0.0, -100.0], [0.0, 1.2, 0.0, 50.0], [0.0, 0.0, 0.0, 1.0]])
SHAPE = (6, 7, 8)
# FreeSurfer-like codes -> background / csf / gm / wm.
ASEG_MAP = {0: 0, 4: 1, 24: 1, 3: 2, 42: 2, 2: 3, 41: 3}
TISSUES = ["background", "csf", "gm", "wm"]


def to_ras(a: np.ndarray) -> np.ndarray:
    """By hand for AFFINE: RAS axis 0 (x) is voxel axis 2 flipped, RAS 1 (y) is voxel axis 0, RAS 2 (z) is axis 1."""
    return np.flip(a, 2).transpose(2, 0, 1)


def ramp() -> np.ndarray:
    """Values 0..335, shuffled deterministically so the orientation matters."""
    return np.random.default_rng(0).permutation(np.prod(SHAPE)).reshape(SHAPE).astype(np.float32)


def codes() -> np.ndarray:
    """Aseg-like codes: every code in ASEG_MAP, in blocks, foreground everywhere except voxel-axis-0 index 0."""
    c = np.zeros(SHAPE, dtype=np.int16)
    keys = [4, 24, 3, 42, 2, 41]
    for i in range(1, SHAPE[0]):
        c[i] = keys[(i - 1) % len(keys)]
    c[1:, :, :2] = 0
    return c


def save(path, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture()
def folder_pair(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    save(images / "sub01.nii.gz", ramp())
    save(labels / "sub01.nii.gz", codes())
    return images, labels


def build(images, labels, **kw):
    kw = {"label_map": ASEG_MAP, "class_names": TISSUES, "split_fractions": (0, 0, 1), **kw}
    return load_dataset("nifti", split="test", images_dir=images, labels_dir=labels, **kw)


# ------------------------------------------------------------------------------------------------ nifti: loading
def test_3d_whole_volume_is_reoriented_normalised_and_mapped(folder_pair):
    ds = build(*folder_pair, mode="3d", percentiles=(10, 90))
    assert ds.task == "segmentation" and ds.ids == ["sub01"] and len(ds) == 1
    x, y, _ = ds[0]
    assert x.shape == (1, 8, 6, 7) and x.dtype == torch.float32 and y.shape == (8, 6, 7) and y.dtype == torch.long
    # Percentiles of 0..335: p10 = 33.5, p90 = 301.5, so v -> clip((v - 33.5) / 268, 0, 1).
    expected = np.clip((to_ras(ramp()) - 33.5) / 268.0, 0, 1)
    np.testing.assert_allclose(x[0].numpy(), expected, atol=1e-6)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert int((x == 0).sum()) == 34 and int((x == 1).sum()) == 34  # 0..33 and 302..335
    mapped = np.vectorize(ASEG_MAP.get)(to_ras(codes()))
    assert torch.equal(y, torch.from_numpy(mapped).long())
    assert sorted(torch.unique(y).tolist()) == [0, 1, 2, 3]


def test_2d_axial_slices_follow_the_affine(folder_pair):
    ds = build(*folder_pair, mode="2d", axis="axial", min_foreground=0.0)
    # Axial = RAS axis 2 = voxel axis 1 (7 slices of 8 x 6); slice k pixel (a, b) is voxel (b, k, 7 - a).
    assert len(ds) == 7 and ds.ids[0] == "sub01-axial-000" and ds.input_shape == (1, 8, 6)
    x, y, sample_id = ds[3]
    assert sample_id == "sub01-axial-003"
    raw = (ramp() - np.percentile(ramp(), 0.5)) / (np.percentile(ramp(), 99.5) - np.percentile(ramp(), 0.5))
    np.testing.assert_allclose(x[0].numpy(), np.clip(raw[:, 3, ::-1].T, 0, 1), atol=1e-6)
    assert torch.equal(y, torch.from_numpy(np.vectorize(ASEG_MAP.get)(codes()[:, 3, ::-1].T)).long())
    # Sagittal = RAS axis 0 = voxel axis 2 flipped: 8 slices of 6 x 7.
    sag = build(*folder_pair, mode="2d", axis="sagittal", min_foreground=0.0)
    assert len(sag) == 8 and sag.input_shape == (1, 6, 7)
    batch = next(iterate_batches(sag, 3))
    assert batch.x.shape == (3, 1, 6, 7) and batch.y.shape == (3, 6, 7) and batch.y.dtype == torch.long


def test_slice_skipping_counts_on_a_hand_made_volume(tmp_path):
    image = np.ones((4, 5, 10), np.float32)
    image[0, 0, 0] = 2.0
    labels = np.zeros((4, 5, 10), np.uint8)
    for k in range(10):  # axial slice k (identity affine: voxel axis 2) has k of its 20 pixels foreground
        labels.reshape(20, 10)[:k, k] = 1
    save(tmp_path / "a_T1.nii.gz", image, np.eye(4))
    save(tmp_path / "a_seg.nii.gz", labels, np.eye(4))
    common = {"root": tmp_path, "class_names": ["bg", "fg"], "split_fractions": (0, 0, 1)}
    kept = load_dataset("nifti", min_foreground=0.25, **common)
    assert kept.ids == [f"a-axial-{k:03d}" for k in range(5, 10)]  # fractions 5/20 .. 9/20
    assert [int(kept[i][1].sum()) for i in range(len(kept))] == [5, 6, 7, 8, 9]
    assert len(load_dataset("nifti", min_foreground=0.0, **common)) == 10
    assert len(load_dataset("nifti", min_foreground=0.05, **common)) == 9
    # 3D patches of 4 x 5 x 2 along z: starts 0, 2, 4, 6, 8; foreground (2k + 1) / 40 for the pair (2k, 2k+1).
    patches = load_dataset("nifti", mode="3d", patch_size=(4, 5, 2), min_foreground=0.2, **common)
    assert patches.ids == ["a-patch-0-0-4", "a-patch-0-0-6", "a-patch-0-0-8"] and patches.input_shape == (1, 4, 5, 2)
    odd = load_dataset("nifti", mode="3d", patch_size=(4, 5, 4), stride=(1, 1, 4), min_foreground=0.0, **common)
    assert [i.rsplit("-", 1)[1] for i in odd.ids] == ["0", "4", "6"]  # the last patch sits flush with the edge


def test_label_map_from_dict_and_files_agree(folder_pair, tmp_path):
    reference = build(*folder_pair, mode="3d").masks
    (tmp_path / "map.json").write_text(json.dumps({str(k): v for k, v in ASEG_MAP.items()}))
    by_name = "".join(f"  {k}: {TISSUES[v]}\n" for k, v in ASEG_MAP.items())
    (tmp_path / "map.yaml").write_text("class_names: [background, csf, gm, wm]\nmap:\n" + by_name)
    (tmp_path / "map.csv").write_text("source,target\n" + "".join(f"{k},{v}\n" for k, v in ASEG_MAP.items()))
    for name, class_names in (("map.json", TISSUES), ("map.yaml", None), ("map.csv", TISSUES)):
        ds = build(*folder_pair, mode="3d", label_map=tmp_path / name, class_names=class_names)
        assert torch.equal(ds.masks, reference), name
        assert ds.class_names == tuple(TISSUES)
    by_name = build(*folder_pair, mode="3d", label_map={k: TISSUES[v] for k, v in ASEG_MAP.items()})
    assert torch.equal(by_name.masks, reference)


def test_pairing_by_csv_and_volume_splits(tmp_path):
    rows = ["image,label,split"]
    for k in range(5):
        save(tmp_path / f"s{k}_T1.nii.gz", ramp() + k)
        save(tmp_path / f"s{k}_seg.nii.gz", codes())
        rows.append(f"s{k}_T1.nii.gz,s{k}_seg.nii.gz,{['train', 'train', 'train', 'val', 'test'][k]}")
    common = {"label_map": ASEG_MAP, "class_names": TISSUES, "mode": "3d", "root": tmp_path}
    volumes = [load_dataset("nifti", split=s, split_fractions=(0.6, 0.2, 0.2), **common).info["volumes"] for s in SPLITS]
    assert [len(v) for v in volumes] == [3, 1, 1]
    assert sorted(sum(volumes, [])) == [f"s{k}" for k in range(5)]
    again = load_dataset("nifti", split="train", split_fractions=(0.6, 0.2, 0.2), **common)
    assert again.info["volumes"] == volumes[0]  # the seeded shuffle is deterministic
    explicit = load_dataset("nifti", split="val", splits={"train": ["s0"], "val": ["s3", "s1"]}, **common)
    assert explicit.info["volumes"] == ["s1", "s3"]
    with pytest.raises(ValueError, match="'s1' is listed in both splits 'train' and 'val'"):
        load_dataset("nifti", splits={"train": ["s1"], "val": ["s1"]}, **common)
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    common["csv"] = tmp_path / "list.csv"
    del common["root"]
    listed = {s: load_dataset("nifti", split=s, **common).ids for s in SPLITS}
    assert listed == {"train": ["s0_T1", "s1_T1", "s2_T1"], "val": ["s3_T1"], "test": ["s4_T1"]}


# ------------------------------------------------------------------------------------------------ nifti: errors
def test_shape_and_affine_mismatch_name_both_files(folder_pair):
    images, labels = folder_pair
    save(labels / "sub01.nii.gz", codes()[:, :, :7])
    with pytest.raises(ValueError, match="shape mismatch") as err:
        build(images, labels)
    assert "images/sub01.nii.gz" in str(err.value) and "labels/sub01.nii.gz" in str(err.value)
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.5
    save(labels / "sub01.nii.gz", codes(), shifted)
    with pytest.raises(ValueError, match="affine mismatch.*differ by up to 0.5") as err:
        build(images, labels)
    assert "images/sub01.nii.gz" in str(err.value) and "labels/sub01.nii.gz" in str(err.value)
    tiny = AFFINE.copy()
    tiny[0, 3] += 1e-5  # within affine_atol: accepted
    save(labels / "sub01.nii.gz", codes(), tiny)
    assert len(build(images, labels, mode="3d")) == 1


def test_nan_empty_and_unmapped_volumes_are_refused(folder_pair):
    images, labels = folder_pair
    bad = ramp()
    bad[1, 2, 3] = np.nan
    save(images / "sub01.nii.gz", bad)
    with pytest.raises(ValueError, match=r"sub01.nii.gz has 1 NaN"):
        build(images, labels)
    save(images / "sub01.nii.gz", np.zeros(SHAPE, np.float32))
    with pytest.raises(ValueError, match=r"sub01.nii.gz is empty \(all 336 voxels are 0\)"):
        build(images, labels)
    save(images / "sub01.nii.gz", ramp())
    odd = codes()
    odd[0, 0, 0], odd[0, 0, 1] = 99, 7
    save(labels / "sub01.nii.gz", odd)
    with pytest.raises(ValueError, match=r"labels/sub01.nii.gz has codes \[7, 99\] that the label map does not list"):
        build(images, labels)
    with pytest.raises(ValueError, match=r"codes \[4, 7, 24, 42, 99\] outside the 4 classes"):
        build(images, labels, label_map=None)


def test_missing_files_and_bad_parameters_are_clear(folder_pair, tmp_path):
    images, labels = folder_pair
    save(images / "sub02.nii.gz", ramp())
    with pytest.raises(FileNotFoundError, match="labels/sub02.nii.gz"):
        build(images, labels)
    (tmp_path / "list.csv").write_text("image,label\nnope.nii.gz,labels/sub01.nii.gz\n")
    with pytest.raises(FileNotFoundError, match="nope.nii.gz does not exist"):
        load_dataset("nifti", csv=tmp_path / "list.csv", class_names=TISSUES)
    with pytest.raises(ValueError, match="exactly one pairing source"):
        load_dataset("nifti", class_names=TISSUES)
    with pytest.raises(ValueError, match="class_names"):
        load_dataset("nifti", images_dir=images, labels_dir=labels)
    with pytest.raises(ValueError, match="axis='transverse'.*sagittal, coronal, axial"):
        build(images, labels, axis="transverse")
    with pytest.raises(ValueError, match="maps to class 3 but class_names has only 2"):
        build(images, labels, class_names=["bg", "fg"])


def test_segmentation_dataset_checks_masks():
    x = torch.rand(2, 1, 4, 4)
    masks = torch.zeros(2, 4, 4, dtype=torch.uint8)
    masks[1, 0, 0] = 3
    with pytest.raises(ValueError, match=r"'b' has mask values 0..3, outside the 3 classes"):
        SegmentationDataset(x, masks, ["a", "b"], ["bg", "x", "y"], "test")
    ds = SegmentationDataset(x, masks, ["a", "b"], ["bg", "x", "y", "z"], "test")
    assert ds.describe()["class_counts"] == [31, 0, 0, 1]
    with pytest.raises(AttributeError, match="per-pixel masks"):
        ds.labels  # noqa: B018


# ------------------------------------------------------------------------------------------------ mni152-tissue
@pytest.fixture(scope="module")
def mni():
    return {s: load_dataset("mni152-tissue", split=s) for s in ("train", "val", "test")}


def test_mni152_template_loads_offline_and_is_deterministic(monkeypatch):
    cached = mni152.tissue_template(2)

    def no_network(*args, **kwargs):
        raise AssertionError("mni152-tissue tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    t1, labels = mni152.tissue_template.__wrapped__(2)  # rebuilt from nilearn's package files
    assert np.array_equal(t1, cached[0]) and np.array_equal(labels, cached[1])
    assert labels.shape == (99, 117, 95) and t1.min() >= 0 and t1.max() <= 1
    brain = labels > 0
    fractions = [float((labels == k).sum() / brain.sum()) for k in (1, 2, 3)]
    assert 0.02 < fractions[0] < 0.2  # CSF: about 8%
    assert 0.05 < fractions[1] < 0.6 and 0.05 < fractions[2] < 0.6  # GM about 58%, WM about 34%
    assert brain.sum() == (t1 > 0.2).sum()


def test_mni152_splits_are_disjoint_slabs_with_all_classes(mni):
    index = {s: set(ds.info["slice_index"]) for s, ds in mni.items()}
    assert not (index["train"] & index["val"] or index["train"] & index["test"] or index["val"] & index["test"])
    assert [len(mni[s]) for s in ("train", "val", "test")] == [38, 15, 15]
    for s, ds in mni.items():
        assert min(ds.info["slice_index"]) < 35 and max(ds.info["slice_index"]) > 55, s  # each split spans the brain
        assert ds.ids[0] == f"mni152-axial-{ds.info['slice_index'][0]:03d}"
    test = mni["test"]
    assert test.input_shape == (1, 80, 96) and test.class_names == ("background", "csf", "gm", "wm")
    assert sorted(torch.unique(test.masks).tolist()) == [0, 1, 2, 3]
    x = test.images
    assert x.dtype == torch.float32 and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    # Brain intensities order as on T1: CSF < GM < WM.
    means = [float(x[:, 0][test.masks == k].mean()) for k in (1, 2, 3)]
    assert means[0] < means[1] < means[2]
    again = load_dataset("mni152-tissue", split="test")
    assert torch.equal(again.images, test.images) and torch.equal(again.masks, test.masks)


def test_mni152_variants_shift_intensities_but_not_masks(mni):
    clean = mni["test"]

    def shift(variant: str, severity: float = 1.0, seed: int = 0) -> float:
        shifted = load_dataset("mni152-tissue", split="test", variant=variant, severity=severity, seed=seed)
        assert torch.equal(shifted.masks, clean.masks) and shifted.ids == clean.ids
        assert float(shifted.images.min()) >= 0.0 and float(shifted.images.max()) <= 1.0
        return float((shifted.images - clean.images).abs().mean())

    for variant in ("bias_field", "noise", "contrast"):
        assert shift(variant) > 0.01, variant
        rebuilt, _, _ = mni152._volume.__wrapped__(2, variant, 1.0, 0, True, 16, 2)  # bypass the cache
        assert np.array_equal(rebuilt, mni152._volume(2, variant, 1.0, 0, True, 16, 2)[0])
    assert shift("noise", 2.0) > 1.5 * shift("noise", 1.0) and shift("bias_field", 2.0) > shift("bias_field", 1.0)
    reseeded = load_dataset("mni152-tissue", split="test", variant="noise", seed=1)
    assert not torch.equal(reseeded.images, load_dataset("mni152-tissue", split="test", variant="noise").images)
    with pytest.raises(ValueError, match="variant='fog'.*clean, bias_field, noise, contrast"):
        load_dataset("mni152-tissue", variant="fog")


def test_mni152_3d_is_the_whole_template():
    vol = load_dataset("mni152-tissue", mode="3d")
    assert len(vol) == 1 and vol.ids == ["mni152-volume"]
    x, y, _ = vol[0]
    assert x.shape == (1, 99, 117, 95) and y.shape == (99, 117, 95)
    assert torch.equal(y, torch.from_numpy(mni152.tissue_template(2)[1].astype(np.int64)))
    with pytest.raises(ValueError, match="split 'test' only"):
        load_dataset("mni152-tissue", mode="3d", split="train")
    cropped = load_dataset("mni152-tissue", mode="3d", crop=True)
    assert all(s % 16 == 0 for s in cropped.input_shape[1:])
    assert cropped.class_counts()[1:] == vol.class_counts()[1:]  # cropping keeps every brain voxel


def test_slices_of_a_volume_share_its_group(tmp_path):
    """2D slices and 3D patches carry their volume as the independent unit; the MNI template is one subject."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    for name in ("sub01", "sub02"):
        save(images / f"{name}.nii.gz", ramp())
        save(labels / f"{name}.nii.gz", codes())
    ds = build(images, labels, mode="2d", axis="axial", split_fractions=None,
               splits={"test": ["sub01", "sub02"]})
    assert ds.group_unit == "volume" and ds.groups == [i.split("-")[0] for i in ds.ids]
    assert set(ds.groups) == {"sub01", "sub02"} and len(ds.ids) > 2
    batch = next(iterate_batches(ds, 4))
    assert batch.groups == ds.groups[:4]
    assert set(load_dataset("mni152-tissue", split="test").groups) == {"mni152"}
