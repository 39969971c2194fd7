"""What every corruption shares.

A corruption is a frozen dataclass of parameters called as ``corruption(x, *, generator=None, bounds=(0, 1))``
and returning a tensor like x, inside bounds. ``strength_param`` names the parameter that sets its severity
(sigma, amount, factor), so the runner can sweep it the way it sweeps an attack's eps; ``perturb`` gives the
attack call signature for that sweep.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from medrobust.seeding import generator_for
from medrobust.types import Bounds, check_bounds


@dataclass(frozen=True)
class Corruption(ABC):
    strength_param: ClassVar[str | None] = None

    def __call__(
        self, x: torch.Tensor, *, generator: torch.Generator | None = None, bounds: Bounds = (0.0, 1.0)
    ) -> torch.Tensor:
        """x: floating tensor (N, C, *spatial) inside ``bounds``. Returns a tensor of the same shape, dtype,
        device, inside bounds; deterministic given ``generator``."""
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
        if x.dim() < 3:
            raise ValueError(f"x must have shape (N, C, *spatial), got {tuple(x.shape)}")
        bounds = check_bounds(bounds)
        gen = generator_for(x, generator)
        out = self.apply(x.detach(), generator=gen, bounds=bounds)
        return out.clamp(bounds[0], bounds[1]).to(dtype=x.dtype)

    @abstractmethod
    def apply(self, x: torch.Tensor, *, generator: torch.Generator, bounds: Bounds) -> torch.Tensor:
        """The corruption itself."""

    def with_strength(self, strength: float) -> Corruption:
        if self.strength_param is None:
            raise ValueError(f"{type(self).__name__} has no strength parameter to sweep")
        return replace(self, **{self.strength_param: strength})
