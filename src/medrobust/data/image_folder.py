"""``image-folder``: images on disk in one sub-folder per class, plus the helpers the ISIC loader shares.

Two layouts are understood:

- ``root/<class>/*.png|jpg``: the split is drawn by ``seed`` (stratified by class, deterministic) with
  ``val_fraction`` and ``test_fraction``;
- ``root/{train,val,test}/<class>/*``: the folders are the splits.

Images are read lazily in ``image(i)`` (Pillow), resized to ``size`` x ``size`` and returned as float32
(channels, size, size) in [0, 1]; the build checks that every file exists, not that it decodes.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medrobust.data.base import (
    DATASETS,
    SPLITS,
    ImageDataset,
    bool_param,
    check_declared_pixels,
    check_size,
    check_split,
    float_param,
    max_pixels,
    names_param,
    path_param,
    seed_param,
)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_SPLIT_SALT = 7919  # keeps these split draws apart from other uses of the same seed
#: Pillow modes of more than 8 bits per channel: converting them to 8 bits clips every value above 255 (a 16-bit
#: scan would come out nearly white), so they are refused rather than read wrongly
WIDE_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N", "I;16S", "I;32", "I;32B", "I;32L", "I;32S")
#: the most bytes of decoded images a file dataset keeps in its cache
CACHE_BYTES = 512 * 2**20


def load_image(path: Path, size: int, channels: int = 3, center_crop: bool = False) -> torch.Tensor:
    """Read ``path`` with Pillow: uint8 tensor (channels, size, size). Raises ValueError naming an unreadable file,
    one of more than 8 bits per channel, or one whose header declares more than MEDROBUST_MAX_PIXELS (default
    :data:`medrobust.data.base.MAX_PIXELS`) pixels (checked before any pixel is decoded)."""
    from PIL import Image, UnidentifiedImageError

    max_pixels()  # a bad MEDROBUST_MAX_PIXELS is named as such, not as a problem of this file
    try:
        if Path(path).is_file() and Path(path).stat().st_size == 0:
            raise ValueError("the file is empty (0 bytes)")
        with warnings.catch_warnings():
            # Pillow warns above its own 89-million-pixel mark; the limit that decides is ours, checked next
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened:
            check_declared_pixels(opened.size)
            if opened.mode in WIDE_MODES:
                raise ValueError(
                    f"it has Pillow mode {opened.mode!r} (more than 8 bits per channel), which 8-bit reading would "
                    "clip; convert it to 8-bit PNG or JPEG first"
                )
            im = opened.convert("RGB" if channels == 3 else "L")
            if center_crop:
                w, h = im.size
                side = min(w, h)
                left, top = (w - side) // 2, (h - side) // 2
                im = im.crop((left, top, left + side, top + side))
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


class FileImageDataset(ImageDataset):
    """Images read from ``paths`` on demand, with a small LRU cache of decoded uint8 arrays."""

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int],
        ids: Sequence[str],
        class_names: Sequence[str],
        split: str,
        *,
        size: int,
        channels: int = 3,
        center_crop: bool = False,
        cache_size: int = 2048,
    ) -> None:
        super().__init__(class_names, torch.as_tensor(list(labels), dtype=torch.long), ids, split)
        self.paths = [Path(p) for p in paths]
        self.size = int(size)
        self.channels = int(channels)
        self.center_crop = bool(center_crop)
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        # at most CACHE_BYTES of decoded images, whatever the size: 2048 images of 1024 x 1024 RGB would be 6 GiB
        self._cache_size = min(int(cache_size), CACHE_BYTES // (self.channels * self.size * self.size))

    def image(self, i: int) -> torch.Tensor:
        i = int(i)
        img = self._cache.get(i)
        if img is None:
            img = load_image(self.paths[i], self.size, self.channels, self.center_crop)
            if self._cache_size > 0:
                self._cache[i] = img
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(i)
        return img.float().div_(255.0)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.channels, self.size, self.size)


class ImageFolderDataset(FileImageDataset):
    name = "image-folder"


def check_fractions(val_fraction: float, test_fraction: float, where: str = "") -> tuple[float, float]:
    val = float_param(val_fraction, "val_fraction", where, low=0.0, high=1.0)
    test = float_param(test_fraction, "test_fraction", where, low=0.0, high=1.0)
    if val + test >= 1:
        raise ValueError(
            f"{where + ': ' if where else ''}val_fraction={val_fraction!r} and test_fraction={test_fraction!r} "
            "must be >= 0 and sum to less than 1"
        )
    return val, test


def stratified_split(
    labels: Sequence[int] | np.ndarray, seed: int, val_fraction: float, test_fraction: float
) -> np.ndarray:
    """Assign each item to a split (array of "train"/"val"/"test"), stratified by label and deterministic.

    Within each class (in sorted label order) the items are shuffled by a generator derived from ``seed``; the
    first round(n_c * test_fraction) go to test, the next round(n_c * val_fraction) to val, the rest to train.
    """
    val_fraction, test_fraction = check_fractions(val_fraction, test_fraction)
    label_arr = np.asarray(labels)
    rng = np.random.default_rng([int(seed), _SPLIT_SALT])
    out = np.full(label_arr.shape[0], "train", dtype=object)
    for c in np.unique(label_arr):
        idx = rng.permutation(np.flatnonzero(label_arr == c))
        n_test = math.floor(idx.size * test_fraction + 0.5)
        n_val = min(math.floor(idx.size * val_fraction + 0.5), idx.size - n_test)
        out[idx[:n_test]] = "test"
        out[idx[n_test : n_test + n_val]] = "val"
    return out


def check_nonempty(mask: np.ndarray, split: str, where: str) -> np.ndarray:
    keep = np.flatnonzero(mask)
    if keep.size == 0:
        raise ValueError(f"{where}: split {split!r} is empty")
    return keep


def _listing(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as err:
        raise ValueError(f"cannot list the folder {folder}: {err.strerror or err}") from None


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in _listing(folder) if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in _listing(folder) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


@DATASETS.register("image-folder")
def build_image_folder(
    split: str = "test",
    root: str | Path | None = None,
    size: int = 64,
    channels: int = 3,
    classes: Sequence[str] | None = None,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    center_crop: bool = False,
) -> ImageFolderDataset:
    """Class-per-sub-folder images. ``channels`` 3 (RGB) or 1 (grayscale); ``classes`` fixes the class order
    (default: the sorted sub-folder names). Ids are the paths relative to the class root, without extension."""
    check_split(split)
    where = "image-folder"
    if root is None:
        raise ValueError("image-folder needs root=<folder with one sub-folder per class>")
    root = path_param(root, "root", where)
    if not root.is_dir():
        raise FileNotFoundError(f"image-folder root {root} does not exist or is not a folder")
    size = check_size(size, where)
    if isinstance(channels, bool) or channels not in (1, 3):
        raise ValueError(f"image-folder: channels={channels!r} must be 1 (grayscale) or 3 (RGB)")
    seed = seed_param(seed, where)
    check_fractions(val_fraction, test_fraction, where)
    center_crop = bool_param(center_crop, "center_crop", where)
    if classes is not None:
        classes = names_param(classes, "classes", where)

    presplit = all((root / s).is_dir() for s in SPLITS)
    class_roots = [root / s for s in SPLITS] if presplit else [root]
    found = sorted({c for r in class_roots for c in _class_dirs(r)})
    if not found:
        raise ValueError(f"image-folder root {root} has no class sub-folders")
    class_names = list(classes) if classes is not None else found
    unknown = [c for c in found if c not in class_names]
    if unknown:
        raise ValueError(f"image-folder {root}: sub-folder {unknown[0]!r} is not one of classes={class_names}")

    base = root / split if presplit else root
    paths: list[Path] = []
    labels: list[int] = []
    for k, c in enumerate(class_names):
        folder = base / c
        files = _images_in(folder) if folder.is_dir() else []
        paths += files
        labels += [k] * len(files)
    if not paths:
        raise ValueError(f"image-folder {base}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the class sub-folders")
    if presplit:
        keep = np.arange(len(paths))
    else:
        assigned = stratified_split(labels, seed, val_fraction, test_fraction)
        detail = f"image-folder {root} (val_fraction={val_fraction}, test_fraction={test_fraction})"
        keep = check_nonempty(assigned == split, split, detail)
    paths = [paths[i] for i in keep]
    labels = [labels[i] for i in keep]
    ids = [p.relative_to(base).with_suffix("").as_posix() for p in paths]
    return ImageFolderDataset(
        paths, labels, ids, class_names, split, size=size, channels=int(channels), center_crop=center_crop
    )
