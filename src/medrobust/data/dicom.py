"""``dicom``: classification from a folder of DICOM files and a labels CSV (pydicom, the ``dicom`` extra).

The CSV names one file per row (``file``, relative to ``root``) and its class (``label``: a class name, or an
integer index into ``class_names``); an optional ``split`` column assigns train/val/test, else the split is drawn
by ``seed``, stratified by class, as ``image-folder`` does. Each image is read with pydicom and mapped to
[0, 1] the way a reader sees it:

1. modality rescale: ``stored value * RescaleSlope + RescaleIntercept`` (Hounsfield units for CT), from the
   file (slope 1, intercept 0 where absent);
2. windowing: values in ``[center - width / 2, center + width / 2]`` map linearly to [0, 1] and are clipped
   there. ``window`` = (center, width) for every file (e.g. (40, 400), a soft-tissue CT window), or None to use
   each file's own WindowCenter/WindowWidth, or, without those, its own minimum and maximum;
3. MONOCHROME1 (white is low) is inverted; the image is resized to ``size`` x ``size`` (bilinear, antialiased).

Files are read lazily, when a sample is used. The CSV is data: every ``file`` must lie inside ``root`` (no
``../``, no absolute path elsewhere, no symbolic link leading out), and each file's header (rows x columns x
frames) is checked against MEDROBUST_MAX_PIXELS and against the size of the file before its pixels are decoded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medrobust.data.base import (
    DATASETS,
    SPLITS,
    ImageDataset,
    check_declared_pixels,
    check_size,
    check_split,
    names_param,
    numbers_param,
    path_param,
    read_csv_rows,
    seed_param,
)
from medrobust.data.image_folder import check_fractions, check_nonempty, stratified_split
from medrobust.files import UnsafePathError, check_inside

PYDICOM_MISSING = "the dicom dataset needs pydicom: pip install 'medrobust[dicom]' (or pip install pydicom)"
#: the smallest image side the dicom dataset resizes to
MIN_SIZE = 8


def _first(value: Any) -> float:
    """A DICOM value that may be multi-valued (several windows): its first number."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _header_int(ds: Any, keyword: str, default: int | None, path: Path) -> int | None:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"DICOM file {path}: {keyword} {value!r} is not a whole number") from None
    if number < 1:
        raise ValueError(f"DICOM file {path}: {keyword} {number} must be >= 1")
    return number


def check_dicom_header(ds: Any, path: Path, pixels: bool = True) -> None:
    """Refuse, before its pixels are decoded, a DICOM file without an image, one whose header declares more
    pixels (rows x columns x frames) than MEDROBUST_MAX_PIXELS, or (uncompressed) more bytes of pixel data than
    the file holds, or more than one 2D grayscale slice. ``pixels``: ``ds`` was read with its pixel data (else
    only the header, and the presence of PixelData is not checked)."""
    rows, columns = _header_int(ds, "Rows", None, path), _header_int(ds, "Columns", None, path)
    if rows is None or columns is None or (pixels and "PixelData" not in ds):
        raise ValueError(f"DICOM file {path} holds no image (no Rows, Columns or PixelData)")
    frames = _header_int(ds, "NumberOfFrames", 1, path) or 1
    samples = _header_int(ds, "SamplesPerPixel", 1, path) or 1
    bits = _header_int(ds, "BitsAllocated", 8, path) or 8
    try:
        check_declared_pixels((rows, columns, frames), "rows x columns x frames")
    except ValueError as err:
        raise ValueError(f"DICOM file {path}: {err}") from None
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not getattr(syntax, "is_compressed", False):
        needed = (rows * columns * frames * samples * bits + 7) // 8
        size = path.stat().st_size
        if needed > size:
            raise ValueError(
                f"DICOM file {path} declares {rows} x {columns} x {frames} pixels ({needed:,} bytes of pixel data) "
                f"but holds {size:,} bytes: truncated or not what its header says"
            )
    if frames != 1 or samples != 1:
        raise ValueError(
            f"DICOM file {path} holds {frames} frame(s) of {rows} x {columns} with {samples} sample(s) per pixel; "
            "expected one 2D slice, grayscale"
        )


def read_dicom(path: Path, window: tuple[float, float] | None, size: int) -> torch.Tensor:
    """One DICOM image as float32 (1, size, size) in [0, 1]: rescaled, windowed, MONOCHROME1 inverted, resized."""
    try:
        import pydicom
    except ImportError:
        raise ValueError(PYDICOM_MISSING) from None
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as err:  # pydicom raises many kinds: name the file in one line
        raise ValueError(f"cannot read DICOM file {path}: {err}") from None
    check_dicom_header(ds, Path(path))
    try:
        pixels = ds.pixel_array.astype(np.float64)
    except Exception as err:  # noqa: BLE001 - the decoders raise many kinds: name the file in one line
        raise ValueError(f"cannot read DICOM file {path}: {err}") from None
    if pixels.ndim != 2:
        raise ValueError(f"DICOM file {path} holds an image of shape {pixels.shape}; expected one 2D slice")
    try:
        slope, intercept = _first(getattr(ds, "RescaleSlope", 1.0)), _first(getattr(ds, "RescaleIntercept", 0.0))
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"DICOM file {path}: RescaleSlope or RescaleIntercept is not a number") from None
    values = pixels * slope + intercept
    if window is not None:
        center, width = window
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        except (TypeError, ValueError, IndexError):
            raise ValueError(f"DICOM file {path}: WindowCenter or WindowWidth is not a number") from None
        if not (np.isfinite(center) and np.isfinite(width) and width > 0):
            raise ValueError(
                f"DICOM file {path} has WindowCenter {center:g}, WindowWidth {width:g}; the width must be a finite "
                "number > 0 (pass window=[center, width])"
            )
    else:
        low, high = float(values.min()), float(values.max())
        center, width = (low + high) / 2, max(high - low, 1e-6)
    if not np.isfinite(values).all():
        raise ValueError(f"DICOM file {path} holds NaN or infinite pixel values (after its rescale)")
    x = np.clip((values - (center - width / 2)) / width, 0.0, 1.0)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        x = 1.0 - x
    t = torch.from_numpy(x.astype(np.float32))[None, None]
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    return t[0]


def patient_of(path: Path) -> str | None:
    """The patient a DICOM file belongs to (PatientID, else SeriesInstanceUID), read from its header only, whose
    declared image size is checked on the way (:func:`check_dicom_header`); None when it records neither or cannot
    be read (reading its image then names the problem)."""
    try:
        import pydicom

        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - pydicom raises many kinds; the image read reports them in one line
        return None
    check_dicom_header(ds, Path(path), pixels=False)
    for tag in ("PatientID", "SeriesInstanceUID"):
        value = str(getattr(ds, tag, "") or "").strip()
        if value:
            return f"{tag}:{value}"
    return None


class DicomDataset(ImageDataset):
    group_unit = "patient"

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int],
        ids: Sequence[str],
        class_names: Sequence[str],
        split: str,
        window: tuple[float, float] | None,
        size: int,
    ) -> None:
        super().__init__(class_names, torch.as_tensor(list(labels), dtype=torch.long), ids, split)
        self.paths, self.window, self.size = list(paths), window, size

    def image(self, i: int) -> torch.Tensor:
        return read_dicom(self.paths[int(i)], self.window, self.size)


def file_inside(root: Path, name: str, where: str) -> Path:
    """``root / name`` if it lies inside ``root`` once every link is followed; else one line naming ``where``
    (the CSV and row), the file and the root."""
    if not name:
        raise ValueError(f"{where}: the file cell is empty; expected a file name relative to root")
    path = root / name
    real = Path(os.path.realpath(path))
    try:
        check_inside(real, root)
    except UnsafePathError:
        raise ValueError(
            f"{where}: file {name!r} leads outside root {str(root)!r} (to {str(real)!r}); the files a labels CSV "
            "names must lie inside root"
        ) from None
    return path


@DATASETS.register("dicom")
def build_dicom(
    split: str = "test",
    root: str | Path = ".",
    labels_csv: str | Path = "labels.csv",
    class_names: Sequence[str] | None = None,
    window: Sequence[float] | None = None,
    size: int = 64,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> DicomDataset:
    """One split of DICOM files listed in a labels CSV (columns file, label, optional split), windowed to [0, 1].

    root: the folder the CSV's file names are relative to (every file must lie inside it). labels_csv: the CSV
    (relative to root unless absolute). class_names: the classes in index order (default: the sorted label names
    of the CSV). window: (center, width) in rescaled units for every file, or None for each file's own. size:
    pixels per side (8..1024). val_fraction, test_fraction, seed: the stratified split drawn where the CSV has no
    split column. The sampling unit of intervals and paired tests is the patient: the CSV's ``group`` column,
    else each file's PatientID (SeriesInstanceUID where it has none).
    """
    check_split(split)
    root = path_param(root, "root", "dicom")
    csv_name = path_param(labels_csv, "labels_csv", "dicom")
    size = check_size(size, "dicom", low=MIN_SIZE)
    win = None
    if window is not None:
        center, width = numbers_param(window, "window", 2, "dicom", "center, width")
        if not width > 0:
            raise ValueError(f"dicom: window={list(window)!r} must be (center, width) with width > 0")
        win = (center, width)
    given = names_param(class_names, "class_names", "dicom") if class_names is not None else None
    check_fractions(val_fraction, test_fraction, "dicom")
    seed = seed_param(seed, "dicom")
    table = csv_name if csv_name.is_absolute() else root / csv_name
    if not table.is_file():
        raise ValueError(f"dicom: labels CSV {str(table)!r} not found; expected columns file, label (and split)")
    columns, rows = read_csv_rows(table, "dicom: labels CSV")
    if not {"file", "label"} <= set(columns):
        raise ValueError(f"dicom: {str(table)!r} needs the columns file and label; it has {columns}")
    for n, r in enumerate(rows, start=2):
        if not r["label"]:
            raise ValueError(f"dicom: {str(table)!r} row {n} ({r['file']!r}) has an empty label")
    names = list(given) if given else sorted({r["label"] for r in rows if not r["label"].isdigit()})
    labels = []
    for n, r in enumerate(rows, start=2):
        value = r["label"]
        if value.isdigit() and (given or not names):
            labels.append(int(value))
        elif value in names:
            labels.append(names.index(value))
        else:
            raise ValueError(f"dicom: {r['file']!r} (row {n}) has label {value!r}, not one of the classes {names}")
    if not names:
        if max(labels) >= len(rows):  # the class count comes from the data: one label may not ask for a billion
            raise ValueError(
                f"dicom: {str(table)!r}: label {max(labels)} implies {max(labels) + 1:,} classes but the CSV has "
                f"{len(rows)} rows; pass class_names=[...] or use class indices 0..K-1"
            )
        names = [f"class_{k}" for k in range(max(labels) + 1)]
    paths = [file_inside(root, r["file"], f"dicom: {str(table)!r} row {n}") for n, r in enumerate(rows, start=2)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"dicom: {len(missing)} files of {str(table)!r} not found (first: {missing[0]!r})")
    if "split" in columns:
        for n, r in enumerate(rows, start=2):
            if r["split"] not in SPLITS:
                raise ValueError(
                    f"dicom: {str(table)!r} row {n} ({r['file']!r}) has split {r['split']!r}; expected one of "
                    f"{', '.join(SPLITS)}"
                )
        assigned = np.asarray([r["split"] for r in rows], dtype=object)
    else:
        assigned = stratified_split(labels, seed, val_fraction, test_fraction)
    keep = check_nonempty(assigned == split, split, f"dicom {str(table)!r}")
    ids_all = _ids([r["file"] for r in rows])
    ids = [ids_all[i] for i in keep]
    ds = DicomDataset([paths[i] for i in keep], [labels[i] for i in keep], ids, names, split, win, size)
    # every header is read now (its declared size checked before any pixel is); images of one patient are one
    # independent unit: the CSV's group column, else the files' PatientID
    patients = [patient_of(paths[i]) for i in keep]
    if "group" in columns:
        ds.groups = [rows[i]["group"] or ids[j] for j, i in enumerate(keep)]
    elif any(p is not None for p in patients):
        ds.groups = [p or ids[j] for j, p in enumerate(patients)]
    ds.info.update(root=str(root), labels_csv=str(table), window=win)
    return ds


def _ids(files: list[str]) -> list[str]:
    """Sample ids: the file names without extension, or, where two different files share one, their paths
    without extension (a/x.dcm and b/x.dcm are two samples, not one listed twice)."""
    stems: dict[str, set[str]] = {}
    for f in files:
        stems.setdefault(Path(f).stem, set()).add(Path(f).as_posix())
    if all(len(v) == 1 for v in stems.values()):
        return [Path(f).stem for f in files]
    return [Path(f).with_suffix("").as_posix() for f in files]
