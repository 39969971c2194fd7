"""Datasets as the rest of medrobust sees them, and the dataset registry.

Every dataset builder is registered by name and called as ``builder(split=..., **params)``; it returns an
``ImageDataset`` whose items are ``(x, y, id)``: x a float32 tensor (C, H, W) inside ``bounds`` (default [0, 1]),
y an int class index into ``class_names``, id a stable string. Segmentation datasets (data/segmentation.py) give
y as a long mask (*spatial) instead; ``iterate_batches`` stacks those.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from medrobust.registry import Registry
from medrobust.types import Batch, Bounds

SPLITS = ("train", "val", "test")


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
        self.class_names = tuple(str(c) for c in class_names)
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
