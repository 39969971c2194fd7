"""Experiment specs: YAML -> validated, frozen config objects.

Unknown keys and bad values are errors that name the key path and the valid options ("did you mean").
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medrobust.defenses import DefenseSpec
from medrobust.models.card import checkpoint_hint
from medrobust.registry import short_repr, unknown_name_message
from medrobust.types import SEED_MAX
from medrobust.yamlio import YAMLInputError, read_yaml

#: the norms a headline strength can be given for (attack budgets: Linf, L2, and L0 for JSMA)
REFERENCE_NORMS = ("linf", "l2", "l0")


class SpecError(ValueError):
    """A spec that does not validate; the message names every bad key path."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(_Frozen):
    name: str = "derm-synth"
    params: dict[str, Any] = Field(default_factory=dict)
    split: str = "test"

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        from medrobust.data import DATASETS

        if value not in DATASETS:
            raise ValueError(unknown_name_message("dataset", value, DATASETS.names()))
        return value

    @field_validator("split")
    @classmethod
    def _split(cls, value: str) -> str:
        if value not in ("train", "val", "test"):
            raise ValueError(f"split {value!r} is not one of train, val, test")
        return value

    @model_validator(mode="after")
    def _params(self) -> DatasetSpec:
        """Parameter names and types now (``n: x`` names its key), values when the data are loaded."""
        from medrobust.data import DATASETS

        params = dict(self.params)
        if "split" in params:
            raise ValueError(f"params.split {params['split']!r}: give the split as the dataset's own key 'split'")
        ordinal = params.pop("ordinal", None)  # read by load_dataset itself, not by the builder
        if ordinal is not None and not isinstance(ordinal, bool):
            raise ValueError(f"params.ordinal {short_repr(ordinal)} must be true or false")
        try:
            DATASETS.check(self.name, **params)
        except ValueError as err:
            raise ValueError(f"params: {err}") from None
        return self


class TrainSpec(_Frozen):
    """Train a registered architecture on the run's training dataset (cached per settings)."""

    architecture: str
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    # robust training: adversarial (pgd, fast, trades), ensemble_adversarial, jacobian (medrobust.defenses)
    defense: DefenseSpec | None = None

    @field_validator("architecture")
    @classmethod
    def _known(cls, value: str) -> str:
        from medrobust.models.zoo import MODELS

        if ":" not in value and value not in MODELS:
            raise ValueError(unknown_name_message("model", value, MODELS.names()))
        return value

    @model_validator(mode="after")
    def _arch_kwargs(self) -> TrainSpec:
        from medrobust.models.zoo import check_arch_kwargs

        try:
            check_arch_kwargs(self.architecture, self.arch_kwargs)
        except ValueError as err:
            raise ValueError(str(err) if str(err).startswith("arch_kwargs") else f"arch_kwargs: {err}") from None
        return self


MAX_NAME_LENGTH = 128


class ModelSpec(_Frozen):
    """A model by name: a checkpoint folder, or an architecture to train. The name is shown, never used as a
    path as is (files go to a safe folder name). ``class_map``: the card's class names -> the dataset's, for
    data whose classes are spelled differently (same order)."""

    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    checkpoint: Path | None = None
    train: TrainSpec | None = None
    class_map: dict[str, str] = Field(default_factory=dict)

    @field_validator("checkpoint", mode="before")
    @classmethod
    def _path(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, (str, Path)):
            raise ValueError(f"checkpoint {short_repr(value)} must be the path of a checkpoint folder")
        return Path(value) if isinstance(value, str) else value  # YAML has no paths (specs are read strictly)

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.strip() or not value.isprintable():
            raise ValueError(f"model name {value!r} must be printable text (no control characters or newlines)")
        return value

    @property
    def defense_sources(self) -> list[str]:
        """The static source models its ensemble adversarial training crafts examples on (names or folders)."""
        return list(self.train.defense.sources) if self.train is not None and self.train.defense is not None else []

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.checkpoint is None) == (self.train is None):
            raise ValueError(f"model {self.name!r} needs exactly one of 'checkpoint' or 'train'")
        return self


def _needs_sources(attack: Any) -> bool:
    """Whether the attack registered as ``attack`` takes source models (a transfer attack)."""
    from medrobust.attacks import capabilities

    cls = capabilities(attack) if isinstance(attack, str) else None
    return cls is not None and cls.needs_sources


class PerturbationSpec(_Frozen):
    """An attack or a corruption, swept over ``strengths`` (eps in input units for attacks, the strength
    parameter for corruptions)."""

    attack: str | None = None
    corruption: str | None = None
    strengths: list[float] = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    #: budget attacks over several strengths: "pruned" runs them in ascending order, each only on the samples no
    #: smaller strength broke (those keep the smaller example; see ``Attack.sweep``); "independent" runs every
    #: strength on every sample. Minimal attacks run once and corruptions draw once, whatever this says.
    sweep: Literal["pruned", "independent"] = "pruned"

    @field_validator("strengths")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        bad = [v for v in value if not (v >= 0 and math.isfinite(v))]
        if bad:
            raise ValueError(f"strengths {bad} must be finite numbers >= 0")
        return sorted(set(float(v) for v in value))

    @model_validator(mode="after")
    def _check(self) -> PerturbationSpec:
        from medrobust.attacks import ATTACKS
        from medrobust.corruptions import CORRUPTIONS

        if (self.attack is None) == (self.corruption is None):
            raise ValueError("each perturbation needs exactly one of 'attack' or 'corruption'")
        registry, name = (ATTACKS, self.attack) if self.attack is not None else (CORRUPTIONS, self.corruption)
        if name not in registry:
            raise ValueError(unknown_name_message(registry.kind, str(name), registry.names()))
        if self.corruption == "matched_noise":
            raise ValueError("matched_noise is added per attack by the runner (set matched_noise: true)")
        registry.build(str(name), **self.params)  # validates parameter names and values now
        return self

    @property
    def kind(self) -> str:
        return "attack" if self.attack is not None else "corruption"

    @property
    def sources(self) -> list[str]:
        """A transfer attack's source models: names of the spec's models or checkpoint folders."""
        if not _needs_sources(self.attack):
            return []
        value = self.params.get("sources", [])
        return [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]

    def applies_to(self, model: str) -> bool:
        """Is this perturbation evaluated on ``model``? A transfer attack is evaluated on every model that is
        not one of its sources (on a source it would be a white-box attack)."""
        return model not in self.sources

    @property
    def name(self) -> str:
        return str(self.attack if self.attack is not None else self.corruption)

    @property
    def threat_norm(self) -> str:
        """The norm an attack's strengths are measured in ("" for a corruption)."""
        from medrobust.attacks import ATTACKS

        return ATTACKS.build(self.name, **self.params).threat_norm if self.kind == "attack" else ""


class CleverSpec(_Frozen):
    """CLEVER scores of every model on the evaluated samples (``medrobust.clever``, Weng et al., ICLR 2018),
    stored and reported beside the attacks; classification only. Each sample starts with ``n_batches`` batches
    of ``batch_size`` points drawn in the ``norm`` ball of ``radius`` (input units); samples whose reverse
    Weibull fit is degenerate draw more batches (doubling) up to ``max_batches``. The defaults are measured on
    the demo's models (bench/clever.py, bench/RESULTS.md "CLEVER convergence"); the radius suits L2 on images in
    [0, 1]: set it for linf or l1."""

    norm: str = "l2"
    n_batches: int = Field(10, ge=1)
    batch_size: int = Field(2, ge=1)
    radius: float = Field(2.0, gt=0, allow_inf_nan=False)
    max_batches: int = Field(160, ge=1)
    target_classes: int | None = Field(None, ge=1)

    @field_validator("norm")
    @classmethod
    def _norm(cls, value: str) -> str:
        if value not in ("l2", "linf", "l1"):
            raise ValueError(f"clever norm {value!r} is not one of l2, linf, l1")
        return value

    @model_validator(mode="after")
    def _budget(self) -> CleverSpec:
        if self.max_batches < self.n_batches:
            raise ValueError(
                f"clever max_batches={self.max_batches} is below n_batches={self.n_batches}: the budget must be at "
                "least the batches drawn first"
            )
        return self

    @property
    def label(self) -> str:
        return f"clever[{self.norm}]"


class ExecutorSpec(_Frozen):
    """Where the work units of a run execute: ``local`` (this process, cell after cell), ``processes`` (``workers``
    spawned processes on this machine, one torch thread each unless the spec sets ``threads``) or ``ray`` (a Ray
    cluster: ``address``, or a local instance when none is given). ``shard_size``: samples per work unit (rounded up to
    whole batches; default: a unit per cell); ``num_cpus`` / ``num_gpus``: what each unit requests (the unit's
    torch threads follow ``num_cpus`` unless the spec sets ``threads``). None of it changes a result."""

    name: Literal["local", "processes", "ray"] = "local"
    address: str | None = None
    shard_size: int | None = Field(default=None, ge=1)
    num_cpus: float = Field(default=1.0, gt=0)
    num_gpus: float = Field(default=0.0, ge=0)
    workers: int | None = Field(default=None, ge=1)  # processes: worker processes (default: one per CPU core)

    @model_validator(mode="after")
    def _keys_of_this_executor(self) -> ExecutorSpec:
        """A key another executor reads is an error here, not silently unused."""
        if self.address is not None and self.name != "ray":
            raise ValueError(
                f"address {self.address!r} is used by the ray executor only (executor {self.name!r}); choose "
                "executor ray (--executor ray) or drop the address"
            )
        if self.workers is not None and self.name != "processes":
            raise ValueError(
                f"workers: {self.workers} is used by the processes executor only (executor {self.name!r}); choose "
                "executor processes or drop workers"
            )
        return self


class MlflowSpec(_Frozen):
    """Log the run to MLflow when it ends (``medrobust.tracking``): ``mlflow: true`` or these keys. Where to is
    the user's choice, not the spec's: ``--mlflow URI``, else ``MLFLOW_TRACKING_URI``, else ``RUN/mlflow``."""

    experiment: str | None = None  # default: the spec's name
    run_name: str | None = None  # default: the run folder's name

    @model_validator(mode="before")
    @classmethod
    def _no_destination(cls, data: Any) -> Any:
        if isinstance(data, dict) and ({"tracking_uri", "uri"} & set(data)):
            raise ValueError(
                "mlflow: a spec cannot choose where results are sent (it is data, and writes only into its run "
                "folder); pass --mlflow URI or set MLFLOW_TRACKING_URI"
            )
        return data


class ExperimentSpec(_Frozen):
    name: str = Field("experiment", max_length=MAX_NAME_LENGTH)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    device: str = "cpu"
    # allow module:function architectures (in this spec and in the cards of its checkpoints): they run code
    trust_code: bool = False
    # CUDA only: deterministic kernels, so a re-run gives the same records bit for bit (false: cuDNN may autotune)
    deterministic: bool = True
    batch_size: int = Field(64, ge=1)
    limit: int | None = Field(None, ge=1)
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    train_dataset: DatasetSpec | None = None
    models: list[ModelSpec] = Field(min_length=1)
    perturbations: list[PerturbationSpec] = Field(default_factory=list)
    matched_noise: bool = True
    # samples per model whose arrays the store keeps for the report's gallery (the first ones of the test set);
    # it applies to cells computed from then on (it is not part of a cell's identity)
    gallery: int = Field(2, ge=0, le=16)
    reference_strength: dict[str, float] = Field(default_factory=dict)
    clever: CleverSpec | None = None

    @field_validator("reference_strength")
    @classmethod
    def _reference_norms(cls, value: dict[str, float]) -> dict[str, float]:
        for norm, eps in value.items():
            if norm not in REFERENCE_NORMS:
                raise ValueError(f"norm {norm!r} is not one of {', '.join(REFERENCE_NORMS)}")
            if not (math.isfinite(eps) and eps > 0):
                raise ValueError(f"{norm}: {eps!r} must be a finite strength > 0")
        return value

    # torch CPU threads for training and evaluation (default: torch's). Results depend on it in the last bits
    # (the order of float sums), so runs compare bit for bit at the same thread count, on any executor.
    threads: int | None = Field(None, ge=1)
    # the score the report leads with (default: the task's, accuracy or Dice)
    headline_metric: Literal["accuracy", "balanced_accuracy", "auc", "quadratic_kappa", "dice"] | None = None
    # the classes the clinical breakdown counts flips out of (e.g. the malignant ones); none: no groups
    malignant: list[str] | None = None
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)
    # log the run to MLflow at its end (true, or experiment / run_name); none: only with --mlflow
    mlflow: MlflowSpec | None = None

    @field_validator("mlflow", mode="before")
    @classmethod
    def _mlflow(cls, value: Any) -> Any:
        return ({} if value else None) if isinstance(value, bool) else value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        from medrobust.types import parse_device

        parse_device(value)  # the name only: whether this machine has the device is checked when a run starts
        return value

    @model_validator(mode="after")
    def _unique(self) -> ExperimentSpec:
        names = [m.name for m in self.models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"model names must be unique; repeated: {dup}")
        seen: dict[str, int] = {}
        for i, p in enumerate(self.perturbations):
            key = json.dumps([p.kind, p.name, p.params], sort_keys=True, default=str)
            if key in seen:
                raise ValueError(
                    f"perturbations {seen[key]} and {i} are the same {p.kind} {p.name!r} with the same parameters; "
                    "merge their strengths into one entry"
                )
            seen[key] = i
        for p in self.perturbations:
            for source in p.sources:
                if source not in names and not (Path(source) / "model.json").exists():
                    raise ValueError(
                        f"transfer source {source!r} is neither a model of this spec ({', '.join(names)}) nor a "
                        f"checkpoint folder with a model.json{checkpoint_hint(source)}"
                    )
            if p.sources and not any(p.applies_to(n) for n in names):
                raise ValueError(
                    f"transfer from {p.sources} has no target: every model of the spec is one of its sources"
                )
        needs = {m.name: m.defense_sources for m in self.models}
        for m in self.models:
            for source in needs[m.name]:
                if source not in names and not (Path(source) / "model.json").exists():
                    raise ValueError(
                        f"model {m.name!r}: ensemble_adversarial source {source!r} is neither a model of this spec "
                        f"({', '.join(names)}) nor a checkpoint folder with a model.json{checkpoint_hint(source)}"
                    )
        for m in self.models:  # a model cannot depend on itself through its sources
            stack, visited = list(needs[m.name]), set()
            while stack:
                source = stack.pop()
                if source == m.name:
                    raise ValueError(f"model {m.name!r} is among its own ensemble_adversarial sources")
                if source not in visited:
                    visited.add(source)
                    stack += needs.get(source, [])
        return self

    def spec_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at the parent of ``loc`` (for "did you mean" on unknown keys)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        candidates = [a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
        for arg in args:
            candidates += [a for a in getattr(arg, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return []
        current = candidates[0]
    return list(getattr(current, "model_fields", {}))


def format_errors(err: ValidationError, source: str) -> str:
    """Every error of a spec on one line: ``source: key.path: what was expected (got value); key.path: ...``."""
    parts = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        got = (
            ""
            if e["type"] in ("value_error", "missing", "extra_forbidden") or not loc
            else f" (got {short_repr(e['input'])})"
        )
        if e["type"] == "extra_forbidden":
            valid = _fields_at(ExperimentSpec, loc)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            msg = f"unknown key{hint} Valid keys: {', '.join(valid)}"
        parts.append(f"{path}: {msg}{got}")
    return f"{source}: " + "; ".join(parts)


def load_config(source: str | Path | dict[str, Any]) -> ExperimentSpec:
    """Validate a spec from a YAML file path or a dict. Raises SpecError naming each bad key path."""
    if isinstance(source, dict):
        data, label = source, "spec"
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"spec file {str(path)!r} does not exist")
        if not path.is_file():
            raise SpecError(f"spec {str(path)!r} is a folder; pass the spec's YAML file")
        try:
            data = read_yaml(path) or {}
        except YAMLInputError as err:
            raise SpecError(str(err)) from None
        except UnicodeDecodeError:
            raise SpecError(f"{path}: not a text file; expected a YAML spec") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise SpecError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
        label = str(path)
        if not isinstance(data, dict):
            raise SpecError(f"{path}: expected a mapping of keys at the top level")
        base = path.parent
        models: list[Any] = data["models"] if isinstance(data.get("models"), list) else []
        for model in models:
            checkpoint = model.get("checkpoint") if isinstance(model, dict) else None
            if isinstance(checkpoint, str) and checkpoint and not Path(checkpoint).is_absolute():
                model["checkpoint"] = str(base / checkpoint)
        names = {m.get("name") for m in models if isinstance(m, dict)}
        for model in models:
            train = model.get("train") if isinstance(model, dict) else None
            defense = train.get("defense") if isinstance(train, dict) else None
            if isinstance(defense, dict) and isinstance(defense.get("sources"), list):
                # ensemble sources that are not model names are checkpoint folders, relative to the spec file
                defense["sources"] = [
                    str(base / s) if isinstance(s, str) and s not in names and not Path(s).is_absolute() else s
                    for s in defense["sources"]
                ]
        perturbations: list[Any] = data["perturbations"] if isinstance(data.get("perturbations"), list) else []
        for pert in perturbations:
            params = pert.get("params") if isinstance(pert, dict) and _needs_sources(pert.get("attack")) else None
            if isinstance(params, dict) and isinstance(params.get("sources"), list):
                # sources that are not model names are checkpoint folders, relative to the spec file
                params["sources"] = [
                    str(base / s) if isinstance(s, str) and s not in names and not Path(s).is_absolute() else s
                    for s in params["sources"]
                ]
    try:
        # a file is read strictly: "64" is not a batch size, "yes" not a boolean, 8.0 not a count
        return ExperimentSpec.model_validate(data, strict=not isinstance(source, dict))
    except ValidationError as err:
        raise SpecError(format_errors(err, label)) from None
