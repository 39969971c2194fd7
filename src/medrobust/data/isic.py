"""``isic``: ISIC / HAM10000-style dermoscopy folders (images + one metadata CSV).

Two label layouts are recognised:

- HAM10000: a ``dx`` column (akiec, bcc, bkl, df, mel, nv, vasc); classes default to the sorted labels present;
- ISIC 2017 (Codella et al.; the data of Paschali et al., MICCAI 2018): one-hot ``melanoma`` and
  ``seborrheic_keratosis`` columns, nevus when both are 0; classes default to
  ("nevus", "melanoma", "seborrheic_keratosis"), the order derm-synth uses.

The split comes from a ``split_column`` or is drawn by ``seed`` (stratified by class, deterministic). HAM10000
has several images of the same lesion, so when a ``lesion_id`` column exists all images of one lesion go to the
same split (no lesion leaks from train into test). Images are read lazily and resized to size x size RGB.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medrobust.data.base import (
    DATASETS,
    bool_param,
    check_duplicate_ids,
    check_size,
    check_split,
    names_param,
    path_param,
    read_csv_rows,
    seed_param,
    text_param,
)
from medrobust.data.image_folder import FileImageDataset, check_fractions, check_nonempty, stratified_split

ISIC_EXTENSIONS = (".jpg", ".jpeg", ".png")
ISIC2017_CLASSES = ("nevus", "melanoma", "seborrheic_keratosis")
_ONE_HOT = ("melanoma", "seborrheic_keratosis")
_SPLIT_VALUES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}  # fmt: skip


class ISICDataset(FileImageDataset):
    name = "isic"


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Columns and rows of a CSV file (a UTF-8 byte-order mark is ignored; cells are stripped)."""
    return read_csv_rows(path, "CSV")


def _find_csv(root: Path, csv: str | Path | None) -> Path:
    if csv is not None:
        path = path_param(csv, "csv", "isic")
        if not path.is_absolute() and not path.exists():
            path = root / path
        if not path.is_file():
            raise FileNotFoundError(f"metadata CSV {path} does not exist")
        return path
    found = sorted(root.glob("*.csv"))
    if len(found) != 1:
        what = "no .csv file" if not found else f"{len(found)} .csv files ({', '.join(p.name for p in found)})"
        raise ValueError(f"isic root {root} has {what}; pass csv=<metadata file>")
    return found[0]


def _labels(rows: list[dict[str, str]], columns: list[str], label_column: str | None, path: Path) -> list[str]:
    if label_column is None:
        if "dx" in columns:
            label_column = "dx"
        elif all(c in columns for c in _ONE_HOT):
            return [_one_hot_label(row, path) for row in rows]
        else:
            raise ValueError(
                f"CSV {path} has neither a 'dx' column nor the ISIC 2017 one-hot columns "
                f"{list(_ONE_HOT)}; pass label_column=. Columns present: {columns}"
            )
    if label_column not in columns:
        raise ValueError(f"CSV {path} has no label column {label_column!r}; columns present: {columns}")
    labels = [row[label_column] for row in rows]
    if "" in labels:
        raise ValueError(f"CSV {path}: row {labels.index('') + 2} has an empty {label_column!r}")
    return labels


def _one_hot_label(row: dict[str, str], path: Path) -> str:
    try:
        mel, sk = (float(row[c]) for c in _ONE_HOT)
    except ValueError:
        raise ValueError(
            f"CSV {path}: image {row.get('image_id', '?')!r} has non-numeric one-hot labels "
            f"{[row[c] for c in _ONE_HOT]}"
        ) from None
    if mel >= 0.5 and sk >= 0.5:
        raise ValueError(
            f"CSV {path}: image {row.get('image_id', '?')!r} is marked both melanoma and seborrheic_keratosis"
        )
    return "melanoma" if mel >= 0.5 else "seborrheic_keratosis" if sk >= 0.5 else "nevus"


def _resolve_files(ids: list[str], image_dir: Path, csv_path: Path) -> list[Path]:
    """The image file of each id (id + .jpg/.jpeg/.png, any case; or the id itself if it has an extension)."""
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder {image_dir} does not exist")
    available: dict[str, Path] = {}
    for p in sorted(image_dir.iterdir()):
        if p.suffix.lower() in ISIC_EXTENSIONS:
            rank = ISIC_EXTENSIONS.index(p.suffix.lower())
            for key in (p.stem, p.name):
                old = available.get(key)
                if old is None or rank < ISIC_EXTENSIONS.index(old.suffix.lower()):
                    available[key] = p
    paths: list[Path] = []
    missing: list[str] = []
    for image_id in ids:
        found = available.get(image_id)
        if found is None:
            missing.append(image_id)
        else:
            paths.append(found)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(ids)} images listed in {csv_path} are missing from {image_dir}; first missing: "
            f"{missing[0]!r} (looked for {missing[0]}{'|'.join(ISIC_EXTENSIONS)})"
        )
    return paths


@DATASETS.register("isic")
def build_isic(
    split: str = "test",
    root: str | Path | None = None,
    csv: str | Path | None = None,
    image_dir: str | Path | None = None,
    label_column: str | None = None,
    id_column: str = "image_id",
    classes: Sequence[str] | None = None,
    size: int = 64,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    split_column: str | None = None,
    group_column: str | None = "lesion_id",
    center_crop: bool = False,
) -> ISICDataset:
    """One split of an ISIC/HAM10000 folder as RGB images (3, size, size) in [0, 1].

    root: the folder; csv: the metadata file (default: the single *.csv in root); image_dir: default
    root/images if present, else root. label_column: default ``dx``, else the ISIC 2017 one-hot columns.
    classes: the class order (default: sorted labels; ISIC 2017: nevus, melanoma, seborrheic_keratosis).
    split_column: a column with train/val/test values; otherwise a stratified draw by ``seed`` with
    ``val_fraction`` and ``test_fraction``, keeping each ``group_column`` group (lesion) in one split (set
    group_column=None to split image by image). The group column (or a column named ``group``) is also the
    sampling unit of intervals and paired tests: images of one lesion or patient are not independent.
    center_crop: crop to a square before resizing (default: squash).
    Ids are the CSV's image ids.
    """
    check_split(split)
    if root is None:
        raise ValueError("isic needs root=<folder with the images and the metadata CSV>")
    root = path_param(root, "root", "isic")
    if not root.is_dir():
        raise FileNotFoundError(f"isic root {root} does not exist or is not a folder")
    size = check_size(size, "isic")
    check_fractions(val_fraction, test_fraction, "isic")
    seed = seed_param(seed, "isic")
    center_crop = bool_param(center_crop, "center_crop", "isic")
    id_column = text_param(id_column, "id_column", "isic")
    for name, value in (("label_column", label_column), ("split_column", split_column)):
        if value is not None:
            text_param(value, name, "isic")
    if group_column is not None and not isinstance(group_column, str):
        raise ValueError(f"isic: group_column={group_column!r} must be a column name (text), or null for none")
    if classes is not None:
        classes = names_param(classes, "classes", "isic")
    csv_path = _find_csv(root, csv)
    columns, rows = read_csv(csv_path)
    if id_column not in columns:
        raise ValueError(f"CSV {csv_path} has no id column {id_column!r}; columns present: {columns}")
    ids = [row[id_column] for row in rows]
    if "" in ids:
        raise ValueError(f"CSV {csv_path}: row {ids.index('') + 2} has an empty {id_column!r}; every image needs an id")
    labels_text = _labels(rows, columns, label_column, csv_path)
    check_duplicate_ids(ids, labels_text, f"CSV {csv_path}")

    if classes is not None:
        class_names = list(classes)
    elif label_column is None and "dx" not in columns:
        class_names = list(ISIC2017_CLASSES)
    else:
        class_names = sorted(set(labels_text))
    index = {c: k for k, c in enumerate(class_names)}
    for image_id, lab in zip(ids, labels_text):
        if lab not in index:
            raise ValueError(f"image {image_id!r} has label {lab!r}, which is not one of classes={class_names}")
    labels = np.array([index[lab] for lab in labels_text])

    img_dir = path_param(image_dir, "image_dir", "isic") if image_dir is not None else root / "images"
    if image_dir is None and not img_dir.is_dir():
        img_dir = root
    elif image_dir is not None and not img_dir.is_absolute() and not img_dir.is_dir():
        img_dir = root / img_dir
    paths = _resolve_files(ids, img_dir, csv_path)

    where = f"isic {csv_path}"
    if split_column is not None:
        if split_column not in columns:
            raise ValueError(f"CSV {csv_path} has no split column {split_column!r}; columns present: {columns}")
        assigned = []
        for row in rows:
            value = row[split_column].lower()
            if value not in _SPLIT_VALUES:
                raise ValueError(
                    f"CSV {csv_path}: image {row[id_column]!r} has {split_column}={row[split_column]!r}; "
                    f"expected one of {sorted(_SPLIT_VALUES)}"
                )
            assigned.append(_SPLIT_VALUES[value])
        keep = check_nonempty(np.array(assigned) == split, split, f"{where} ({split_column!r} column)")
    else:
        assigned_arr = _draw_split(rows, columns, labels, seed, val_fraction, test_fraction, group_column, csv_path)
        keep = check_nonempty(
            assigned_arr == split, split, f"{where} (val_fraction={val_fraction}, test_fraction={test_fraction})"
        )
    ds = ISICDataset(
        [paths[i] for i in keep],
        labels[keep].tolist(),
        [ids[i] for i in keep],
        class_names,
        split,
        size=size,
        channels=3,
        center_crop=center_crop,
    )
    # images of one lesion (patient) are one independent unit for intervals and tests: the group column, else
    # a column named "group"; an empty cell leaves the image on its own
    column = group_column if group_column in columns else ("group" if "group" in columns else None)
    if column is not None:
        ds.groups = [rows[i][column] or f"{ids[i]}" for i in keep]
        ds.group_unit = {"lesion_id": "lesion", "patient_id": "patient"}.get(column, "group")
    return ds


def _draw_split(
    rows: list[dict[str, str]],
    columns: list[str],
    labels: np.ndarray,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    group_column: str | None,
    csv_path: Path,
) -> np.ndarray:
    """Stratified split per image, or per group (lesion) when ``group_column`` is in the CSV."""
    if not group_column:
        return stratified_split(labels, seed, val_fraction, test_fraction)
    if group_column not in columns:
        if group_column == "lesion_id":  # the default: absent simply means no grouping
            return stratified_split(labels, seed, val_fraction, test_fraction)
        raise ValueError(f"CSV {csv_path} has no group column {group_column!r}; columns present: {columns}")
    groups = [row[group_column] or f"__row{i}" for i, row in enumerate(rows)]
    first: dict[str, int] = {}
    for i, gname in enumerate(groups):
        first.setdefault(gname, i)
    names = list(first)
    group_split = stratified_split(labels[[first[gname] for gname in names]], seed, val_fraction, test_fraction)
    by_group = dict(zip(names, group_split))
    return np.array([by_group[gname] for gname in groups], dtype=object)
