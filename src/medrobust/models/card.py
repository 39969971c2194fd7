"""Model cards and safe checkpoint loading.

A checkpoint is a folder holding ``model.json`` (the card below) and ``model.safetensors`` (weights only).
A checkpoint is data, never code: loading never unpickles (weights come from safetensors, or from a ``.pt``
file through ``torch.load(weights_only=True)``), the weights must be a plain file name inside the folder, and a
card whose architecture is a ``module:function`` factory loads only with ``trust_code=True``.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medrobust.files import make_dirs, write_atomic
from medrobust.models.wrapper import Model
from medrobust.models.zoo import build_network

CARD_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth")


class ModelCard(BaseModel):
    """What a trained model is: architecture, data, input contract and measured scores."""

    model_config = ConfigDict(extra="forbid")

    format: str = "medrobust-model-card/1"
    name: str
    architecture: str
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    task: str = "classification"
    in_channels: int
    num_classes: int
    class_names: list[str]
    spatial_dims: int = 2
    input_shape: list[int]
    bounds: tuple[float, float] = (0.0, 1.0)
    mean: list[float] | None = None
    std: list[float] | None = None
    dataset: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict)
    weights: str = WEIGHTS_NAME
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    versions: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _dataset_fields(self) -> ModelCard:
        """The fields of ``dataset`` that medrobust reads (a card is data: they are checked, not trusted):
        ``spacing`` three voxel sizes in mm > 0, ``orientation`` three axis letters (e.g. RAS), ``plane`` a slice
        plane, ``label_fractions`` one share >= 0 per class."""
        d = self.dataset
        if "spacing" in d and not _numbers(d["spacing"], 3, positive=True):
            raise ValueError(f"dataset.spacing {d['spacing']!r} must be three voxel sizes in mm > 0")
        axis_of = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
        if "orientation" in d and not (
            isinstance(d["orientation"], str)
            and len(d["orientation"]) == 3
            and sorted(axis_of.get(c, -1) for c in d["orientation"]) == [0, 1, 2]
        ):
            raise ValueError(f"dataset.orientation {d['orientation']!r} must be three axis letters such as RAS")
        if "plane" in d and d["plane"] not in ("axial", "coronal", "sagittal"):
            raise ValueError(f"dataset.plane {d['plane']!r} must be one of axial, coronal, sagittal")
        if "label_fractions" in d and not _numbers(d["label_fractions"], self.num_classes, positive=False):
            raise ValueError(
                f"dataset.label_fractions {d['label_fractions']!r} must be {self.num_classes} shares >= 0, one per "
                "class"
            )
        return self

    @field_validator("weights")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        if (
            not value
            or Path(value).name != value
            or "\\" in value
            or value.startswith(".")
            or Path(value).suffix not in WEIGHTS_SUFFIXES
        ):
            raise ValueError(
                f"weights {value!r} must be a plain file name inside the checkpoint folder ending in "
                f"{', '.join(WEIGHTS_SUFFIXES)} (no folders, no '..')"
            )
        return value


def _numbers(value: Any, n: int, *, positive: bool) -> bool:
    """``value`` is a list of ``n`` finite numbers, each > 0 (``positive``) or >= 0."""
    if not isinstance(value, list) or len(value) != n:
        return False
    ok = [isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value]
    return all(ok) and all(v > 0 if positive else v >= 0 for v in value)


def build_model(card: ModelCard, *, trust_code: bool = False) -> Model:
    """A freshly initialised Model for ``card`` (architecture, channels, classes, bounds, normalisation); a
    ``module:function`` architecture runs only with ``trust_code=True``."""
    net = build_network(
        card.architecture,
        in_channels=card.in_channels,
        num_classes=card.num_classes,
        spatial_dims=card.spatial_dims,
        trust_code=trust_code,
        **card.arch_kwargs,
    )
    return Model(net, bounds=card.bounds, mean=card.mean, std=card.std)


def save_checkpoint(model: Model, card: ModelCard, directory: str | Path, *, root: str | Path | None = None) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``directory`` (created inside ``root``, default: the
    directory itself; see ``medrobust.files.write_atomic``); returns the card's path."""
    from safetensors.torch import save

    directory = Path(directory)
    root = directory if root is None else Path(root)
    make_dirs(directory, root)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(directory / card.weights, save(state), root=root)
    path = directory / CARD_NAME
    write_atomic(path, card.model_dump_json(indent=2), root=root)
    return path


def read_card(path: str | Path) -> tuple[ModelCard, Path]:
    """Read a card from a checkpoint folder or its ``model.json``; returns (card, folder)."""
    path = Path(path)
    card_path = path / CARD_NAME if path.is_dir() else path
    if not card_path.exists():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} not found: expected a folder with {CARD_NAME} and {WEIGHTS_NAME} "
            f"(as written by `medrobust train`) or the path of its {CARD_NAME}"
        )
    try:
        card = ModelCard.model_validate(json.loads(card_path.read_text()))
    except json.JSONDecodeError as err:
        raise ValueError(f"model card {str(card_path)!r} is not valid JSON: {err}") from None
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'card'}: {e['msg'].removeprefix('Value error, ')}"
            for e in err.errors()
        )
        raise ValueError(f"model card {str(card_path)!r} is not valid: {problems}") from None
    return card, card_path.parent


def weights_path(card: ModelCard, folder: Path) -> Path:
    """The card's weights file, which must resolve (links followed) to a file directly inside ``folder``."""
    path = folder / card.weights
    if path.resolve().parent != folder.resolve():
        raise ValueError(
            f"weights {card.weights!r} of the model card in {str(folder)!r} resolve to {str(path.resolve())!r}, "
            "outside the checkpoint folder; a checkpoint's weights must be a file inside its folder"
        )
    return path


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} named by the model card does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: safetensors, zipfile and unpickler errors vary
        raise ValueError(f"weights file {str(path)!r} cannot be read: {type(err).__name__}: {err}") from None


def load_model(
    path: str | Path, device: torch.device | str = "cpu", *, trust_code: bool = False
) -> tuple[Model, ModelCard]:
    """Load a checkpoint written by ``save_checkpoint``; the model is returned in eval mode. A card naming a
    ``module:function`` factory loads only with ``trust_code=True``."""
    card, folder = read_card(path)
    model = build_model(card, trust_code=trust_code)
    state = load_weights(weights_path(card, folder))
    expected = model.state_dict()
    for key, value in state.items():  # load_state_dict would cast silently (float64 -> float32, float -> int)
        if key in expected and isinstance(value, torch.Tensor) and value.dtype != expected[key].dtype:
            raise ValueError(
                f"weights in {str(folder / card.weights)!r}: {key!r} is stored as {str(value.dtype)[6:]} but the "
                f"card's architecture {card.architecture!r} holds {str(expected[key].dtype)[6:]} there; it would be "
                "cast silently: save the weights in the model's own dtype"
            )
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes that differ from the card's architecture
        first = str(err).split("\n\t")[1:2] or [str(err)]
        raise ValueError(
            f"weights in {str(folder / card.weights)!r} do not fit the card's architecture {card.architecture!r} "
            f"({card.in_channels} channels, {card.num_classes} classes): {first[0].strip()}"
        ) from None
    if missing or unexpected:
        raise ValueError(
            f"weights in {str(folder / card.weights)!r} do not match architecture {card.architecture!r}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.to(device).eval(), card
