"""Writing files so that a reader (or a run killed mid-write) never sees half of one, never through a link planted
in a folder received from someone else, and JSON and CSV that every strict parser and spreadsheet reads safely.

Every file medrobust writes goes through :func:`write_atomic`: the folder it lands in must resolve inside the
destination folder (``root``: the run folder, or the folder the user named), the temporary file beside it is
created anew (``O_EXCL | O_NOFOLLOW``: it never opens an existing file or link), and it is renamed into place,
relative to a descriptor of the folder that was checked. A symbolic link at the final name, or a folder that
leads out of ``root``, is refused with one line (:class:`UnsafePathError`) and nothing outside changes.

Python's ``json`` writes NaN and infinities as the bare words ``NaN`` and ``Infinity``, which are not JSON
(RFC 8259): ``JSON.parse``, jq, DuckDB and ``json.loads(..., parse_constant=...)`` refuse them. Every JSON that
medrobust writes, to a file or to a column of results.db, goes through :func:`strict_dumps`: a number without a
finite value is written as ``null`` (readers treat null as "no value", as they treated NaN), and anything that
would still come out non-standard raises instead of being written.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
import secrets
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


class UnsafePathError(ValueError):
    """A write refused because it would leave its folder: through a symbolic link, or into a folder that resolves
    outside the destination folder."""


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIR_FD = os.open in os.supports_dir_fd and os.replace in os.supports_dir_fd and os.lstat in os.supports_dir_fd


def _link_error(path: Path) -> UnsafePathError:
    return UnsafePathError(
        f"{str(path)!r} is a symbolic link; medrobust does not write through links (remove it, or write into "
        "another folder)"
    )


def check_inside(path: str | Path, root: str | Path) -> Path:
    """``path`` (a file or folder to be written) if it stays inside ``root``: not itself a symbolic link, and its
    nearest existing folder resolving inside ``root``'s real path (a link that stays inside is fine). Else
    :class:`UnsafePathError` naming both."""
    path, root = Path(path), Path(root)
    if os.path.abspath(path) == os.path.abspath(root):
        return path  # the folder the user named (a link there is their choice)
    if path.is_symlink():
        raise _link_error(path)
    real_root = Path(os.path.realpath(root))
    existing = path.parent  # the nearest folder on the way that exists (at most root: above it is the user's)
    while not existing.exists() and os.path.abspath(existing) != os.path.abspath(root) and existing != existing.parent:
        existing = existing.parent
    if not existing.exists():
        return path  # not even root exists yet: nothing on the way to be led elsewhere by
    real = Path(os.path.realpath(existing))
    if real != real_root and real_root not in real.parents:
        raise UnsafePathError(
            f"{str(path)!r} would be written in {str(real)!r}, outside the folder {str(root)!r} (a symbolic link "
            "on the way?); medrobust writes only inside the folder it is given"
        )
    return path


def check_no_links(folder: str | Path) -> Path:
    """``folder`` if nothing under it is a symbolic link (files and folders, at any depth, not followed), else
    :class:`UnsafePathError` naming the first one: for a folder another program (a tracking store) writes into by
    paths it builds itself, so no single write can be checked."""
    folder = Path(folder)
    for top, dirs, files in os.walk(folder, followlinks=False):
        for name in sorted(dirs + files):
            if os.path.islink(os.path.join(top, name)):
                raise _link_error(Path(top) / name)
    return folder


def check_output_file(path: str | Path) -> Path:
    """``path``, a file the command will write when its work is done, checked before the work starts: not a
    folder, not a symbolic link, in an existing folder this process can write to."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a folder; expected the path of a file to write")
    if not path.parent.is_dir():
        raise ValueError(f"cannot write {str(path)!r}: its folder {str(path.parent)!r} does not exist")
    check_inside(path, path.parent)
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {str(path)!r}: its folder {str(path.parent)!r} is not writable")
    return path


def check_output_folder(folder: str | Path) -> Path:
    """``folder``, a folder the command will create or write into when its work is done, checked before the work
    starts: not a file, and it or its nearest existing parent writable by this process."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{str(folder)!r} is a file; expected a folder to write into")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write into {str(folder)!r}: {str(existing)!r} is not writable")
    return folder


def make_dirs(folder: str | Path, root: str | Path) -> Path:
    """``folder`` and its missing parents, created only where they stay inside ``root`` (see :func:`check_inside`)."""
    folder = check_inside(folder, root)
    folder.mkdir(parents=True, exist_ok=True)
    return check_inside(folder, root)


def write_atomic(path: str | Path, data: str | bytes, *, root: str | Path | None = None) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` through a new temporary file beside it and a rename,
    never through a link, never outside ``root`` (default: the folder of ``path``)."""
    path = Path(path)
    check_inside(path, path.parent if root is None else root)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    tmp = f".{path.name}.{secrets.token_hex(6)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    if not _DIR_FD:  # no *at() calls on this platform: the same steps by path
        fd = os.open(path.parent / tmp, flags, 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
            check_inside(path, path.parent if root is None else root)
            os.replace(path.parent / tmp, path)
        except BaseException:
            (path.parent / tmp).unlink(missing_ok=True)
            raise
        return
    folder = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if not os.path.samestat(os.fstat(folder), os.stat(os.path.realpath(path.parent))):
            raise UnsafePathError(f"the folder of {str(path)!r} changed while it was being written; nothing written")
        fd = os.open(tmp, flags, 0o666, dir_fd=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
            try:  # a link planted at the final name since the check: refused, not replaced
                if stat.S_ISLNK(os.lstat(path.name, dir_fd=folder).st_mode):
                    raise _link_error(path)
            except FileNotFoundError:
                pass
            os.replace(tmp, path.name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=folder)
            except FileNotFoundError:
                pass
            raise
    finally:
        os.close(folder)


#: first characters that make a spreadsheet read a CSV cell as a formula (OWASP, "CSV Injection")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows as text: a string starting with a formula character gets a leading
    apostrophe (OWASP's rule); numbers (negative ones included) and everything else are written as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def write_csv(
    path: str | Path, fieldnames: Sequence[str], rows: Iterable[Mapping[str, Any]], *, root: str | Path | None = None
) -> None:
    """Write ``rows`` (dicts keyed by ``fieldnames``) as CSV with a header, formula cells escaped
    (:func:`csv_cell`), atomically (:func:`write_atomic`)."""
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: csv_cell(v) for k, v in row.items()})
    write_atomic(path, buf.getvalue(), root=root)


def finite_json(value: Any) -> Any:
    """``value`` with every NaN, inf and -inf (Python or NumPy floats) replaced by None, recursively through
    dicts, lists and tuples (tuples become lists, as JSON has them); everything else is returned as it is."""
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and not math.isfinite(value):
        return None
    return value


def strict_dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`finite_json` (``value``) with ``allow_nan=False``: standard JSON, null where a
    number has no finite value; for finite data the same text as ``json.dumps(value, **kwargs)``. A non-finite
    number that still reaches the encoder (from a ``default`` hook) raises ValueError."""
    if "allow_nan" in kwargs:
        raise TypeError(f"strict_dumps writes standard JSON only; allow_nan={kwargs['allow_nan']!r} is not an option")
    return json.dumps(finite_json(value), allow_nan=False, **kwargs)


def write_json(path: str | Path, value: Any, *, root: str | Path | None = None, **kwargs: Any) -> None:
    """Write ``value`` as standard JSON (:func:`strict_dumps` with ``kwargs``) to ``path``, atomically, inside
    ``root`` (:func:`write_atomic`)."""
    write_atomic(path, strict_dumps(value, **kwargs), root=root)
