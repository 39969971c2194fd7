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

Files are read lazily, when a sample is used.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medrobust.data.base import DATASETS, ImageDataset, check_split
from medrobust.data.image_folder import check_nonempty, stratified_split

PYDICOM_MISSING = "the dicom dataset needs pydicom: pip install 'medrobust[dicom]' (or pip install pydicom)"


def _first(value: Any) -> float:
    """A DICOM value that may be multi-valued (several windows): its first number."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def read_dicom(path: Path, window: tuple[float, float] | None, size: int) -> torch.Tensor:
    """One DICOM image as float32 (1, size, size) in [0, 1]: rescaled, windowed, MONOCHROME1 inverted, resized."""
    try:
        import pydicom
    except ImportError:
        raise ValueError(PYDICOM_MISSING) from None
    try:
        ds = pydicom.dcmread(str(path))
        pixels = ds.pixel_array.astype(np.float64)
    except Exception as err:  # pydicom raises many kinds: name the file in one line
        raise ValueError(f"cannot read DICOM file {path}: {err}") from None
    if pixels.ndim != 2:
        raise ValueError(f"DICOM file {path} holds an image of shape {pixels.shape}; expected one 2D slice")
    slope, intercept = _first(getattr(ds, "RescaleSlope", 1.0)), _first(getattr(ds, "RescaleIntercept", 0.0))
    values = pixels * slope + intercept
    if window is not None:
        center, width = window
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    else:
        low, high = float(values.min()), float(values.max())
        center, width = (low + high) / 2, max(high - low, 1e-6)
    x = np.clip((values - (center - width / 2)) / width, 0.0, 1.0)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        x = 1.0 - x
    t = torch.from_numpy(x.astype(np.float32))[None, None]
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    return t[0]


def patient_of(path: Path) -> str | None:
    """The patient a DICOM file belongs to (PatientID, else SeriesInstanceUID), read from its header only; None
    when it records neither or cannot be read (reading its image then names the problem)."""
    try:
        import pydicom

        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["PatientID", "SeriesInstanceUID"])
    except Exception:  # noqa: BLE001 - pydicom raises many kinds; the image read reports them in one line
        return None
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

    root: the folder the CSV's file names are relative to. labels_csv: the CSV (relative to root unless
    absolute). class_names: the classes in index order (default: the sorted label names of the CSV). window:
    (center, width) in rescaled units for every file, or None for each file's own. size: pixels per side.
    val_fraction, test_fraction, seed: the stratified split drawn where the CSV has no split column. The
    sampling unit of intervals and paired tests is the patient: the CSV's ``group`` column, else each file's
    PatientID (SeriesInstanceUID where it has none).
    """
    check_split(split)
    root = Path(root)
    table = Path(labels_csv) if Path(labels_csv).is_absolute() else root / labels_csv
    if not table.is_file():
        raise ValueError(f"dicom: labels CSV {str(table)!r} not found; expected columns file, label (and split)")
    with table.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise ValueError(
            f"dicom: {str(table)!r} needs the columns file and label; it has {list(rows[0]) if rows else []}"
        )
    if size < 8:
        raise ValueError(f"dicom: size={size!r} must be >= 8 pixels")
    if window is not None and (len(window) != 2 or not float(window[1]) > 0):
        raise ValueError(f"dicom: window={list(window)!r} must be (center, width) with width > 0")
    names = list(class_names) if class_names else sorted({r["label"] for r in rows if not r["label"].isdigit()})
    labels = []
    for r in rows:
        value = r["label"].strip()
        if value.isdigit() and (class_names or not names):
            labels.append(int(value))
        elif value in names:
            labels.append(names.index(value))
        else:
            raise ValueError(f"dicom: {r['file']!r} has label {value!r}, not one of the classes {names}")
    if not names:
        names = [f"class_{k}" for k in range(max(labels) + 1)]
    paths = [root / r["file"] for r in rows]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"dicom: {len(missing)} files of {str(table)!r} not found (first: {missing[0]!r})")
    if "split" in rows[0]:
        assigned = np.asarray([r["split"].strip() for r in rows], dtype=object)
    else:
        assigned = stratified_split(labels, seed, val_fraction, test_fraction)
    keep = check_nonempty(assigned == split, split, f"dicom {str(table)!r}")
    ids = [Path(rows[i]["file"]).stem for i in keep]
    win = (float(window[0]), float(window[1])) if window is not None else None
    ds = DicomDataset([paths[i] for i in keep], [labels[i] for i in keep], ids, names, split, win, size)
    # images of one patient are one independent unit: the CSV's group column, else the files' PatientID
    if "group" in rows[0]:
        ds.groups = [rows[i]["group"].strip() or ids[j] for j, i in enumerate(keep)]
    else:
        patients = [patient_of(paths[i]) for i in keep]
        if any(p is not None for p in patients):
            ds.groups = [p or ids[j] for j, p in enumerate(patients)]
    ds.info.update(root=str(root), labels_csv=str(table), window=win)
    return ds
