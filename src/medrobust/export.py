"""Export a run's per-sample records (csv, json, parquet); the json is standard JSON (null, never NaN)."""

from __future__ import annotations

from pathlib import Path

from medrobust.files import check_output_file, write_atomic, write_csv, write_json
from medrobust.store import Store, check_whole

FORMATS = ("csv", "json", "parquet")


def export_records(run_dir: str | Path, fmt: str, out: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    db = run_dir / "results.db"
    if not db.exists():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} has no results.db; run `medrobust run` first")
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}; expected one of {', '.join(FORMATS)}")
    path = check_output_file(Path(out) if out is not None else run_dir / f"records.{fmt}")
    store = Store(db)
    try:
        rows = store.records()
        done = {c["key"]: c for c in store.cells() if c["status"] == "done"}
        for run in store.runs():  # within one run every cell scores the same samples
            keys = set(store.run_cell_keys(run["id"]))
            check_whole([c for k, c in done.items() if k in keys], [r for r in rows if r["cell_key"] in keys], db)
    finally:
        store.close()
    if fmt == "json":
        write_json(path, rows, indent=1)
    elif fmt == "csv":
        write_csv(path, list(rows[0]) if rows else ["cell_key"], rows)
    else:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError("parquet export needs pyarrow: pip install pyarrow (or use --format csv|json)") from None
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows), sink)
        write_atomic(path, sink.getvalue().to_pybytes())
    return path
