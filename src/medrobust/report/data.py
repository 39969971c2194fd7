"""Read a run directory for the report: its spec, the cells of that spec, their records and the model cards.

Nothing here runs a model or an attack; everything comes from ``results.db``, ``spec.json`` and the model
cards (``model.json``) the spec points to.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medrobust.results import clever_rows, compare_models, summarise
from medrobust.store import Store

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
    name: str
    source: str
    class_names: tuple[str, ...]
    task: str
    card_path: str | None


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

    @property
    def attacks(self) -> list[PerturbationInfo]:
        return [p for p in self.perturbations if p.kind == "attack"]

    @property
    def norms(self) -> list[str]:
        """Attack norms in spec order, each once."""
        return list(dict.fromkeys(p.norm for p in self.attacks if p.norm))

    @property
    def metric(self) -> str:
        """The score of the run: Dice when it has a segmentation model, else accuracy."""
        return "dice" if any(m.task == "segmentation" for m in self.models) else "accuracy"


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _validated_spec(spec: dict[str, Any]):
    from medrobust.config import ExperimentSpec

    try:
        return ExperimentSpec.model_validate(spec)
    except Exception as err:  # an older or hand-edited spec.json: fall back to matching cells by name
        log.warning("spec.json does not validate (%s); matching cells by model and perturbation name", err)
        return None


def _model_folder(spec_obj, m, run_dir: Path) -> Path | None:
    """The checkpoint folder the runner used for model spec ``m`` (None when it cannot be found)."""
    from medrobust.cells import trained_folder

    if m.checkpoint is not None:
        path = Path(m.checkpoint)
        folder = path if path.is_dir() else path.parent
        return folder if (folder / "model.json").exists() else None
    try:
        folder = trained_folder(spec_obj, m, run_dir)
    except ValueError:  # it would resolve outside the run folder
        return None
    if (folder / "model.json").exists():
        return folder
    # The cache key changed between versions: take the newest cached card of that model name.
    cards = sorted((run_dir / "models").glob("*/model.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for card in cards:
        try:
            if json.loads(card.read_text()).get("name") == m.name:
                return card.parent
        except (OSError, json.JSONDecodeError):
            continue
    return None


def _fingerprints(folders: dict[str, Path | None]) -> dict[str, str]:
    """Model name -> digest of its weights file (as the runner computes it), for the models whose card is found."""
    from medrobust.cells import file_digest
    from medrobust.models.card import read_card

    out = {}
    for name, folder in folders.items():
        if folder is None:
            continue
        try:
            card, _ = read_card(folder)
            out[name] = file_digest(folder / card.weights)
        except (OSError, ValueError):
            continue
    return out


def _exact_keys(spec_obj, fingerprints: dict[str, str], done: set[str]) -> list[str] | None:
    """The cell keys the runner computed for this spec (needs every model's weights), or None."""
    from medrobust.cells import expand

    if any(m.name not in fingerprints for m in spec_obj.models):
        return None
    try:
        keys = [c.key for c in expand(spec_obj, fingerprints)]
    except Exception as err:  # a registry changed since the run: fall back to name matching
        log.warning("cannot expand the spec into cells (%s); matching cells by name", err)
        return None
    return keys if all(k in done for k in keys) else None


def _match_cells(spec_obj, cells: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Cells of this spec by model, perturbation label, parameters and strengths; newest wins a tie.
    Returns (cells, number of spec cells missing from the store)."""
    from medrobust.cells import perturbation_labels

    wanted: dict[str, tuple[dict[str, Any], list[float]]] = {"clean": ({}, [0.0])}
    for label, p in zip(perturbation_labels(spec_obj), spec_obj.perturbations):
        wanted[label] = (dict(p.params), list(p.strengths))
    models = {m.name for m in spec_obj.models}
    best: dict[tuple[str, str, float], dict[str, Any]] = {}
    for c in cells:
        if c["model"] not in models or c["perturbation"] not in wanted:
            continue
        params, strengths = wanted[c["perturbation"]]
        if json.loads(c["params_json"]) != params:
            continue
        cell_strengths = json.loads(c["strengths_json"])
        if not all(any(_same(s, t) for t in strengths) for s in cell_strengths):
            continue
        for s in cell_strengths:
            key = (c["model"], c["perturbation"], float(s))
            if key not in best or (c["finished"] or 0) > (best[key]["finished"] or 0):
                best[key] = c
    expected = len(models) * sum(len(s) for _, s in wanted.values())
    chosen = list({c["key"]: c for c in best.values()}.values())
    return chosen, expected - len(best)


def _card_info(name: str, folder: Path | None, source: str, num_classes: int, task: str) -> ModelInfo:
    from medrobust.models.card import read_card

    if folder is not None:
        try:
            card, _ = read_card(folder)
            names = tuple(card.class_names)
            if len(names) != num_classes and num_classes:
                names = tuple(f"class {k}" for k in range(num_classes))
            return ModelInfo(name, source, names, card.task, str(folder / "model.json"))
        except (OSError, ValueError) as err:
            log.warning("model card of %s unreadable (%s); classes are numbered", name, err)
    return ModelInfo(name, source, tuple(f"class {k}" for k in range(num_classes)), task, None)


def _source(m) -> str:
    if m is None:
        return "unknown (not in spec.json)"
    if m.checkpoint is not None:
        return f"checkpoint {m.checkpoint}"
    return f"trained {m.train.architecture}, {m.train.epochs} epochs"


def load_run(run_dir: str | Path) -> RunData:
    """Everything the report shows, read from ``run_dir`` (results.db, spec.json, model cards)."""
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
        spec_path = run_dir / "spec.json"
        if spec_path.exists():
            spec = json.loads(spec_path.read_text())
        elif runs:
            spec = json.loads(runs[-1]["spec_json"])
        else:
            spec = {}
        spec_obj = _validated_spec(spec) if spec else None
        folders = {m.name: _model_folder(spec_obj, m, run_dir) for m in spec_obj.models} if spec_obj else {}
        missing = 0
        fingerprints = _fingerprints(folders)
        keys = _exact_keys(spec_obj, fingerprints, {c["key"] for c in all_cells}) if spec_obj else None
        if keys is not None:
            key_set = set(keys)
            cells = [c for c in all_cells if c["key"] in key_set]
        elif spec_obj is not None:
            cells, missing = _match_cells(spec_obj, all_cells)
        else:
            cells = all_cells
        records = store.records([c["key"] for c in cells]) if cells else []
        examples = store.examples([c["key"] for c in cells], decode=False)
        check_rows = store.checks()
        score_rows = store.all_model_scores()
    finally:
        store.close()

    spec_models = {m.name: m for m in spec_obj.models} if spec_obj else {}
    order = list(spec_models) or list(dict.fromkeys(c["model"] for c in cells))
    present = {c["model"] for c in cells}
    # Without a model card: classes from the stored probabilities; segmentation records store none ("[]")
    # and per-structure Dice in detail_json (structures are classes 1..K).
    num_classes: dict[str, int] = {}
    tasks: dict[str, str] = {}
    for r in records:
        if r["model"] not in num_classes:
            probs = json.loads(r["probs_json"])
            detail = json.loads(r.get("detail_json") or "null") or {}
            segmentation = not probs and "dice" in detail
            tasks[r["model"]] = "segmentation" if segmentation else "classification"
            num_classes[r["model"]] = len(detail["dice"]) + 1 if segmentation else len(probs)
    models = [
        _card_info(
            name,
            folders.get(name),
            _source(spec_models.get(name)),
            num_classes.get(name, 0),
            tasks.get(name, "classification"),
        )
        for name in order
        if name in present
    ]

    perts = _perturbations(spec_obj, cells)
    norms = {p.label: p.norm for p in perts if p.kind == "attack" and p.norm}
    summary = (
        summarise(
            records,
            norms,
            num_classes={m.name: len(m.class_names) for m in models},
            class_names={m.name: list(m.class_names) for m in models},
            tasks={m.name: m.task for m in models},
        )
        if records
        else []
    )
    comparisons = compare_models(records, norms, {m.name: m.task for m in models}) if records else []
    # model-level scores (CLEVER) of the weights shown; the newest set per model and score wins
    latest: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in score_rows:
        if r["model"] in present and fingerprints.get(r["model"], r["fingerprint"]) == r["fingerprint"]:
            latest[(r["model"], r["name"])] = r["scores"]
    for (model, name), scores in sorted(latest.items()):
        summary += clever_rows(model, name, scores)
    clean_counts: dict[str, int] = defaultdict(int)
    for r in records:
        if r["perturbation"] == "clean":
            clean_counts[r["model"]] += 1
    notes = []
    # checks of a model name whose weights changed since (another spec in this directory) are not shown
    checks = [
        r
        for r in check_rows
        if r["model"] in present and fingerprints.get(r["model"], r["fingerprint"]) == r["fingerprint"]
    ]
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
        missing_cells=missing,
        notes=notes,
        examples=examples,
        bounds=_bounds(cells),
        orientation={
            c["model"]: o
            for c in cells
            if c["kind"] == "clean" and (o := json.loads(c["threat_json"]).get("orientation"))
        },
        checks=checks,
    )


def _bounds(cells: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Input bounds per model as its cells recorded them (the clean cell's first)."""
    out: dict[str, tuple[float, float]] = {}
    for c in sorted(cells, key=lambda c: c["kind"] != "clean"):
        b = json.loads(c["threat_json"]).get("bounds")
        if b and c["model"] not in out:
            out[c["model"]] = (float(b[0]), float(b[1]))
    return out


def _perturbations(spec_obj, cells: list[dict[str, Any]]) -> list[PerturbationInfo]:
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in cells:
        if c["kind"] != "clean":
            by_label[c["perturbation"]].append(c)
    names: dict[str, str] = {}
    order = list(by_label)
    if spec_obj is not None:
        from medrobust.cells import perturbation_labels

        labels = perturbation_labels(spec_obj)
        names = {label: p.name for label, p in zip(labels, spec_obj.perturbations)}
        order = [label for label in labels if label in by_label] + [label for label in by_label if label not in labels]
    out = []
    for label in order:
        group = by_label[label]
        strengths = tuple(sorted({float(s) for c in group for s in json.loads(c["strengths_json"])}))
        threat = json.loads(group[0]["threat_json"])
        threat.update(strengths=list(strengths))
        if "eps" in threat:
            threat["eps"] = list(strengths)
        out.append(
            PerturbationInfo(
                label=label,
                kind=group[0]["kind"],
                name=names.get(label, label.split("(")[0]),
                norm=threat.get("norm"),
                minimal=bool(threat.get("minimal", False)),
                strengths=strengths,
                threat=threat,
            )
        )
    return out
