"""Rows of the bad-input table (tests/test_bad_input.py): data.

Each row builds a tiny dataset (a few 16x16 PNGs, a copy of pydicom's CT_small, 4x4x4 NIfTI volumes, a small .npz)
with one thing wrong, inside its case folder, and expects one line naming the value, the parameter or file, and
what was expected, before any attack runs. Where the command-line's type check (registry) and the builder's own
check could both answer, the message pattern accepts either wording.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
from bad_input_kit import Case, run_args, write_npz, write_spec
from PIL import Image

CLASSES = ("nevus", "melanoma", "seborrheic_keratosis")  # the tiny checkpoint's classes, in its order


def _pydicom_missing() -> str:
    try:
        import pydicom  # noqa: F401
    except ImportError:
        return "pydicom is not installed (pip install 'medrobust[dicom]')"
    return ""


def _png(path: Path, mode: str = "RGB", seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = {"RGB": (16, 16, 3), "RGBA": (16, 16, 4), "L": (16, 16)}[mode]
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path)
    return path


def _folder(d: Path, bad: dict[str, bytes] | None = None, modes: tuple[str, ...] = ("RGB",)) -> Path:
    """d/imgs/{train,val,test}/<class>/k.png (one image per class and split), plus ``bad`` files (name -> bytes)
    in test/nevus, which is then the first class read."""
    root = d / "imgs"
    for split in ("train", "val", "test"):
        for k, c in enumerate(CLASSES):
            _png(root / split / c / "0.png", modes[k % len(modes)], seed=k)
    for name, data in (bad or {}).items():
        (root / "test" / "nevus" / name).write_bytes(data)
    return root


#: the checkpoint's classes in its order, for builders that would otherwise sort folder or label names
ORDER = "[" + ", ".join(CLASSES) + "]"


def _folder_args(c: Path, root: Path, *params: str) -> list[str]:
    return _evaluate(c, "image-folder", (f"root={root}", "size=16", f"classes={ORDER}"), params)


def _png_bytes(bits16: bool = False) -> bytes:
    """A 16x16 PNG: RGB noise (852 bytes), or a 16-bit grayscale ramp (8-bit conversion would clip it to white)."""
    import io

    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    Image.fromarray((np.arange(256).reshape(16, 16) * 200).astype(np.uint16) if bits16 else noise).save(buf, "PNG")
    return buf.getvalue()


def _evaluate(c: Path, dataset: str, defaults: tuple[str, ...], params: tuple[str, ...]) -> list[str]:
    """``medrobust evaluate`` of the tiny checkpoint on ``dataset`` with -d ``params``, and ``defaults`` for the
    keys ``params`` does not give."""
    given = {p.split("=", 1)[0] for p in params}
    args = ["evaluate", "--model", str(c), "--dataset", dataset]
    for p in (*(p for p in defaults if p.split("=", 1)[0] not in given), *params):
        args += ["-d", p]
    return args


def _png_header(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header declares width x height RGB pixels (no pixel data)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# --- ISIC: images/<id>.png and one metadata CSV (ISIC 2017 one-hot columns: the checkpoint's classes) ----------
def _isic(d: Path, csv_text: str | bytes | None = None, n: int = 9) -> Path:
    root = d / "isic"
    for k in range(n):
        _png(root / "images" / f"I{k}.png", seed=k)
    if csv_text is None:
        rows = [f"I{k},{int(k % 3 == 1)},{int(k % 3 == 2)}" for k in range(n)]
        csv_text = "image_id,melanoma,seborrheic_keratosis\n" + "\n".join(rows) + "\n"
    data = csv_text.encode() if isinstance(csv_text, str) else csv_text
    (root / "meta.csv").write_bytes(data)
    return root


def _isic_args(c: Path, root: Path, *params: str) -> list[str]:
    return _evaluate(c, "isic", (f"root={root}", "size=16", "test_fraction=0.4"), params)


# --- DICOM: copies of pydicom's CT_small (128 x 128, 16 bits) and a labels CSV, every row in split test ----------
def _ct_small() -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm"))


def _dicom(d: Path, files: list[str] | None = None, extra: str = "", header: str = "file,label,split",
           rows: list[str] | None = None) -> Path:
    root = d / "dcm"
    root.mkdir()
    for k in range(3):
        shutil.copy(_ct_small(), root / f"a{k}.dcm")
    files = files if files is not None else [f"a{k}.dcm" for k in range(3)]
    if rows is None:
        rows = [f"{f},{CLASSES[k % 3]},test" for k, f in enumerate(files)]
    (root / "labels.csv").write_text(header + "\n" + "\n".join(rows) + "\n" + extra)
    return root


def _dicom_args(c: Path, root: Path, *params: str) -> list[str]:
    return _evaluate(c, "dicom", (f"root={root}", "size=16", f"class_names={ORDER}"), params)


def _crafted_dicom(d: Path, **changes) -> Path:
    """A dicom folder whose first file (a0.dcm, read first) has header fields replaced."""
    import pydicom

    root = _dicom(d)
    ds = pydicom.dcmread(_ct_small())
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(root / "a0.dcm")
    return root


def _outside(d: Path) -> Path:
    shutil.copy(_ct_small(), d / "outside.dcm")
    return d / "outside.dcm"


def _not_dicom(d: Path) -> Path:
    root = _dicom(d)
    (root / "a0.dcm").write_bytes(b"not a dicom file")
    return root


def _dotdot(d: Path) -> Path:
    _outside(d)
    return _dicom(d, files=["a0.dcm", "../outside.dcm", "a2.dcm"])


def _linked_out(d: Path) -> Path:
    root = _dicom(d, files=["a0.dcm", "a1.dcm", "link.dcm"])
    (root / "link.dcm").symlink_to(_outside(d))
    return root


# --- NIfTI: 4x4x4 volume pairs under d/nii (root= pairing: *_T1.nii.gz beside *_seg.nii.gz) ---------------------
def _nifti(d: Path, label_shape: tuple[int, ...] = (4, 4, 4), codes: int = 1) -> Path:
    import nibabel as nib

    root = d / "nii"
    root.mkdir()
    image = np.random.default_rng(0).random((4, 4, 4)).astype(np.float32) + 0.1
    label = np.zeros(label_shape, np.int16)
    label[1:3, 1:3, :] = codes
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / "v0_T1.nii.gz"))
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "v0_seg.nii.gz"))
    return root


def _nifti_args(c: Path, root: Path, *params: str, names: bool = True) -> list[str]:
    names_ = ("class_names=['bg','fg']",) if names else ()
    return _evaluate(c, "nifti", (f"root={root}", "split_fractions=[0,0,1]", *names_), params)


def _listing_args(c: Path, d: Path, row: str) -> list[str]:
    """evaluate on a nifti CSV listing (image,label,split) of one row."""
    _nifti(d)
    (d / "nii" / "list.csv").write_text("image,label,split\n" + row + "\n")
    return ["evaluate", "--model", str(c), "--dataset", "nifti", "-d", f"csv={d / 'nii' / 'list.csv'}", "-d",
            "class_names=['bg','fg']"]


# --- MedMNIST .npz ------------------------------------------------------------------------------------------------
def _npz(d: Path, **arrays) -> Path:
    path = d / "data.npz"
    np.savez(path, **arrays)
    return path


def _npz_declaring(d: Path, shape: tuple[int, ...], data: bytes = b"") -> Path:
    """An .npz whose test_images.npy header declares ``shape`` of uint8 but holds only ``data`` after it."""
    import io

    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "|u1", "fortran_order": False, "shape": shape})
    labels = io.BytesIO()
    np.save(labels, np.zeros((8, 1), np.int64))
    path = d / "data.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("test_images.npy", head.getvalue() + data)
        z.writestr("test_labels.npy", labels.getvalue())
    return path


def _medmnist_args(c: Path, path: Path) -> list[str]:
    return ["evaluate", "--model", str(c), "--dataset", "medmnist", "-d", f"path={path}"]


def _image_spec(d: Path, c: Path, **params) -> list[str]:
    root = _folder(d)
    return run_args(d, write_spec(d, c, dataset={"name": "image-folder", "params": {"root": str(root), "size": 16,
                                                                                       **params}}))


NEEDS_DICOM = _pydicom_missing

DATA_CASES: list[Case] = [
    # --- parameters of the wrong type or out of range: one line naming the parameter and what it expects ---------
    Case("image-folder -d size=abc", lambda c, d: _folder_args(c, _folder(d), "size=abc"),
         r"image-folder: size='abc' must be (an integer|a whole number)"),
    Case("image-folder size 100000", lambda c, d: _folder_args(c, _folder(d), "size=100000"),
         r"image-folder: size=100000 must be a whole number of pixels in \[1, 1024\]"),
    Case("image-folder size 0", lambda c, d: _folder_args(c, _folder(d), "size=0"),
         r"size=0 must be a whole number of pixels in \[1, 1024\]"),
    Case("image-folder spec size [1, 2]", lambda c, d: _image_spec(d, c, size=[1, 2]),
         r"image-folder: size=\[1, 2\] must be (an integer|a whole number)"),
    Case("image-folder spec seed 'x'", lambda c, d: _image_spec(d, c, seed="x"),
         r"image-folder: seed='x' must be an integer"),
    Case("image-folder spec seed 1.5", lambda c, d: _image_spec(d, c, seed=1.5),
         r"image-folder: seed=1\.5 must be an integer"),
    Case("image-folder spec val_fraction 2", lambda c, d: _image_spec(d, c, val_fraction=2),
         r"image-folder: val_fraction=2 must be a finite number in \[0, 1\]"),
    Case("image-folder classes as one text", lambda c, d: _image_spec(d, c, classes="abc"),
         r"image-folder: classes='abc' must be a list of class names"),
    Case("image-folder classes named twice", lambda c, d: _image_spec(d, c, classes=["nevus", "nevus", "melanoma"]),
         r"classes=\['nevus', 'nevus', 'melanoma'\] lists the class 'nevus' twice; names must be distinct"),
    Case("image-folder center_crop 'yes'", lambda c, d: _image_spec(d, c, center_crop="yes"),
         r"image-folder: center_crop='yes' must be true or false"),
    Case("image-folder channels 2", lambda c, d: _folder_args(c, _folder(d), "channels=2"),
         r"image-folder: channels=2 must be 1 \(grayscale\) or 3 \(RGB\)"),
    Case("isic size 4096", lambda c, d: _isic_args(c, _isic(d), "size=4096"),
         r"isic: size=4096 must be a whole number of pixels in \[1, 1024\]"),
    Case("dicom size 4", lambda c, d: _dicom_args(c, _dicom(d), "size=4"),
         r"dicom: size=4 must be a whole number of pixels in \[8, 1024\]", skip=NEEDS_DICOM),
    Case("dicom window of width 0", lambda c, d: _dicom_args(c, _dicom(d), "window=[40,0]"),
         r"dicom: window=\[40, 0\] must be \(center, width\) with width > 0", skip=NEEDS_DICOM),
    Case("medmnist download 'yes'", lambda c, d: [*_medmnist_args(c, write_npz(d)), "-d", "download=yes"],
         r"medmnist: download='yes' must be true or false"),
    Case("nifti pad_to_multiple 10**6", lambda c, d: _nifti_args(c, _nifti(d), "pad_to_multiple=1000000"),
         r"nifti: pad_to_multiple=1000000 must be a whole number in \[1, 1024\]"),
    Case("nifti patch_size in mode 2d", lambda c, d: _nifti_args(c, _nifti(d), "patch_size=[2,2,2]"),
         r"nifti: patch_size=\[2, 2, 2\] and stride=None apply to mode '3d' only \(mode is '2d'\)"),
    Case("nifti split_fractions of two numbers", lambda c, d: _nifti_args(c, _nifti(d), "split_fractions=[0.5,0.5]"),
         r"nifti: split_fractions=\[0\.5, 0\.5\] must be a list of 3 finite numbers"),
    Case("mni152 multiple 10**9", lambda c, d: ["evaluate", "--model", str(c), "--dataset", "mni152-tissue", "-d",
                                                "multiple=1000000000"],
         r"mni152-tissue: multiple=1000000000 must be a whole number in \[1, 256\]"),
    Case("mni152 seed -1", lambda c, d: ["evaluate", "--model", str(c), "--dataset", "mni152-tissue", "-d",
                                         "seed=-1", "-d", "variant=noise"],
         r"mni152-tissue: seed=-1 must be an integer in \[0, 9223372036854775807\]"),
    # --- image files that are not what they claim ------------------------------------------------------------------
    Case("image-folder 0-byte PNG", lambda c, d: _folder_args(c, _folder(d, {"a.png": b""})),
         r"cannot read image .*test/nevus/a\.png: the file is empty \(0 bytes\)"),
    Case("image-folder text file named .png", lambda c, d: _folder_args(c, _folder(d, {"a.png": b"hello\n" * 4})),
         r"cannot read image .*a\.png: cannot identify image file"),
    Case("image-folder truncated PNG", lambda c, d: _folder_args(c, _folder(d, {"a.png": _png_bytes()[:400]})),
         r"cannot read image .*a\.png: image file is truncated"),
    Case("image-folder 16-bit PNG", lambda c, d: _folder_args(c, _folder(d, {"a.png": _png_bytes(bits16=True)})),
         r"cannot read image .*a\.png: it has Pillow mode 'I;16' \(more than 8 bits per channel\)"),
    Case("image-folder PNG header of 12000 x 10000", lambda c, d: _folder_args(c, _folder(
        d, {"a.png": _png_header(12_000, 10_000)})), r"it declares 12000 x 10000 = 120,000,000 pixels, above the "
         r"limit of 100,000,000 \(set MEDROBUST_MAX_PIXELS"),
    Case("image-folder root without class folders", lambda c, d: _folder_args(c, _png(d / "flat" / "a.png").parent),
         r"image-folder root .*flat has no class sub-folders"),
    Case("image-folder class folders without images", lambda c, d: _folder_args(
        c, (d / "e" / "nevus").mkdir(parents=True) or d / "e"), r"image-folder .*e: no images \(\.png"),
    Case("grayscale, RGB and RGBA mixed are read as RGB", lambda c, d: _folder_args(c, _folder(d, modes=(
        "L", "RGB", "RGBA"))), r"clean", code=0),
    # --- CSV files: empty, header only, not UTF-8, missing columns, unknown labels ------------------------------
    Case("isic empty CSV", lambda c, d: _isic_args(c, _isic(d, "")), r"CSV .*meta\.csv is empty \(no header row\)"),
    Case("isic CSV with a header only", lambda c, d: _isic_args(c, _isic(d, "image_id,dx\n")),
         r"CSV .*meta\.csv has a header but no rows"),
    Case("isic CSV not UTF-8", lambda c, d: _isic_args(c, _isic(d, b"image_id,dx\n\xff\xfe\x00\x81,nv\n")),
         r"CSV .*meta\.csv is not UTF-8 text; expected a CSV file"),
    Case("isic CSV without label columns", lambda c, d: _isic_args(c, _isic(d, "image_id,age\nI0,40\n")),
         r"has neither a 'dx' column nor the ISIC 2017 one-hot columns \['melanoma', 'seborrheic_keratosis'\]"),
    Case("isic label not among the classes", lambda c, d: _isic_args(c, _isic(d, "image_id,dx\nI0,nv\nI1,mel\n"),
                                                                      "classes=['nv','bcc','bkl']"),
         r"image 'I1' has label 'mel', which is not one of classes=\['nv', 'bcc', 'bkl'\]"),
    Case("isic column named twice", lambda c, d: _isic_args(c, _isic(d, "image_id,dx,dx\nI0,nv,mel\n")),
         r"the header names the column 'dx' twice"),
    Case("isic empty image id", lambda c, d: _isic_args(c, _isic(d, "image_id,dx\nI0,nv\n,mel\n")),
         r"row 3 has an empty 'image_id'; every image needs an id"),
    Case("isic CSV with a byte-order mark is read", lambda c, d: _isic_args(c, _isic(d, "\ufeff" + (
        "image_id,melanoma,seborrheic_keratosis\n" + "\n".join(f"I{k},{int(k % 3 == 1)},{int(k % 3 == 2)}"
                                                               for k in range(9)) + "\n"))), r"clean", code=0),
    Case("dicom CSV without a label column", lambda c, d: _dicom_args(c, _dicom(d, header="file,split", rows=[
        "a0.dcm,test"])), r"dicom: .*labels\.csv' needs the columns file and label; it has \['file', 'split'\]",
         skip=NEEDS_DICOM),
    Case("dicom CSV with a byte-order mark is read", lambda c, d: _dicom_args(c, _dicom(
        d, header="\ufefffile,label,split", rows=["a0.dcm,nevus,training"])),  # the split is read, so is the header
         r"row 2 \('a0\.dcm'\) has split 'training'", skip=NEEDS_DICOM),
    Case("dicom split 'training'", lambda c, d: _dicom_args(c, _dicom(d, rows=[
        "a0.dcm,nevus,test", "a1.dcm,melanoma,training", "a2.dcm,seborrheic_keratosis,test"])),
         r"row 3 \('a1\.dcm'\) has split 'training'; expected one of train, val, test", skip=NEEDS_DICOM),
    Case("dicom empty label", lambda c, d: _dicom_args(c, _dicom(d, rows=[
        "a0.dcm,nevus,test", "a1.dcm,,test", "a2.dcm,melanoma,test"])), r"row 3 \('a1\.dcm'\) has an empty label",
         skip=NEEDS_DICOM),
    Case("dicom label index 10**12", lambda c, d: _dicom_args(c, _dicom(d, rows=[
        "a0.dcm,0,test", "a1.dcm,1000000000000,test", "a2.dcm,2,test"]), "class_names=None"),
         r"label 1000000000000 implies 1,000,000,000,001 classes but the CSV has 3 rows", skip=NEEDS_DICOM),
    Case("dicom label index 10**12 with class names", lambda c, d: _dicom_args(c, _dicom(d, rows=[
        "a0.dcm,0,test", "a1.dcm,1000000000000,test", "a2.dcm,2,test"])),
         r"sample 'a1' has label 1000000000000, outside the 3 classes \['nevus', 'melanoma'", skip=NEEDS_DICOM),
    # --- DICOM files named by the CSV must stay inside root; headers are checked before the pixels --------------
    Case("dicom CSV names ../outside.dcm", lambda c, d: _dicom_args(c, _dotdot(d)),
         r"row 3: file '\.\./outside\.dcm' leads outside root .*; the files a labels CSV names must lie inside root",
         skip=NEEDS_DICOM),
    Case("dicom CSV names an absolute path outside", lambda c, d: _dicom_args(c, _dicom(d, files=[
        "a0.dcm", "a1.dcm", str(_outside(d))])), r"row 4: file '/.*outside\.dcm' leads outside root",
         skip=NEEDS_DICOM),
    Case("dicom symlink leading outside root", lambda c, d: _dicom_args(c, _linked_out(d)),
         r"row 4: file 'link\.dcm' leads outside root .* \(to '.*outside\.dcm'\)", skip=NEEDS_DICOM),
    Case("dicom header of 20000 x 20000", lambda c, d: _dicom_args(c, _crafted_dicom(d, Rows=20000, Columns=20000)),
         r"DICOM file .*a0\.dcm: it declares 20000 x 20000 x 1 = 400,000,000 pixels \(rows x columns x frames\), "
         r"above the limit of 100,000,000", skip=NEEDS_DICOM),
    Case("dicom header larger than the file", lambda c, d: _dicom_args(c, _crafted_dicom(d, Rows=1000, Columns=1000)),
         r"a0\.dcm declares 1000 x 1000 x 1 pixels \(2,000,000 bytes of pixel data\) but holds [\d,]+ bytes: "
         r"truncated", skip=NEEDS_DICOM),
    Case("dicom file that is not DICOM", lambda c, d: _dicom_args(c, _not_dicom(d)),
         r"cannot read DICOM file .*a0\.dcm", skip=NEEDS_DICOM),
    Case("dicom WindowWidth 0 in the file", lambda c, d: _dicom_args(c, _crafted_dicom(d, WindowWidth=0,
                                                                                     WindowCenter=40)),
         r"a0\.dcm has WindowCenter 40, WindowWidth 0; the width must be a finite number > 0", skip=NEEDS_DICOM),
    # --- NIfTI volumes and listings -----------------------------------------------------------------------------
    Case("nifti label volume of another shape", lambda c, d: _nifti_args(c, _nifti(d, label_shape=(4, 4, 5))),
         r"shape mismatch: image .*v0_T1\.nii\.gz has shape \(4, 4, 4\) but label .*v0_seg\.nii\.gz has \(4, 4, 5\)"),
    Case("nifti patch larger than the volume", lambda c, d: _nifti_args(c, _nifti(d), "mode=3d",
                                                                        "patch_size=[8,8,8]"),
         r"nifti: patch_size=\[8, 8, 8\] does not fit volume 'v0' of shape \[4, 4, 4\]"),
    Case("nifti spacing that resamples to 6.4e10 voxels", lambda c, d: _nifti_args(c, _nifti(d), "spacing=0.001"),
         r"spacing=0\.001 resamples .*v0_T1\.nii\.gz to shape \(4000, 4000, 4000\) \(64,000,000,000 voxels\), above "
         r"the limit of 268,435,456"),
    Case("nifti label map to class 10**9", lambda c, d: _nifti_args(c, _nifti(d), "label_map={0: 0, 1: 1000000000}",
                                                                    names=False),
         r"label_map maps to class 1000000000, implying 1,000,000,001 classes, but lists 2 codes"),
    Case("nifti listing with split 'training'", lambda c, d: _listing_args(c, d, "v0_T1.nii.gz,v0_seg.nii.gz,training"),
         r"CSV listing .*list\.csv line 2: split 'training' is not one of train, val, test"),
    Case("nifti listing with an empty label cell", lambda c, d: _listing_args(c, d, "v0_T1.nii.gz,,test"),
         r"CSV listing .*list\.csv line 2: the label cell is empty"),
    # --- MedMNIST .npz: keys, object arrays, counts, shapes, headers ---------------------------------------------
    Case("medmnist npz without the test split", lambda c, d: _medmnist_args(c, _npz(
        d, train_images=np.zeros((4, 16, 16), np.uint8), train_labels=np.zeros((4, 1), int))),
         r"has no key 'test_images'; keys present: \['train_images', 'train_labels'\]"),
    Case("medmnist npz with object arrays", lambda c, d: _medmnist_args(c, _npz(
        d, test_images=np.array([np.zeros((16, 16)), "x"], dtype=object), test_labels=np.zeros((2, 1), int))),
         r"test_images holds Python objects \(dtype object\), which medrobust never loads"),
    Case("medmnist images and labels of different counts", lambda c, d: _medmnist_args(c, _npz(
        d, test_images=np.zeros((8, 16, 16), np.uint8), test_labels=(np.arange(5) % 3)[:, None])),
         r"test_images has 8 images but test_labels has 5 labels"),
    Case("medmnist RGBA images", lambda c, d: _medmnist_args(c, _npz(
        d, test_images=np.zeros((3, 16, 16, 4), np.uint8), test_labels=np.arange(3)[:, None])),
         r"test_images has shape \(3, 16, 16, 4\); expected \(N, H, W\) or \(N, H, W, 3\)"),
    Case("medmnist images of shape ()", lambda c, d: _medmnist_args(c, _npz(
        d, test_images=np.array(5, np.uint8), test_labels=np.arange(3)[:, None])), r"test_images has shape \(\)"),
    Case("medmnist header declaring 100 GB", lambda c, d: _medmnist_args(c, _npz_declaring(d, (100_000, 1000, 1000))),
         r"test_images declares shape \(100000, 1000, 1000\) of uint8 \(100,000,000,000 bytes\), above the limit of "
         r"4,294,967,296 bytes \(set MEDROBUST_MAX_BYTES"),
    Case("medmnist truncated array", lambda c, d: _medmnist_args(c, _npz_declaring(d, (8, 16, 16), b"\x00" * 100)),
         r"test_images declares shape \(8, 16, 16\) of uint8 \(2,048 bytes\) but holds [\d,]+ bytes: truncated"),
]

assert len({case.name for case in DATA_CASES}) == len(DATA_CASES), "two data cases share a name"
