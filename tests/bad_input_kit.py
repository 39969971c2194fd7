"""Helpers of the bad-input table (tests/test_bad_input.py): the Case row, and functions that build the files of
a case inside its folder."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import save_file
from typer.testing import CliRunner

from medrobust.cli import app

runner = CliRunner()
DATA = {"name": "derm-synth", "params": {"size": 16, "n": 40}}
MARKER = "PAYLOAD_RAN"


# --- helpers that build the files of a case inside its folder `d` ----------------------------------------------


def copy_ckpt(ckpt: Path, d: Path, **card_changes) -> Path:
    """A copy of the tiny checkpoint with fields of its model card replaced."""
    out = d / "ckpt"
    shutil.copytree(ckpt, out)
    card = json.loads((out / "model.json").read_text())
    card.update(card_changes)
    (out / "model.json").write_text(json.dumps(card))
    return out


def write_spec(d: Path, ckpt: Path | None, *, models=None, perturbations=None, **extra) -> Path:
    spec = {"name": "bad", "batch_size": 8, "limit": 8, "dataset": DATA,
            "models": models if models is not None else [{"name": "tiny", "checkpoint": str(ckpt)}],
            "perturbations": perturbations if perturbations is not None else [{"attack": "fgsm", "strengths": [0.01]}]}
    spec.update(extra)
    path = d / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def raw_spec(d: Path, ckpt: Path | None, extra: str, models: str | None = None) -> Path:
    """A spec written as YAML text (for what yaml.safe_dump cannot write: aliases, a key twice), ``extra`` from
    line 9 on (lines 5-6 are the models, 7-8 the perturbations)."""
    text = (
        "name: bad\nbatch_size: 8\nlimit: 8\ndataset: {name: derm-synth, params: {size: 16, n: 40}}\n"
        + (models if models is not None else f"models:\n  - {{name: tiny, checkpoint: {ckpt}}}\n")
        + "perturbations:\n  - {attack: fgsm, strengths: [0.01]}\n"
        + extra
    )
    path = d / "spec.yaml"
    path.write_text(text)
    return path


def payload(d: Path) -> dict:
    """arch_kwargs that would create the marker file if the architecture's factory ran."""
    return {"command": f"touch {d / MARKER}"}


def write_npz(d: Path, *, labels=None, images=None) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 20), ("val", 8), ("test", 8)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8) if images is None else images(n)
        arrays[f"{split}_labels"] = (np.arange(n) % 2)[:, None] if labels is None else labels(n)
    path = d / "data.npz"
    np.savez(path, **arrays)
    return path


def nan_weights(ckpt: Path, d: Path) -> Path:
    out = copy_ckpt(ckpt, d)
    from safetensors.torch import load_file

    state = load_file(str(out / "model.safetensors"))
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() and k.startswith("net.head") else v
             for k, v in state.items()}
    save_file(state, str(out / "model.safetensors"))
    return out


def cast_weights(ckpt: Path, d: Path) -> Path:
    """A copy of the checkpoint with its floating-point weights saved as float64 (the card says small-cnn)."""
    out = copy_ckpt(ckpt, d)
    from safetensors.torch import load_file

    state = load_file(str(out / "model.safetensors"))
    save_file({k: v.double() if v.is_floating_point() else v for k, v in state.items()}, str(out / "model.safetensors"))
    return out


def finished_run(ckpt: Path, d: Path) -> Path:
    run = d / "run"
    assert runner.invoke(app, ["run", str(write_spec(d, ckpt)), "--out", str(run), "--quiet"]).exit_code == 0
    (d / "spec.yaml").unlink()
    return run


@dataclass
class Case:
    name: str
    setup: Callable[[Path, Path], list[str]]  # (ckpt, case folder) -> argv
    message: str  # a regular expression the output must match
    code: int = 2
    # paths (relative to the case folder, prefixes) the command may create or change
    may_write: tuple[str, ...] = ("run",)
    unchanged: tuple[str, ...] = field(default_factory=tuple)  # files that must keep their bytes
    marker: bool = False  # a payload case: the marker must not exist afterwards
    check: Callable[[Path], None] | None = None  # further assertions on the case folder afterwards
    skip: Callable[[], str] | None = None  # a reason to skip on this machine ("" runs the case)


def run_args(d: Path, spec: Path, *extra: str) -> list[str]:
    return ["run", str(spec), "--out", str(d / "run"), "--quiet", *extra]


