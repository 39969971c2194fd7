"""Read a run directory for the report: the newest run's cells, models, records, checks and scores.

Nothing here runs a model or an attack or reads a model file; everything comes from ``results.db``, which
records each run's grid and models (``medrobust.store``).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medrobust.metrics.clever import attack_distances
from medrobust.results import clever_rows, compare_models, summarise
from medrobust.store import Store, check_whole, column_json
from medrobust.tasks import Task, get_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PerturbationInfo:
    """One perturbation of the spec as the store recorded it (threat merged over its cells)."""

    label: str
    kind: str  # "attack" or "corruption"
    name: str
    norm: str | None  # threat norm of an attack (linf, l2, l0); None for corruptions
    minimal: bool
    strengths: tuple[float, ...]
    threat: dict[str, Any]


@dataclass(frozen=True)
class ModelInfo:
    """A model as the run recorded it."""

    name: str
    source: str
    class_names: tuple[str, ...]
    task: str
    fingerprint: str
    bounds: tuple[float, float]
    card: dict[str, Any]

    @property
    def training(self) -> str:
        """How the model was trained, as its card records it: "standard" or its defense (robust training)."""
        return str((self.card.get("training") or {}).get("defense_description") or "standard")

    @property
    def adapter(self) -> Task:
        """The model's Task: what its score is called and how its records are read."""
        return get_task(self.task)


@dataclass
class RunData:
    run_dir: Path
    spec: dict[str, Any]
    runs: list[dict[str, Any]]
    models: list[ModelInfo]
    perturbations: list[PerturbationInfo]
    records: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    n_samples: int
    compute_seconds: float
    missing_cells: int = 0
    notes: list[str] = field(default_factory=list)
    # gallery arrays, still compressed: (model, perturbation, strength, sample_index, array) -> bytes for
    # medrobust.store.decode_array (decoded only for the strengths the gallery shows)
    examples: dict[tuple[str, str, float, int, str], bytes] = field(default_factory=dict)
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)  # model -> input bounds of its cells
    orientation: dict[str, str] = field(default_factory=dict)  # model -> spatial axes of its data ("RAS")
    # model-level sanity checks (Store.checks rows) of the models shown, run on the weights the report describes
    checks: list[dict[str, Any]] = field(default_factory=list)
    # paired tests between the models (medrobust.results.compare_models) on clean data and every worst case
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    # run id -> when it last stored a cell (an interrupted run's wall time ends there)
    last_write: dict[int, float] = field(default_factory=dict)
    # what the samples' groups are (volume, patient, subject: the independent unit), where the data has groups
    group_unit: str = "group"

    @property
    def attacks(self) -> list[PerturbationInfo]:
        return [p for p in self.perturbations if p.kind == "attack"]

    @property
    def norms(self) -> list[str]:
        """Attack norms in spec order, each once."""
        return list(dict.fromkeys(p.norm for p in self.attacks if p.norm))

    @property
    def metric(self) -> str:
        """The score the report leads with: the spec's ``headline_metric``, else the models' Task's (accuracy,
        Dice; a run of dense models wins a mixed run)."""
        if self.spec.get("headline_metric"):
            return str(self.spec["headline_metric"])
        tasks = [m.adapter for m in self.models]
        return next((t.metric for t in tasks if t.dense), tasks[0].metric if tasks else "accuracy")


def load_run(run_dir: str | Path) -> RunData:
    """Everything the report shows, read from ``run_dir/results.db``: the newest run's grid of cells, its models
    (task, classes, bounds, weights' fingerprint, card) and their records, checks and CLEVER scores."""
    run_dir = Path(run_dir)
    db = run_dir / "results.db"
    if not db.exists():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} has no results.db; run `medrobust run` first")
    store = Store(db)
    try:
        runs = store.runs()
        all_cells = [c for c in store.cells() if c["status"] == "done"]
        if not all_cells:  # nothing to show: keep any report already written instead of replacing it
            raise ValueError(f"{str(db)!r} holds no finished cells, so there is nothing to report; run the spec first")
        run_id = store.latest_run()
        if run_id is None:
            raise ValueError(
                f"{str(db)!r} does not record which cells and models its runs used (written by an older "
                "medrobust); run the spec again in this folder (finished cells are reused) and report again"
            )
        planned = store.run_cell_keys(run_id)
        model_rows = store.run_models(run_id)
        done = {c["key"]: c for c in all_cells}
        cells = [done[k] for k in planned if k in done]
        records = store.records([c["key"] for c in cells]) if cells else []
        check_whole(cells, records, db)
        examples = store.examples([c["key"] for c in cells], decode=False)
        check_rows = store.checks()
        score_rows = store.all_model_scores()
    finally:
        store.close()

    spec = column_json(
        next(r["spec_json"] for r in runs if r["id"] == run_id), f"results.db: run {run_id}: spec_json", dict
    )
    present = {c["model"] for c in cells}
    models = [
        ModelInfo(m.name, m.source, tuple(m.class_names), m.task, m.fingerprint, m.bounds, m.card)
        for m in model_rows
        if m.name in present
    ]
    fingerprints = {m.name: m.fingerprint for m in models}
    perts = _perturbations(cells)
    norms = {p.label: p.norm for p in perts if p.kind == "attack" and p.norm}
    tasks = {m.name: m.task for m in models}
    class_names = {m.name: list(m.class_names) for m in models}
    summary = summarise(records, norms, tasks=tasks, class_names=class_names) if records else []
    comparisons = compare_models(records, norms, tasks, class_names, spec.get("headline_metric")) if records else []
    # model-level scores (CLEVER) of the weights shown; the newest set per model and score wins
    latest: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in score_rows:
        if fingerprints.get(r["model"]) == r["fingerprint"]:
            latest[(r["model"], r["name"])] = r["scores"]
    for m in models:  # in spec order, as the runner writes them
        for (model, name), scores in sorted(latest.items()):
            if model == m.name:
                norm = name[len("clever[") : -1]  # "clever[l2]" -> "l2"
                checked = {p.label for p in perts if p.kind == "attack" and p.minimal and p.norm == norm}
                found = attack_distances(records, checked, norm)
                summary += clever_rows(model, name, scores, found.get(model, {}) if checked else None)
    clean_counts: dict[str, int] = defaultdict(int)
    for r in records:
        if r["perturbation"] == "clean":
            clean_counts[r["model"]] += 1
    notes = []
    # checks of a model name whose weights changed since (another spec in this directory) are not shown
    checks = [r for r in check_rows if fingerprints.get(r["model"]) == r["fingerprint"]]
    stale = sorted({r["model"] for r in check_rows if r["model"] in present} - {r["model"] for r in checks})
    if stale:
        notes.append(
            f"The sanity checks stored for {', '.join(stale)} ran on other weights than the ones shown and "
            "are not shown; re-run the spec to check these weights."
        )
    if len(all_cells) > len(cells):
        notes.append(
            f"{len(all_cells) - len(cells)} finished cells in results.db belong to other specs run in this "
            "directory and are not shown."
        )
    return RunData(
        run_dir=run_dir,
        spec=spec,
        runs=runs,
        models=models,
        perturbations=perts,
        records=records,
        summary=summary,
        comparisons=comparisons,
        n_samples=max(clean_counts.values(), default=0),
        compute_seconds=float(sum(c["seconds"] or 0.0 for c in cells)),
        missing_cells=len(planned) - len(cells),
        notes=notes,
        examples=examples,
        bounds={m.name: m.bounds for m in models},
        orientation={
            c["model"]: o
            for c in cells
            if c["kind"] == "clean" and (o := json.loads(c["threat_json"]).get("orientation"))
        },
        checks=checks,
        group_unit=next(
            (u for c in cells if c["kind"] == "clean" and (u := json.loads(c["threat_json"]).get("group_unit"))),
            "group",
        ),
        last_write={
            int(rid): max(c["finished"] for c in all_cells if c["run_id"] == rid and c["finished"])
            for rid in {c["run_id"] for c in all_cells if c["run_id"] is not None and c["finished"]}
        },
    )


def _perturbations(cells: list[dict[str, Any]]) -> list[PerturbationInfo]:
    """The perturbations of the cells, in grid order, each with its strengths and threat model merged over its
    cells."""
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in cells:
        if c["kind"] != "clean":
            by_label[c["perturbation"]].append(c)
    out = []
    for label, group in by_label.items():
        strengths = tuple(sorted({float(s) for c in group for s in json.loads(c["strengths_json"])}))
        threat = json.loads(group[0]["threat_json"])
        threat.update(strengths=list(strengths))
        if "eps" in threat:
            threat["eps"] = list(strengths)
        out.append(
            PerturbationInfo(
                label=label,
                kind=group[0]["kind"],
                name=threat.get("name", label.split("(")[0]),
                norm=threat.get("norm"),
                minimal=bool(threat.get("minimal", False)),
                strengths=strengths,
                threat=threat,
            )
        )
    return out
