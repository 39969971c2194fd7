"""Experiment tracking: a finished (or partial) run logged to MLflow.

One MLflow run per medrobust run folder: the spec as parameters (dotted keys, ``models.0.name``; its executor
and threads as tags, since a resume may change them), every row of summary.json as a metric with its 95%
interval (``<model>/<perturbation>/<strength>/<metric>``, and ``.ci_low`` / ``.ci_high``; names cleaned to
MLflow's characters, long ones shortened with a hash, names that clean alike kept apart by one), the models'
weight fingerprints as tags, and report.html, summary.md, summary.json/csv, comparisons.json/csv and spec.json as
artifacts.

The tags that summarise checks say what the report says: ``medrobust.checks`` is "passed" only when the report
lists no warning (:func:`medrobust.report.analysis.warnings`: unchecked worst cases, failed sanity checks, an
incomplete run ...), else the count and titles of its warnings; ``medrobust.warnings`` is that count; each
``model/<name>/checks`` names the model's failed sanity checks and the report's warnings, and is "passed" only
when there are neither. summary.md is the run's description (``mlflow.note.content``) when it fits MLflow's
8,000 characters; a longer one is cut behind a line that says so and the report's warnings, so they are never the
part lost (the whole file is the artifact summary.md).

Logging the same folder again (a resumed run, ``medrobust report --mlflow``) updates that MLflow run rather
than adding another, as long as the spec is the same (its ``executor``, ``threads`` and ``mlflow`` keys aside).

Where it goes is the user's choice, never the spec's (a spec is data; nothing in it writes outside its run
folder): ``--mlflow URI`` on the command line, else the ``MLFLOW_TRACKING_URI`` environment variable, else
``RUN/mlflow``. A URI with a scheme (``http://``, ``sqlite:///``, ``file:``) is used as it is, and a new
experiment there keeps its artifacts where that store puts them (a server's artifact root; for a ``sqlite:`` URI,
``./mlruns`` under the current folder); a folder, also in ``MLFLOW_TRACKING_URI`` (where MLflow itself would
read it as its plain-file store), becomes a local store there: ``FOLDER/mlflow.db`` (SQLite) with the artifacts
in ``FOLDER/artifacts``. MLflow 3 keeps its plain-file backend (``file:``, ``./mlruns``) in maintenance mode
and refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true``; the SQLite file is MLflow's own local default. The store
in the run folder came with the folder, so it is held to it: no link out, no experiment or run whose artifacts
live elsewhere.

MLflow is an extra: ``pip install 'medrobust[mlflow]'`` (mlflow-skinny with SQLAlchemy and Alembic for the
local store).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medrobust.files import check_no_links, strict_dumps

if TYPE_CHECKING:
    from medrobust.report.analysis import Finding, ModelChecks

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
    """Where a run is logged: the tracking URI; for a local folder store, the artifact root of its experiments
    (None: the tracking server's default) and the folder; ``confined``: the default store inside the run folder,
    which must keep everything there."""

    uri: str
    artifact_root: str | None = None
    folder: Path | None = None
    confined: bool = False


# tracking-store schemes MLflow knows (a database URI may name its driver: postgresql+psycopg2://)
SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "file")


def destination(uri: str | None, run_dir: Path, create: bool = True) -> Destination:
    """``uri`` (the command line's), else ``MLFLOW_TRACKING_URI``, else ``run_dir/mlflow``; a folder becomes a
    SQLite store in it (created unless ``create`` is false: the up-front check) with its artifacts beside.
    Errors name the value: an unknown scheme, a file, a folder name a database URI cannot hold."""
    given = uri or os.environ.get("MLFLOW_TRACKING_URI")
    chosen = given or str(run_dir / "mlflow")
    what = "--mlflow" if uri else "MLFLOW_TRACKING_URI" if given else "the run's MLflow folder"
    if _SCHEME.match(chosen):
        scheme = chosen.split(":", 1)[0].lower()
        if scheme.split("+", 1)[0] not in SCHEMES:
            raise ValueError(
                f"{what} {chosen!r}: unknown scheme {scheme!r}; expected a tracking URI ({', '.join(SCHEMES[:7])}) "
                "or a folder for a local store"
            )
        return Destination(chosen)
    folder = Path(chosen).expanduser().resolve()
    if set("?#%") & set(str(folder)):
        raise ValueError(
            f"{what} {str(folder)!r}: a local store's path cannot hold '?', '#' or '%' (its database URI would "
            "be read differently); pass another folder"
        )
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{what} {chosen!r} is a file; pass a folder or a tracking URI (http://, sqlite:///)")
    confined = not given
    if confined:  # a crafted run folder may hold links out of it
        from medrobust.cells import inside

        for path in (folder, folder / "mlflow.db", folder / "artifacts"):
            inside(run_dir, path)
        check_no_links(folder)  # MLflow writes its database's side files and artifacts by paths of its own
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return Destination(f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri(), folder, confined)


def first_line(err: BaseException) -> str:
    """An error's first line (a store's errors can run to pages), else its type."""
    return str(err).splitlines()[0] if str(err).strip() else type(err).__name__


def _quiet_migrations() -> None:
    """A new local store's schema migrations log at INFO through MLflow and Alembic: not news to the user."""
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


#: seconds an MLflow server has to answer the up-front check (MLflow itself retries for minutes)
REACH_TIMEOUT = 5.0


def check_reachable(uri: str, timeout: float = REACH_TIMEOUT) -> None:
    """An HTTP(S) tracking server answers MLflow's REST API: one POST to ``/api/2.0/mlflow/experiments/search``
    for one experiment (a call every client makes), without retries. A 200, or a 401/403 (a server that wants
    the credentials MLflow will send), passes; no connection, no answer in ``timeout`` seconds, or another status
    (a 404 from a proxy or another service at that address) is a one-line error, before the run, not after it."""
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search"
    request = urllib.request.Request(
        url, data=b'{"max_results": 1}', headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            return
        why = f"HTTP {err.code} from {url}: not an MLflow tracking server?"
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        why = first_line(reason) if isinstance(reason, BaseException) else str(reason)
    raise ValueError(
        f"MLflow server {uri!r} cannot be reached ({why}); start it, pass --mlflow with a server that answers, or "
        "leave MLflow out (log later with `medrobust report RUN --mlflow URI`)"
    )


def check_destination(uri: str | None, run_dir: Path) -> None:
    """Before a run: MLflow is installed and the destination makes sense (a known scheme, a usable folder; a
    local ``file:`` or ``sqlite:`` store opens), so a long run does not end in an error it could have had first.
    An HTTP(S) server must answer MLflow's API within ``REACH_TIMEOUT`` seconds (:func:`check_reachable`)."""
    require_mlflow()
    where = destination(uri, run_dir, create=False)
    if where.uri.split(":", 1)[0].lower() in ("http", "https"):
        check_reachable(where.uri)
    if where.uri.split(":", 1)[0].lower() in ("file", "sqlite"):
        from mlflow.tracking import MlflowClient

        _quiet_migrations()
        try:
            MlflowClient(tracking_uri=where.uri).search_experiments(max_results=1)
        except Exception as err:
            raise ValueError(f"MLflow store {where.uri!r} cannot be opened: {first_line(err)}") from None


def _short(text: str, room: int) -> str:
    """``text`` within ``room`` characters: kept whole if it fits, else its start and a hash of it all."""
    if len(text) <= room:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{text[: max(room - 9, 1)].rstrip(' .')}-{digest}"


def metric_key(*parts: str, room: int = MAX_KEY) -> str:
    """A metric or parameter key MLflow accepts on every platform: letters, digits, ``_ - . /`` and spaces.
    ``apgd(norm=l2,steps=50)`` -> ``apgd norm_l2 steps_50``; ``matched_noise[pgd]`` -> ``matched_noise pgd``;
    ``dice:csf`` -> ``dice.csf``; a ``/`` inside a part becomes ``_``. Within ``room`` characters: the longest
    parts are shortened to their start and a hash."""
    out = []
    for part in parts:
        text = re.sub(r"[(\[,]", " ", str(part)).replace(")", "").replace("]", "").replace("=", "_").replace(":", ".")
        text = re.sub(r"[^\w.\- ]", "_", text)
        out.append(re.sub(r" +", " ", text).strip(" .") or "_")
    while len("/".join(out)) > room:
        longest = max(range(len(out)), key=lambda i: len(out[i]))
        excess = len("/".join(out)) - room
        if len(out[longest]) <= 12:  # nothing left to shorten: hash the whole key
            return _short("/".join(out), room)
        out[longest] = _short(out[longest], max(len(out[longest]) - excess, 12))
    return "/".join(out)


class Keys:
    """MLflow keys for names that may collide once cleaned (``a/b`` and ``a_b`` both give ``a_b``): the first
    name keeps the clean key, a later different one gets a hash of its own spelling appended."""

    def __init__(self, room: int = MAX_KEY) -> None:
        self.room = room
        self.owner: dict[str, tuple[str, ...]] = {}

    def __call__(self, *parts: Any) -> str:
        original = tuple(str(p) for p in parts)
        key = metric_key(*original, room=self.room)
        if self.owner.setdefault(key, original) != original:
            digest = hashlib.sha256("\x00".join(original).encode()).hexdigest()[:8]
            key = f"{metric_key(*original, room=self.room - 9)}-{digest}"
            self.owner[key] = original
        return key


def spec_params(spec: dict[str, Any] | list[Any], prefix: str = "", keys: Keys | None = None) -> dict[str, str]:
    """The spec flattened to dotted keys (lists by index): ``models.0.name`` -> ``small-cnn``. Values are JSON
    (strings as they are), cut at MLflow's parameter length."""
    keys = keys or Keys()
    out: dict[str, str] = {}
    items: Any = spec.items() if isinstance(spec, dict) else enumerate(spec)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (dict, list)) and value:
            out.update(spec_params(value, f"{name}.", keys))
        else:
            text = value if isinstance(value, str) else strict_dumps(value, sort_keys=True)
            out[keys(name)] = text[:MAX_PARAM]
    return out


def summary_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Every finite summary value and its interval bounds, keyed by model / perturbation / strength / metric
    (clean rows without a strength) and ``.ci_low`` / ``.ci_high``."""
    keys = Keys(MAX_KEY - len(".ci_high"))  # room for the suffix: a bound never lands on its value's key
    out: dict[str, float] = {}
    for r in rows:
        strength = r.get("strength")
        where = [r["model"], r["perturbation"]]
        if r["perturbation"] != "clean" and strength is not None:
            where.append(f"{strength:.6g}")
        key = keys(*where, r["metric"])
        for suffix, field in (("", "value"), (".ci_low", "ci_low"), (".ci_high", "ci_high")):
            value = r.get(field)
            if isinstance(value, (int, float)) and value == value and abs(value) != float("inf"):
                out[key + suffix] = float(value)
    return out


# spec keys that change how a run runs, not what it computes: tags (they may change on a resume), not parameters
RUNTIME_KEYS = ("executor", "threads", "mlflow")


def run_key(folder: str, spec: dict[str, Any]) -> str:
    """Which MLflow run a run folder logs to: its absolute path and its spec's identity, without the keys that
    change how it runs but not what it computes (executor, threads, mlflow)."""
    kept = {k: v for k, v in spec.items() if k not in RUNTIME_KEYS}
    text = json.dumps([folder, kept], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def report_findings(run_dir: Path) -> tuple[list[Finding], list[ModelChecks]]:
    """The report's warnings and each model's sanity checks, computed from results.db as the report computes
    them (:func:`medrobust.report.analysis.warnings` and ``check_summary``), so the tags say what summary.md
    says."""
    from medrobust.report import analysis
    from medrobust.report.data import load_run

    run = load_run(run_dir)
    checks = analysis.model_checks(run)
    values = analysis.Values(run.summary, run.metric)
    return analysis.warnings(run, values, checks=checks), analysis.check_summary(run, checks)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def checks_tag(findings: Sequence[Finding]) -> str:
    """The run's tag ``medrobust.checks``: "passed" when the report lists no warning, else their number and
    titles (a repeated title once, with its count), within MLflow's tag length."""
    if not findings:
        return "passed"
    titles = Counter(f.check for f in findings)
    text = f"{_plural(len(findings), 'warning')}: " + "; ".join(
        title if n == 1 else f"{title} (x{n})" for title, n in titles.items()
    )
    return text if len(text) <= MAX_TAG else text[: MAX_TAG - 3] + "..."


def model_checks_tag(checks: ModelChecks | None, warnings: int) -> str:
    """A model's tag ``model/<name>/checks``: "failed: <checks>" for its failed sanity checks, "not run" when its
    model-level checks are not in results.db, and the number of the report's warnings; "passed" only when none
    failed and the report has no warning."""
    if checks is not None and checks.failed:
        parts = ["failed: " + ", ".join(checks.failed)]
    elif checks is None or not checks.stored:
        parts = ["not run"]
    else:
        parts = [] if warnings else ["passed"]
    if warnings:
        parts.append(f"warnings: {warnings} (see summary.md)")
    return "; ".join(parts)


CUT_NOTE = (
    "*summary.md ({size:,} characters) is longer than an MLflow description ({limit:,}): the full text is the "
    "artifact summary.md. The report's warnings come first; the rest is cut.*"
)
CUT_MARK = "\n\n*(cut here: the full text is the artifact summary.md)*\n"


def description(summary_md: str, findings: Sequence[Finding], limit: int = MAX_TAG) -> str:
    """The run's description (``mlflow.note.content``): summary.md whole when it fits ``limit`` characters; else
    a line saying it is cut, the report's warnings (their titles and messages, as summary.md writes them), then
    the start of summary.md up to a line end, and a mark where it stops. Never longer than ``limit``."""
    if len(summary_md) <= limit:
        return summary_md
    from medrobust.report.markdown import cell

    lines = [f"- **{cell(f.check)}**: {cell(f.message)}" for f in findings] or ["No warnings."]
    head = "\n".join([CUT_NOTE.format(size=len(summary_md), limit=limit), "", "## Warnings", "", *lines, "", ""])
    room = limit - len(head) - len(CUT_MARK)
    if room <= 0:  # the warnings alone fill the description
        kept = head[: limit - len(CUT_MARK)]
        return kept[: kept.rfind("\n")] + CUT_MARK if "\n" in kept else kept + CUT_MARK
    start = summary_md[:room]
    return head + (start[: start.rfind("\n")] if "\n" in start else start) + CUT_MARK


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

    from medrobust._version import __version__
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
    finally:
        store.close()
    spec = json.loads(stored["spec_json"])
    chosen = spec.get("mlflow") or {}
    experiment = experiment or chosen.get("experiment") or spec.get("name") or "medrobust"
    run_name = run_name or chosen.get("run_name") or run_dir.resolve().name
    where = destination(uri, run_dir)
    folder = str(run_dir.resolve())

    identity = run_key(folder, spec)
    tags = {
        "medrobust.run_key": identity,
        "medrobust.run_folder": folder,
        "medrobust.spec_hash": str(stored["spec_hash"]),
        "medrobust.version": __version__,
        "medrobust.device": str(stored["device"]),
    }
    findings, model_checks = report_findings(run_dir)
    by_model = {c.model: c for c in model_checks}
    tags["medrobust.checks"] = checks_tag(findings)
    tags["medrobust.warnings"] = str(len(findings))
    tag_key = Keys()
    for m in models:
        tags[tag_key("model", m.name, "fingerprint")] = m.fingerprint
        tags[tag_key("model", m.name, "checks")] = model_checks_tag(by_model.get(m.name), len(findings))
    summary_md = run_dir / "summary.md"
    if summary_md.exists():  # the run's description in MLflow's UI
        tags["mlflow.note.content"] = description(summary_md.read_text(encoding="utf-8"), findings)
    params = spec_params({k: v for k, v in spec.items() if k not in RUNTIME_KEYS})
    tags["medrobust.executor"] = strict_dumps(spec.get("executor"), sort_keys=True)
    tags["medrobust.threads"] = strict_dumps(spec.get("threads"))
    metrics = summary_metrics(json.loads(summary_path.read_text(encoding="utf-8")))

    _quiet_migrations()
    client = MlflowClient(tracking_uri=where.uri)
    found = client.get_experiment_by_name(experiment)
    exp_id = found.experiment_id if found else client.create_experiment(experiment, where.artifact_root)
    earlier = client.search_runs([exp_id], filter_string=f"tags.`medrobust.run_key` = '{identity}'", max_results=1)
    if where.confined:  # the store in the run folder came with the folder: it may point anywhere
        location = found.artifact_location if found else where.artifact_root
        runs_at = [r.info.artifact_uri for r in earlier]
        outside = [
            u
            for u in [location, *runs_at]
            if u != where.artifact_root and not str(u).startswith(f"{where.artifact_root}/")
        ]
        if outside:
            raise ValueError(
                f"{where.folder}/mlflow.db keeps artifacts at {outside[0]!r}, outside the run folder; delete "
                f"{where.folder} or pass --mlflow to choose a store"
            )
    run = earlier[0] if earlier else client.create_run(exp_id, run_name=run_name)
    mlflow_id = run.info.run_id
    now = int(time.time() * 1000)
    tag_list = [RunTag(k, v) for k, v in tags.items()]
    param_list = [Param(k, v) for k, v in params.items()]  # the same values again when the run is updated
    metric_list = [Metric(k, v, now, 0) for k, v in metrics.items()]
    artifacts = [name for name in ARTIFACTS if (run_dir / name).is_file()]
    try:
        for i in range(0, len(tag_list), PARAMS_PER_BATCH):  # the run_key first: a retry finds this run
            client.log_batch(mlflow_id, tags=tag_list[i : i + PARAMS_PER_BATCH])
        for i in range(0, len(param_list), PARAMS_PER_BATCH):
            client.log_batch(mlflow_id, params=param_list[i : i + PARAMS_PER_BATCH])
        for i in range(0, len(metric_list), METRICS_PER_BATCH):
            client.log_batch(mlflow_id, metrics=metric_list[i : i + METRICS_PER_BATCH])
        for name in artifacts:
            client.log_artifact(mlflow_id, str(run_dir / name))
    except Exception:
        client.set_terminated(mlflow_id, "FAILED")
        raise
    client.set_terminated(mlflow_id)
    return Logged(where.uri, experiment, mlflow_id, len(metrics), len(params), artifacts, bool(earlier))
