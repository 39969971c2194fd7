"""Contrast change: intensities stretched or squeezed around each image's mean (windowing, exposure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from medrobust.corruptions._checks import check_range
from medrobust.corruptions.base import Corruption
from medrobust.types import Bounds


@dataclass(frozen=True)
class Contrast(Corruption):
    """(x - mean) * factor + mean, the mean taken per image over channels and space, then clipped to bounds.

    factor: >= 0. factor=1 returns x exactly; factor=0 gives a constant image at the mean; factor < 1 lowers
    contrast, factor > 1 raises it (with clipping at the bounds).
    """

    factor: float = 0.5
    strength_param: ClassVar[str | None] = "factor"

    def __post_init__(self) -> None:
        check_range(type(self).__name__, "factor", self.factor)

    def apply(self, x: torch.Tensor, *, generator: torch.Generator, bounds: Bounds) -> torch.Tensor:
        if float(self.factor) == 1.0:
            return x.clone()
        mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
        return (x - mean) * float(self.factor) + mean
