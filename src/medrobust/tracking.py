"""Experiment tracking: a finished (or partial) run logged to MLflow.

One MLflow run per medrobust run folder: the spec as parameters (dotted keys, ``models.0.name``), every row of
summary.json as a metric with its 95% interval (``<model>/<perturbation>/<strength>/<metric>``, and ``.ci_low`` /
``.ci_high``), the models' weight fingerprints and sanity-check outcomes as tags, summary.md as the run's
description, and report.html, summary.md, summary.json/csv, comparisons.json/csv and spec.json as artifacts.
Logging the same folder again (a resumed run, ``medrobust report --mlflow``) updates that MLflow run rather
than adding another, as long as the spec is the same.

Where it goes is the user's choice, never the spec's (a spec is data; nothing in it writes outside its run
folder): ``--mlflow URI`` on the command line, else the ``MLFLOW_TRACKING_URI`` environment variable, else
``RUN/mlflow``. A URI with a scheme (``http://``, ``sqlite:///``, ``file:``) is used as it is; a folder becomes a
local store there: ``FOLDER/mlflow.db`` (SQLite) with the artifacts in ``FOLDER/artifacts``. MLflow 3 keeps its
plain-file backend (``file:``, ``./mlruns``) in maintenance mode and refuses it unless
``MLFLOW_ALLOW_FILE_STORE=true``; the SQLite file is MLflow's own local default.

MLflow is an extra: ``pip install 'medrobust[mlflow]'`` (mlflow-skinny with SQLAlchemy and Alembic for the
local store).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MLFLOW_MISSING = (
    "MLflow logging needs MLflow: pip install 'medrobust[mlflow]' (mlflow-skinny, sqlalchemy and alembic for a "
    "local store)"
)
ARTIFACTS = (
    "report.html",
    "summary.md",
    "summary.json",
    "summary.csv",
    "comparisons.json",
    "comparisons.csv",
    "spec.json",
)
# MLflow's limits (mlflow.utils.validation): keys, parameter and tag values, entities per batch call
MAX_KEY = 250
MAX_PARAM = 6000
MAX_TAG = 8000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
# a URI scheme (two letters at least, so a Windows drive letter is a folder)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


def require_mlflow() -> None:
    """Fail in one line, before any work, when MLflow is not installed."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ImportError(MLFLOW_MISSING) from None


@dataclass(frozen=True)
class Destination:
    """Where a run is logged: the tracking URI and, for a local folder store, the artifact root of the
    experiments it creates (None: the tracking server's default)."""

    uri: str
    artifact_root: str | None = None


def destination(uri: str | None, run_dir: Path) -> Destination:
    """``uri`` (the command line's), else ``MLFLOW_TRACKING_URI``, else ``run_dir/mlflow``; a folder becomes a
    SQLite store in it (created) with its artifacts beside."""
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI") or str(run_dir / "mlflow")
    if _SCHEME.match(chosen):
        return Destination(chosen)
    folder = Path(chosen).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(
            f"--mlflow {chosen!r} is a file; pass a folder or a tracking URI (http://, sqlite:///)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    return Destination(f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri())


def metric_key(*parts: str) -> str:
    """A metric or parameter key MLflow accepts on every platform: letters, digits, ``_ - . /`` and spaces.
    ``apgd(norm=l2,steps=50)`` -> ``apgd norm_l2 steps_50``; ``matched_noise[pgd]`` -> ``matched_noise pgd``;
    ``dice:csf`` -> ``dice.csf``; a ``/`` inside a part becomes ``_``."""
    out = []
    for part in parts:
        text = re.sub(r"[(\[,]", " ", str(part)).replace(")", "").replace("]", "").replace("=", "_").replace(":", ".")
        text = re.sub(r"[^\w.\- ]", "_", text)
        out.append(re.sub(r" +", " ", text).strip(" .") or "_")
    return "/".join(out)[:MAX_KEY]


def spec_params(spec: dict[str, Any] | list[Any], prefix: str = "") -> dict[str, str]:
    """The spec flattened to dotted keys (lists by index): ``models.0.name`` -> ``small-cnn``. Values are JSON
    (strings as they are), cut at MLflow's parameter length."""
    out: dict[str, str] = {}
    items: Any = spec.items() if isinstance(spec, dict) else enumerate(spec)
    for key, value in items:
        name = f"{prefix}{metric_key(str(key))}"
        if isinstance(value, (dict, list)) and value:
            out.update(spec_params(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            out[name[:MAX_KEY]] = text[:MAX_PARAM]
    return out


def summary_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Every finite summary value and its interval bounds, keyed by model / perturbation / strength / metric
    (clean rows without a strength)."""
    out: dict[str, float] = {}
    for r in rows:
        where = [r["model"], r["perturbation"]] + ([] if r["perturbation"] == "clean" else [f"{r['strength']:.6g}"])
        key = metric_key(*where, r["metric"])
        for suffix, field in (("", "value"), (".ci_low", "ci_low"), (".ci_high", "ci_high")):
            value = r.get(field)
            if isinstance(value, (int, float)) and value == value and abs(value) != float("inf"):
                out[(key + suffix)[:MAX_KEY]] = float(value)
    return out


@dataclass(frozen=True)
class Logged:
    uri: str
    experiment: str
    run_id: str
    metrics: int
    params: int
    artifacts: list[str]
    resumed: bool  # True when an earlier MLflow run of this folder and spec was updated


def log_run(
    run_dir: str | Path, uri: str | None = None, experiment: str | None = None, run_name: str | None = None
) -> Logged:
    """Log ``run_dir`` (results.db, summary.json and the report files there) to MLflow; see the module doc for
    what goes where. ``experiment`` defaults to the spec's ``mlflow.experiment``, else its ``name``;
    ``run_name`` to the spec's ``mlflow.run_name``, else the folder's name."""
    require_mlflow()
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from medrobust import __version__
    from medrobust.store import Store, check_database

    run_dir = Path(run_dir)
    db = run_dir / "results.db"
    if not db.exists():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} has no results.db; run `medrobust run` first")
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        raise FileNotFoundError(f"{summary_path} is missing; `medrobust report {run_dir}` writes it again")
    check_database(db)
    store = Store(db)
    try:
        run_id = store.latest_run()
        if run_id is None:
            raise ValueError(f"{db} holds no run")
        stored = next(r for r in store.runs() if r["id"] == run_id)
        models = store.run_models(run_id)
        checks = store.checks()
    finally:
        store.close()
    spec = json.loads(stored["spec_json"])
    chosen = spec.get("mlflow") or {}
    experiment = experiment or chosen.get("experiment") or spec.get("name") or "medrobust"
    run_name = run_name or chosen.get("run_name") or run_dir.resolve().name
    where = destination(uri, run_dir)
    folder = str(run_dir.resolve())

    tags = {
        "medrobust.run_folder": folder,
        "medrobust.spec_hash": str(stored["spec_hash"]),
        "medrobust.version": __version__,
        "medrobust.device": str(stored["device"]),
    }
    for m in models:
        failed = [c["name"] for c in checks if c["model"] == m.name and not c["passed"]]
        ran = any(c["model"] == m.name for c in checks)
        tags[metric_key("model", m.name, "fingerprint")] = m.fingerprint
        tags[metric_key("model", m.name, "checks")] = (
            ("failed: " + ", ".join(failed) if failed else "passed") if ran else "not run"
        )
    summary_md = run_dir / "summary.md"
    if summary_md.exists():  # the run's description in MLflow's UI
        tags["mlflow.note.content"] = summary_md.read_text(encoding="utf-8")[:MAX_TAG]
    params = spec_params({k: v for k, v in spec.items() if k != "mlflow"})
    metrics = summary_metrics(json.loads(summary_path.read_text(encoding="utf-8")))

    for name in ("mlflow.store.db.utils", "alembic"):  # a new local store's migrations, not news to the user
        logging.getLogger(name).setLevel(logging.WARNING)
    client = MlflowClient(tracking_uri=where.uri)
    found = client.get_experiment_by_name(experiment)
    exp_id = found.experiment_id if found else client.create_experiment(experiment, where.artifact_root)
    quoted = folder.replace("'", "\\'")
    earlier = client.search_runs(
        [exp_id],
        filter_string=f"tags.`medrobust.run_folder` = '{quoted}' and tags.`medrobust.spec_hash` = "
        f"'{stored['spec_hash']}'",
        max_results=1,
    )
    run = earlier[0] if earlier else client.create_run(exp_id, run_name=run_name)
    mlflow_id = run.info.run_id
    now = int(time.time() * 1000)
    tag_list = [RunTag(k, v) for k, v in tags.items()]
    param_list = [] if earlier else [Param(k, v) for k, v in params.items()]  # parameters are written once
    for i in range(0, len(tag_list), PARAMS_PER_BATCH):
        client.log_batch(mlflow_id, tags=tag_list[i : i + PARAMS_PER_BATCH])
    for i in range(0, len(param_list), PARAMS_PER_BATCH):
        client.log_batch(mlflow_id, params=param_list[i : i + PARAMS_PER_BATCH])
    metric_list = [Metric(k, v, now, 0) for k, v in metrics.items()]
    for i in range(0, len(metric_list), METRICS_PER_BATCH):
        client.log_batch(mlflow_id, metrics=metric_list[i : i + METRICS_PER_BATCH])
    artifacts = [name for name in ARTIFACTS if (run_dir / name).is_file()]
    for name in artifacts:
        client.log_artifact(mlflow_id, str(run_dir / name))
    client.set_terminated(mlflow_id)
    return Logged(where.uri, experiment, mlflow_id, len(metrics), len(params), artifacts, bool(earlier))
