"""Train a registered model on a dataset's train split; keep the checkpoint with the best validation score.

Each batch's loss comes from the defense (``medrobust.defenses``): the task's loss for standard training, or
adversarial, ensemble-adversarial or Jacobian-regularised training; the checkpoint is chosen by the clean
validation score or, with ``select: robust``, by the score under PGD at the defense's eps.

Randomness (initial weights, shuffling, flips, dropout) comes from ``seed`` alone: training runs inside
``torch.random.fork_rng`` so the caller's global generator state is left untouched.
"""

from __future__ import annotations

import copy
import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from medrobust.data import load_dataset
from medrobust.data.base import ImageDataset, load_all
from medrobust.defenses import DefenseSpec, DefenseTrainer
from medrobust.models.card import ModelCard, build_model, save_checkpoint
from medrobust.models.wrapper import Model
from medrobust.models.zoo import MODELS, check_arch_kwargs, resolve_factory
from medrobust.registry import error_line, unknown_name_message
from medrobust.tasks import get_task
from medrobust.types import SEED_MAX, check_device

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    architecture: str = "small-cnn"
    dataset: str = "derm-synth"
    dataset_params: dict[str, Any] = field(default_factory=dict)
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    augment: bool = True
    normalise: bool = True
    select_metric: str | None = None  # default: balanced_accuracy (classification), dice (segmentation)
    device: str = "cpu"
    name: str | None = None
    trust_code: bool = False  # allow a module:function architecture (it runs code); not stored in the card
    # robust training (medrobust.defenses.DefenseSpec as a dict): adversarial, ensemble_adversarial, jacobian
    defense: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_device(self.device)
        try:
            self.defense = DefenseSpec.model_validate(self.defense).model_dump(mode="json")  # checked, all settings
        except ValidationError as err:
            raise ValueError(f"defense: {error_line(err)}") from None
        if ":" in self.architecture and not self.trust_code:
            resolve_factory(self.architecture)  # raises UntrustedCodeError before any data is loaded
        if ":" not in self.architecture and self.architecture not in MODELS:
            raise ValueError(unknown_name_message("model", self.architecture, MODELS.names()))
        check_arch_kwargs(self.architecture, self.arch_kwargs)  # before any data is loaded
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= SEED_MAX:
            raise ValueError(f"seed={self.seed!r} must be an integer in [0, {SEED_MAX}]")
        for key in ("epochs", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{key}={value!r} must be an integer >= 1")
            if value < 1:
                raise ValueError(f"{key}={value!r} must be >= 1")
        if (
            isinstance(self.lr, bool)
            or not isinstance(self.lr, (int, float))
            or not (math.isfinite(self.lr) and self.lr > 0)
        ):
            raise ValueError(f"lr={self.lr!r} must be a finite number > 0")
        if self.select_metric not in (None, "accuracy", "balanced_accuracy", "auc", "dice", "pixel_accuracy"):
            raise ValueError(
                f"select_metric={self.select_metric!r}; expected accuracy, balanced_accuracy or auc "
                "(classification) or dice, pixel_accuracy (segmentation)"
            )


def _card(**fields: Any) -> ModelCard:
    """The card of the model being trained; fields that do not validate (a dataset's classes, arch_kwargs) are
    one ValueError line."""
    try:
        return ModelCard(**fields)
    except ValidationError as err:
        raise ValueError(f"model card of {fields.get('name')!r}: {error_line(err)}") from None


def epoch_line(name: str, row: dict[str, float]) -> str:
    """One line per epoch, the same for `medrobust train` and for models a run trains:
    "small-cnn epoch   3  loss 0.5123  val: accuracy 0.810  balanced_accuracy 0.802 ..."."""
    vals = "  ".join(f"{k.removeprefix('val_')} {v:.3f}" for k, v in row.items() if k.startswith("val_"))
    return f"{name} epoch {int(row['epoch']):3d}  loss {row['train_loss']:.4f}  val: {vals}"


def label_fractions(labels: torch.Tensor, num_classes: int) -> list[float]:
    """The share of each class among the training labels (samples, or voxels of label maps), recorded in the
    card: a structure far rarer or commoner in other data may be defined differently there."""
    counts = torch.bincount(labels.reshape(-1).long(), minlength=num_classes).double()
    return [round(float(v), 6) for v in counts / counts.sum().clamp(min=1)]


def versions() -> dict[str, str]:
    from medrobust._version import __version__

    return {"medrobust": __version__, "torch": torch.__version__, "python": platform.python_version()}


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def channel_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    dims = [0] + list(range(2, x.dim()))
    return x.mean(dim=dims).tolist(), x.std(dim=dims).clamp_min(1e-6).tolist()


def _augment(
    x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, dense: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips. One label per image: horizontal and vertical (lesions and chest films are read in any such
    orientation). Label maps (``dense``): left-right only (the last axis), applied to the map as well."""
    n = x.shape[0]
    flip_h = torch.rand(n, generator=generator) < 0.5
    flip_v = torch.rand(n, generator=generator) < 0.5
    shape_x = (-1,) + (1,) * (x.dim() - 1)
    x = torch.where(flip_h.view(shape_x), x.flip(-1), x)
    if dense:
        y = torch.where(flip_h.view((-1,) + (1,) * (y.dim() - 1)), y.flip(-1), y)
        return x, y
    return torch.where(flip_v.view(shape_x), x.flip(-2), x), y


def train(
    settings: TrainSettings,
    out_dir: str | Path | None = None,
    *,
    progress: Callable[[int, dict[str, float]], None] | None = None,
    sources: dict[str, tuple[Model, str]] | None = None,
) -> tuple[Model, ModelCard]:
    """Train, select by validation ``select_metric`` (or, with ``defense.select: robust``, by the score under
    PGD at the defense's eps), evaluate on test, and save to ``out_dir`` if given. ``sources``: the static source
    models of ensemble adversarial training by name, each with the fingerprint of its weights."""
    s = settings
    started = time.perf_counter()
    datasets: dict[str, ImageDataset] = {
        split: load_dataset(s.dataset, split=split, **s.dataset_params) for split in ("train", "val", "test")
    }
    train_ds = datasets["train"]
    task = get_task(train_ds.task)
    select = s.select_metric or task.select_metrics[0]
    if select not in task.select_metrics:
        raise ValueError(
            f"select_metric={select!r} does not apply to a {train_ds.task} dataset; expected one of "
            f"{list(task.select_metrics)}"
        )
    defense = DefenseSpec.model_validate(s.defense)
    trainer = DefenseTrainer(defense, task, s.seed, {k: m for k, (m, _) in (sources or {}).items()}, epochs=s.epochs)
    scores = task.model_scores

    data = {split: load_all(ds) for split, ds in datasets.items()}
    x_train, y_train = data["train"].x, data["train"].y
    in_channels, num_classes = x_train.shape[1], train_ds.num_classes
    mean, std = channel_stats(x_train) if s.normalise else (None, None)
    card = _card(
        name=s.name or f"{s.architecture.replace(':', '-')}-{s.dataset}-s{s.seed}",
        architecture=s.architecture,
        arch_kwargs=dict(s.arch_kwargs),
        task=train_ds.task,
        in_channels=in_channels,
        num_classes=num_classes,
        class_names=list(train_ds.class_names),
        spatial_dims=x_train.dim() - 2,
        input_shape=list(x_train.shape[1:]),
        bounds=train_ds.bounds,
        mean=mean,
        std=std,
        dataset={
            "name": s.dataset,
            "params": dict(s.dataset_params),
            "sizes": {k: len(v) for k, v in data.items()},
            **train_ds.geometry(),
            "label_fractions": label_fractions(y_train, num_classes),
        },
        seed=s.seed,
        training={
            k: v for k, v in asdict(s).items() if k not in ("dataset", "dataset_params", "architecture", "trust_code")
        },
        versions=versions(),
    )
    device = torch.device(s.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        model = build_model(card, trust_code=s.trust_code).to(device)
        gen = torch.Generator().manual_seed(s.seed)
        opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        steps_per_epoch = -(-len(x_train) // s.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=s.epochs * steps_per_epoch)
        best_score, best_state, best_epoch, history = -1.0, None, 0, []
        for epoch in range(1, s.epochs + 1):
            model.train()
            order = torch.randperm(len(x_train), generator=gen)
            total = 0.0
            for b, i in enumerate(range(0, len(order), s.batch_size)):
                idx = order[i : i + s.batch_size]
                xb, yb = x_train[idx], y_train[idx]
                if s.augment:
                    xb, yb = _augment(xb, yb, gen, task.dense)
                xb, yb = xb.to(device), yb.to(device)
                opt.zero_grad(set_to_none=True)
                loss = trainer.loss(model, xb, yb, epoch - 1 + i / len(x_train), (epoch, b))
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
            x_val, y_val = data["val"].x.to(device), data["val"].y.to(device)
            val = scores(predict_logits(model, x_val).cpu(), data["val"].y, num_classes)
            if defense.select == "robust":
                val["robust"] = float(trainer.robust_scores(model, x_val, y_val, epoch).mean())
            row = {"epoch": epoch, "train_loss": total / len(x_train), **{f"val_{k}": v for k, v in val.items()}}
            history.append(row)
            if progress is None:
                log.info("%s", epoch_line(s.name or s.architecture, row))
            if progress is not None:
                progress(epoch, row)
            chosen = val["robust"] if defense.select == "robust" else val[select]
            if chosen > best_score:
                best_score, best_epoch = chosen, epoch
                best_state = copy.deepcopy(model.state_dict())
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    metrics = {
        split: scores(predict_logits(model, data[split].x.to(device)).cpu(), data[split].y, num_classes)
        for split in ("val", "test")
    }
    card = card.model_copy(
        update={
            "metrics": metrics,
            "training": {
                **card.training,
                "defense_description": defense.describe(),
                **(
                    {
                        "defense_sources": {k: fp for k, (_, fp) in (sources or {}).items()},
                        "defense_batches_per_source": dict(trainer.used),
                    }
                    if defense.kind == "ensemble_adversarial"
                    else {}
                ),
                "best_epoch": best_epoch,
                "history": history,
                "seconds": round(time.perf_counter() - started, 2),
            },
        }
    )
    if out_dir is not None:
        save_checkpoint(model.cpu(), card, out_dir)
        model.to(device)
    return model, card
