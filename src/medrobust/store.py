"""The run's SQLite database (``results.db``): one row per (cell, sample), written atomically per cell.

A record's task-specific fields come from the model's Task (``Task.outcomes``): classification records carry
label, predictions and class probabilities and ``score`` 1/0 (correct or not); segmentation records have label =
clean_pred = pred = -1, probs_json "[]", ``score`` the mean foreground Dice and ``detail_json`` per-structure
Dice, HD95 and flip rates. :class:`Record` is the typed row. Every ``*_json`` column is standard JSON
(``medrobust.files.strict_dumps``): a value without a finite number (the HD95 of a structure missing from a mask,
the flip rate of a structure absent from the labels) is null, never NaN.

Provenance: each invocation of a spec is a row of ``runs``; ``run_cells`` lists the cells of its grid (in grid
order) and ``models`` each model as it ran (task, class names, input bounds, the fingerprint of its weights,
where it came from and its model card), so the report reads everything it shows from this file.

The ``examples`` table keeps the arrays of a few samples per model (the spec's ``gallery``, the first samples of
the test set) so the report can draw its gallery without re-running anything: the clean input (``image``), each
perturbation as ``delta = x_pert - x`` (float16), and for segmentation the ground truth (``label``) and the
predicted label maps (``pred``). Arrays are stored as zlib-compressed .npy bytes.

The ``checks`` table holds the model-level sanity checks of each model (``medrobust.checks``: logits, determinism,
gradients, unbounded attack, more steps), one row per (model, check), with the fingerprint of the weights they
ran on; a model's rows are replaced together.

A cell is in the store whole or not at all: its records, its examples and its "done" row are written in one
transaction, so a run killed at any moment leaves only finished cells, and re-running skips exactly those. A cell
split into sample shards (the ray executor's work units) is written shard by shard, each in one transaction with
its row in ``shards``; the cell's "done" row comes with its last shard, and a resumed run skips the shards
already stored.
"""

from __future__ import annotations

import io
import json
import math
import os
import secrets
import sqlite3
import time
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medrobust.files import UnsafePathError, strict_dumps

if TYPE_CHECKING:
    from medrobust.checks import CheckResult

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    spec_json TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    versions_json TEXT NOT NULL,
    device TEXT NOT NULL,
    seed INTEGER NOT NULL,
    started REAL NOT NULL,
    finished REAL
);
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    perturbation TEXT NOT NULL,
    kind TEXT NOT NULL,
    params_json TEXT NOT NULL,
    strengths_json TEXT NOT NULL,
    threat_json TEXT NOT NULL,
    status TEXT NOT NULL,
    run_id INTEGER,
    started REAL,
    finished REAL,
    seconds REAL
);
CREATE TABLE IF NOT EXISTS run_cells (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    position INTEGER NOT NULL,
    cell_key TEXT NOT NULL,
    PRIMARY KEY (run_id, cell_key)
);
CREATE TABLE IF NOT EXISTS models (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    task TEXT NOT NULL,
    class_names_json TEXT NOT NULL,
    bounds_json TEXT NOT NULL,
    source TEXT NOT NULL,
    card_json TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS shards (
    cell_key TEXT NOT NULL,
    lo INTEGER NOT NULL,
    hi INTEGER NOT NULL,
    started REAL,
    seconds REAL,
    PRIMARY KEY (cell_key, lo)
);
CREATE TABLE IF NOT EXISTS records (
    cell_key TEXT NOT NULL REFERENCES cells(key),
    model TEXT NOT NULL,
    perturbation TEXT NOT NULL,
    kind TEXT NOT NULL,
    strength REAL NOT NULL,
    sample_index INTEGER NOT NULL,
    sample_id TEXT NOT NULL,
    label INTEGER NOT NULL,
    clean_pred INTEGER NOT NULL,
    pred INTEGER NOT NULL,
    probs_json TEXT NOT NULL,
    l2 REAL, linf REAL, l0 REAL, ssim REAL, psnr REAL, rho REAL,
    score REAL,
    detail_json TEXT,
    sample_group TEXT,
    PRIMARY KEY (cell_key, perturbation, strength, sample_index)
);
CREATE TABLE IF NOT EXISTS examples (
    cell_key TEXT NOT NULL REFERENCES cells(key),
    model TEXT NOT NULL,
    perturbation TEXT NOT NULL,
    strength REAL NOT NULL,
    sample_index INTEGER NOT NULL,
    array TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (cell_key, perturbation, strength, sample_index, array)
);
CREATE TABLE IF NOT EXISTS checks (
    model TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    name TEXT NOT NULL,
    passed INTEGER NOT NULL,
    value REAL,
    message TEXT NOT NULL,
    meaning TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (model, name)
);
CREATE TABLE IF NOT EXISTS model_scores (
    model TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    name TEXT NOT NULL,
    settings_json TEXT NOT NULL,
    scores_json TEXT NOT NULL,
    seconds REAL,
    created REAL NOT NULL,
    PRIMARY KEY (model, fingerprint, name, settings_json)
);
"""
EXAMPLE_ARRAYS = ("image", "delta", "label", "pred")


def encode_array(array: np.ndarray) -> bytes:
    """zlib-compressed .npy bytes (dtype and shape travel with the data)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return zlib.compress(buf.getvalue(), 6)


def decode_array(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(zlib.decompress(data)), allow_pickle=False)


RECORD_COLUMNS = (
    "cell_key",
    "model",
    "perturbation",
    "kind",
    "strength",
    "sample_index",
    "sample_id",
    "label",
    "clean_pred",
    "pred",
    "probs_json",
    "l2",
    "linf",
    "l0",
    "ssim",
    "psnr",
    "rho",
    "score",
    "detail_json",
    "sample_group",
)


@dataclass(frozen=True)
class Record:
    """One sample under one perturbation at one strength: a row of the ``records`` table (same order)."""

    cell_key: str
    model: str
    perturbation: str
    kind: str
    strength: float
    sample_index: int
    sample_id: str
    label: int
    clean_pred: int
    pred: int
    probs: list[float]
    l2: float
    linf: float
    l0: float
    ssim: float
    psnr: float | None  # None where the perturbation is zero (infinite PSNR)
    rho: float
    score: float
    detail: dict[str, Any] | None
    # the independent unit the sample belongs to (its volume, patient, subject); None: the sample is its own
    sample_group: str | None = None

    def row(self) -> tuple[Any, ...]:
        """The values in ``RECORD_COLUMNS`` order (probabilities and details as standard JSON: a value without a
        finite number, such as the HD95 of a structure missing from a mask, is null)."""
        probs = strict_dumps(self.probs)
        detail = strict_dumps(self.detail) if self.detail else None
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(probs_json=probs, detail_json=detail)
        return tuple(values[c] for c in RECORD_COLUMNS)


@dataclass(frozen=True)
class ModelRow:
    """A model as a run used it: what the report needs to describe and score it without its files."""

    name: str
    fingerprint: str
    task: str
    class_names: list[str]
    bounds: tuple[float, float]
    source: str
    card: dict[str, Any]


@dataclass(frozen=True)
class CellInfo:
    key: str
    model: str
    perturbation: str
    kind: str
    params: dict[str, Any]
    strengths: list[float]
    threat: dict[str, Any]


def _bounds(value: list[Any], where: str) -> tuple[float, float]:
    if len(value) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise StoreError(f"{where} holds {value!r}, expected two numbers (low, high); {CHANGED}")
    return float(value[0]), float(value[1])


class StoreError(ValueError):
    """A results.db that cannot be used (empty, not SQLite, not writable); the message says what to do."""


def trained_fingerprints(path: Path, model: str) -> set[str]:
    """The weights' fingerprints that earlier runs of the database at ``path`` recorded for the model ``model``
    trained by the run (source "trained ..."); empty when there is no database or no such row. Read-only: the
    database is not created, changed or migrated."""
    if not path.is_file():
        return set()
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT fingerprint FROM models WHERE name=? AND source LIKE 'trained %'", (model,))
        return {str(r[0]) for r in rows}
    except sqlite3.DatabaseError:  # no models table yet (a run stopped before its first cell), or unreadable
        return set()
    finally:
        con.close()


def check_database(path: Path) -> None:
    """Refuse an existing ``results.db`` that is empty or not a SQLite file, before anything opens it, and a
    database or a SQLite side file (``-wal``, ``-shm``, ``-journal``) that is a symbolic link (SQLite would write
    through it)."""
    for name in (path.name, *(path.name + s for s in SIDE_FILES)):
        if (path.parent / name).is_symlink():
            raise UnsafePathError(
                f"{str(path.parent / name)!r} is a symbolic link; medrobust does not write through links (remove "
                "it; a run folder holds its database as plain files)"
            )
    if not path.exists():
        return
    if path.is_dir():
        raise StoreError(f"{str(path)!r} is a folder; expected the run's SQLite database file")
    size = path.stat().st_size
    if size == 0:
        raise StoreError(
            f"{str(path)!r} is empty (0 bytes), so it holds no results: delete it to start this run folder "
            "afresh, or restore it from a copy"
        )
    with path.open("rb") as fh:
        if fh.read(16) != b"SQLite format 3\x00":
            raise StoreError(
                f"{str(path)!r} is not a SQLite database (corrupt or another file): move it away to start afresh, "
                "or restore it from a copy"
            )


CHANGED = (
    "results.db was changed outside medrobust or is damaged: restore it from a copy, or re-run the spec into a "
    "new folder"
)


def column_json(text: Any, where: str, expected: type | tuple[type, ...]) -> Any:
    """The JSON value of a stored column, of the ``expected`` type, else a one-line :class:`StoreError` naming
    ``where`` (the table, row and column): a database is data, and a value edited by hand must not surface as a
    low-level error pages later."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        raise StoreError(f"{where} is not valid JSON; {CHANGED}") from None
    if not isinstance(value, expected) or isinstance(value, bool):
        names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
        raise StoreError(f"{where} holds a JSON {type(value).__name__}, expected a {names}; {CHANGED}")
    return value


def _numbers(value: list[Any], where: str) -> None:
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise StoreError(f"{where} holds non-numbers; {CHANGED}")


def check_columns(cells: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
    """The JSON columns of ``cells`` and ``records`` parse to what medrobust wrote: parameters, strengths (numbers)
    and threat of each cell; the probabilities (numbers) and the detail (an object, or null) of each record."""
    for c in cells:
        cell = f"results.db: cell {c['model']} / {c['perturbation']}"
        column_json(c["params_json"], f"{cell}: params_json", dict)
        column_json(c["threat_json"], f"{cell}: threat_json", dict)
        _numbers(column_json(c["strengths_json"], f"{cell}: strengths_json", list), f"{cell}: strengths_json")
    for r in records:
        where = f"results.db: record {r['sample_index']} of {r['model']} / {r['perturbation']} at {r['strength']:g}"
        _numbers(column_json(r["probs_json"], f"{where}: probs_json", list), f"{where}: probs_json")
        if r.get("detail_json") is not None:
            column_json(r["detail_json"], f"{where}: detail_json", dict)


def check_whole(cells: list[dict[str, Any]], records: list[dict[str, Any]], db: Path) -> None:
    """Every finished cell holds all its records: for each perturbation row it stored (the attack, its matched
    noise) one record per sample at every strength, as many samples as the model's fullest row. A cell with
    fewer (records deleted, a damaged copy) would be reported with a smaller n without a word: refused, naming
    the cell. And their JSON columns parse (:func:`check_columns`)."""
    check_columns(cells, records)
    counts: dict[tuple[str, str, float], int] = defaultdict(int)
    labels: dict[str, set[str]] = defaultdict(set)
    for r in records:
        counts[(r["cell_key"], r["perturbation"], float(r["strength"]))] += 1
        labels[r["cell_key"]].add(r["perturbation"])
    n: dict[str, int] = defaultdict(int)  # per model, the fullest row
    model = {c["key"]: c["model"] for c in cells}
    for (key, _, _), k in counts.items():
        n[model[key]] = max(n[model[key]], k)
    for c in cells:
        strengths = [float(s) for s in json.loads(c["strengths_json"])]  # checked above
        for label in sorted(labels[c["key"]]) or [c["perturbation"]]:
            for s in strengths:
                k = counts.get((c["key"], label, s), 0)
                if k < n[c["model"]]:
                    raise ValueError(
                        f"{str(db)!r}: cell {c['model']} / {label} at {s:g} holds {k} of its {n[c['model']]} "
                        "records (results.db was changed outside medrobust or is damaged); it would be reported "
                        "with a smaller n: restore results.db from a copy, or re-run the spec into a new folder"
                    )


#: the tables every results.db has had since the first release: a database holding tables but not these was
#: changed outside medrobust (re-creating them empty would report nothing as if it were the run)
CORE_TABLES = ("cells", "records")

#: the files SQLite keeps beside a database in WAL mode (and in rollback mode)
SIDE_FILES = ("-wal", "-shm", "-journal")


class Store:
    """Open (or create) ``results.db`` in a run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        check_database(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if not self.path.exists():
                self._create()
            self.conn = sqlite3.connect(str(self.path), timeout=30)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            missing = [t for t in CORE_TABLES if t not in tables]
            if missing and tables:  # not a new database: a table was dropped, so its rows are gone
                self.conn.close()
                raise StoreError(
                    f"{str(self.path)!r} has no {' and no '.join(missing)} table (dropped or damaged outside "
                    "medrobust), so its results are lost; restore results.db from a copy, or re-run the spec into a "
                    "new folder"
                )
            self.conn.executescript(SCHEMA)
            self._migrate()
        except sqlite3.DatabaseError as err:  # OperationalError (read-only, locked) included
            raise StoreError(f"{str(self.path)!r} cannot be used as the run's database: {err}") from None

    def _create(self) -> None:
        """A new database appears whole: built under a temporary name, then renamed, so a run killed at any
        moment never leaves an empty results.db behind (which a later run would refuse)."""
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}.tmp")
        # created here, new (never an existing file or link), then opened by SQLite as an empty database
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666))
        con = sqlite3.connect(str(tmp))
        try:
            con.executescript(SCHEMA)
            con.commit()
        finally:
            con.close()
        os.replace(tmp, self.path)

    def _migrate(self) -> None:
        """Columns added since a store was created: ``records.sample_group`` (NULL: each sample its own unit)."""
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(records)")}
        if "sample_group" not in columns:
            try:
                with self.conn:
                    self.conn.execute("ALTER TABLE records ADD COLUMN sample_group TEXT")
            except sqlite3.OperationalError:  # a read-only store: its records have no groups, read as None
                pass

    def close(self) -> None:
        self.conn.close()

    def start_run(
        self,
        spec: dict[str, Any],
        spec_hash: str,
        versions: dict[str, str],
        device: str,
        seed: int,
        models: Sequence[ModelRow] = (),
        cell_keys: Sequence[str] = (),
    ) -> int:
        """A new row of ``runs`` with the models it uses and the keys of the cells of its grid, in one
        transaction."""
        with self.conn:
            cur = self.conn.execute(
                "INSERT INTO runs (spec_json, spec_hash, versions_json, device, seed, started) VALUES (?,?,?,?,?,?)",
                (strict_dumps(spec, sort_keys=True), spec_hash, strict_dumps(versions), device, seed, time.time()),
            )
            assert cur.lastrowid is not None  # an INSERT always sets it
            run_id = int(cur.lastrowid)
            self.conn.executemany(
                "INSERT INTO models VALUES (?,?,?,?,?,?,?,?,?)",
                [
                    (
                        run_id,
                        i,
                        m.name,
                        m.fingerprint,
                        m.task,
                        strict_dumps(list(m.class_names)),
                        strict_dumps([float(b) for b in m.bounds]),
                        m.source,
                        strict_dumps(m.card, sort_keys=True),
                    )
                    for i, m in enumerate(models)
                ],
            )
            self.conn.executemany(
                "INSERT INTO run_cells VALUES (?,?,?)", [(run_id, i, k) for i, k in enumerate(dict.fromkeys(cell_keys))]
            )
        return run_id

    def latest_run(self) -> int | None:
        """The newest run that recorded its grid, or None."""
        row = self.conn.execute("SELECT MAX(run_id) FROM run_cells").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def run_cell_keys(self, run_id: int) -> list[str]:
        """The cell keys of a run's grid, in grid order."""
        return [
            r[0]
            for r in self.conn.execute("SELECT cell_key FROM run_cells WHERE run_id=? ORDER BY position", (run_id,))
        ]

    def run_models(self, run_id: int) -> list[ModelRow]:
        """The models of a run, in spec order."""
        rows = self._dicts("SELECT * FROM models WHERE run_id=? ORDER BY position", (run_id,))
        return [
            ModelRow(
                r["name"],
                r["fingerprint"],
                r["task"],
                column_json(r["class_names_json"], f"results.db: model {r['name']}: class_names_json", list),
                _bounds(
                    column_json(r["bounds_json"], f"results.db: model {r['name']}: bounds_json", list),
                    f"results.db: model {r['name']}: bounds_json",
                ),
                r["source"],
                column_json(r["card_json"], f"results.db: model {r['name']}: card_json", dict),
            )
            for r in rows
        ]

    def finish_run(self, run_id: int) -> None:
        with self.conn:
            self.conn.execute("UPDATE runs SET finished=? WHERE id=?", (time.time(), run_id))

    def done_keys(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT key FROM cells WHERE status='done'")}

    def write_cell(
        self,
        cell: CellInfo,
        records: Iterable[Record],
        run_id: int,
        started: float,
        examples: Iterable[tuple[str, float, int, str, np.ndarray]] = (),
        shard: tuple[int, int] | None = None,
        shards: int = 1,
        seconds: float | None = None,
    ) -> bool:
        """Insert all records of a cell, its example arrays ((perturbation, strength, sample_index, array name,
        array) tuples) and mark it done, in one transaction. With ``shard`` = (lo, hi), the records are those of
        samples lo..hi-1 only, one of ``shards`` shards of the cell; the cell is marked done with its last shard.
        ``seconds``: compute time of these records (default: since ``started``). Returns whether the cell is done."""
        finished = time.time()
        seconds = finished - started if seconds is None else seconds
        rows = []
        for pert, strength, index, name, array in examples:
            if name not in EXAMPLE_ARRAYS:
                raise ValueError(f"example array {name!r} is not one of {EXAMPLE_ARRAYS}")
            rows.append((cell.key, cell.model, pert, float(strength), int(index), name, encode_array(array)))
        lo, hi = shard if shard is not None else (0, 2**62)
        with self.conn:
            for table in ("records", "examples"):
                self.conn.execute(
                    f"DELETE FROM {table} WHERE cell_key=? AND sample_index>=? AND sample_index<?", (cell.key, lo, hi)
                )
            self.conn.executemany(
                f"INSERT INTO records ({', '.join(RECORD_COLUMNS)}) VALUES ({', '.join('?' * len(RECORD_COLUMNS))})",
                (r.row() for r in records),
            )
            self.conn.executemany("INSERT INTO examples VALUES (?,?,?,?,?,?,?)", rows)
            if shard is not None and shards > 1:
                self.conn.execute(
                    "INSERT OR REPLACE INTO shards VALUES (?,?,?,?,?)", (cell.key, lo, hi, started, seconds)
                )
                stored = self.conn.execute(
                    "SELECT COUNT(*), MIN(started), SUM(seconds) FROM shards WHERE cell_key=?", (cell.key,)
                ).fetchone()
                if stored[0] < shards:
                    return False
                started, seconds = stored[1], stored[2]
                self.conn.execute("DELETE FROM shards WHERE cell_key=?", (cell.key,))
            self.conn.execute(
                "INSERT OR REPLACE INTO cells VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    cell.key,
                    cell.model,
                    cell.perturbation,
                    cell.kind,
                    strict_dumps(cell.params, sort_keys=True),
                    strict_dumps(cell.strengths),
                    strict_dumps(cell.threat, sort_keys=True),
                    "done",
                    run_id,
                    started,
                    finished,
                    seconds,
                ),
            )
        return True

    def stored_shards(self) -> dict[str, set[tuple[int, int]]]:
        """The shards stored of cells not done yet: cell key -> {(lo, hi)}."""
        out: dict[str, set[tuple[int, int]]] = {}
        for key, lo, hi in self.conn.execute("SELECT cell_key, lo, hi FROM shards"):
            out.setdefault(key, set()).add((int(lo), int(hi)))
        return out

    def discard_partial(self, cell_key: str) -> None:
        """Drop what is stored of a cell that is not done (shards of another sharding), in one transaction."""
        with self.conn:
            for table in ("records", "examples", "shards"):
                self.conn.execute(f"DELETE FROM {table} WHERE cell_key=?", (cell_key,))

    def _dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self.conn.cursor()
        cur.row_factory = sqlite3.Row
        return [dict(r) for r in cur.execute(sql, params)]

    def records(self, cell_keys: Iterable[str] | None = None) -> list[dict[str, Any]]:
        order = " ORDER BY model, perturbation, strength, sample_index"
        if cell_keys is None:
            return self._dicts("SELECT * FROM records" + order)
        keys = list(cell_keys)
        return self._dicts(f"SELECT * FROM records WHERE cell_key IN ({','.join('?' * len(keys))})" + order, keys)

    def examples(self, cell_keys: Iterable[str], decode: bool = True) -> dict[tuple[str, str, float, int, str], Any]:
        """Example arrays of the given cells: (model, perturbation, strength, sample_index, array) -> array
        (or, with ``decode=False``, its stored bytes, for :func:`decode_array` when needed)."""
        keys = list(cell_keys)
        if not keys:
            return {}
        marks = ",".join("?" * len(keys))
        rows = self.conn.execute(
            "SELECT model, perturbation, strength, sample_index, array, data FROM examples "
            f"WHERE cell_key IN ({marks})",
            keys,
        )
        return {(m, p, float(s), int(i), a): decode_array(d) if decode else bytes(d) for m, p, s, i, a, d in rows}

    def cells(self) -> list[dict[str, Any]]:
        return self._dicts("SELECT * FROM cells ORDER BY model, perturbation")

    def runs(self) -> list[dict[str, Any]]:
        return self._dicts("SELECT * FROM runs ORDER BY id")

    def write_checks(self, model: str, fingerprint: str, results: Iterable[CheckResult]) -> None:
        """Replace all check rows of ``model`` by ``results`` (run on the weights ``fingerprint``), in one
        transaction. A non-finite value is stored as NULL."""
        created = time.time()
        rows = []
        for r in results:
            value = float(r.value)
            rows.append(
                (
                    model,
                    fingerprint,
                    r.name,
                    int(bool(r.passed)),
                    value if math.isfinite(value) else None,
                    r.message,
                    r.meaning,
                    created,
                )
            )
        names = [row[2] for row in rows]
        if len(set(names)) != len(names):
            raise ValueError(f"check names repeat for model {model!r}: {names}")
        with self.conn:
            self.conn.execute("DELETE FROM checks WHERE model=?", (model,))
            self.conn.executemany("INSERT INTO checks VALUES (?,?,?,?,?,?,?,?)", rows)

    def checks(self) -> list[dict[str, Any]]:
        """All check rows (model, fingerprint, name, passed (bool), value (None when not finite), message,
        meaning, created), by model, in the order they were written."""
        rows = self._dicts("SELECT * FROM checks ORDER BY model, rowid")
        for r in rows:
            r["passed"] = bool(r["passed"])
        return rows

    def write_model_scores(
        self,
        model: str,
        fingerprint: str,
        name: str,
        settings: dict[str, Any],
        scores: list[dict[str, Any]],
        seconds: float,
    ) -> None:
        """Store per-sample model-level scores (CLEVER) of ``model`` on the weights ``fingerprint``: a list of
        {sample_index, sample_id, score, fit, flagged}, replaced whole for the same name and settings. A value
        without a finite number is stored as null."""
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO model_scores VALUES (?,?,?,?,?,?,?)",
                (
                    model,
                    fingerprint,
                    name,
                    strict_dumps(settings, sort_keys=True),
                    strict_dumps(scores),
                    seconds,
                    time.time(),
                ),
            )

    def model_scores(
        self, model: str, fingerprint: str, name: str, settings: dict[str, Any]
    ) -> list[dict[str, Any]] | None:
        """The stored scores of :meth:`write_model_scores`, or None."""
        row = self.conn.execute(
            "SELECT scores_json FROM model_scores WHERE model=? AND fingerprint=? AND name=? AND settings_json=?",
            (model, fingerprint, name, strict_dumps(settings, sort_keys=True)),
        ).fetchone()
        return None if row is None else column_json(row[0], f"results.db: {name} scores of {model}", list)

    def all_model_scores(self) -> list[dict[str, Any]]:
        """Every stored model-level score set (model, fingerprint, name, settings, scores), oldest first."""
        rows = self._dicts("SELECT * FROM model_scores ORDER BY created")
        for r in rows:
            where = f"results.db: {r['name']} scores of {r['model']}"
            r["settings"] = column_json(r.pop("settings_json"), f"{where}: settings_json", dict)
            r["scores"] = column_json(r.pop("scores_json"), f"{where}: scores_json", list)
        return rows

    def has_checks(self, model: str, fingerprint: str) -> bool:
        """Whether checks of ``model`` on the weights ``fingerprint`` are stored."""
        row = self.conn.execute("SELECT 1 FROM checks WHERE model=? AND fingerprint=? LIMIT 1", (model, fingerprint))
        return row.fetchone() is not None
