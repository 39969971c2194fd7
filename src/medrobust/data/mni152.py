"""``mni152-tissue``: a built-in brain-tissue segmentation set cut from the MNI152 2009 template (no download).

nilearn ships the skull-stripped ICBM152 2009 T1 template and its grey- and white-matter probability maps inside
its wheel (``nilearn.datasets.load_mni152_template`` / ``load_mni152_gm_template`` / ``load_mni152_wm_template``,
read from package files, never from the network); ``resolution=2`` resamples them to 2 mm, (99, 117, 95) voxels.

Labels, 4 classes: a voxel is brain where the T1 template exceeds 0.2 (the rule of nilearn's
``load_mni152_brain_mask``). Inside the brain its class is the argmax of (P_csf, P_gm, P_wm) with
P_csf = max(0, 1 - P_gm - P_wm), i.e. "brain minus GM minus WM" (ties go to CSF); outside it is background.
0 background, 1 csf, 2 gm, 3 wm. Because the mask thresholds a T1 image, dark sulcal CSF is partly background; CSF
here is mostly the ventricles and the partial-volume rim. At 2 mm the brain is about 8% CSF, 58% GM, 34% WM.

Splits (2D): slices along ``axis`` go in blocks of ``block`` consecutive template slices; block b belongs to
(train, train, train, val, test)[b % 5], so every split has slabs spread over the whole brain; slices where the
brain covers less than ``min_brain`` of the slice are skipped. At 2 mm, axial, block 5: 38 / 15 / 15 slices of
80 x 96 (cropped, see ``crop``). 3D: the whole volume, split
"test" only, for sliding-window inference and attacks.

This is a single template brain: train, val and test slices all come from one (averaged) subject, and
neighbouring slabs are only a few millimetres apart. It exercises the pipeline and compares models' relative
robustness; it does not measure generalization across subjects or scanners. The ``variant`` parameter offers
deterministic domain shifts (MONAI transforms on the whole [0, 1] volume the samples are cut from, then clipped
to [0, 1]; masks are unchanged; applied to whichever split is asked for, meant for "test") to probe
generalizability a little further:

- ``bias_field``: ``RandBiasField(degree=3, coeff_range=(-0.2 s, 0.2 s))``, a smooth multiplicative field (about
  +-15 % at s = 1);
- ``noise``: ``RandGaussianNoise(std=0.05 s)`` on every voxel;
- ``contrast``: ``AdjustContrast(gamma=1 / (1 + 0.5 s))``, which brightens and compresses the GM/WM contrast;

with s = ``severity`` and the random draws seeded by ``seed``.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from medrobust.data.base import DATASETS, bool_param, check_split, float_param, int_param, seed_param
from medrobust.data.segmentation import SegmentationDataset, check_mode_axis

logger = logging.getLogger(__name__)

CLASS_NAMES = ("background", "csf", "gm", "wm")
VARIANTS = ("clean", "bias_field", "noise", "contrast")
BRAIN_THRESHOLD = 0.2  # as nilearn.datasets.load_mni152_brain_mask
SPLIT_PATTERN = ("train", "train", "train", "val", "test")
#: the largest ``multiple`` to pad the cropped brain to (more would only add background around the template)
MAX_MULTIPLE = 256


class MNI152TissueDataset(SegmentationDataset):
    orientation = "RAS"  # volumes are in canonical RAS+ orientation
    name = "mni152-tissue"
    group_unit = "subject"
    slice_index: list[int]
    resolution: int
    axis: str
    mode: str
    variant: str
    severity: float
    seed: int
    variant_params: dict[str, Any]


@DATASETS.register("mni152-tissue")
def build_mni152_tissue(
    split: str = "test",
    mode: str = "2d",
    axis: str = "axial",
    resolution: int = 2,
    variant: str = "clean",
    severity: float = 1.0,
    seed: int = 0,
    min_brain: float = 0.05,
    block: int = 5,
    crop: bool | None = None,
    multiple: int = 16,
) -> MNI152TissueDataset:
    """One split of MNI152 tissue slices (2D, x (1, H, W)) or the whole volume (3D, x (1, X, Y, Z), split "test").

    resolution: 2 (mm, default) or 1. axis: axial | coronal | sagittal. variant/severity/seed: see the module
    docstring. min_brain: least fraction of a template slice inside the brain for the slice to be kept. block:
    slices per slab. crop (default True in 2D, False in 3D): crop to the brain's bounding box (in-plane in 2D, all
    axes in 3D) padded with background to a multiple of ``multiple`` voxels, so UNets with several poolings fit;
    without it 3D keeps the template's exact grid. Ids: "mni152-<axis>-<index:03d>" (template slice index) or
    "mni152-volume". Built arrays are cached in-process.
    """
    check_split(split)
    mode, axis_index = check_mode_axis(mode, axis)
    where = "mni152-tissue"
    if isinstance(resolution, bool) or resolution not in (1, 2):
        raise ValueError(f"resolution={resolution!r} is not valid; expected 1 or 2 (mm)")
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not valid; expected one of {', '.join(VARIANTS)}")
    severity = float_param(severity, "severity", where, low=0.0, above=variant != "clean")
    min_brain = float_param(min_brain, "min_brain", where, low=0.0, high=1.0)
    block = int_param(block, "block", where, low=1)
    multiple = int_param(multiple, "multiple", where, low=1, high=MAX_MULTIPLE)
    seed = seed_param(seed, where)
    if crop is not None:
        crop = bool_param(crop, "crop", where)
    if mode == "3d" and split != "test":
        raise ValueError(
            f"mni152-tissue in mode '3d' is one volume, offered as split 'test' only (got split={split!r})"
        )
    crop = (mode == "2d") if crop is None else bool(crop)
    keep_axis = axis_index if mode == "2d" else None
    image, labels, params = _volume(resolution, variant, float(severity), int(seed), crop, multiple, keep_axis)
    ids: list[str]
    if mode == "3d":
        images = torch.from_numpy(image.copy())[None, None]
        masks = torch.from_numpy(labels.copy())[None]
        ids, index = ["mni152-volume"], []
    else:
        index = slice_indices(resolution, axis, split, min_brain, block)
        images = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, axis_index, 0)[index]))[:, None]
        masks = torch.from_numpy(np.ascontiguousarray(np.moveaxis(labels, axis_index, 0)[index]))
        ids = [f"mni152-{axis}-{i:03d}" for i in index]
    ds = MNI152TissueDataset(images, masks, ids, CLASS_NAMES, split)
    ds.groups = ["mni152"] * len(ids)  # every slice comes from the one template brain: one independent unit
    ds.info.update(
        slice_index=index,
        resolution=resolution,
        spacing=[float(resolution)] * 3,
        axis=axis,
        mode=mode,
        variant=variant,
        severity=float(severity),
        seed=int(seed),
        variant_params=params,
    )
    return ds


def slice_indices(resolution: int, axis: str, split: str, min_brain: float = 0.05, block: int = 5) -> list[int]:
    """Template slice indices along ``axis`` that belong to ``split`` (see the module docstring for the rule)."""
    _, axis_index = check_mode_axis("2d", axis)
    _, labels = tissue_template(resolution)
    other = tuple(a for a in range(3) if a != axis_index)
    brain = (labels > 0).mean(axis=other)
    return [
        i for i in range(labels.shape[axis_index])
        if SPLIT_PATTERN[(i // block) % len(SPLIT_PATTERN)] == split and brain[i] >= min_brain
    ]  # fmt: skip


@lru_cache(maxsize=2)
def tissue_template(resolution: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The MNI152 2009 T1 template clipped to [0, 1] (float32 (X, Y, Z), RAS) and its 4-class tissue labels
    (uint8, same shape). Read-only arrays."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nilearn's resampling emits FutureWarnings about its own defaults
        from nilearn import datasets

        t1, gm, wm = (
            np.asarray(load(resolution=resolution).get_fdata(), dtype=np.float32)
            for load in (
                datasets.load_mni152_template,
                datasets.load_mni152_gm_template,
                datasets.load_mni152_wm_template,
            )
        )
    t1 = np.clip(t1, 0.0, 1.0)
    gm, wm = np.clip(gm, 0.0, 1.0), np.clip(wm, 0.0, 1.0)
    probs = np.stack([np.clip(1.0 - gm - wm, 0.0, 1.0), gm, wm])
    labels = np.where(t1 > BRAIN_THRESHOLD, probs.argmax(0) + 1, 0).astype(np.uint8)
    for a in (t1, labels):
        a.setflags(write=False)
    return t1, labels


@lru_cache(maxsize=16)
def _volume(
    resolution: int, variant: str, severity: float, seed: int, crop: bool, multiple: int, keep_axis: int | None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The (cropped) image with ``variant`` applied, its labels, and the variant's drawn parameters."""
    image, labels = tissue_template(resolution)
    if crop:
        box = _crop_box(labels, multiple, keep_axis)
        image, labels = _crop(image, box), _crop(labels, box)
    image, params = apply_variant(image, variant, severity, seed)
    for a in (image, labels):
        a.setflags(write=False)
    return image, labels, params


def apply_variant(image: np.ndarray, variant: str, severity: float, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """``image`` (X, Y, Z) in [0, 1] with the domain shift ``variant`` applied deterministically, clipped to [0, 1]."""
    from monai.transforms import AdjustContrast, RandBiasField, RandGaussianNoise

    if variant == "clean":
        return np.array(image, dtype=np.float32), {}
    x = torch.from_numpy(np.array(image, dtype=np.float32))[None]
    if variant == "bias_field":
        bias = RandBiasField(degree=3, coeff_range=(-0.2 * severity, 0.2 * severity), prob=1.0)
        bias.set_random_state(seed)
        out = bias(x)
        params: dict[str, Any] = {"degree": 3, "coeffs": [round(float(c), 6) for c in bias._coeff]}
    elif variant == "noise":
        noise = RandGaussianNoise(prob=1.0, mean=0.0, std=0.05 * severity, sample_std=False)
        noise.set_random_state(seed)
        out = noise(x)
        params = {"std": 0.05 * severity}
    else:
        gamma = 1.0 / (1.0 + 0.5 * severity)
        out = AdjustContrast(gamma=gamma)(x)
        params = {"gamma": gamma}
    result = np.clip(np.asarray(torch.as_tensor(out).float())[0], 0.0, 1.0).astype(np.float32)
    return result, params


def _crop_box(labels: np.ndarray, multiple: int, keep_axis: int | None) -> list[tuple[int, int]]:
    """Per axis (start, stop) around the brain, length rounded up to ``multiple``; may reach outside the array."""
    box = []
    for a in range(3):
        if a == keep_axis:
            box.append((0, labels.shape[a]))
            continue
        other = tuple(b for b in range(3) if b != a)
        present = np.nonzero((labels > 0).any(axis=other))[0]
        lo, hi = int(present[0]), int(present[-1]) + 1
        size = math.ceil((hi - lo) / multiple) * multiple
        start = lo - (size - (hi - lo)) // 2
        box.append((start, start + size))
    return box


def _crop(array: np.ndarray, box: list[tuple[int, int]]) -> np.ndarray:
    """``array[box]`` where indices outside the array read as 0 (background)."""
    pad = [(max(0, -lo), max(0, hi - n)) for (lo, hi), n in zip(box, array.shape)]
    padded = np.pad(array, pad)
    return np.ascontiguousarray(padded[tuple(slice(lo + p, hi + p) for (lo, hi), (p, _) in zip(box, pad))])
