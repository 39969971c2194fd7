"""``medmnist``: the MedMNIST v2 .npz files (Yang et al., Scientific Data 10, 41, 2023).

A file ``{flag}.npz`` holds ``{split}_images`` (N, H, W) or (N, H, W, 3) uint8 and ``{split}_labels`` (N, 1)
for the train/val/test splits. Single-label 2D datasets are supported (pneumoniamnist, dermamnist, ...);
multi-label ChestMNIST and the 3D volumes are refused with a clear error. Pixels 0..255 map to [0, 1] as x/255.
"""

from __future__ import annotations

import logging
import math
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medrobust.data.base import (
    DATASETS,
    TensorImageDataset,
    bool_param,
    check_split,
    max_bytes,
    names_param,
    path_param,
    text_param,
)

logger = logging.getLogger(__name__)

DEFAULT_ROOT = Path("~/.medmnist")

# Class names from MedMNIST's INFO for the single-label 2D datasets.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "pneumoniamnist": ("normal", "pneumonia"),
    "breastmnist": ("malignant", "normal, benign"),
    "dermamnist": (
        "actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma", "benign keratosis-like lesions",
        "dermatofibroma", "melanoma", "melanocytic nevi", "vascular lesions",
    ),
    "octmnist": ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
    "pathmnist": (
        "adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle", "normal colon mucosa",
        "cancer-associated stroma", "colorectal adenocarcinoma epithelium",
    ),
    "bloodmnist": (
        "basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte", "monocyte", "neutrophil",
        "platelet",
    ),
    "retinamnist": ("0", "1", "2", "3", "4"),
    **{
        flag: (
            "bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver", "lung-left",
            "lung-right", "pancreas", "spleen",
        )
        for flag in ("organamnist", "organcmnist", "organsmnist")
    },
}  # fmt: skip


class MedMNISTDataset(TensorImageDataset):
    name = "medmnist"
    flag: str
    source: str


@DATASETS.register("medmnist")
def build_medmnist(
    split: str = "test",
    path: str | Path | None = None,
    flag: str | None = None,
    class_names: Sequence[str] | None = None,
    download: bool = False,
) -> MedMNISTDataset:
    """One split of a MedMNIST .npz as float32 (C, H, W) in [0, 1] (C = 1 for grayscale, 3 for RGB).

    path: a .npz file, or a folder holding ``{flag}.npz`` (default ~/.medmnist, MedMNIST's own cache).
    flag: e.g. "pneumoniamnist" (default: the file's stem). class_names: default MedMNIST's names for known
    flags, else class_0..class_{K-1}. download: only if the file is absent, fetch it with the ``medmnist``
    package (needs the network). Ids look like "pneumoniamnist-test-00042".
    """
    check_split(split)
    if path is not None:
        path = path_param(path, "path", "medmnist")
    if flag is not None:
        flag = text_param(flag, "flag", "medmnist")
    if class_names is not None:
        class_names = names_param(class_names, "class_names", "medmnist")
    download = bool_param(download, "download", "medmnist")
    file = _resolve_path(path, flag)
    flag = flag or file.stem
    if not file.is_file():
        if not download:
            raise FileNotFoundError(
                f"MedMNIST file {file} does not exist; pass path=<a local {flag}.npz or its folder>, "
                "or download=True to fetch it with the medmnist package"
            )
        _download(flag, file)
    images, labels, n_classes = _read(file, split)
    names = _class_names(flag, class_names, n_classes, file)
    ids = [f"{flag}-{split}-{i:05d}" for i in range(len(labels))]
    ds = MedMNISTDataset(images, labels, ids, names, split)
    ds.info.update(flag=flag, source=str(file))
    if flag in ORDINAL_FLAGS:
        ds.task = "ordinal"
    return ds


def _resolve_path(path: str | Path | None, flag: str | None) -> Path:
    if path is None and flag is None:
        raise ValueError("medmnist needs path=<file.npz or folder> and/or flag=<e.g. pneumoniamnist>")
    p = Path(path if path is not None else DEFAULT_ROOT).expanduser()
    if p.suffix.lower() == ".npz":
        return p
    if flag is None:
        raise ValueError(f"path={str(p)!r} is a folder; pass flag=<e.g. pneumoniamnist> to pick {{flag}}.npz in it")
    return p / f"{flag}.npz"


def _download(flag: str, file: Path) -> None:
    hint = f"pass path=<a local {flag}.npz> instead"
    try:
        import medmnist
    except ImportError:
        raise ImportError(f"download=True needs the medmnist package (pip install medmnist); or {hint}") from None
    info = getattr(medmnist, "INFO", {}).get(flag)
    if info is None:
        raise ValueError(f"medmnist does not know flag={flag!r}; {hint}")
    file.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading MedMNIST %s into %s", flag, file.parent)
    try:
        getattr(medmnist, info["python_class"])(split="test", root=str(file.parent), download=True)
    except Exception as err:  # network errors come in many types; all end the same way
        raise RuntimeError(
            f"downloading MedMNIST {flag!r} failed ({err}); the network may be unavailable, {hint}"
        ) from None
    if not file.is_file():
        raise FileNotFoundError(f"the medmnist download did not produce {file}; {hint}")


# MedMNIST subsets whose labels are ordered grades: RetinaMNIST (diabetic retinopathy severity 0-4)
ORDINAL_FLAGS = ("retinamnist",)


def _declared(archive: zipfile.ZipFile, key: str, file: Path) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype the .npy header of ``key`` declares, read before any array is allocated; refused with
    one line: object arrays (pickles, never loaded), more bytes than MEDROBUST_MAX_BYTES, or more bytes than the
    archive member holds."""
    name = f"{key}.npy"
    try:
        info = archive.getinfo(name)
        with archive.open(name) as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(fh)
    except Exception as err:  # noqa: BLE001 - zipfile and numpy raise many kinds for a damaged member
        raise ValueError(f"MedMNIST file {file}: {key} is not a readable .npy array ({err})") from None
    if dtype.hasobject:
        raise ValueError(
            f"MedMNIST file {file}: {key} holds Python objects (dtype {dtype}), which medrobust never loads (they "
            "would run pickled code); expected numeric arrays"
        )
    nbytes = math.prod(shape) * dtype.itemsize
    limit = max_bytes()
    if nbytes > limit:
        raise ValueError(
            f"MedMNIST file {file}: {key} declares shape {tuple(shape)} of {dtype} ({nbytes:,} bytes), above the "
            f"limit of {limit:,} bytes (set MEDROBUST_MAX_BYTES if it is meant to be that large)"
        )
    if info.file_size < nbytes:
        raise ValueError(
            f"MedMNIST file {file}: {key} declares shape {tuple(shape)} of {dtype} ({nbytes:,} bytes) but holds "
            f"{info.file_size:,} bytes: truncated or not what its header says"
        )
    return tuple(int(n) for n in shape), dtype


def _read(file: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Images (N, C, H, W) uint8 (or float in [0, 1]), labels (N,), and the class count over all splits."""
    if not zipfile.is_zipfile(file):
        raise ValueError(f"MedMNIST file {file} is not a .npz archive (not a zip file); expected numpy.savez output")
    img_key, lab_key = f"{split}_images", f"{split}_labels"
    try:
        with zipfile.ZipFile(file) as archive:
            keys = sorted(n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy"))
            for key in (img_key, lab_key):
                if key not in keys:
                    raise KeyError(f"MedMNIST file {file} has no key {key!r}; keys present: {keys}")
            label_keys = [k for k in keys if k.endswith("_labels")]
            declared = {k: _declared(archive, k, file) for k in [img_key, *label_keys]}
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"cannot read MedMNIST file {file}: {err}") from None
    shape, lab_shape = declared[img_key][0], declared[lab_key][0]
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3)):
        raise ValueError(
            f"MedMNIST file {file}: {img_key} has shape {shape}; expected (N, H, W) or (N, H, W, 3) "
            "(3D MedMNIST volumes are not supported by this 2D loader)"
        )
    if len(lab_shape) == 2 and lab_shape[1] > 1:
        raise ValueError(
            f"MedMNIST file {file}: {lab_key} has shape {lab_shape}, a multi-label task (e.g. ChestMNIST); "
            "only single-label classification is supported"
        )
    if len(lab_shape) not in (1, 2):
        raise ValueError(f"MedMNIST file {file}: {lab_key} has shape {lab_shape}; expected (N,) or (N, 1) labels")
    n_labels = math.prod(lab_shape)
    if n_labels == 0 or shape[0] == 0:
        raise ValueError(f"MedMNIST file {file}: split {split!r} is empty ({img_key} has shape {shape})")
    if shape[0] != n_labels:
        raise ValueError(f"MedMNIST file {file}: {img_key} has {shape[0]} images but {lab_key} has {n_labels} labels")
    try:
        npz = np.load(file, allow_pickle=False)
    except Exception as err:
        raise ValueError(f"cannot read MedMNIST file {file}: {err}") from None
    try:
        with npz:
            images, labels = npz[img_key], npz[lab_key]
            all_labels = {k: npz[k] for k in label_keys}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"cannot read MedMNIST file {file}: {err}") from None
    for key, values in all_labels.items():
        # class indices: a float or negative label would be truncated or wrap around, so refuse it here
        if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.bool_)):
            if (
                not np.issubdtype(values.dtype, np.floating)
                or not np.all(np.isfinite(values))
                or np.any(values != np.round(values))
            ):
                raise ValueError(
                    f"MedMNIST file {file}: {key} has dtype {values.dtype} with non-integer values; expected class "
                    "indices 0..K-1"
                )
        if values.size and values.min() < 0:
            raise ValueError(f"MedMNIST file {file}: {key} has negative labels ({values.min()}); expected 0..K-1")
    n_classes = 1 + max(int(v.max()) for v in all_labels.values() if v.size)
    total = sum(int(v.size) for v in all_labels.values())
    if n_classes > total:  # the class count comes from the data: one label may not ask for a billion classes
        raise ValueError(
            f"MedMNIST file {file}: the largest label {n_classes - 1} implies {n_classes:,} classes but the file "
            f"holds {total} labels in all; expected class indices 0..K-1"
        )
    if images.dtype.kind not in "biuf":
        raise ValueError(
            f"MedMNIST file {file}: {img_key} has dtype {images.dtype}; expected uint8 0..255 or floats in [0, 1]"
        )
    if np.issubdtype(images.dtype, np.floating) and not np.all(np.isfinite(images)):
        raise ValueError(f"MedMNIST file {file}: {img_key} holds NaN or infinite values; inputs must be finite")
    labels = labels.reshape(-1)
    if images.ndim == 3:
        images = images[:, None]
    else:
        images = images.transpose(0, 3, 1, 2)
    if images.dtype != np.uint8:
        if np.issubdtype(images.dtype, np.integer) and images.min() >= 0 and images.max() <= 255:
            images = images.astype(np.uint8)
        elif np.issubdtype(images.dtype, np.floating) and images.min() >= 0 and images.max() <= 1:
            images = images.astype(np.float32)
        else:
            raise ValueError(
                f"MedMNIST file {file}: {img_key} has dtype {images.dtype} with values "
                f"{images.min()}..{images.max()}; expected uint8 0..255 or floats in [0, 1]"
            )
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64)), n_classes


def _class_names(flag: str, given: Sequence[str] | None, n_classes: int, file: Path) -> list[str]:
    if given is not None:
        names = [str(c) for c in given]
        if len(names) < n_classes:
            raise ValueError(f"class_names={names} has {len(names)} names but {file} has labels up to {n_classes - 1}")
        return names
    known = CLASS_NAMES.get(flag)
    if known is not None and len(known) >= n_classes:
        return list(known)
    return [f"class_{k}" for k in range(n_classes)]
