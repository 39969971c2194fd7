"""Datasets: registered builders that return an :class:`ImageDataset` for one split.

Built in: ``derm-synth`` (synthetic dermoscopy, the default demo data), ``medmnist`` (MedMNIST .npz),
``isic`` (ISIC 2017 / HAM10000 folder + metadata CSV) and ``image-folder`` (one sub-folder per class).
"""

from __future__ import annotations

from typing import Any

# Importing the modules registers their builders in DATASETS.
from medrobust.data import (  # noqa: F401
    derm_synth,
    dicom,
    image_folder,
    isic,
    medmnist,
    mni152,  # noqa: F401
    nifti,  # noqa: F401
)
from medrobust.data.base import (
    DATASETS,
    SPLITS,
    ImageDataset,
    TensorImageDataset,
    check_split,
    iterate_batches,
    load_all,
)

__all__ = [
    "DATASETS",
    "SPLITS",
    "ImageDataset",
    "TensorImageDataset",
    "check_split",
    "iterate_batches",
    "list_datasets",
    "load_all",
    "load_dataset",
]


def load_dataset(name: str, split: str = "test", ordinal: bool | None = None, **params: Any) -> ImageDataset:
    """Build split ``split`` of the registered dataset ``name`` with its ``params``.

    ``ordinal``: the classes are ordered grades (task "ordinal": summaries add quadratic weighted kappa and the
    mean absolute error); None keeps the dataset's own (MedMNIST's RetinaMNIST is ordinal). Unknown names raise
    KeyError listing the valid names (with a "did you mean" hint).

    >>> ds = load_dataset("derm-synth", split="test", n=30)  # doctest: +SKIP
    """
    check_split(split)
    dataset = DATASETS.build(name, split=split, **params)
    if ordinal is not None:
        if dataset.task not in ("classification", "ordinal"):
            raise ValueError(f"ordinal: true applies to classification data; dataset {name!r} is {dataset.task}")
        dataset.task = "ordinal" if ordinal else "classification"
    return dataset


def list_datasets() -> list[str]:
    """The registered dataset names."""
    return DATASETS.names()
