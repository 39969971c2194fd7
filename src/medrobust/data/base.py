"""Datasets as the rest of medrobust sees them, and the dataset registry.

Every dataset builder is registered by name and called as ``builder(split=..., **params)``; it returns an
``ImageDataset`` whose items are ``(x, y, id)``: x a float32 tensor (C, H, W) inside ``bounds`` (default [0, 1]),
y an int class index into ``class_names``, id a stable string. Segmentation datasets (data/segmentation.py) give
y as a long mask (*spatial) instead; ``iterate_batches`` stacks those.
"""

from __future__ import annotations

import csv
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medrobust.registry import Registry
from medrobust.types import Batch, Bounds

SPLITS = ("train", "val", "test")

#: the largest side, in pixels, that a file-based image dataset resizes its images to (as derm-synth's)
MAX_SIZE = 1024
#: the most pixels one image file may declare (a dermoscopy photograph has about 24 million), unless
#: MEDROBUST_MAX_PIXELS says otherwise: a header is data, and a few bytes can promise gigabytes
MAX_PIXELS = 100_000_000
#: the most bytes of arrays one split may be read with (as derm-synth's bound), unless MEDROBUST_MAX_BYTES says
#: otherwise: an .npz header is data, and a few compressed bytes can promise gigabytes
MAX_BYTES = 4 * 2**30
#: the largest seed a builder accepts (a signed 64-bit integer, as the spec's seed)
MAX_SEED = 2**63 - 1


def env_limit(name: str, default: int, unit: str) -> int:
    """The positive integer in the environment variable ``name`` (``default`` when unset or empty)."""
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} must be an integer (a number of {unit})") from None
    if value < 1:
        raise ValueError(f"{name}={raw!r} must be an integer >= 1 (a number of {unit})")
    return value


def max_pixels() -> int:
    """The most pixels one image may declare: MEDROBUST_MAX_PIXELS, default :data:`MAX_PIXELS`."""
    return env_limit("MEDROBUST_MAX_PIXELS", MAX_PIXELS, "pixels")


def max_bytes() -> int:
    """The most bytes of arrays one split may be read with: MEDROBUST_MAX_BYTES, default :data:`MAX_BYTES`."""
    return env_limit("MEDROBUST_MAX_BYTES", MAX_BYTES, "bytes")


def check_declared_pixels(dims: Sequence[int], what: str = "") -> None:
    """Refuse an image whose header declares more pixels (the product of ``dims``: width x height, times frames)
    than :func:`max_pixels`, before any pixel is decoded. ``what`` names the dimensions in the message."""
    limit = max_pixels()
    total = math.prod(int(d) for d in dims)
    if total > limit:
        named = f" ({what})" if what else ""
        raise ValueError(
            f"it declares {' x '.join(str(int(d)) for d in dims)} = {total:,} pixels{named}, above the limit of "
            f"{limit:,} (set MEDROBUST_MAX_PIXELS if the image is meant to be that large)"
        )


# --- parameters of dataset builders: one line naming the parameter and what it expects ---------------------------
def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def int_param(
    value: Any, name: str, where: str = "", *, low: int | None = None, high: int | None = None, unit: str = ""
) -> int:
    """``value`` as an int if it is a whole number (not a bool, not 1.5, not text) in [low, high]; else a
    ValueError naming ``name`` and the range expected."""
    span = f" in [{low}, {high}]" if low is not None and high is not None else f" >= {low}" if low is not None else ""
    expected = f"a whole number{f' of {unit}' if unit else ''}{span}"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{_prefix(where)}{name}={value!r} must be {expected}")
    number = int(value)
    if (low is not None and number < low) or (high is not None and number > high):
        raise ValueError(f"{_prefix(where)}{name}={value!r} must be {expected}")
    return number


def float_param(
    value: Any, name: str, where: str = "", *, low: float | None = None, high: float | None = None, above: bool = False
) -> float:
    """``value`` as a finite float in [low, high] (``above``: strictly above ``low``); else a ValueError naming
    ``name`` and the range expected."""
    if low is not None and high is not None:
        span = f" in {'(' if above else '['}{low:g}, {high:g}]"
    elif low is not None:
        span = f" {'>' if above else '>='} {low:g}"
    else:
        span = ""
    message = f"{_prefix(where)}{name}={value!r} must be a finite number{span}"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(message)
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(message)
    if low is not None and (number < low or (above and number == low)):
        raise ValueError(message)
    if high is not None and number > high:
        raise ValueError(message)
    return number


def seed_param(value: Any, where: str = "") -> int:
    """A seed: a whole number in [0, 2**63 - 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) <= MAX_SEED:
        raise ValueError(f"{_prefix(where)}seed={value!r} must be an integer in [0, {MAX_SEED}]")
    return int(value)


def bool_param(value: Any, name: str, where: str = "") -> bool:
    """``value`` if it is true or false (text such as "yes" is refused: "no" would read as true)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{_prefix(where)}{name}={value!r} must be true or false")
    return bool(value)


def text_param(value: Any, name: str, where: str = "") -> str:
    """``value`` if it is non-empty text."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{_prefix(where)}{name}={value!r} must be non-empty text")
    return value


def path_param(value: Any, name: str, where: str = "") -> Path:
    """``value`` as a Path (``~`` expanded) if it is non-empty text or a path."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{_prefix(where)}{name}={value!r} must be a path (text naming a file or folder)")
    return Path(value).expanduser()


def names_param(value: Any, name: str, where: str = "") -> list[str]:
    """A list of distinct class names (text or numbers; a bare text is refused: "abc" is not three classes)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{_prefix(where)}{name}={value!r} must be a list of class names, e.g. [benign, malignant]")
    if not value:
        raise ValueError(f"{_prefix(where)}{name}=[] must name at least one class")
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, (str, int))]
    if bad:
        raise ValueError(f"{_prefix(where)}{name}={list(value)!r} must be a list of class names; {bad[0]!r} is not one")
    names = [str(v) for v in value]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{_prefix(where)}{name}={names!r} lists the class {twice[0]!r} twice; names must be distinct")
    return names


def numbers_param(value: Any, name: str, count: int, where: str = "", meaning: str = "") -> tuple[float, ...]:
    """``count`` finite numbers given as a list."""
    what = f" ({meaning})" if meaning else ""
    ok = isinstance(value, (list, tuple)) and len(value) == count
    if ok:
        ok = all(
            not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v)
            for v in value
        )
    if not ok:
        raise ValueError(f"{_prefix(where)}{name}={value!r} must be a list of {count} finite numbers{what}")
    return tuple(float(v) for v in value)


def check_size(size: Any, where: str = "", low: int = 1) -> int:
    """An image side to resize to: a whole number of pixels in [low, :data:`MAX_SIZE`]."""
    return int_param(size, "size", where, low=low, high=MAX_SIZE, unit="pixels")


def read_csv_rows(path: Path, what: str = "CSV") -> tuple[list[str], list[dict[str, str]]]:
    """Columns and rows of a CSV file: UTF-8 (a byte-order mark is ignored), header names and cells stripped, a
    missing cell read as "". Refused with one line: an unreadable, empty or header-only file, text that is not
    UTF-8, a column named twice, a malformed CSV (csv.Error)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, restval="")
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not UTF-8 text; expected a CSV file") from None
    except csv.Error as err:
        raise ValueError(f"{what} {path} is not a valid CSV file: {err}") from None
    except OSError as err:
        raise ValueError(f"cannot read {what} {path}: {err.strerror or err}") from None
    if not columns:
        raise ValueError(f"{what} {path} is empty (no header row)")
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise ValueError(f"{what} {path}: the header names the column {twice[0]!r} twice; columns: {columns}")
    if not rows:
        raise ValueError(f"{what} {path} has a header but no rows")
    return columns, rows


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not valid; expected one of {', '.join(SPLITS)}")
    return split


def check_duplicate_ids(ids: Sequence[str], labels: Sequence[Any], where: str) -> None:
    """Refuse a sample id listed twice with different labels (one image cannot be both; a score would count it
    twice, once wrong). The same id twice with one label is left to the dataset (a repeated row)."""
    first: dict[str, Any] = {}
    for sample, label in zip(ids, labels):
        seen = first.setdefault(sample, label)
        if seen != label:
            raise ValueError(
                f"{where}: sample id {sample!r} is listed twice with different labels ({seen!r} and {label!r}); "
                "one image cannot be both: fix the labels"
            )


def check_class_names(class_names: Sequence[Any]) -> tuple[str, ...]:
    """The class names as text, refused when one is given twice (two outputs could not be told apart)."""
    names = tuple(str(c) for c in class_names)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"class names {list(names)} list {twice[0]!r} twice; class names must be distinct")
    return names


class ImageDataset(Dataset, ABC):
    """Base class: subclasses set ``class_names``, ``labels`` (long tensor (N,)), ``ids`` and implement
    ``image(i) -> float tensor (C, H, W)``."""

    task: str = "classification"
    bounds: Bounds = (0.0, 1.0)
    name: str = ""
    # "RAS": the spatial axes run along patient right, anterior, superior (a slice keeps the other two in that
    # order), as NIfTI volumes reoriented to canonical do; the report then draws slices anatomically upright.
    orientation: str | None = None
    # what a group of samples is (``groups``): "volume", "patient", "subject"
    group_unit: str = "group"

    def __init__(self, class_names: Sequence[str], labels: torch.Tensor, ids: Sequence[str], split: str) -> None:
        self.class_names = check_class_names(class_names)
        self.ids = [str(i) for i in ids]
        # where the samples came from and how they were cut (files, volumes, slice indices, variant), per builder
        self.info: dict[str, Any] = {}
        # per sample, the independent unit it comes from (the volume of a slice, the patient of an image), which
        # intervals and paired tests resample; None: every sample is its own unit
        self.groups: list[str] | None = None
        raw = torch.as_tensor(labels).reshape(-1)
        if raw.is_floating_point():  # a cast would truncate 1.5 to 1 and NaN to garbage: refuse non-integers
            bad = ~torch.isfinite(raw) | (raw != raw.round())
            if bool(bad.any()):
                i = int(bad.nonzero()[0])
                name = self.ids[i] if i < len(self.ids) else str(i)
                raise ValueError(
                    f"sample {name!r} has label {float(raw[i])!r}; class labels must be integers 0..K-1 "
                    f"({int(bad.sum())} of {len(raw)} labels are not)"
                )
        self.labels = raw.to(torch.long)
        self.split = split
        if len(self.ids) != len(self.labels):
            raise ValueError(f"{len(self.ids)} ids but {len(self.labels)} labels")
        if len(self.labels) == 0:
            raise ValueError(f"dataset {self.name or type(self).__name__!r}: split {split!r} is empty")
        bad = (self.labels < 0) | (self.labels >= len(self.class_names))
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(
                f"sample {self.ids[i]!r} has label {int(self.labels[i])}, outside the {len(self.class_names)} "
                f"classes {list(self.class_names)}"
            )
        where = f"dataset {self.name or type(self).__name__!r}, split {split!r}"
        check_duplicate_ids(self.ids, [self.class_names[k] for k in self.labels.tolist()], where)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @abstractmethod
    def image(self, i: int) -> torch.Tensor:
        """The i-th input, a float tensor (C, H, W) (or (C, *spatial)) inside ``bounds``."""

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        return self.image(i), int(self.labels[i]), self.ids[i]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.image(0).shape)

    def geometry(self) -> dict[str, Any]:
        """What a model learns of its data's geometry, recorded in its card and compared with the data it is
        scored on: ``spacing`` (voxel size in mm), ``orientation`` ("RAS") and ``plane`` (the slice axis of 2D
        slices of volumes); each only where the dataset knows it."""
        out: dict[str, Any] = {}
        if self.info.get("spacing"):
            out["spacing"] = [float(v) for v in self.info["spacing"]]
        if self.orientation:
            out["orientation"] = self.orientation
        if self.info.get("mode") == "2d" and self.info.get("axis"):
            out["plane"] = str(self.info["axis"])
        return out

    def describe(self) -> dict[str, Any]:
        counts = torch.bincount(self.labels, minlength=self.num_classes).tolist()
        return {
            "name": self.name,
            "split": self.split,
            "n": len(self),
            "classes": list(self.class_names),
            "class_counts": counts,
            "input_shape": list(self.input_shape),
            "bounds": list(self.bounds),
        }


class TensorImageDataset(ImageDataset):
    """An in-memory dataset: images (N, C, H, W) float in [0, 1] (or uint8, scaled by 1/255 on access)."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, ids: Sequence[str], class_names: Sequence[str], split: str
    ) -> None:
        super().__init__(class_names, labels, ids, split)
        if images.dim() != 4 or images.shape[0] != len(self.labels):
            raise ValueError(
                f"images must have shape (N, C, H, W) with N={len(self.labels)}, got {tuple(images.shape)}"
            )
        self.images = images

    def image(self, i: int) -> torch.Tensor:
        img = self.images[i]
        if img.dtype == torch.uint8:
            return img.float().div_(255.0)
        return img.float()


def iterate_batches(
    dataset: ImageDataset, batch_size: int, limit: int | None = None, batches: range | None = None
) -> Iterator[Batch]:
    """Yield Batch objects in dataset order; ``limit`` keeps the first ``limit`` samples; ``batches`` keeps the
    batches of those indices only (a shard of the samples; the others are not loaded)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be >= 1")
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    for b, start in enumerate(range(0, n, batch_size)):
        if batches is not None and b not in batches:
            continue
        idx = range(start, min(start + batch_size, n))
        items = [dataset[i] for i in idx]
        x = _stack([it[0] for it in items], items)
        finite = torch.isfinite(x).flatten(1).all(1)
        if not bool(finite.all()):
            bad = [items[i][2] for i in (~finite).nonzero().flatten().tolist()]
            raise ValueError(
                f"{len(bad)} sample(s) of dataset {dataset.name or type(dataset).__name__!r} hold NaN or infinite "
                f"values (first: {bad[0]!r}); inputs must be finite"
            )
        if isinstance(items[0][1], torch.Tensor):  # segmentation masks
            y = _stack([it[1] for it in items], items).long()
        else:
            y = torch.tensor([it[1] for it in items], dtype=torch.long)
        groups: list[str | None] = [dataset.groups[i] for i in idx] if dataset.groups is not None else []
        yield Batch(x, y, [it[2] for it in items], groups)


def _stack(tensors: list[torch.Tensor], items: list[tuple[Any, ...]]) -> torch.Tensor:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(
            f"samples {items[0][2]!r}..{items[-1][2]!r} have different shapes {sorted(shapes)}; they cannot "
            "share a batch, use batch_size=1"
        )
    return torch.stack(tensors)


def load_all(dataset: ImageDataset, limit: int | None = None) -> Batch:
    """The whole dataset (or its first ``limit`` samples) as one Batch."""
    batches = list(iterate_batches(dataset, 256, limit))
    return Batch(
        torch.cat([b.x for b in batches]),
        torch.cat([b.y for b in batches]),
        sum((b.ids for b in batches), []),
        sum((b.groups for b in batches), []),
    )


DATASETS: Registry = Registry("dataset")
