"""Datasets: registered builders that return an :class:`ImageDataset` for one split.

Built in: ``derm-synth`` (synthetic dermoscopy, the default demo data), ``medmnist`` (MedMNIST .npz),
``isic`` (ISIC 2017 / HAM10000 folder + metadata CSV), ``image-folder`` (one sub-folder per class), ``dicom``
(DICOM files + a labels CSV), ``nifti`` (image/label volume pairs, whole or as 2D slices) and ``mni152-tissue``
(the MNI152 template's tissue segmentation, the segmentation demo's data).
"""

from __future__ import annotations

from typing import Any

from medrobust._lazy import lazy_getattr
from medrobust.data.base import (
    DATASETS,
    SPLITS,
    ImageDataset,
    TensorImageDataset,
    check_split,
    iterate_batches,
    load_all,
)

# Each builder's module is imported when the dataset is first built or described (not to list the names); on
# import it registers the builder itself (``@DATASETS.register``), under the name given here.
DATASETS.register_lazy("derm-synth", "medrobust.data.derm_synth:build_derm_synth")
DATASETS.register_lazy("dicom", "medrobust.data.dicom:build_dicom")
DATASETS.register_lazy("image-folder", "medrobust.data.image_folder:build_image_folder")
DATASETS.register_lazy("isic", "medrobust.data.isic:build_isic")
DATASETS.register_lazy("medmnist", "medrobust.data.medmnist:build_medmnist")
DATASETS.register_lazy("mni152-tissue", "medrobust.data.mni152:build_mni152_tissue")
DATASETS.register_lazy("nifti", "medrobust.data.nifti:build_nifti")

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


# ``medrobust.data.nifti`` and the other builder modules as attributes, imported on first use
__getattr__ = lazy_getattr(__name__, {})
