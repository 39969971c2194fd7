"""Salt-and-pepper outliers: a fraction of pixel locations set to the bright or dark end of the input range."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from medrobust.corruptions._checks import check_range
from medrobust.corruptions.base import Corruption
from medrobust.seeding import rand
from medrobust.types import Bounds


@dataclass(frozen=True)
class SaltPepper(Corruption):
    """Impulse noise (dead/hot pixels, spikes).

    amount: fraction of pixel locations turned into outliers, in [0, 1]. Exactly ``round(amount * P)`` of the
        P spatial locations of each image are chosen (uniformly, without replacement), so the L0 size of the
        corruption is fixed per image. All channels of a location change together (an RGB pixel becomes white
        or black). amount=0 returns x exactly.
    salt_ratio: probability, in [0, 1], that a chosen location becomes ``bounds[1]`` (salt) rather than
        ``bounds[0]`` (pepper).
    """

    amount: float = 0.05
    salt_ratio: float = 0.5
    strength_param: ClassVar[str | None] = "amount"

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_range(name, "amount", self.amount, 0.0, 1.0)
        check_range(name, "salt_ratio", self.salt_ratio, 0.0, 1.0)

    def apply(self, x: torch.Tensor, *, generator: torch.Generator, bounds: Bounds) -> torch.Tensor:
        n, spatial = x.shape[0], x.shape[2:]
        locations = int(torch.Size(spatial).numel())
        k = int(round(float(self.amount) * locations))
        if k == 0:
            return x.clone()
        # Random scores per location; the k smallest per image are the outliers (sampling without replacement).
        scores = rand((n, locations), x, generator)
        chosen = torch.zeros((n, locations), dtype=torch.bool, device=x.device)
        chosen.scatter_(1, scores.topk(k, dim=1, largest=False).indices, True)
        salt = rand((n, locations), x, generator) < float(self.salt_ratio)
        shape = (n, 1, *spatial)
        values = torch.where(salt, torch.full_like(scores, bounds[1]), torch.full_like(scores, bounds[0]))
        return torch.where(chosen.view(shape), values.view(shape), x)
