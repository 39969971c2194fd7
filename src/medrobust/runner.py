"""The experiment runner: expand models x perturbations x strengths into cells (cells.py), run each through
the evaluation core (evaluation.py), store it, skip finished ones.

Every random draw comes from a generator derived from the seed, the model's name, the perturbation's label,
an attack's strength (where each strength runs on its own) and the batch, so results do not depend on the order
cells run in or on resuming; a corruption draws the same numbers at every strength, scaled. Minimal-norm
attacks (DeepFool, C&W, JSMA) run once per model: one cell holds every strength, each the minimal perturbation
clipped to it (``Attack.sweep``, as foolbox does). Each attack cell also holds Gaussian noise of the same
per-sample L2 norm as the attack ("matched_noise[ATTACK]"). Each run records its models (task, classes, bounds,
weights' fingerprint, card) and the cells of its grid in results.db.

Before anything is written, a run locks its folder, checks results.db and the stored spec, and loads the data
and checkpoints (trust boundary: ``module:function`` architectures only with ``trust_code``). After the cells it
stores model-level sanity checks and CLEVER scores, and writes summary.csv/json and comparisons.csv/json.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from medrobust.attacks import ATTACKS
from medrobust.cells import expand, file_digest, inside, trained_folder
from medrobust.checks import run_model_checks
from medrobust.config import ExperimentSpec, ModelSpec
from medrobust.data import load_dataset
from medrobust.data.base import ImageDataset, iterate_batches
from medrobust.executors import Executor, LocalExecutor, Settings, Work, make_executor, plan
from medrobust.files import strict_dumps, write_json
from medrobust.metrics.clever import WITHHOLD, attack_distances, clever_estimate
from medrobust.models import Model, load_model
from medrobust.models.card import ModelCard, read_card, save_checkpoint, weights_path
from medrobust.models.compat import check_classes, check_fit, probe
from medrobust.results import clever_rows, compare_models, summarise, write_comparisons, write_summary
from medrobust.seeding import deterministic_algorithms, make_generator
from medrobust.store import CellInfo, ModelRow, Store, check_database, trained_fingerprints
from medrobust.tasks import get_task
from medrobust.train import TrainSettings, epoch_line, train, versions
from medrobust.types import check_device

log = logging.getLogger(__name__)


class LoadedModel:
    def __init__(self, model: Model, card: ModelCard, fingerprint: str) -> None:
        self.model, self.card, self.fingerprint = model, card, fingerprint


def load_folder(path: str | Path, spec: ExperimentSpec, trust_code: bool) -> LoadedModel:
    """A checkpoint (folder or its model.json) on the spec's device, fingerprinted by its weights file."""
    model, card = load_model(path, device=spec.device, trust_code=trust_code or spec.trust_code)
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    return LoadedModel(model, card, file_digest(folder / card.weights))


def load_checkpoint(spec: ExperimentSpec, m: ModelSpec, trust_code: bool) -> LoadedModel:
    assert m.checkpoint is not None
    return load_folder(m.checkpoint, spec, trust_code)


def prepare_model(
    spec: ExperimentSpec,
    m: ModelSpec,
    run_dir: Path,
    notify: Callable[[str], None],
    trust_code: bool = False,
    prepared: dict[str, LoadedModel] | None = None,
    executor: Executor | None = None,
    started: dict[str, Future[tuple[Model, ModelCard]]] | None = None,
) -> LoadedModel:
    """Load a checkpoint, or train (once; cached under ``run_dir/models``) a registered architecture. The static
    sources of an ensemble adversarial defense are prepared first (``prepared``: models of the spec already
    loaded, by name; filled in). ``started``: training jobs already submitted (:func:`start_training`), by name."""
    prepared = {} if prepared is None else prepared
    if m.name in prepared:
        return prepared[m.name]
    if m.checkpoint is not None:
        prepared[m.name] = load_checkpoint(spec, m, trust_code)
        return prepared[m.name]
    assert m.train is not None
    by_name = {s.name: s for s in spec.models}
    sources = {
        name: prepare_model(spec, by_name[name], run_dir, notify, trust_code, prepared, executor, started)
        if name in by_name
        else load_folder(name, spec, trust_code)
        for name in m.defense_sources
    }
    settings, folder = _training(spec, m, run_dir, sources, trust_code)
    if started and m.name in started:
        model, card = started[m.name].result()
    else:
        if (folder / "model.json").exists():
            check_cached(m.name, settings, folder, run_dir)
            notify(f"reusing trained model {m.name} from {folder}")
            prepared[m.name] = load_folder(folder, spec, trust_code)
            return prepared[m.name]
        notify(_training_message(spec, m))
        executor = executor or LocalExecutor(spec.executor)
        # the training job runs where the executor runs it; the driver saves the checkpoint
        # epoch lines as `medrobust train` prints them (from Ray workers they go to the workers' logs)
        shown = {"progress": lambda epoch, row: notify(epoch_line(m.name, row))} if executor.name == "local" else {}
        by_source = {k: (v.model, v.fingerprint) for k, v in sources.items()}
        model, card = executor.train(train, settings, None, sources=by_source, **shown)
    save_checkpoint(model.cpu(), card, folder, root=run_dir)
    prepared[m.name] = LoadedModel(model.to(spec.device), card, file_digest(folder / card.weights))
    return prepared[m.name]


#: the training settings a cached model's card must agree with (the device may differ: a run may resume elsewhere)
CACHE_FIELDS = ("epochs", "batch_size", "lr", "defense")


def check_cached(name: str, settings: TrainSettings, folder: Path, run_dir: Path) -> None:
    """A model found in the run folder's cache is reused only if it is what the spec trains: its card records the
    spec's architecture, arch_kwargs, training data, seed and settings, and its weights are the ones earlier runs
    of this folder recorded in results.db (when they did). A folder may come from someone else; a model placed
    in it would otherwise be scored and reported as the one the spec trains. Checked before the model is built."""
    card, _ = read_card(folder)
    expected = {
        "architecture": settings.architecture,
        "arch_kwargs": settings.arch_kwargs,
        "dataset": settings.dataset,
        "dataset params": settings.dataset_params,
        "seed": settings.seed,
        **{k: getattr(settings, k) for k in CACHE_FIELDS},
    }
    found = {
        "architecture": card.architecture,
        "arch_kwargs": card.arch_kwargs,
        "dataset": card.dataset.get("name"),
        "dataset params": card.dataset.get("params", {}),
        "seed": card.seed,
        **{k: card.training.get(k) for k in CACHE_FIELDS},
    }
    for key, value in expected.items():
        if strict_dumps(found[key], sort_keys=True) != strict_dumps(value, sort_keys=True):
            raise ValueError(
                f"model {name!r}: the cached model in {str(folder)!r} records {key} {found[key]!r} but the spec "
                f"trains it with {value!r}; delete that folder to train it again"
            )
    recorded = trained_fingerprints(run_dir / "results.db", name)
    fingerprint = file_digest(weights_path(card, folder)) if recorded else ""
    if recorded and fingerprint not in recorded:
        raise ValueError(
            f"model {name!r}: the weights cached in {str(folder)!r} (fingerprint {fingerprint}) are not the ones "
            f"this run folder trained and scored ({', '.join(sorted(recorded))} in results.db); delete that folder "
            "to train it again"
        )


def start_training(
    spec: ExperimentSpec, run_dir: Path, executor: Executor, trust_code: bool, notify: Callable[[str], None]
) -> dict[str, Future[tuple[Model, ModelCard]]]:
    """Submit at once the training jobs that depend on no other model (nothing cached, no defense sources), where
    the executor runs jobs side by side (worker processes); :func:`prepare_model` collects them."""
    submit = getattr(executor, "submit_train", None)
    if submit is None:
        return {}
    jobs = {}
    for m in spec.models:
        if m.checkpoint is not None or m.train is None or m.defense_sources:
            continue
        settings, folder = _training(spec, m, run_dir, {}, trust_code)
        if not (folder / "model.json").exists():
            notify(_training_message(spec, m))
            jobs[m.name] = submit(train, settings, None, sources={})
    return jobs


def _training_message(spec: ExperimentSpec, m: ModelSpec) -> str:
    assert m.train is not None
    how = f", {m.train.defense.describe()}" if m.train.defense is not None else ""
    return f"training {m.name} ({m.train.architecture}{how}) on {(spec.train_dataset or spec.dataset).name}"


def _training(
    spec: ExperimentSpec, m: ModelSpec, run_dir: Path, sources: dict[str, LoadedModel], trust_code: bool
) -> tuple[TrainSettings, Path]:
    """The training settings of model ``m`` and the folder its trained weights are cached in."""
    assert m.train is not None
    data = spec.train_dataset or spec.dataset
    settings = TrainSettings(
        architecture=m.train.architecture,
        dataset=data.name,
        dataset_params=dict(data.params),
        arch_kwargs=dict(m.train.arch_kwargs),
        epochs=m.train.epochs,
        batch_size=m.train.batch_size,
        lr=m.train.lr,
        seed=spec.seed if m.train.seed is None else m.train.seed,
        device=spec.device,
        name=m.name,
        trust_code=trust_code or spec.trust_code,
        defense=m.train.defense.model_dump(mode="json") if m.train.defense is not None else {},
    )
    return settings, trained_folder(spec, m, run_dir, {k: v.fingerprint for k, v in sources.items()})


def load_sources(
    spec: ExperimentSpec, models: dict[str, LoadedModel], trust_code: bool = False
) -> dict[str, LoadedModel]:
    """Every transfer source of the spec: its models by name, checkpoint folders loaded once."""
    out: dict[str, LoadedModel] = {}
    names = {m.name for m in spec.models}
    for p in spec.perturbations:
        for source in p.sources:
            if source in models:
                out[source] = models[source]
            elif source in names:
                continue  # a model of the spec not loaded yet (one to train): the caller adds it
            elif source not in out:
                out[source] = load_folder(source, spec, trust_code)
    return out


def model_row(name: str, lm: LoadedModel, m: ModelSpec, dataset: ImageDataset) -> ModelRow:
    """What the store records of a model as this run used it (the report reads it from there)."""
    if m.checkpoint is not None:
        source = f"checkpoint {m.checkpoint}"
    else:
        assert m.train is not None
        source = f"trained {m.train.architecture}, {m.train.epochs} epochs"
    return ModelRow(
        name,
        lm.fingerprint,
        dataset.task,
        list(dataset.class_names),  # checked equal to the card's (or mapped by class_map)
        lm.model.bounds,
        source,
        lm.card.model_dump(mode="json"),
    )


def probe_models(spec: ExperimentSpec, dataset: ImageDataset, loaded: dict[str, LoadedModel], trust_code: bool) -> None:
    """Before any training: every model of the spec, built (fresh weights, for the ones to train) or loaded, runs
    once on two samples of the spec's data, and of its training data where that differs; an architecture that
    cannot take the input is a one-line error naming the model and the input size (:func:`probe`)."""
    from medrobust.models.zoo import build_network

    datasets = [(spec.dataset.name, dataset)]
    if spec.train_dataset is not None and any(m.train is not None for m in spec.models):
        t = spec.train_dataset
        datasets.append((t.name, load_dataset(t.name, split="train", **t.params)))
    for label, data in datasets:
        for m in spec.models:
            if m.name in loaded:
                if label == spec.dataset.name:
                    lm = loaded[m.name]
                    probe(lm.model, data, f"model {m.name!r}", label, spec.device, lm.card.input_shape)
                continue
            assert m.train is not None
            shape = data.input_shape
            net = build_network(
                m.train.architecture,
                in_channels=shape[0],
                num_classes=data.num_classes,
                spatial_dims=len(shape) - 1,
                trust_code=trust_code or spec.trust_code,
                **m.train.arch_kwargs,
            )
            probe(net, data, f"model {m.name!r} ({m.train.architecture})", label)


def check_strength(spec: ExperimentSpec) -> float | None:
    """The Linf eps at which the "more steps" check compares attacks: the spec's reference strength, else the
    smallest Linf attack strength; None when the spec has no Linf attack."""
    if "linf" in spec.reference_strength:
        return spec.reference_strength["linf"]
    linf = [
        s for p in spec.perturbations if p.kind == "attack" for s in p.strengths if p.threat_norm == "linf" and s > 0
    ]
    return min(linf) if linf else None


def sanity_checks(
    spec: ExperimentSpec,
    models: dict[str, LoadedModel],
    dataset: ImageDataset,
    store: Store,
    notify: Callable[[str], None],
    n: int = 32,
) -> None:
    """Model-level sanity checks (logits, determinism, gradients, unbounded attack, more steps) once per model
    and weights, on the first ``n`` test samples (at most one batch); stored for the report."""
    device = torch.device(spec.device)
    task = get_task(dataset.task)
    size = min(n, spec.batch_size, spec.limit or n)
    for name, lm in models.items():
        if store.has_checks(name, lm.fingerprint):
            continue
        batch = next(iter(iterate_batches(dataset, size, size)))
        results = run_model_checks(
            lm.model,
            task,
            batch.x.to(device),
            batch.y.to(device),
            eps=check_strength(spec),
            generator=make_generator(spec.seed, name, "checks", device=device),
        )
        failed = [r.name for r in results if not r.passed]
        notify(f"sanity checks of {name}: " + (f"FAILED {', '.join(failed)} (see the report)" if failed else "passed"))
        store.write_checks(name, lm.fingerprint, results)


def clever_settings(spec: ExperimentSpec) -> dict[str, Any]:
    """What a stored CLEVER score set depends on besides the weights."""
    assert spec.clever is not None
    return {
        **spec.clever.model_dump(mode="json"),
        "limit": spec.limit,
        "seed": spec.seed,
        "dataset": spec.dataset.model_dump(mode="json"),
    }


def clever_scores(
    spec: ExperimentSpec,
    models: dict[str, LoadedModel],
    dataset: ImageDataset,
    store: Store,
    notify: Callable[[str], None],
) -> dict[str, list[dict[str, Any]]]:
    """CLEVER scores of every model on the evaluated samples (spec ``clever``), computed once per weights and
    settings and stored in results.db (table model_scores). Returns model -> per-sample scores."""
    if spec.clever is None:
        return {}
    c, settings, device = spec.clever, clever_settings(spec), torch.device(spec.device)
    out = {}
    for name, lm in models.items():
        stored = store.model_scores(name, lm.fingerprint, c.label, settings)
        if stored is not None:
            out[name] = stored
            continue
        t0, scores = time.perf_counter(), list[dict[str, Any]]()
        for b, batch in enumerate(iterate_batches(dataset, spec.batch_size, spec.limit)):
            est = clever_estimate(
                lm.model,
                batch.x.to(device),
                batch.y.to(device),
                norm=c.norm,
                n_batches=c.n_batches,
                batch_size=c.batch_size,
                radius=c.radius,
                max_batches=c.max_batches,
                target_classes=c.target_classes,
                generator=make_generator(spec.seed, name, c.label, b, device=device),
            )
            start = b * spec.batch_size
            scores += [
                {
                    "sample_index": start + i,
                    "sample_id": batch.ids[i],
                    "score": float(est.scores[i]),
                    "fit": est.fit[i],
                    "flagged": bool(est.flagged[i]),
                    "batches": int(est.batches[i]),
                }
                for i in range(len(batch))
            ]
        seconds = time.perf_counter() - t0
        store.write_model_scores(name, lm.fingerprint, c.label, settings, scores, seconds)
        kept = [s for s in scores if s["fit"] != "misclassified"]
        flagged = sum(1 for s in kept if s["flagged"])
        capped = sum(1 for s in kept if s["score"] >= c.radius)
        notify(
            f"{c.label} of {name}: {len(scores)} samples in {seconds:.1f} s"
            + (f", {flagged} of {len(kept)} fits still degenerate after {c.max_batches} batches" if flagged else "")
            + (
                f"; median withheld (more than {100 * WITHHOLD:.0f}% degenerate)"
                if kept and flagged > WITHHOLD * len(kept)
                else ""
            )
            + (f"; {capped} scores at the radius {c.radius:g} (a larger radius would tell more)" if capped else "")
        )
        out[name] = scores
    return out


@dataclass
class RunResult:
    run_dir: Path
    summary: list[dict[str, Any]]
    cells_total: int
    cells_run: int
    cells_skipped: int
    seconds: float
    #: seconds per stage, in order: setup (data, checkpoints, probes), training, sanity checks, CLEVER, cells,
    #: summary (worst cases, comparisons)
    stages: dict[str, float] = field(default_factory=dict)


def run_experiment(
    spec: ExperimentSpec,
    run_dir: str | Path,
    *,
    quiet: bool = False,
    notify: Callable[[str], None] = log.info,
    trust_code: bool = False,
    force: bool = False,
) -> RunResult:
    """Run (or resume) ``spec`` in ``run_dir``; writes results.db, summary.csv and summary.json. On CUDA the run
    uses deterministic kernels unless the spec says ``deterministic: false``.

    Before anything is written the folder is locked against a second run, its results.db and stored spec are
    checked (a folder holding another experiment is refused unless ``force``), and the data and checkpoints are
    loaded. ``trust_code`` (or the spec's ``trust_code``) allows ``module:function`` architectures."""
    run_dir = Path(run_dir)
    with deterministic_algorithms(spec.device, spec.deterministic), run_lock(run_dir):
        return _run_experiment(spec, run_dir, quiet=quiet, notify=notify, trust_code=trust_code, force=force)


LOCK_NAME = ".medrobust.lock"
# what a run writes in its folder (besides temporary files it renames into these)
RUN_FILES = (
    "spec.json",
    "results.db",
    "results.db-wal",
    "results.db-shm",
    "summary.csv",
    "summary.json",
    "comparisons.csv",
    "comparisons.json",
    "report.html",
    "summary.md",
    "models",
    "mlflow",  # the default MLflow store of `--mlflow` / the spec's mlflow key (medrobust.tracking)
    LOCK_NAME,
)


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """An exclusive lock on ``run_dir`` for one run at a time. The operating system drops it when the process
    ends, however it ends, so a killed run never leaves a lock behind that blocks the resume."""
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"run folder {str(run_dir)!r} is a file; pass a folder (new or from an earlier run)")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create run folder {str(run_dir)!r}: {err.strerror or err}") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ValueError(f"run folder {str(run_dir)!r} is not writable; pass a folder you can write to")
    # FileLock opens (and truncates) the lock file: never through a link planted in the folder
    inside(run_dir, run_dir / LOCK_NAME)
    lock = FileLock(str(run_dir / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ValueError(
            f"run folder {str(run_dir)!r} is in use by another medrobust run; wait for it to finish (it resumes "
            "from what that run stored) or pass another --out"
        ) from None
    try:
        yield
    except BaseException:
        lock.release()
        if created and {p.name for p in run_dir.iterdir()} <= {LOCK_NAME}:
            # a run that failed before writing anything leaves no folder behind
            (run_dir / LOCK_NAME).unlink(missing_ok=True)
            run_dir.rmdir()
        raise
    else:
        lock.release()


# Spec keys that define which experiment a run folder holds; other keys (models, perturbations, strengths,
# limit, ...) may change between runs in one folder, since every cell is keyed by what it computes.
IDENTITY_KEYS = ("dataset", "train_dataset")


def check_stored_spec(spec: ExperimentSpec, run_dir: Path, force: bool) -> None:
    path = run_dir / "spec.json"
    if not path.exists() or force:
        return
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{str(path)!r} cannot be read ({err}); pass --force to replace it or use a new run folder"
        ) from None
    new = spec.model_dump(mode="json")
    differ = [k for k in IDENTITY_KEYS if isinstance(stored, dict) and stored.get(k) != new.get(k)]
    if differ or not isinstance(stored, dict):
        k = differ[0] if differ else "spec"
        raise ValueError(
            f"run folder {str(run_dir)!r} holds another experiment "
            f"({k}: stored {json.dumps(stored.get(k) if differ else stored)}, "
            f"this spec {json.dumps(new.get(k))}); use a new run folder, or --force to add this run to it"
        )


def warn_large_eps(spec: ExperimentSpec, models: dict[str, LoadedModel], notify: Callable[[str], None]) -> None:
    """A Linf eps at or above a model's whole input range makes every input reachable: almost surely a unit slip
    (eps in 0-255 units for [0, 1] data)."""
    for p in spec.perturbations:
        if p.threat_norm != "linf":
            continue
        for name, lm in models.items():
            span = lm.model.bounds[1] - lm.model.bounds[0]
            big = [s for s in p.strengths if s >= span]
            if big and p.applies_to(name):
                notify(
                    f"warning: {p.name} eps {big} on {name} is at least its whole input range {span:g} "
                    f"(bounds {list(lm.model.bounds)}); every input is reachable. Is eps in the data's units?"
                )


def warn_missing_classes(dataset: ImageDataset, limit: int | None, notify: Callable[[str], None]) -> None:
    """Say so when the samples a classification run scores hold fewer classes than the data has (the report
    repeats it): accuracy then says nothing about the missing ones, and with one class balanced accuracy and
    AUC are undefined."""
    if get_task(dataset.task).dense:  # one decision per sample only
        return
    n = len(dataset) if limit is None else min(limit, len(dataset))
    present = set(dataset.labels[:n].tolist())
    if len(present) < dataset.num_classes:
        absent = ", ".join(c for k, c in enumerate(dataset.class_names) if k not in present)
        undefined = "; balanced accuracy and AUC are undefined" if len(present) < 2 else ""
        notify(
            f"warning: the {n} test samples hold {len(present)} of the {dataset.num_classes} classes (none of "
            f"{absent}){undefined}"
        )


def _run_experiment(
    spec: ExperimentSpec, run_dir: Path, *, quiet: bool, notify: Callable[[str], None], trust_code: bool, force: bool
) -> RunResult:
    started = time.perf_counter()
    # checks first: nothing in the folder changes until the data and the checkpoints have loaded
    check_device(spec.device)
    if spec.executor.name == "ray" and spec.executor.address and not (trust_code or spec.trust_code):
        # a cluster returns pickled objects that this process loads: connecting to one is running its code
        raise ValueError(
            f"executor address {spec.executor.address!r}: a Ray cluster sends back pickled results that this "
            "process loads, so connecting runs code from it; pass --trust-code to connect (without an address "
            "a local Ray instance is started)"
        )
    for name in RUN_FILES:  # a crafted folder may hold links out of it: refuse to write through them
        inside(run_dir, run_dir / name)
    check_database(run_dir / "results.db")
    if (run_dir / "results.db").exists() and not os.access(run_dir / "results.db", os.W_OK):
        raise ValueError(f"{str(run_dir / 'results.db')!r} is read-only; this run could not store its results")
    check_stored_spec(spec, run_dir, force)
    dataset = load_dataset(spec.dataset.name, split=spec.dataset.split, **spec.dataset.params)
    if spec.clever is not None and get_task(dataset.task).dense:
        raise ValueError(
            f"clever: CLEVER scores classifiers (one decision per input); dataset {spec.dataset.name!r} is a "
            f"{dataset.task} task"
        )
    scored = get_task(dataset.task).scored_metrics
    if spec.headline_metric is not None and spec.headline_metric not in scored:
        raise ValueError(
            f"headline_metric {spec.headline_metric!r} is not a score of dataset {spec.dataset.name!r} (a "
            f"{dataset.task} task); expected one of {sorted(scored)}"
        )
    warn_missing_classes(dataset, spec.limit, notify)
    loaded = {m.name: load_checkpoint(spec, m, trust_code) for m in spec.models if m.checkpoint is not None}
    for m in spec.models:
        if m.name in loaded:
            check_fit(m.name, loaded[m.name].card, dataset, spec.dataset.name, notify, m.class_map)
    sources = load_sources(spec, loaded, trust_code)
    for name, lm in sources.items():
        if name not in loaded:
            check_classes(name, {}, lm.card, dataset, spec.dataset.name)
    probe_models(spec, dataset, loaded, trust_code)  # seconds, before any model trains for minutes
    executor = make_executor(spec.executor, spec.threads, spec.device, spec.deterministic)
    try:
        return _run_with(spec, run_dir, executor, dataset, loaded, sources, quiet, notify, trust_code, started)
    finally:
        executor.close()


def _run_with(
    spec: ExperimentSpec,
    run_dir: Path,
    executor: Executor,
    dataset: ImageDataset,
    loaded: dict[str, LoadedModel],
    sources: dict[str, LoadedModel],
    quiet: bool,
    notify: Callable[[str], None],
    trust_code: bool,
    started: float,
) -> RunResult:
    stages = {"setup": time.perf_counter() - started}
    mark = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        stages[name] = now - mark
        mark = now

    prepared = dict(loaded)
    started_jobs = start_training(spec, run_dir, executor, trust_code, notify)
    models = {
        m.name: prepare_model(spec, m, run_dir, notify, trust_code, prepared, executor, started_jobs)
        for m in spec.models
    }
    for m in spec.models:
        if m.name not in loaded:
            check_fit(m.name, models[m.name].card, dataset, spec.dataset.name, notify, m.class_map)
    sources = {**sources, **{s: models[s] for p in spec.perturbations for s in p.sources if s in models}}
    warn_large_eps(spec, models, notify)
    stage("training")
    write_json(run_dir / "spec.json", spec.model_dump(mode="json"), indent=2)
    cells = expand(
        spec, {**{k: v.fingerprint for k, v in sources.items()}, **{k: v.fingerprint for k, v in models.items()}}
    )
    store = Store(run_dir / "results.db")
    try:
        run_id = store.start_run(
            spec.model_dump(mode="json"),
            spec.spec_hash(),
            versions(),
            spec.device,
            spec.seed,
            models=[model_row(m.name, models[m.name], m, dataset) for m in spec.models],
            cell_keys=[c.key for c in cells],
        )
        sanity_checks(spec, models, dataset, store, notify)
        stage("sanity checks")
        clever = clever_scores(spec, models, dataset, store, notify)
        stage("CLEVER")
        done = store.done_keys()
        todo = [c for c in cells if c.key not in done]
        n_samples = min(len(dataset), spec.limit or len(dataset))
        units = plan(todo, n_samples, spec.batch_size, spec.executor.shard_size)
        # shards stored by a killed run: skip them; a cell stored under another sharding starts afresh
        partial = store.stored_shards()
        planned: dict[str, set[tuple[int, int]]] = {}
        for u in units:
            planned.setdefault(u.cell.key, set()).add((u.lo, u.hi))
        for key, have in partial.items():
            if not have <= planned.get(key, set()):
                store.discard_partial(key)
                partial[key] = set()
        units = [u for u in units if (u.lo, u.hi) not in partial.get(u.cell.key, set())]
        notify(
            f"{len(cells)} cells, {len(cells) - len(todo)} already in {run_dir / 'results.db'}, {len(todo)} to run"
            + (
                f" as {len(units)} units on {executor.name}"
                if executor.name != "local" or len(units) != len(todo)
                else ""
            )
        )
        with _progress(quiet, len(units), sum(u.samples for u in units), executor.name) as advance:
            work = Work(
                units,
                {k: v.model for k, v in models.items()},
                dataset,
                Settings.of(spec),
                {k: v.model for k, v in sources.items()},
            )
            for unit, result, seconds in executor.run(work, advance.samples):
                cell = unit.cell
                info = CellInfo(
                    cell.key,
                    cell.model,
                    cell.label,
                    cell.pert.kind if cell.pert else "clean",
                    cell.pert.params if cell.pert else {},
                    list(cell.strengths),
                    result.threat,
                )
                store.write_cell(
                    info,
                    result.records,
                    run_id,
                    time.time() - seconds,
                    result.examples,
                    shard=(unit.lo, unit.hi),
                    shards=unit.shards,
                    seconds=seconds,
                )
                shard = f" samples {unit.lo}-{unit.hi - 1}" if unit.shards > 1 else ""
                advance.cell(f"{cell.model} / {cell.label} {list(cell.strengths)}{shard}")
        stage("cells")
        stored = store.records([c.key for c in cells])
        norms = {c.label: c.pert.threat_norm for c in cells if c.pert and c.pert.kind == "attack"}
        tasks = {k: dataset.task for k in models}
        class_names = {k: list(dataset.class_names) for k in models}  # checked equal to the cards' (or mapped)
        summary = summarise(stored, norms=norms, tasks=tasks, class_names=class_names)
        if spec.clever is not None:
            # CLEVER is checked against the smallest perturbation the minimal attacks of its norm found
            minimal = {
                c.label
                for c in cells
                if c.pert and c.pert.kind == "attack" and ATTACKS.build(c.pert.name, **c.pert.params).minimal
            }
            checked = {a for a in minimal if norms[a] == spec.clever.norm}
            found = attack_distances(stored, checked, spec.clever.norm)
            for name, scores in clever.items():  # in spec order, as the report writes them again
                summary += clever_rows(name, spec.clever.label, scores, found.get(name, {}) if checked else None)
        write_summary(summary, run_dir)
        write_comparisons(compare_models(stored, norms, tasks, class_names, spec.headline_metric), run_dir)
        store.finish_run(run_id)
        stage("summary")
    finally:
        store.close()
    return RunResult(
        run_dir, summary, len(cells), len(todo), len(cells) - len(todo), time.perf_counter() - started, stages
    )


class _Advance:
    def __init__(self, progress, units_task, samples_task) -> None:
        self.progress, self.units_task, self.samples_task = progress, units_task, samples_task

    def samples(self, k: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.samples_task, k)

    def cell(self, description: str) -> None:
        if self.progress is not None:
            self.progress.advance(self.units_task, 1)
        log.info("done: %s", description)


class _progress:
    """Rich progress bars (work units, samples over all units, ETA) drawn by the driver, or logging only when
    quiet."""

    def __init__(self, quiet: bool, n_units: int, n_samples: int, executor: str = "local") -> None:
        self.quiet, self.n_units, self.n_samples, self.executor = quiet, n_units, n_samples, executor
        self.progress: Any = None

    def __enter__(self) -> _Advance:
        if self.quiet:
            return _Advance(None, None, None)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
        )
        self.progress.start()
        where = "" if self.executor == "local" else f" ({self.executor})"
        units = self.progress.add_task(f"units{where}", total=self.n_units)
        samples = self.progress.add_task("samples", total=self.n_samples)
        return _Advance(self.progress, units, samples)

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
