"""Additive Gaussian noise: the simplest model of acquisition noise (sensor/thermal noise)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from medrobust.corruptions._checks import check_range
from medrobust.corruptions.base import Corruption
from medrobust.seeding import randn
from medrobust.types import Bounds


@dataclass(frozen=True)
class GaussianNoise(Corruption):
    """x + sigma * N(0, 1), drawn independently per feature, then clipped to bounds.

    sigma: standard deviation in input units (e.g. 0.05 on [0, 1] images), >= 0. sigma=0 returns x exactly.
    Clipping makes the realised std near the bounds smaller than sigma.
    """

    sigma: float = 0.05
    strength_param: ClassVar[str | None] = "sigma"

    def __post_init__(self) -> None:
        check_range(type(self).__name__, "sigma", self.sigma)

    def apply(self, x: torch.Tensor, *, generator: torch.Generator, bounds: Bounds) -> torch.Tensor:
        if float(self.sigma) == 0.0:
            return x.clone()
        return x + float(self.sigma) * randn(x.shape, x, generator)
