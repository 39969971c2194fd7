"""``nifti``: image/label volume pairs in NIfTI files (read with nibabel), as 2D slices, 3D patches or whole volumes.

Pairing (exactly one):
- ``csv``: a CSV file with columns ``image`` and ``label`` (paths, relative ones to the CSV's folder), optional
  ``id`` and ``split`` (train/val/test) columns;
- ``images_dir`` + ``labels_dir``: the same file name in both folders;
- ``root`` + ``image_suffix`` / ``label_suffix``: ``<name><image_suffix>`` beside ``<name><label_suffix>`` anywhere
  under ``root`` (default ``*_T1.nii.gz`` <-> ``*_seg.nii.gz``).

Each pair must share its shape and affine (np.allclose with ``affine_atol``); both are then reoriented to the
closest canonical RAS+ orientation, so ``axis="axial"`` really means axial. Intensities are clipped per volume to
their (0.5, 99.5) percentiles over all voxels and rescaled to [0, 1]. Label codes go through ``label_map`` (a dict
or a JSON/YAML/CSV file, e.g. FreeSurfer aseg codes -> background/CSF/GM/WM); every code present must be mapped.
Volumes (never slices) are split into train/val/test: by explicit lists, by the CSV's split column, or by seeded
fractions. Volume ids are the file names without the suffix (or the CSV's id column).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import yaml

from medrobust.data.base import (
    DATASETS,
    SPLITS,
    check_split,
    env_limit,
    float_param,
    int_param,
    max_bytes,
    names_param,
    numbers_param,
    path_param,
    read_csv_rows,
    seed_param,
    text_param,
)
from medrobust.data.segmentation import (
    SegmentationDataset,
    apply_label_map,
    check_mode_axis,
    iter_patches,
    iter_slices,
    mask_dtype,
    percentile_normalise,
    stack_or_list,
    triple,
)

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage

logger = logging.getLogger(__name__)

NIFTI_EXTENSIONS = (".nii.gz", ".nii")


class NiftiDataset(SegmentationDataset):
    orientation = "RAS"  # volumes are in canonical RAS+ orientation
    name = "nifti"
    group_unit = "volume"
    volumes: list[str]
    sources: dict[str, tuple[str, str]]
    mode: str
    axis: str


@DATASETS.register("nifti")
def build_nifti(
    split: str = "test",
    csv: str | Path | None = None,
    images_dir: str | Path | None = None,
    labels_dir: str | Path | None = None,
    root: str | Path | None = None,
    image_suffix: str = "_T1.nii.gz",
    label_suffix: str = "_seg.nii.gz",
    mode: str = "2d",
    axis: str = "axial",
    min_foreground: float = 0.01,
    patch_size: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    percentiles: Sequence[float] | None = (0.5, 99.5),
    label_map: Mapping[Any, Any] | str | Path | None = None,
    class_names: Sequence[str] | None = None,
    split_fractions: Sequence[float] | None = (0.7, 0.15, 0.15),
    seed: int = 0,
    splits: Mapping[str, Sequence[str]] | str | Path | None = None,
    affine_atol: float = 1e-3,
    spacing: float | Sequence[float] | None = None,
    pad_to_multiple: int | None = None,
) -> NiftiDataset:
    """One split of NIfTI image/label pairs as a segmentation dataset, x float32 in [0, 1].

    mode "2d": slices along ``axis`` (axial | coronal | sagittal), x (1, H, W), keeping slices whose foreground
    (mapped label > 0) covers at least ``min_foreground`` of the slice; ids "<volume>-<axis>-<index:03d>".
    mode "3d": whole volumes x (1, X, Y, Z) in RAS order (ids "<volume>"), or with ``patch_size`` patches every
    ``stride`` voxels (default: non-overlapping, plus one flush with each far edge) that pass ``min_foreground``
    (ids "<volume>-patch-<x>-<y>-<z>").
    percentiles: (low, high) clip per volume before rescaling to [0, 1]; None means min-max.
    label_map / class_names: see :func:`load_label_map`; without a label_map the codes must already be
    0..len(class_names)-1. split_fractions + seed: a seeded shuffle of the sorted volume ids cut at the cumulative
    fractions (use (0, 0, 1) for an evaluation-only set; with fewer than 3 volumes the first is the test set and
    a second one, if any, trains); splits: {"train": [ids], ...} or a JSON/YAML file of it,
    taking precedence over a CSV split column, which takes precedence over the fractions.
    spacing: resample every volume to this voxel size in mm (one number or three, RAS order; images trilinear,
    labels nearest; MONAI ``Resize``) before slicing, so a model sees the voxel size it was trained on; None
    keeps each volume's own. pad_to_multiple: zero-pad each sample's spatial sides up to a multiple of this
    (MONAI ``DivisiblePad``), for networks that halve the size several times (UNet strides). The voxel size of
    the data (``info["spacing"]``) and the orientation (RAS) are recorded with the dataset.
    """
    check_split(split)
    mode, axis_index = check_mode_axis(mode, axis)
    min_foreground = float_param(min_foreground, "min_foreground", "nifti", low=0.0, high=1.0)
    if percentiles is not None:
        percentiles = numbers_param(percentiles, "percentiles", 2, "nifti", "low, high, in 0..100")
    seed = seed_param(seed, "nifti")
    affine_atol = float_param(affine_atol, "affine_atol", "nifti", low=0.0)
    if class_names is not None:
        class_names = names_param(class_names, "class_names", "nifti")
    if label_map is not None and not isinstance(label_map, (Mapping, str, os.PathLike)):
        raise ValueError(f"nifti: label_map={label_map!r} must be a mapping of codes to classes, or a file path")
    if splits is not None and not isinstance(splits, (Mapping, str, os.PathLike)):
        raise ValueError(f"nifti: splits={splits!r} must be a mapping {{train: [ids], ...}}, or a file path")
    if patch_size is not None or stride is not None:
        if mode != "3d":
            raise ValueError(
                f"nifti: patch_size={patch_size!r} and stride={stride!r} apply to mode '3d' only (mode is {mode!r})"
            )
        if patch_size is None:
            raise ValueError(f"nifti: stride={stride!r} needs patch_size=...")
    if patch_size is not None:
        patch = triple(patch_size, "patch_size")
        step = patch if stride is None else triple(stride, "stride")
    target = None if spacing is None else triple_float(spacing, "spacing")
    if pad_to_multiple is not None:
        pad_to_multiple = int_param(pad_to_multiple, "pad_to_multiple", "nifti", low=1, high=MAX_PAD_MULTIPLE)
    mapping, names = load_label_map(label_map, class_names)
    pairs, csv_splits = _pairs(csv, images_dir, labels_dir, root, image_suffix, label_suffix)
    chosen = _split_volumes(sorted(pairs), split, splits, csv_splits, split_fractions, seed)
    if not chosen:
        raise ValueError(
            f"nifti: no volume falls in split {split!r} ({len(pairs)} volumes in all); adjust split_fractions or splits"
        )
    images: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    ids: list[str] = []
    groups: list[str] = []
    dtype = mask_dtype(len(names))
    held, limit = 0, max_bytes()
    spacings: dict[str, tuple[float, float, float]] = {}
    for vid in chosen:
        image_path, label_path = pairs[vid]
        volume, codes = read_pair(image_path, label_path, affine_atol)
        voxels = voxel_sizes(image_path)
        if target is not None and not np.allclose(voxels, target, rtol=1e-3):
            check_voxels(
                resampled_shape(volume.shape, voxels, target), f"spacing={spacing!r} resamples {image_path} to"
            )
            volume, codes = resample(volume, codes, voxels, target)
        if pad_to_multiple is not None:
            padded = tuple(-(-n // pad_to_multiple) * pad_to_multiple for n in volume.shape)
            check_voxels(padded, f"pad_to_multiple={pad_to_multiple} pads {image_path} to")
        spacings[vid] = target or voxels
        volume = percentile_normalise(volume, percentiles, str(image_path))
        mask = apply_label_map(codes, mapping, len(names), str(label_path))
        samples: Iterator[tuple[str, np.ndarray, np.ndarray]]
        if mode == "2d":
            slices = iter_slices(volume, mask, axis_index, min_foreground)
            samples = ((f"{vid}-{axis}-{i:03d}", v, m) for i, v, m in slices)
        elif patch_size is None:
            samples = iter([(vid, volume, mask)])
        else:
            if any(p > n for p, n in zip(patch, volume.shape)):
                raise ValueError(
                    f"nifti: patch_size={list(patch)} does not fit volume {vid!r} of shape {list(volume.shape)} "
                    "(RAS order); use a smaller patch_size"
                )
            patches = iter_patches(volume, mask, patch, step, min_foreground)
            samples = ((f"{vid}-patch-{a}-{b}-{c}", v, m) for (a, b, c), v, m in patches)
        for sample_id, v, m in samples:
            x_t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))[None]
            y_t = torch.from_numpy(np.ascontiguousarray(m)).to(dtype)
            if pad_to_multiple is not None:
                x_t, y_t = pad_multiple(x_t, y_t, int(pad_to_multiple))
            held += x_t.nelement() * x_t.element_size() + y_t.nelement() * y_t.element_size()
            if held > limit:  # overlapping patches multiply the data: the split is held in memory, so bound it
                raise ValueError(
                    f"nifti: split {split!r} would hold more than {limit:,} bytes of samples (reached at "
                    f"{sample_id!r}, {len(ids) + 1} samples); use a larger stride or fewer volumes, or set "
                    "MEDROBUST_MAX_BYTES"
                )
            images.append(x_t)
            masks.append(y_t)
            ids.append(sample_id)
            groups.append(vid)
    if not ids:
        raise ValueError(
            f"nifti: split {split!r} has volumes {chosen} but no {'slice' if mode == '2d' else 'patch'} reaches "
            f"min_foreground={min_foreground}; lower it"
        )
    logger.info("nifti %s: %d samples from %d volumes (mode %s)", split, len(ids), len(chosen), mode)
    ds = NiftiDataset(stack_or_list(images), stack_or_list(masks), ids, names, split)
    ds.groups = groups  # slices and patches of one volume are one independent unit
    ds.info.update(
        volumes=chosen, sources={vid: (str(pairs[vid][0]), str(pairs[vid][1])) for vid in chosen}, mode=mode, axis=axis
    )
    distinct = sorted(set(spacings.values()))
    ds.info["spacing"] = list(distinct[0]) if len(distinct) == 1 else None  # mixed voxel sizes: none recorded
    return ds


#: the largest pad_to_multiple (a UNet of 10 halvings needs 1024)
MAX_PAD_MULTIPLE = 1024


def triple_float(value: float | Sequence[float], name: str) -> tuple[float, float, float]:
    message = f"{name}={value!r} must be a voxel size in mm > 0: one number or three"
    items: list[Any] = [value] * 3 if not isinstance(value, (list, tuple)) else list(value)
    numeric = all(not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating)) for v in items)
    if not numeric or len(items) != 3:
        raise ValueError(message)
    values = [float(v) for v in items]
    if not all(v > 0 and math.isfinite(v) for v in values):
        raise ValueError(message)
    return values[0], values[1], values[2]


def resampled_shape(shape: Sequence[int], voxels: Sequence[float], target: Sequence[float]) -> tuple[int, int, int]:
    """The grid :func:`resample` makes of ``shape`` voxels of size ``voxels`` at voxel size ``target`` (mm)."""
    a, b, c = (max(1, round(n * v / t)) for n, v, t in zip(shape, voxels, target))
    return a, b, c


def max_voxels() -> int:
    """The most voxels one volume may hold: MEDROBUST_MAX_VOXELS, default :data:`MAX_VOXELS`."""
    return env_limit("MEDROBUST_MAX_VOXELS", MAX_VOXELS, "voxels")


def check_voxels(shape: Sequence[int], what: str) -> None:
    """Refuse a volume the builder would make of ``shape`` with more voxels than :func:`max_voxels`, before it is
    allocated; ``what`` says what makes it ("spacing=0.1 resamples x.nii.gz to")."""
    limit, voxels = max_voxels(), math.prod(int(n) for n in shape)
    if voxels > limit:
        raise ValueError(
            f"nifti: {what} shape {tuple(int(n) for n in shape)} ({voxels:,} voxels), above the limit of {limit:,} "
            "(set MEDROBUST_MAX_VOXELS if it is meant to be that large)"
        )


def voxel_sizes(image_path: Path) -> tuple[float, float, float]:
    """The voxel size in mm of a NIfTI file along its RAS-reoriented axes."""
    import nibabel as nib

    img = cast("SpatialImage", nib.load(str(image_path)))
    ornt = nib.orientations.io_orientation(img.affine)
    sizes = nib.affines.voxel_sizes(img.affine)[:3]
    ordered = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(ornt[:3]):
        ordered[int(target)] = float(sizes[axis])
    return round(ordered[0], 6), round(ordered[1], 6), round(ordered[2], 6)


def resample(
    volume: np.ndarray, codes: np.ndarray, voxels: tuple[float, ...], target: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """A volume (trilinear) and its label codes (nearest) on a grid of ``target`` mm voxels (MONAI ``Resize``)."""
    from monai.transforms import Resize

    size = list(resampled_shape(volume.shape, voxels, target))
    image = Resize(size, mode="trilinear")(torch.from_numpy(np.ascontiguousarray(volume))[None])
    labels = Resize(size, mode="nearest")(torch.from_numpy(np.ascontiguousarray(codes)).float()[None])
    return np.asarray(image[0], dtype=np.float32), np.asarray(labels[0]).round().astype(np.int64)


def pad_multiple(x: torch.Tensor, y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad the spatial sides of x (C, *spatial) and y (*spatial) up to multiples of k (MONAI
    ``DivisiblePad``, centred); padded labels are background."""
    from monai.transforms import DivisiblePad

    pad = DivisiblePad(k)
    x_p = torch.as_tensor(pad(x))
    y_p = torch.as_tensor(pad(y[None].float()))[0].round().to(y.dtype)
    return x_p.as_subclass(torch.Tensor), y_p.as_subclass(torch.Tensor)


# ------------------------------------------------------------------------------------------------ reading
def read_pair(image_path: Path, label_path: Path, affine_atol: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """The image (float32) and integer label arrays of one pair, reoriented to closest canonical RAS+.

    Errors name the file(s): missing, unreadable, not 3D, shape or affine mismatch, NaN/inf, empty (all zero),
    non-integer label values.
    """
    import nibabel as nib

    imgs: list[SpatialImage] = []
    for path in (image_path, label_path):
        if not Path(path).is_file():
            raise FileNotFoundError(f"NIfTI file {path} does not exist")
        try:
            imgs.append(cast("SpatialImage", nib.load(str(path))))
        except Exception as err:  # nibabel raises several types for corrupt files
            raise ValueError(f"cannot read NIfTI file {path}: {err}") from None
    img, lab = imgs
    for one, path in ((img, image_path), (lab, label_path)):
        check_declared_size(one, Path(path))  # the header is data: checked before a voxel is read
    shape_i, shape_l = _spatial_shape(img.shape, image_path), _spatial_shape(lab.shape, label_path)
    if shape_i != shape_l:
        raise ValueError(f"shape mismatch: image {image_path} has shape {shape_i} but label {label_path} has {shape_l}")
    if not np.allclose(img.affine, lab.affine, atol=affine_atol, rtol=0):
        diff = float(np.abs(img.affine - lab.affine).max())
        raise ValueError(
            f"affine mismatch: image {image_path} and label {label_path} differ by up to {diff:g} "
            f"(affine_atol={affine_atol:g}); they are not on the same voxel grid"
        )
    data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape_i)
    n_bad = int((~np.isfinite(data)).sum())
    if n_bad:
        raise ValueError(f"image {image_path} has {n_bad} NaN or infinite voxels")
    if not data.any():
        raise ValueError(f"image {image_path} is empty (all {data.size} voxels are 0)")
    codes = np.asanyarray(lab.dataobj).reshape(shape_l)
    if codes.dtype.kind == "f":
        if not np.isfinite(codes).all() or not np.array_equal(codes, np.round(codes)):
            raise ValueError(f"label file {label_path} holds non-integer values; labels must be integer codes")
    codes = codes.astype(np.int64)
    ornt = nib.orientations.io_orientation(img.affine)
    return nib.orientations.apply_orientation(data, ornt), nib.orientations.apply_orientation(codes, ornt)


#: the most voxels one NIfTI volume may declare (2^28: 1 GiB as float32), unless MEDROBUST_MAX_VOXELS says otherwise
MAX_VOXELS = 2**28


def check_declared_size(img: Any, path: Path) -> None:
    """Refuse a NIfTI header that promises more than the file can hold (an uncompressed file shorter than its
    voxels) or more voxels than MEDROBUST_MAX_VOXELS (default :data:`MAX_VOXELS`; a gzip file cannot be
    measured before it is read), before any array is allocated."""
    limit = max_voxels()
    shape = tuple(int(s) for s in img.shape)
    voxels = math.prod(shape)
    if voxels > limit:
        raise ValueError(
            f"NIfTI file {path} declares shape {shape} ({voxels:,} voxels), above the limit of {limit:,}; if the "
            "volume is meant to be that large, set MEDROBUST_MAX_VOXELS"
        )
    if path.name.endswith(".nii"):
        header = img.header
        offset = getattr(img.dataobj, "offset", None)  # where the voxels start in the file (the proxy knows)
        needed = int(header.get_data_offset() if offset is None else offset) + voxels * header.get_data_dtype().itemsize
        size = path.stat().st_size
        if size < needed:
            raise ValueError(
                f"NIfTI file {path} declares shape {shape} ({needed:,} bytes with its header) but holds {size:,} "
                "bytes: truncated or not what its header says"
            )


def _spatial_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(f"NIfTI file {path} has shape {shape}; expected a 3D volume")
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def _strip_ext(name: str) -> str:
    for ext in NIFTI_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


# ------------------------------------------------------------------------------------------------ pairing
def _pairs(
    csv: str | Path | None,
    images_dir: str | Path | None,
    labels_dir: str | Path | None,
    root: str | Path | None,
    image_suffix: str,
    label_suffix: str,
) -> tuple[dict[str, tuple[Path, Path]], dict[str, str]]:
    """Volume id -> (image, label) paths, and volume id -> split from a CSV split column (else empty)."""
    given = [n for n, v in (("csv", csv), ("images_dir", images_dir), ("root", root)) if v is not None]
    if len(given) != 1:
        raise ValueError(
            f"nifti needs exactly one pairing source, got {given or 'none'}: csv=<file with image,label columns>, "
            "images_dir=+labels_dir= (same file names), or root= with image_suffix/label_suffix"
        )
    if labels_dir is not None and images_dir is None:
        raise ValueError("labels_dir= needs images_dir= (the same file names in both folders)")
    if csv is not None:
        return _pairs_from_csv(path_param(csv, "csv", "nifti"))
    pairs: dict[str, tuple[Path, Path]] = {}
    missing: list[str] = []
    if images_dir is not None:
        if labels_dir is None:
            raise ValueError("images_dir= needs labels_dir= (the same file names in both folders)")
        img_dir, lab_dir = _folder(images_dir, "images_dir"), _folder(labels_dir, "labels_dir")
        candidates = [(p, lab_dir / p.name, _strip_ext(p.name)) for p in sorted(img_dir.iterdir()) if _is_nifti(p)]
        where = f"images_dir {img_dir}"
    else:
        text_param(image_suffix, "image_suffix", "nifti")
        text_param(label_suffix, "label_suffix", "nifti")
        if image_suffix == label_suffix:
            raise ValueError(f"image_suffix={image_suffix!r} and label_suffix={label_suffix!r} must differ")
        base = _folder(root, "root")  # type: ignore[arg-type]
        candidates = [
            (p, p.with_name(p.name[: -len(image_suffix)] + label_suffix), p.name[: -len(image_suffix)])
            for p in sorted(base.rglob(f"*{image_suffix}"))
            if p.is_file()
        ]
        where = f"root {base} (files *{image_suffix})"
    for image, label, vid in candidates:
        if not label.is_file():
            missing.append(str(label))
        elif vid in pairs:
            raise ValueError(f"volume id {vid!r} occurs twice: {pairs[vid][0]} and {image}")
        else:
            pairs[vid] = (image, label)
    if missing:
        more = " ..." if len(missing) > 5 else ""
        raise FileNotFoundError(f"{len(missing)} label files do not exist: {missing[:5]}{more}")
    if not pairs:
        raise FileNotFoundError(f"no NIfTI images found in {where}")
    return pairs, {}


def _csv_rows(path: Path, required: tuple[str, ...], what: str) -> list[dict[str, str]]:
    """The rows of a CSV file (keys and values stripped), which must have the ``required`` columns."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    columns, rows = read_csv_rows(path, what)
    if not set(required) <= set(columns):
        raise ValueError(f"{what} {path} needs columns {','.join(required)}; it has {columns}")
    return rows


def _pairs_from_csv(path: Path) -> tuple[dict[str, tuple[Path, Path]], dict[str, str]]:
    rows = _csv_rows(path, ("image", "label"), "CSV listing")
    pairs: dict[str, tuple[Path, Path]] = {}
    split_of: dict[str, str] = {}
    for n, row in enumerate(rows, start=2):
        for k in ("image", "label"):
            if not row[k]:
                raise ValueError(f"CSV listing {path} line {n}: the {k} cell is empty; expected a NIfTI file path")
        image, label = (Path(row[k]).expanduser() for k in ("image", "label"))
        image, label = (p if p.is_absolute() else path.parent / p for p in (image, label))
        vid = row.get("id") or _strip_ext(image.name)
        if vid in pairs:
            raise ValueError(f"CSV listing {path} line {n}: volume id {vid!r} occurs twice")
        for p in (image, label):
            if not p.is_file():
                raise FileNotFoundError(f"CSV listing {path} line {n}: file {p} does not exist")
        pairs[vid] = (image, label)
        if row.get("split"):
            if row["split"] not in SPLITS:
                raise ValueError(
                    f"CSV listing {path} line {n}: split {row['split']!r} is not one of {', '.join(SPLITS)}"
                )
            split_of[vid] = row["split"]
    if not pairs:
        raise ValueError(f"CSV listing {path} has no rows")
    return pairs, split_of


def _folder(value: str | Path, name: str) -> Path:
    path = path_param(value, name, "nifti")
    if not path.is_dir():
        raise FileNotFoundError(f"{name}={str(path)!r} is not an existing folder")
    return path


def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.endswith(NIFTI_EXTENSIONS)


# ------------------------------------------------------------------------------------------------ splits
def _split_volumes(
    vids: list[str],
    split: str,
    splits: Mapping[str, Sequence[str]] | str | Path | None,
    csv_splits: dict[str, str],
    fractions: Sequence[float] | None,
    seed: int,
) -> list[str]:
    if splits is not None:
        lists = _read_mapping(splits, "splits") if isinstance(splits, (str, Path)) else dict(splits)
        unknown_keys = sorted(set(lists) - set(SPLITS))
        if unknown_keys:
            raise ValueError(f"splits has keys {unknown_keys}; expected some of {', '.join(SPLITS)}")
        seen: dict[str, str] = {}
        for name, members in lists.items():
            for vid in [str(v) for v in members]:
                if vid not in vids:
                    raise ValueError(f"splits[{name!r}] names volume {vid!r}, which is not among the {len(vids)} found")
                if vid in seen:
                    raise ValueError(f"volume {vid!r} is listed in both splits {seen[vid]!r} and {name!r}")
                seen[vid] = name
        return sorted(str(v) for v in lists.get(split, []))
    if csv_splits:
        return [v for v in vids if csv_splits.get(v) == split]
    values = list(numbers_param(fractions, "split_fractions", 3, "nifti", "train, val, test, summing to 1"))
    if min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(
            f"split_fractions={fractions!r} must be three non-negative fractions (train, val, test) summing to 1"
        )
    order = [vids[i] for i in np.random.default_rng(seed).permutation(len(vids))]
    if len(vids) < 3 and values[2] > 0:
        # too few volumes to cut by fractions: the test set comes first (one volume), then train, so a single
        # volume is evaluated rather than silently trained on
        return sorted({"test": order[:1], "train": order[1:2], "val": []}[split])
    cuts = [0, round(values[0] * len(vids)), round((values[0] + values[1]) * len(vids)), len(vids)]
    k = SPLITS.index(split)
    return sorted(order[cuts[k] : cuts[k + 1]])


# ------------------------------------------------------------------------------------------------ label maps
def load_label_map(
    label_map: Mapping[Any, Any] | str | Path | None, class_names: Sequence[str] | None
) -> tuple[dict[int, int] | None, list[str]]:
    """(source code -> class index, class names) from a dict or a JSON/YAML/CSV file.

    A dict or JSON/YAML file maps codes to class indices or to names in ``class_names``; it may instead be
    ``{"map": {...}, "class_names": [...]}``. A CSV file has columns ``source`` and ``target``. ``class_names``
    given here wins over the file's; without any, targets must be indices and the names are class_0..class_K-1.
    Without a label_map, ``class_names`` is required and the codes must be 0..K-1.
    """
    if label_map is None:
        if class_names is None:
            raise ValueError("nifti needs class_names=[...] (labels 0..K-1, background first) or a label_map=...")
        return None, _check_names(class_names)
    source = "label_map"
    if isinstance(label_map, (str, Path)):
        source = str(label_map)
        is_csv = str(label_map).lower().endswith(".csv")
        raw: Any = _read_csv_map(Path(label_map)) if is_csv else _read_mapping(label_map, "label_map")
    else:
        raw = dict(label_map)
    if isinstance(raw, Mapping) and ("map" in raw or "mapping" in raw):
        file_names = raw.get("class_names")
        raw = raw.get("map", raw.get("mapping"))
        class_names = class_names if class_names is not None else file_names
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(f"{source} must map source label codes to class indices or names; got {raw!r}")
    names = None if class_names is None else _check_names(class_names)
    mapping: dict[int, int] = {}
    for code, target in raw.items():
        try:
            key = int(code)
            if isinstance(code, bool) or (isinstance(code, float) and not code.is_integer()):
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"{source}: source code {code!r} is not an integer") from None
        mapping[key] = _target_index(target, names, source, key)
    if names is None:
        top = max(mapping.values())
        if top >= len(mapping):  # the class count comes from the data: one target may not ask for a billion
            raise ValueError(
                f"{source} maps to class {top}, implying {top + 1:,} classes, but lists {len(mapping)} codes; pass "
                "class_names=[...] or use class indices 0..K-1"
            )
        names = [f"class_{k}" for k in range(top + 1)]
    top = max(mapping.values())
    if top >= len(names):
        raise ValueError(f"{source} maps to class {top} but class_names has only {len(names)} names {names}")
    return mapping, names


def _target_index(target: Any, names: list[str] | None, source: str, code: int) -> int:
    if isinstance(target, str) and not target.strip().lstrip("-").isdigit():
        if names is None or target not in names:
            raise ValueError(
                f"{source}: code {code} maps to class name {target!r}, which is not in class_names={names}"
            )
        return names.index(target)
    try:
        index = int(target)
        if isinstance(target, bool) or (isinstance(target, float) and not target.is_integer()):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{source}: code {code} maps to {target!r}; expected a class index or name") from None
    if index < 0:
        raise ValueError(f"{source}: code {code} maps to negative class index {index}")
    return index


def _check_names(class_names: Sequence[str]) -> list[str]:
    names = [str(c) for c in class_names]
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"class_names={names} must hold at least 2 distinct names (background first)")
    return names


def _read_mapping(path: str | Path, what: str) -> Any:
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{what} file {file} does not exist")
    from medrobust.yamlio import read_yaml

    try:
        return read_yaml(file)  # JSON is YAML: one bounded reader (no aliases, no key twice, limited nesting)
    except yaml.YAMLError as err:
        raise ValueError(f"cannot parse {what} file {file}: {err}") from None


def _read_csv_map(file: Path) -> dict[str, str]:
    rows = _csv_rows(file.expanduser(), ("source", "target"), "label_map CSV")
    return {row["source"]: row["target"] for row in rows}
