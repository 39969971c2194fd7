"""Model cards and safe checkpoint loading.

A checkpoint is a folder holding ``model.json`` (the card below) and ``model.safetensors`` (weights only).
Loading never unpickles: weights come from safetensors, or from a ``.pt`` file through
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medrobust.models.wrapper import Model
from medrobust.models.zoo import build_network

CARD_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"


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


def build_model(card: ModelCard) -> Model:
    """A freshly initialised Model for ``card`` (architecture, channels, classes, bounds, normalisation)."""
    net = build_network(
        card.architecture,
        in_channels=card.in_channels,
        num_classes=card.num_classes,
        spatial_dims=card.spatial_dims,
        **card.arch_kwargs,
    )
    return Model(net, bounds=card.bounds, mean=card.mean, std=card.std)


def save_checkpoint(model: Model, card: ModelCard, directory: str | Path) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``directory``; returns the card's path."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / card.weights))
    path = directory / CARD_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(card.model_dump_json(indent=2))
    tmp.replace(path)
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
    except (json.JSONDecodeError, ValidationError) as err:
        raise ValueError(f"model card {str(card_path)!r} is not valid: {err}") from None
    return card, card_path.parent


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise FileNotFoundError(f"weights file {str(path)!r} named by the model card does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[Model, ModelCard]:
    """Load a checkpoint written by ``save_checkpoint``; the model is returned in eval mode."""
    card, folder = read_card(path)
    model = build_model(card)
    state = load_weights(folder / card.weights)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"weights in {str(folder / card.weights)!r} do not match architecture {card.architecture!r}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.to(device).eval(), card
