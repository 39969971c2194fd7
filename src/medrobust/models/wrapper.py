"""The Model wrapper: a network plus the input bounds and normalisation it expects.

Attacks see the wrapper, which takes inputs in the units the user's data come in (e.g. [0, 1] RGB) and applies
normalisation inside forward. So every eps is in input units and every adversarial input stays inside bounds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from medrobust.types import Bounds, check_bounds


class Model(nn.Module):
    """Wrap ``net`` (normalised input -> logits) with input ``bounds`` and per-channel ``mean``/``std``.

    forward(x): x of shape (N, C, *spatial) in ``bounds`` -> logits (N, K[, *spatial]).
    """

    mean: torch.Tensor | None
    std: torch.Tensor | None

    def __init__(
        self,
        net: nn.Module,
        *,
        bounds: Bounds = (0.0, 1.0),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.bounds = check_bounds(bounds)
        if (mean is None) != (std is None):
            raise ValueError("mean and std must be given together (one value per input channel each)")
        if std is not None and any(float(s) <= 0 for s in std):
            raise ValueError(f"std={list(std)!r} must be positive")
        if mean is not None and std is not None and len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        self.register_buffer("mean", None if mean is None else torch.tensor([float(m) for m in mean]))
        self.register_buffer("std", None if std is None else torch.tensor([float(s) for s in std]))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean, self.std
        if mean is None:
            return x
        assert std is not None  # __init__ registers mean and std together
        if x.shape[1] != mean.numel():
            raise ValueError(f"input has {x.shape[1]} channels but the model's normalisation has {mean.numel()}")
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - mean.to(x).view(shape)) / std.to(x).view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalise(x))


def as_model(model: nn.Module, bounds: Bounds | None = None) -> Model:
    """Return ``model`` as a Model: a Model passes through (bounds must agree if given); any other module is
    wrapped with ``bounds`` (default (0, 1)) and no normalisation."""
    if isinstance(model, Model):
        if bounds is not None and check_bounds(bounds) != model.bounds:
            raise ValueError(f"bounds={bounds!r} disagree with the model's own bounds {model.bounds!r}")
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module mapping inputs to logits, got {type(model).__name__}")
    return Model(model, bounds=bounds if bounds is not None else (0.0, 1.0))


@contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluate ``model`` in eval mode with parameter gradients off; restore mode and requires_grad after."""
    was_training = model.training
    modes = {m: m.training for m in model.modules()}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode
        model.training = was_training
        for p, flag in flags:
            p.requires_grad_(flag)
