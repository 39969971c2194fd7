"""Where a run's work executes: ``local`` (this process, unit after unit), ``processes`` (a pool of worker
processes on this machine) or ``ray`` (tasks on a Ray cluster).

A run's work is training jobs (models a spec trains) and work units: a cell, or a shard of a cell's samples (whole
batches, so each batch draws from the same generators as in the whole cell: results do not depend on the
executor, the number of workers or the order units finish in). The driver plans the units, the executor runs
them and hands each result back as it finishes; only the driver writes results.db (store.py), one transaction
per finished unit.

With Ray, the models, transfer sources and the dataset reach the workers once through Ray's object store; each
unit is a task requesting ``num_cpus`` (and ``num_gpus``) and sets its torch threads from its CPU share (or the
spec's ``threads``); a unit on a worker that dies is retried by Ray (``max_retries``); a killed driver resumes from
the store. Training jobs run as Ray tasks and send the trained model back, which the driver saves.

With ``processes``, ``workers`` spawned processes (default: one per CPU core) each run units with one torch
thread (or the spec's ``threads``): small models keep two cores busier this way than one process with two
threads (bench/RESULTS.md, "Demo"). The run's models, sources and dataset are pickled once per run into a private
temporary file that each worker reads once. Training jobs run there too, several at a time; the workers print
their epoch lines to this process's standard error.
"""

from __future__ import annotations

import math
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from medrobust.cells import Cell
from medrobust.config import ExecutorSpec, ExperimentSpec
from medrobust.data.base import ImageDataset
from medrobust.evaluation import CellResult, evaluate_cell
from medrobust.models.card import ModelCard
from medrobust.models.wrapper import Model
from medrobust.seeding import deterministic_algorithms

RAY_MISSING = "the ray executor needs Ray: pip install 'medrobust[ray]' (or pip install ray)"


@dataclass(frozen=True)
class Unit:
    """A work unit: the sample batches ``batches`` of ``cell`` (samples ``lo``..``hi - 1``), shard ``index`` of
    ``shards``."""

    cell: Cell
    batches: range
    lo: int
    hi: int
    index: int
    shards: int

    @property
    def samples(self) -> int:
        return self.hi - self.lo


def plan(cells: list[Cell], n_samples: int, batch_size: int, shard_size: int | None) -> list[Unit]:
    """Units of every cell: one per cell, or with ``shard_size`` (samples, rounded up to whole batches) as many
    as it takes to cover the cell's samples."""
    n_batches = max(1, math.ceil(n_samples / batch_size))
    per = n_batches if shard_size is None else max(1, math.ceil(shard_size / batch_size))
    starts = list(range(0, n_batches, per))
    units = []
    for cell in cells:
        for i, b in enumerate(starts):
            batches = range(b, min(b + per, n_batches))
            lo, hi = b * batch_size, min(batches.stop * batch_size, n_samples)
            units.append(Unit(cell, batches, lo, hi, i, len(starts)))
    return units


@dataclass
class Settings:
    """What every unit of a run shares (the evaluation core's arguments besides the cell)."""

    seed: int
    batch_size: int
    device: str
    limit: int | None
    matched_noise: bool
    gallery: int
    threads: int | None = None
    deterministic: bool = True  # CUDA: deterministic kernels in every worker, as in the driver

    @classmethod
    def of(cls, spec: ExperimentSpec) -> Settings:
        return cls(
            spec.seed,
            spec.batch_size,
            spec.device,
            spec.limit,
            spec.matched_noise,
            spec.gallery,
            spec.threads,
            spec.deterministic,
        )


@dataclass
class Work:
    """The units to run and what they need: the models by name, the dataset, the settings and the transfer
    sources by name."""

    units: list[Unit]
    models: dict[str, Model]
    dataset: ImageDataset
    settings: Settings
    sources: dict[str, Model]


def run_unit(
    unit: Unit,
    model: Model,
    dataset: ImageDataset,
    settings: Settings,
    sources: dict[str, Model],
    on_batch: Callable[[int], None] | None = None,
) -> tuple[CellResult, float]:
    """Evaluate one unit; returns its result and the seconds it took."""
    t0 = time.perf_counter()
    result = evaluate_cell(
        unit.cell,
        model,
        dataset,
        seed=settings.seed,
        batch_size=settings.batch_size,
        device=settings.device,
        limit=settings.limit,
        matched_noise=settings.matched_noise,
        gallery=settings.gallery,
        sources=sources,
        on_batch=on_batch,
        batches=unit.batches if unit.shards > 1 else None,
    )
    return result, time.perf_counter() - t0


class LocalExecutor:
    """Everything in this process, one unit after another (the default)."""

    name = "local"

    def __init__(self, spec: ExecutorSpec, threads: int | None = None) -> None:
        self.spec, self.threads = spec, threads
        self._before = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)

    def train(self, job: Callable[..., tuple[Model, ModelCard]], *args: Any, **kwargs: Any) -> tuple[Model, ModelCard]:
        return job(*args, **kwargs)

    def run(
        self, work: Work, on_batch: Callable[[int], None] | None = None
    ) -> Iterator[tuple[Unit, CellResult, float]]:
        """Each unit's result and compute seconds, in the order they finish."""
        for unit in work.units:
            model = work.models[unit.cell.model]
            result, seconds = run_unit(unit, model, work.dataset, work.settings, work.sources, on_batch)
            yield unit, result, seconds

    def close(self) -> None:
        torch.set_num_threads(self._before)


def _threads(settings_threads: int | None, num_cpus: float) -> int:
    return settings_threads or max(1, int(num_cpus))


def _worker_threads(settings_threads: int | None) -> int:
    return settings_threads or 1


class ProcessExecutor:
    """Units and training jobs in a pool of ``spec.workers`` spawned processes on this machine (spawned, not
    forked: a fork after torch has started its thread pool can hang)."""

    name = "processes"

    def __init__(
        self, spec: ExecutorSpec, threads: int | None = None, device: str = "cpu", deterministic: bool = True
    ) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.spec, self.threads = spec, threads
        self.workers = spec.workers or os.cpu_count() or 1
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(_worker_threads(threads), device, deterministic),
        )
        self._device, self._deterministic = device, deterministic
        self._folder = tempfile.mkdtemp(prefix="medrobust-work-")

    def submit_train(
        self, job: Callable[..., tuple[Model, ModelCard]], *args: Any, **kwargs: Any
    ) -> Future[tuple[Model, ModelCard]]:
        """Start a training job in a worker; the future gives (model on the CPU, card)."""
        return self._pool.submit(_process_train, job, args, kwargs)

    def train(self, job: Callable[..., tuple[Model, ModelCard]], *args: Any, **kwargs: Any) -> tuple[Model, ModelCard]:
        return self.submit_train(job, *args, **kwargs).result()

    def run(
        self, work: Work, on_batch: Callable[[int], None] | None = None
    ) -> Iterator[tuple[Unit, CellResult, float]]:
        """Each unit's result and compute seconds, in the order they finish."""
        from concurrent.futures import FIRST_COMPLETED, wait

        if not work.units:
            return
        context = {"models": work.models, "dataset": work.dataset, "settings": work.settings, "sources": work.sources}
        fd, path = tempfile.mkstemp(dir=self._folder, suffix=".pkl")
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(context, fh, protocol=pickle.HIGHEST_PROTOCOL)
        pending = {self._pool.submit(_process_unit, path, u): u for u in work.units}
        try:
            while pending:
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for future in done:
                    unit = pending.pop(future)
                    result, seconds = future.result()
                    if on_batch is not None:
                        on_batch(unit.samples)
                    yield unit, result, seconds
        finally:
            for future in pending:
                future.cancel()
            os.unlink(path)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        import shutil

        shutil.rmtree(self._folder, ignore_errors=True)


# what a worker process holds: the context file it last read and its contents
_WORKER: dict[str, Any] = {}


def _init_worker(threads: int, device: str, deterministic: bool) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(device=device, deterministic=deterministic)


def _process_unit(path: str, unit: Unit) -> tuple[CellResult, float]:
    if _WORKER.get("path") != path:  # the run's context, read once per worker (a file this run wrote itself)
        with open(path, "rb") as fh:
            _WORKER.update(path=path, context=pickle.load(fh))  # noqa: S301
    c = _WORKER["context"]
    with deterministic_algorithms(_WORKER["device"], _WORKER["deterministic"]):
        return run_unit(unit, c["models"][unit.cell.model], c["dataset"], c["settings"], c["sources"])


def _print_epoch(name: str, epoch: int, row: dict[str, float]) -> None:
    from medrobust.train import epoch_line

    print(epoch_line(name, row), file=sys.stderr, flush=True)


def _process_train(
    job: Callable[..., tuple[Model, ModelCard]], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Model, ModelCard]:
    import functools

    if args and hasattr(args[0], "name") and "progress" not in kwargs:  # TrainSettings: epoch lines to stderr
        kwargs = {**kwargs, "progress": functools.partial(_print_epoch, args[0].name)}
    with deterministic_algorithms(_WORKER["device"], _WORKER["deterministic"]):
        model, card = job(*args, **kwargs)
    return model.cpu(), card


class RayExecutor:
    """Units and training jobs as Ray tasks. Connects to ``spec.address`` (or the Ray instance this process
    already runs, or starts a local one)."""

    name = "ray"

    def __init__(
        self, spec: ExecutorSpec, threads: int | None = None, device: str = "cpu", deterministic: bool = True
    ) -> None:
        try:
            import ray
        except ImportError:
            raise ValueError(RAY_MISSING) from None
        self.ray, self.spec, self.threads = ray, spec, threads
        self.started = False
        if not ray.is_initialized():
            ray.init(address=spec.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
            self.started = True
        n = _threads(threads, spec.num_cpus)
        options = {"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus, "max_retries": 3}
        self._unit = ray.remote(_remote_unit).options(**options)
        self._train = ray.remote(_remote_train).options(**options)
        self._n_threads = n
        self._device, self._deterministic = device, deterministic

    def train(self, job: Callable[..., tuple[Model, ModelCard]], *args: Any, **kwargs: Any) -> tuple[Model, ModelCard]:
        ref = self._train.remote(self._n_threads, self._device, self._deterministic, job, args, kwargs)
        model, card = self.ray.get(ref)
        return model, card

    def run(
        self, work: Work, on_batch: Callable[[int], None] | None = None
    ) -> Iterator[tuple[Unit, CellResult, float]]:
        """Each unit's result and compute seconds, in the order they finish."""
        ray, units = self.ray, work.units
        data_ref, source_ref = ray.put(work.dataset), ray.put(work.sources)
        used = {u.cell.model for u in units}
        model_refs = {name: ray.put(m) for name, m in work.models.items() if name in used}
        pending = {
            self._unit.remote(self._n_threads, u, model_refs[u.cell.model], data_ref, work.settings, source_ref): u
            for u in units
        }
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                unit = pending.pop(ref)
                result, seconds = ray.get(ref)
                if on_batch is not None:
                    on_batch(unit.samples)
                yield unit, result, seconds

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def _remote_unit(
    threads: int, unit: Unit, model: Model, dataset: ImageDataset, settings: Settings, sources: dict[str, Model]
) -> tuple[CellResult, float]:
    torch.set_num_threads(threads)
    with deterministic_algorithms(settings.device, settings.deterministic):
        return run_unit(unit, model, dataset, settings, sources)


def _remote_train(
    threads: int,
    device: str,
    deterministic: bool,
    job: Callable[..., tuple[Model, ModelCard]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[Model, ModelCard]:
    torch.set_num_threads(threads)
    with deterministic_algorithms(device, deterministic):
        model, card = job(*args, **kwargs)
    return model.cpu(), card


Executor = LocalExecutor | ProcessExecutor | RayExecutor


def make_executor(
    spec: ExecutorSpec, threads: int | None = None, device: str = "cpu", deterministic: bool = True
) -> Executor:
    """The executor ``spec`` names; ``device`` and ``deterministic`` are the run's (Ray workers and worker
    processes select the same deterministic kernels as the driver)."""
    if spec.name == "ray":
        return RayExecutor(spec, threads, device, deterministic)
    if spec.name == "processes":
        return ProcessExecutor(spec, threads, device, deterministic)
    return LocalExecutor(spec, threads)
