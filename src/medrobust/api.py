"""The public functions other tools call. Keep names and signatures stable."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medrobust.attacks import ATTACKS
from medrobust.corruptions import CORRUPTIONS
from medrobust.data import DATASETS
from medrobust.models.wrapper import Model, as_model
from medrobust.models.zoo import MODELS
from medrobust.tasks import Task
from medrobust.types import Bounds, check_bounds

DEFAULT_BOUNDS: Bounds = (0.0, 1.0)


def attack(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    task: str | Task = "classification",
    bounds: Bounds = DEFAULT_BOUNDS,
    generator: torch.Generator | None = None,
    **params: Any,
) -> torch.Tensor:
    """Adversarial inputs for ``x`` (N, C, *spatial) with labels ``y``, same shape/dtype/device, inside bounds.

    ``model`` is any ``nn.Module`` mapping x to logits (or a :class:`medrobust.Model`, whose own bounds and
    normalisation apply). It is left in the mode and gradient state it came in. ``params`` are the attack's
    hyperparameters plus ``eps`` (the budget in input units; required for fgsm and pgd, optional for minimal
    attacks, whose perturbation is then clipped to it). See ``list_attacks()``.

    >>> x_adv = attack("pgd", net, x, y, eps=8/255, steps=10, norm="linf")  # doctest: +SKIP
    """
    eps = params.pop("eps", None)
    algorithm = ATTACKS.build(name, **params)
    if isinstance(model, Model):
        if check_bounds(bounds) not in (DEFAULT_BOUNDS, model.bounds):
            raise ValueError(f"bounds={bounds!r} disagree with the model's own bounds {model.bounds!r}")
        wrapped = model
    else:
        wrapped = as_model(model, bounds)
    return algorithm(wrapped, task, x, y, eps=eps, generator=generator)


def corrupt(name: str, x: torch.Tensor, *, generator: torch.Generator | None = None, **params: Any) -> torch.Tensor:
    """Apply a registered corruption to ``x`` (N, C, *spatial); ``bounds`` (default (0, 1)) may be passed in
    ``params``. See ``list_corruptions()``.

    >>> corrupt("gaussian_noise", x, sigma=0.05)  # doctest: +SKIP
    """
    bounds = params.pop("bounds", DEFAULT_BOUNDS)
    return CORRUPTIONS.build(name, **params)(x, generator=generator, bounds=bounds)


def list_attacks() -> list[str]:
    return ATTACKS.names()


def list_corruptions() -> list[str]:
    return CORRUPTIONS.names()


def list_models() -> list[str]:
    return MODELS.names()


def list_datasets() -> list[str]:
    return DATASETS.names()
