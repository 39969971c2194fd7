"""Model cards and safe checkpoint loading.

A checkpoint is a folder holding ``model.json`` (the card below) and ``model.safetensors`` (weights only).
A checkpoint is data, never code: loading never unpickles (weights come from safetensors, or from a ``.pt``
file through ``torch.load(weights_only=True)``), the weights must be a plain file name inside the folder, and a
card whose architecture is a ``module:function`` factory loads only with ``trust_code=True``.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medrobust.files import make_dirs, write_atomic
from medrobust.models.wrapper import Model
from medrobust.models.zoo import MODELS, build_network, check_arch_kwargs
from medrobust.registry import error_line, short_repr

CARD_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth")
#: the largest model card read (a card is a few kilobytes; its training history grows by ~200 bytes an epoch)
MAX_CARD_BYTES = 1_000_000
#: how deep a card's JSON may nest (a card needs about 4 levels); deeper text is refused before it is parsed
MAX_CARD_DEPTH = 32


class ModelCard(BaseModel):
    """What a trained model is: architecture, data, input contract and measured scores."""

    model_config = ConfigDict(extra="forbid")

    format: str = "medrobust-model-card/1"
    name: str = Field(min_length=1, max_length=256)
    architecture: str
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    task: str = "classification"
    in_channels: int = Field(ge=1)
    num_classes: int = Field(ge=1)
    class_names: list[str]
    spatial_dims: int = Field(2, ge=1, le=3)
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

    @field_validator("bounds", mode="before")
    @classmethod
    def _pair(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value  # JSON has no tuples (cards are read strictly)

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        from medrobust.tasks import TASKS

        if value not in TASKS:
            raise ValueError(f"task {value!r} is not one of {', '.join(TASKS.names())}")
        return value

    @model_validator(mode="after")
    def _shapes(self) -> ModelCard:
        """The input contract and the classes agree with each other before anything is built from them."""
        shape, dims = self.input_shape, self.spatial_dims
        if len(shape) != dims + 1 or any(v < 1 for v in shape):
            raise ValueError(
                f"input_shape {shape} must be {dims + 1} sizes >= 1: channels, then the {dims} spatial sizes "
                f"(spatial_dims is {dims})"
            )
        if shape[0] != self.in_channels:
            raise ValueError(
                f"input_shape {shape} starts with {shape[0]} channels but in_channels is {self.in_channels}"
            )
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} names {short_repr(self.class_names)} but num_classes is "
                f"{self.num_classes}; expected one name per class"
            )
        low, high = self.bounds
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"bounds {list(self.bounds)} must be two finite numbers, low < high")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and not (
                len(values) == self.in_channels
                and all(math.isfinite(v) for v in values)
                and (key == "mean" or all(v > 0 for v in values))
            ):
                rule = "finite numbers" if key == "mean" else "finite numbers > 0"
                raise ValueError(f"{key} {values} must be {self.in_channels} {rule}, one per input channel")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std must be given together (one value per input channel each) or both null")
        if ":" not in self.architecture and self.architecture not in MODELS:
            return self  # an architecture registered later, or a typo: building the model says which
        try:  # names and types of the architecture's parameters, before anything is built
            check_arch_kwargs(self.architecture, self.arch_kwargs)
        except ValueError as err:
            raise ValueError(str(err) if str(err).startswith("arch_kwargs") else f"arch_kwargs: {err}") from None
        return self

    @model_validator(mode="after")
    def _dataset_fields(self) -> ModelCard:
        """The fields of ``dataset`` that medrobust reads (a card is data: they are checked, not trusted):
        ``spacing`` three voxel sizes in mm > 0, ``orientation`` three axis letters (e.g. RAS), ``plane`` a slice
        plane, ``label_fractions`` one share >= 0 per class."""
        d = self.dataset
        if "name" in d and not isinstance(d["name"], str):
            raise ValueError(f"dataset.name {short_repr(d['name'])} must be a string (a registered dataset)")
        if "params" in d and not isinstance(d["params"], dict):
            raise ValueError(f"dataset.params {short_repr(d['params'])} must be a mapping of dataset parameters")
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


def json_depth(text: str) -> int:
    """How deep the arrays and objects of JSON ``text`` nest (strings skipped), without parsing it: Python's
    parser recurses once a level and would overflow on a file of nothing but brackets."""
    depth = deepest = 0
    for match in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def _not_a_checkpoint(path: Path) -> str:
    """The error for a file given where a checkpoint folder is expected, with the folder it may have meant."""
    hint = ""
    if (path.parent / CARD_NAME).is_file():
        hint = f"; did you mean its folder {str(path.parent)!r}?"
    return (
        f"checkpoint {str(path)!r} is a file; expected a checkpoint folder holding {CARD_NAME} and its weights (or "
        f"the path of that {CARD_NAME}){hint}"
    )


def checkpoint_hint(path: str | Path) -> str:
    """A hint for the weights file (or another file) of a checkpoint folder given as a checkpoint: "; ... did you
    mean its folder X?"; "" for anything else."""
    path = Path(path)
    if path.is_file() and path.suffix != ".json" and (path.parent / CARD_NAME).is_file():
        return f"; {str(path)!r} is a file: did you mean its folder {str(path.parent)!r}?"
    return ""


def read_card(path: str | Path) -> tuple[ModelCard, Path]:
    """Read a card from a checkpoint folder or its ``model.json``; returns (card, folder). The card is data: it
    is at most :data:`MAX_CARD_BYTES` bytes of JSON nested at most :data:`MAX_CARD_DEPTH` levels, and every field
    has exactly its type (``"3"`` is not a class count)."""
    card, card_path = _read_card(Path(path))
    return card, card_path.parent


def _read_card(path: Path) -> tuple[ModelCard, Path]:
    if path.is_file() and path.suffix != ".json":
        raise ValueError(_not_a_checkpoint(path))
    card_path = path / CARD_NAME if path.is_dir() else path
    if not card_path.exists():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} not found: expected a folder with {CARD_NAME} and {WEIGHTS_NAME} "
            f"(as written by `medrobust train`) or the path of its {CARD_NAME}"
        )
    where = f"model card {str(card_path)!r}"
    if not card_path.is_file():
        raise ValueError(f"{where} is not a file; expected the JSON card written by `medrobust train`")
    size = card_path.stat().st_size
    if size > MAX_CARD_BYTES:
        raise ValueError(f"{where} is {size:,} bytes; a model card is at most {MAX_CARD_BYTES:,}")
    try:
        text = card_path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{where} is not UTF-8 text (byte {err.start}); expected a JSON model card") from None
    if json_depth(text) > MAX_CARD_DEPTH:
        raise ValueError(f"{where}: JSON nested deeper than {MAX_CARD_DEPTH} levels; a model card needs about 4")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where} is not valid: expected a JSON object of fields, got {type(data).__name__}")
    try:
        card = ModelCard.model_validate(data, strict=True)
    except ValidationError as err:
        raise ValueError(f"{where} is not valid: {error_line(err)}") from None
    return card, card_path


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
    card, card_path = _read_card(Path(path))
    folder = card_path.parent
    try:
        model = build_model(card, trust_code=trust_code)
    except KeyError as err:  # an architecture that is not registered
        raise ValueError(f"model card {str(card_path)!r}: architecture: {err.args[0] if err.args else err}") from None
    except (ValueError, TypeError) as err:
        if type(err) not in (ValueError, TypeError):  # a refusal of its own kind (untrusted code) says it all
            raise
        raise type(err)(f"model card {str(card_path)!r}: {err}") from None
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
