"""Evaluate one model on clean data and under a list of perturbations (attacks and corruptions).

This is what the ``evaluate`` command prints: a one-model run, in memory, through the same evaluation core and
summary as ``medrobust run`` (evaluation.py, results.py), with generators derived the same way, so the same
model, data, perturbations and seed give the same numbers through either door.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from medrobust.attacks import ATTACKS, Attack
from medrobust.cells import Cell, perturbation_labels
from medrobust.config import PerturbationSpec
from medrobust.corruptions import CORRUPTIONS
from medrobust.corruptions.base import Corruption
from medrobust.data.base import ImageDataset
from medrobust.evaluation import evaluate_cell
from medrobust.models.wrapper import Model
from medrobust.registry import parse_spec, unknown_name_message
from medrobust.results import summarise
from medrobust.store import RECORD_COLUMNS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Perturbation:
    """An attack or corruption with its parameters and strength (eps for attacks, the strength parameter of a
    corruption). ``label`` is how tables name it."""

    kind: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    strength: float | None = None

    @property
    def label(self) -> str:
        shown = dict(self.params)
        if self.strength is not None:
            key = "eps" if self.kind == "attack" else CORRUPTIONS.get(self.name).strength_param or "strength"
            shown = {key: self.strength, **shown}
        inner = ",".join(f"{k}={format_value(v)}" for k, v in shown.items())
        return f"{self.name}({inner})" if inner else self.name

    def build(self) -> Attack | Corruption:
        registry = ATTACKS if self.kind == "attack" else CORRUPTIONS
        return registry.build(self.name, **self.params)


def format_value(value: Any) -> str:
    """Short, exact-enough text for labels: 0.00784313725490196 -> 0.007843."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def parse_perturbation(kind: str, spec: str) -> Perturbation:
    """``"fgsm:eps=0.01"`` -> attack fgsm with strength 0.01; ``"gaussian_noise:sigma=0.05"`` -> corruption."""
    name, params = parse_spec(spec)
    if kind == "attack":
        if name not in ATTACKS:
            raise KeyError(unknown_name_message("attack", name, ATTACKS.names()))
        strength = params.pop("eps", None)
    elif kind == "corruption":
        if name not in CORRUPTIONS:
            raise KeyError(unknown_name_message("corruption", name, CORRUPTIONS.names()))
        key = CORRUPTIONS.get(name).strength_param
        strength = params.pop(key, None) if key else None
    else:
        raise ValueError(f"kind={kind!r}; expected 'attack' or 'corruption'")
    label = "eps" if kind == "attack" else key
    if strength is not None:
        try:
            strength = float(strength)
        except (TypeError, ValueError):
            raise ValueError(f"{spec!r}: {label}={strength!r} is not a number") from None
        if not (math.isfinite(strength) and strength >= 0):
            raise ValueError(f"{spec!r}: {label}={strength!r} must be a finite number >= 0")
    pert = Perturbation(kind, name, params, strength)
    built = pert.build()  # validates parameters now, before any compute
    if isinstance(built, Attack) and strength is None and not built.minimal:
        raise ValueError(f"attack {name!r} needs a budget: write {name}:eps=VALUE")
    if isinstance(built, Corruption) and strength is None:
        if key is None:
            raise ValueError(f"corruption {name!r} has no strength parameter to evaluate at")
        pert = Perturbation(kind, name, params, float(getattr(built, key)))  # its default strength
    return pert


@dataclass
class Evaluation:
    """What :func:`evaluate` computed: the records (as the runner stores them), the summary rows (as the runner
    writes summary.json) and one table row per perturbation and strength (``rows``)."""

    records: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    rows: list[dict[str, Any]]


def cells_for(name: str, perturbations: list[Perturbation]) -> list[Cell]:
    """The cells of a one-model run: clean, then one per (kind, name, parameters) with every strength asked for,
    labelled as a spec with those perturbations labels them (so generators, and numbers, are the same). A
    minimal attack without eps runs unclipped (strength inf)."""
    grouped: dict[tuple[str, str, str], list[Perturbation]] = {}
    for p in perturbations:
        grouped.setdefault((p.kind, p.name, json.dumps(p.params, sort_keys=True, default=str)), []).append(p)
    specs = [
        PerturbationSpec.model_validate(
            {ps[0].kind: ps[0].name, "params": ps[0].params, "strengths": [p.strength or 0.0 for p in ps]}
        )
        for ps in grouped.values()
    ]
    cells = [Cell("clean", name, "clean", None, (0.0,))]
    for label, spec, ps in zip(perturbation_labels(specs), specs, grouped.values()):
        strengths = tuple(sorted({math.inf if p.strength is None else p.strength for p in ps}))
        cells.append(Cell(label, name, label, spec, strengths))
    return cells


def table_rows(
    summary: list[dict[str, Any]], seconds: dict[str, float], labels: dict[str, str]
) -> list[dict[str, Any]]:
    """One row per (perturbation, strength) from long summary rows: ``perturbation`` as the command line wrote
    it (e.g. "fgsm(eps=0.02)"), ``n``, each metric's value, ``seconds`` of its cell and, for matched noise,
    ``threat_matched_to`` (the attack's row)."""
    rows: dict[tuple[str, float], dict[str, Any]] = {}
    for r in summary:
        key = (r["perturbation"], r["strength"])
        if key not in rows:
            label, s = key
            inner = label[len("matched_noise[") : -1] if label.startswith("matched_noise[") else None
            shown = labels.get(f"{inner or label}@{s}", label)
            rows[key] = {
                "perturbation": f"matched_noise[{shown}]" if inner else shown,
                "strength": s,
                "n": r["n"],
                "seconds": seconds.get(inner or label, 0.0),
            }
            if label == "clean":  # no perturbation: sizes are zero
                rows[key].update(l2=0.0, linf=0.0, l0=0.0, ssim=1.0)
            if inner:
                rows[key]["threat_matched_to"] = shown
        rows[key][r["metric"]] = r["value"]
    return list(rows.values())


def evaluate(
    model: Model,
    dataset: ImageDataset,
    perturbations: list[Perturbation],
    *,
    batch_size: int = 64,
    limit: int | None = None,
    seed: int = 0,
    matched_noise: bool = True,
    device: str | torch.device = "cpu",
    name: str = "model",
) -> Evaluation:
    """Clean and perturbed results for ``model`` on ``dataset``: a one-model run through the runner's evaluation
    core (:func:`medrobust.evaluation.evaluate_cell`) and summary (:func:`medrobust.results.summarise`), in memory.
    ``name`` is the model's name in the records; with the name a spec gives the model, the numbers are the ones
    ``medrobust run`` stores.

    For every attack, ``matched_noise=True`` adds Gaussian noise with the same per-sample L2 norm as that
    attack's perturbation (the paper's "adversarial vs noise of the same size" baseline)."""
    if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
        raise ValueError(f"limit={limit!r} must be a whole number of samples >= 1 (or None for all)")
    model = model.to(device).eval()
    cells = cells_for(name, perturbations)
    records: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    norms: dict[str, str] = {}
    for cell in cells:
        t0 = time.perf_counter()
        result = evaluate_cell(
            cell,
            model,
            dataset,
            seed=seed,
            batch_size=batch_size,
            device=device,
            limit=limit,
            matched_noise=matched_noise,
        )
        seconds[cell.label] = time.perf_counter() - t0
        records += [dict(zip(RECORD_COLUMNS, r.row())) for r in result.records]
        if "norm" in result.threat:
            norms[cell.label] = result.threat["norm"]
    summary = summarise(records, norms, tasks={name: dataset.task}, class_names={name: list(dataset.class_names)})
    labels = {}
    for p in perturbations:
        cell = next(c for c in cells if c.pert is not None and c.pert.name == p.name and c.pert.params == p.params)
        labels[f"{cell.label}@{math.inf if p.strength is None else p.strength}"] = p.label
    kept = [r for r in summary if not r["perturbation"].startswith("worst_case")]
    return Evaluation(records, summary, table_rows(kept, seconds, labels))
