"""Evaluate one model on clean data and under a list of perturbations (attacks and corruptions).

This is what the ``evaluate`` command prints. Every perturbation gets its own generator derived from the
seed, its label and the batch index, so results do not depend on the order perturbations run in. The grid
runner (runner.py) uses the same attacks, corruptions and metrics in its own loop and also derives generators
from the model's name, so a spec run and ``medrobust evaluate`` draw different random starts.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from medrobust.attacks import ATTACKS, Attack
from medrobust.attacks.base import flat_norm
from medrobust.corruptions import CORRUPTIONS
from medrobust.corruptions.base import Corruption
from medrobust.data.base import ImageDataset, iterate_batches
from medrobust.metrics import (
    accuracy,
    attack_success_rate,
    auc_ovr,
    balanced_accuracy,
    per_class_sensitivity,
    psnr,
    ssim,
)
from medrobust.models.wrapper import Model
from medrobust.registry import parse_spec, unknown_name_message
from medrobust.seeding import make_generator
from medrobust.tasks import get_task

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
    return pert


@dataclass
class Outcome:
    """Per-sample results of one perturbation on the evaluated samples."""

    label: str
    kind: str
    name: str
    strength: float | None
    threat: dict[str, Any]
    pred: torch.Tensor
    probs: torch.Tensor
    delta_l2: torch.Tensor
    delta_linf: torch.Tensor
    delta_l0: torch.Tensor
    ssim: torch.Tensor
    psnr: torch.Tensor
    x_l2: torch.Tensor
    seconds: float = 0.0

    def summary(self, y: torch.Tensor, clean_pred: torch.Tensor, num_classes: int) -> dict[str, Any]:
        # Sizes of attacks are taken over their successful adversarial examples (correct before, wrong
        # after), as foolbox and the DeepFool paper report them; sizes of noise over all samples.
        if self.kind == "attack":
            keep = (clean_pred == y) & (self.pred != y)
        else:
            keep = torch.ones_like(y, dtype=torch.bool)

        def med(t: torch.Tensor) -> float:
            t = t[keep]
            return float(t.median()) if t.numel() else math.nan

        return {
            "perturbation": self.label,
            "kind": self.kind,
            "n": int(y.numel()),
            "accuracy": float(accuracy(self.pred, y)),
            "balanced_accuracy": float(balanced_accuracy(self.pred, y, num_classes)),
            "auc": float(auc_ovr(self.probs, y, num_classes)),
            "sensitivity": per_class_sensitivity(self.pred, y, num_classes).tolist(),
            "success_rate": float(attack_success_rate(clean_pred, self.pred, y)) if self.kind != "clean" else math.nan,
            "l2": med(self.delta_l2),
            "linf": med(self.delta_linf),
            "l0": med(self.delta_l0),
            "ssim": float(self.ssim[keep].mean()) if bool(keep.any()) else math.nan,
            "psnr": med(self.psnr),
            "rho": float((self.delta_l2 / self.x_l2.clamp_min(1e-12))[keep].mean()) if bool(keep.any()) else math.nan,
            "seconds": self.seconds,
            **{f"threat_{k}": v for k, v in self.threat.items()},
        }


def _threat(pert: Perturbation, built: Attack | Corruption, bounds) -> dict[str, Any]:
    info: dict[str, Any] = {"bounds": list(bounds)}
    if isinstance(built, Attack):
        info["norm"] = built.threat_norm
        info["eps"] = pert.strength
        for key in ("steps", "restarts", "step_size", "random_start"):
            if hasattr(built, key):
                info[key] = getattr(built, key)
    return info


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
) -> dict[str, Any]:
    """Clean and perturbed predictions for ``model`` on ``dataset``.

    For every attack, ``matched_noise=True`` adds Gaussian noise with the same per-sample L2 norm as that
    attack's perturbation (the paper's "adversarial vs noise of the same size" baseline). Returns a dict with
    ``y``, ``clean`` and ``outcomes`` (label -> Outcome) and ``rows`` (summary dicts in order).
    """
    if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
        raise ValueError(f"limit={limit!r} must be a whole number of samples >= 1 (or None for all)")
    device = torch.device(device)
    task = get_task(dataset.task)
    model = model.to(device).eval()
    bounds = model.bounds
    built = [(p, p.build()) for p in perturbations]
    collected: dict[str, dict[str, list[torch.Tensor]]] = {}
    meta: dict[str, tuple[str, str, float | None, dict[str, Any]]] = {}
    timings: dict[str, float] = {}
    ys: list[torch.Tensor] = []

    def record(label: str, kind: str, name: str, strength, threat, x, x_pert, elapsed: float) -> None:
        with torch.no_grad():
            logits = model(x_pert)
        if logits.shape[1] != dataset.num_classes:
            raise ValueError(
                f"the model returns {logits.shape[1]} outputs per sample but dataset {dataset.name or 'given'!r} has "
                f"{dataset.num_classes} classes {list(dataset.class_names)}"
            )
        if not bool(torch.isfinite(logits).all()):
            raise ValueError(
                f"the model returned NaN or infinite outputs under {label} (samples {batch.ids[0]!r}..); "
                "scores on such outputs would be meaningless (check the weights and the input range)"
            )
        delta = (x_pert - x).flatten(1)
        data = collected.setdefault(label, {})
        meta.setdefault(label, (kind, name, strength, threat))
        timings[label] = timings.get(label, 0.0) + elapsed
        for key, value in {
            "pred": logits.argmax(1),
            "probs": logits.softmax(1),
            "l2": flat_norm(delta, "l2"),
            "linf": flat_norm(delta, "linf"),
            "l0": flat_norm(delta, "l0"),
            "ssim": ssim(x, x_pert, data_range=bounds[1] - bounds[0]),
            "psnr": psnr(x, x_pert, data_range=bounds[1] - bounds[0]),
            "x_l2": flat_norm(x, "l2"),
        }.items():
            data.setdefault(key, []).append(value.detach().cpu())

    for b, batch in enumerate(iterate_batches(dataset, batch_size, limit)):
        x, y = batch.x.to(device), batch.y.to(device)
        ys.append(batch.y)
        record("clean", "clean", "clean", None, {"bounds": list(bounds)}, x, x, 0.0)
        for pert, obj in built:
            gen = make_generator(seed, pert.label, b, device=device)
            t0 = time.perf_counter()
            if isinstance(obj, Attack):
                x_adv = obj(model, task, x, y, eps=pert.strength, generator=gen)
            else:
                target = obj if pert.strength is None else obj.with_strength(pert.strength)
                x_adv = target(x, generator=gen, bounds=bounds)
            record(
                pert.label,
                pert.kind,
                pert.name,
                pert.strength,
                _threat(pert, obj, bounds),
                x,
                x_adv,
                time.perf_counter() - t0,
            )
            if matched_noise and isinstance(obj, Attack):
                noise = CORRUPTIONS.build("matched_noise", reference=(x_adv - x), norm="l2")
                x_noise = noise(
                    x, generator=make_generator(seed, "matched", pert.label, b, device=device), bounds=bounds
                )
                record(
                    f"matched_noise[{pert.label}]",
                    "corruption",
                    "matched_noise",
                    pert.strength,
                    {"bounds": list(bounds), "norm": "l2", "matched_to": pert.label},
                    x,
                    x_noise,
                    0.0,
                )
    y_all = torch.cat(ys)
    outcomes: dict[str, Outcome] = {}
    for label, data in collected.items():
        kind, name, strength, threat = meta[label]
        cat = {k: torch.cat(v) for k, v in data.items()}
        outcomes[label] = Outcome(
            label,
            kind,
            name,
            strength,
            threat,
            cat["pred"],
            cat["probs"],
            cat["l2"],
            cat["linf"],
            cat["l0"],
            cat["ssim"],
            cat["psnr"],
            cat["x_l2"],
            timings.get(label, 0.0),
        )
    clean_pred = outcomes["clean"].pred
    rows = [o.summary(y_all, clean_pred, dataset.num_classes) for o in outcomes.values()]
    return {"y": y_all, "clean": outcomes["clean"], "outcomes": outcomes, "rows": rows}
