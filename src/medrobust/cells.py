"""The grid of a spec and the identity of everything in it, shared by the runner and the report.

A spec expands into cells (model x perturbation x strength; the strengths of a minimal attack, and of a budget
attack swept pruned, share one cell); each
cell's key is a digest of everything that decides its records (data, limit, batch size, seed, the weights'
fingerprint, the perturbation and its parameters, transfer sources), so results are reused exactly when they
would be recomputed the same. Models trained by a run are cached under a safe folder name plus a digest of what
defines them. Nothing here runs a model.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medrobust.attacks import ATTACKS
from medrobust.config import ExperimentSpec, ModelSpec, PerturbationSpec
from medrobust.files import check_inside


def digest(obj: Any) -> str:
    """A short, stable digest of any JSON-able object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def perturbation_labels(perturbations: Sequence[PerturbationSpec]) -> list[str]:
    """The name of each perturbation, with its parameters only where a name appears more than once."""
    names = [p.name for p in perturbations]
    labels = []
    for p in perturbations:
        if names.count(p.name) > 1:
            inner = ",".join(f"{k}={v}" for k, v in sorted(p.params.items()))
            labels.append(f"{p.name}({inner})")
        else:
            labels.append(p.name)
    if len(set(labels)) != len(labels):
        raise ValueError(f"perturbations repeat with the same parameters: {labels}")
    return labels


@dataclass(frozen=True)
class Cell:
    key: str
    model: str
    label: str
    pert: PerturbationSpec | None
    strengths: tuple[float, ...]


def expand(spec: ExperimentSpec, fingerprints: dict[str, str]) -> list[Cell]:
    """All cells of the grid, in a fixed order. ``fingerprints``: model name -> identity of its weights."""
    common = {
        "dataset": spec.dataset.model_dump(mode="json"),
        "limit": spec.limit,
        "batch_size": spec.batch_size,
        "seed": spec.seed,
        "matched_noise": spec.matched_noise,
    }
    cells = []
    labels = perturbation_labels(spec.perturbations)
    for m in spec.models:
        base = {**common, "model": m.name, "weights": fingerprints[m.name]}
        cells.append(Cell(digest({**base, "perturbation": "clean"}), m.name, "clean", None, (0.0,)))
        for label, p in zip(labels, spec.perturbations):
            if not p.applies_to(m.name):
                continue
            minimal = p.kind == "attack" and ATTACKS.get(p.name).minimal
            pruned = p.kind == "attack" and not minimal and p.sweep == "pruned" and len(p.strengths) > 1
            groups = [tuple(p.strengths)] if minimal or pruned else [(s,) for s in p.strengths]
            extra: dict[str, object] = {"sources": {s: fingerprints.get(s) for s in p.sources}} if p.sources else {}
            if pruned:  # one cell: each strength attacks only what the smaller ones left robust
                extra["sweep"] = "pruned"
            if p.kind == "corruption":  # one draw for every strength, scaled (records of per-strength draws differ)
                extra["draws"] = "common"
            for strengths in groups:
                ident = {**base, "kind": p.kind, "name": p.name, "params": p.params, "strengths": strengths, **extra}
                cells.append(Cell(digest(ident), m.name, label, p, strengths))
    return cells


def file_digest(path: Path) -> str:
    """A short digest of a file's bytes (the fingerprint of a weights file)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def safe_name(name: str, limit: int = 48) -> str:
    """A folder name for a user-given name: letters, digits and ``-_.`` only, no leading dot, at most ``limit``
    characters (the end of a long name, where a path-like name is most telling)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[-limit:].lstrip(".")
    return slug or "model"


def inside(run_dir: Path, path: Path) -> Path:
    """``path``, after checking that it is no symbolic link and that its folder resolves inside ``run_dir`` (every
    path the runner writes; ``medrobust.files.check_inside``)."""
    return check_inside(path, run_dir)


def trained_folder(spec: ExperimentSpec, m: ModelSpec, run_dir: Path, sources: dict[str, str] | None = None) -> Path:
    """Where the run caches model ``m`` trained from ``m.train``: a safe name plus a hash of what defines it (its
    training settings and defense, the data, the seed and the weights' fingerprints of its defense's sources)."""
    assert m.train is not None
    data = spec.train_dataset or spec.dataset
    seed = spec.seed if m.train.seed is None else m.train.seed
    settings = m.train.model_dump(mode="json")
    if m.train.defense is None:  # standard training: the identity it had before defenses existed
        settings.pop("defense")
    ident = digest([settings, data.model_dump(mode="json"), seed, *([sources] if sources else [])])
    return inside(run_dir, run_dir / "models" / f"{safe_name(m.name)}-{ident}")
