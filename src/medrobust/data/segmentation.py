"""Segmentation datasets: images with a per-pixel (or per-voxel) class mask, and the volume helpers the NIfTI and
MNI152 builders share (percentile normalisation, label mapping, slicing along an axis, 3D patches).

Items are ``(x, y, id)``: x float32 (C, H, W) or (C, D, H, W) in [0, 1], y a long mask (H, W) or (D, H, W) of class
indices into ``class_names`` (0 is background), id a stable string. Volumes are taken in the closest canonical
(RAS+) orientation, so array axis 0 runs left->right (sagittal slices), 1 posterior->anterior (coronal), 2
inferior->superior (axial).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from medrobust.data.base import ImageDataset, check_class_names

AXES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}
MODES = ("2d", "3d")


class SegmentationDataset(ImageDataset):
    """In-memory segmentation samples.

    images: a float tensor (N, C, *spatial) in [0, 1], or a sequence of N tensors (C, *spatial) when the samples'
    shapes differ (batch those with batch_size=1). masks: the matching integer tensor (N, *spatial) or sequence of
    (*spatial) tensors, values in [0, len(class_names)). ``labels`` has no per-sample meaning here and is absent;
    ``describe()`` reports voxel counts per class instead.
    """

    task = "segmentation"

    def __init__(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        masks: torch.Tensor | Sequence[torch.Tensor],
        ids: Sequence[str],
        class_names: Sequence[str],
        split: str,
    ) -> None:
        # ImageDataset.__init__ validates one class label per sample; a mask needs its own checks.
        self.class_names = check_class_names(class_names)
        self.ids = [str(i) for i in ids]
        self.info: dict[str, Any] = {}
        self.split = split
        self.images = images
        self.masks = masks
        n = len(self.ids)
        if n == 0:
            raise ValueError(f"dataset {self.name or type(self).__name__!r}: split {split!r} is empty")
        if len(images) != n or len(masks) != n:
            raise ValueError(f"{n} ids but {len(images)} images and {len(masks)} masks")
        if len(self.class_names) < 2:
            raise ValueError(f"class_names={list(self.class_names)} needs at least 2 classes (background first)")
        for i in range(n):
            img, mask = images[i], masks[i]
            if img.dim() not in (3, 4) or tuple(img.shape[1:]) != tuple(mask.shape):
                raise ValueError(
                    f"sample {self.ids[i]!r}: image {tuple(img.shape)} must be (C, *spatial) with 2 or 3 spatial "
                    f"dims matching its mask {tuple(mask.shape)}"
                )
            if mask.is_floating_point():
                raise ValueError(f"sample {self.ids[i]!r}: mask has dtype {mask.dtype}; expected an integer dtype")
            low, high = int(mask.min()), int(mask.max())
            if low < 0 or high >= len(self.class_names):
                raise ValueError(
                    f"sample {self.ids[i]!r} has mask values {low}..{high}, outside the {len(self.class_names)} "
                    f"classes {list(self.class_names)}"
                )

    @property
    def labels(self) -> torch.Tensor:
        raise AttributeError("a segmentation dataset has per-pixel masks, not one label per sample; use .mask(i)")

    @labels.setter
    def labels(self, value: torch.Tensor) -> None:
        # Assigning stays an error, as with no setter; having one lets the property override ImageDataset's attribute.
        raise AttributeError("a segmentation dataset has per-pixel masks, not one label per sample; use .mask(i)")

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, i: int) -> torch.Tensor:
        img = self.images[i]
        return img.float().div(255.0) if img.dtype == torch.uint8 else img.float()

    def mask(self, i: int) -> torch.Tensor:
        return self.masks[i].long()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, str]:  # type: ignore[override]
        return self.image(i), self.mask(i), self.ids[i]

    @property
    def spatial_dims(self) -> int:
        return self.images[0].dim() - 1

    def class_counts(self) -> list[int]:
        """Pixel (voxel) count per class over all samples."""
        counts = torch.zeros(self.num_classes, dtype=torch.long)
        for i in range(len(self)):
            counts += torch.bincount(self.masks[i].reshape(-1).long(), minlength=self.num_classes)
        return counts.tolist()

    def describe(self) -> dict[str, Any]:
        counts = self.class_counts()
        total = max(sum(counts), 1)
        return {
            "name": self.name,
            "task": self.task,
            "split": self.split,
            "n": len(self),
            "classes": list(self.class_names),
            "class_counts": counts,
            "class_fractions": [round(c / total, 6) for c in counts],
            "input_shape": list(self.input_shape),
            "bounds": list(self.bounds),
        }


def stack_or_list(tensors: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """One stacked tensor when all shapes agree (the common case), else the list."""
    if tensors and all(t.shape == tensors[0].shape for t in tensors):
        return torch.stack(tensors)
    return tensors


def mask_dtype(num_classes: int) -> torch.dtype:
    return torch.uint8 if num_classes <= 256 else torch.int64


# ------------------------------------------------------------------------------------------------ volume helpers
def check_mode_axis(mode: str, axis: str) -> tuple[str, int]:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not valid; expected one of {', '.join(MODES)}")
    if axis not in AXES:
        raise ValueError(f"axis={axis!r} is not valid; expected one of {', '.join(AXES)}")
    return mode, AXES[axis]


def percentile_normalise(volume: np.ndarray, percentiles: Sequence[float] | None, source: str = "") -> np.ndarray:
    """Clip ``volume`` to its (low, high) percentiles over all voxels and rescale that range to [0, 1] (float32).

    ``percentiles=None`` means min-max (0, 100). A constant volume cannot be normalised and is an error.
    """
    low_q, high_q = (0.0, 100.0) if percentiles is None else (float(p) for p in percentiles)
    if not 0.0 <= low_q < high_q <= 100.0:
        raise ValueError(f"percentiles={percentiles!r} must be (low, high) with 0 <= low < high <= 100")
    lo, hi = np.percentile(volume, [low_q, high_q])
    if not hi > lo:
        raise ValueError(
            f"volume {source} is constant between its {low_q} and {high_q} percentiles (both {lo:g}); "
            "cannot normalise it to [0, 1]"
        )
    out = (volume.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def apply_label_map(labels: np.ndarray, mapping: Mapping[int, int] | None, num_classes: int, source: str) -> np.ndarray:
    """Source codes -> class indices. Codes absent from ``mapping`` (or, without a mapping, outside
    0..num_classes-1) are an error naming the codes and ``source``."""
    codes = np.unique(labels)
    if mapping is None:
        bad = codes[(codes < 0) | (codes >= num_classes)]
        if bad.size:
            raise ValueError(
                f"label file {source} has codes {_codes(bad)} outside the {num_classes} classes 0..{num_classes - 1}; "
                "pass label_map=... to collapse them, or more class_names"
            )
        return labels.astype(np.int64)
    unmapped = [int(c) for c in codes if int(c) not in mapping]
    if unmapped:
        raise ValueError(
            f"label file {source} has codes {_codes(unmapped)} that the label map does not list "
            f"(it maps {_codes(sorted(mapping))})"
        )
    source_codes = np.array(sorted(mapping), dtype=np.int64)
    targets = np.array([mapping[int(c)] for c in source_codes], dtype=np.int64)
    return targets[np.searchsorted(source_codes, labels.astype(np.int64))]


def _codes(codes: Sequence[int] | np.ndarray, limit: int = 20) -> str:
    values = [int(c) for c in codes]
    more = f", ... ({len(values)} codes)" if len(values) > limit else ""
    return "[" + ", ".join(str(v) for v in values[:limit]) + more + "]"


def foreground_fraction_per_slice(mask: np.ndarray, axis: int) -> np.ndarray:
    """Fraction of foreground (label > 0) pixels in each slice of the 3D ``mask`` along ``axis``."""
    other = tuple(a for a in range(3) if a != axis)
    return (mask > 0).mean(axis=other)


def iter_slices(
    volume: np.ndarray, mask: np.ndarray, axis: int, min_foreground: float, indices: Sequence[int] | None = None
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(index, image_slice, mask_slice)`` along ``axis`` for slices whose foreground fraction is at least
    ``min_foreground`` (0 keeps every slice). ``indices`` restricts the candidates."""
    fractions = foreground_fraction_per_slice(mask, axis)
    for i in range(volume.shape[axis]) if indices is None else indices:
        if fractions[i] >= min_foreground:
            yield i, np.take(volume, i, axis=axis), np.take(mask, i, axis=axis)


def patch_starts(size: int, patch: int, stride: int) -> list[int]:
    """Start offsets of patches of length ``patch`` every ``stride`` voxels, plus one flush with the end so the
    whole axis is covered."""
    if patch > size:
        raise ValueError(f"patch_size {patch} is larger than the volume's extent {size} along an axis")
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def iter_patches(
    volume: np.ndarray, mask: np.ndarray, patch_size: Sequence[int], stride: Sequence[int], min_foreground: float
) -> Iterator[tuple[tuple[int, int, int], np.ndarray, np.ndarray]]:
    """Yield ``(start, image_patch, mask_patch)`` for 3D patches with at least ``min_foreground`` foreground."""
    grids = [patch_starts(s, p, st) for s, p, st in zip(volume.shape, patch_size, stride)]
    for a in grids[0]:
        for b in grids[1]:
            for c in grids[2]:
                sl = (slice(a, a + patch_size[0]), slice(b, b + patch_size[1]), slice(c, c + patch_size[2]))
                m = mask[sl]
                if (m > 0).mean() >= min_foreground:
                    yield (a, b, c), volume[sl], m


def triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    """An int or a 3-sequence of positive ints as a 3-tuple."""
    values: list[Any] = [value] * 3 if not isinstance(value, (list, tuple)) else list(value)
    whole = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in values)
    if len(values) != 3 or not whole:
        raise ValueError(f"{name}={value!r} must be a positive int or three positive ints")
    return tuple(int(v) for v in values)  # type: ignore[return-value]
