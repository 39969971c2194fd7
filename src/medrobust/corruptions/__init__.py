"""Corruptions: realistic noise, outliers, blur and contrast changes, MRI artifacts, plus noise matched to an
attack's size.

Each is a frozen dataclass of parameters called as ``corruption(x, *, generator=None, bounds=(0, 1))`` (see
``base.Corruption``), registered by name in ``CORRUPTIONS``.
"""

from __future__ import annotations

from typing import Any

import torch

from medrobust.corruptions.base import Corruption
from medrobust.corruptions.blur import GaussianBlur
from medrobust.corruptions.contrast import Contrast
from medrobust.corruptions.matched_noise import MatchedNoise
from medrobust.corruptions.mri import MRIArtifact
from medrobust.corruptions.mri_kspace import Ghosting, GibbsRinging, Spike
from medrobust.corruptions.mri_motion import Downsample, Motion
from medrobust.corruptions.mri_noise import BiasField, RicianNoise
from medrobust.corruptions.noise import GaussianNoise
from medrobust.corruptions.salt_pepper import SaltPepper
from medrobust.registry import Registry
from medrobust.types import Bounds

CORRUPTIONS: Registry[type[Corruption]] = Registry("corruption")
CORRUPTIONS.register("gaussian_noise")(GaussianNoise)
CORRUPTIONS.register("salt_pepper")(SaltPepper)
CORRUPTIONS.register("gaussian_blur")(GaussianBlur)
CORRUPTIONS.register("contrast")(Contrast)
CORRUPTIONS.register("matched_noise")(MatchedNoise)
CORRUPTIONS.register("rician_noise")(RicianNoise)
CORRUPTIONS.register("bias_field")(BiasField)
CORRUPTIONS.register("ghosting")(Ghosting)
CORRUPTIONS.register("motion")(Motion)
CORRUPTIONS.register("spike")(Spike)
CORRUPTIONS.register("gibbs")(GibbsRinging)
CORRUPTIONS.register("downsample")(Downsample)


def list_corruptions() -> list[str]:
    """Registered corruption names, sorted."""
    return CORRUPTIONS.names()


def corrupt(
    name: str,
    x: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    bounds: Bounds = (0.0, 1.0),
    **params: Any,
) -> torch.Tensor:
    """Build the corruption ``name`` with ``params`` and apply it to x (N, C, *spatial) inside ``bounds``.

    >>> corrupt("gaussian_noise", torch.full((1, 1, 4, 4), 0.5), sigma=0.0).unique().tolist()
    [0.5]
    """
    return CORRUPTIONS.build(name, **params)(x, generator=generator, bounds=bounds)


__all__ = [
    "CORRUPTIONS",
    "BiasField",
    "Contrast",
    "Corruption",
    "Downsample",
    "GaussianBlur",
    "GaussianNoise",
    "Ghosting",
    "GibbsRinging",
    "MRIArtifact",
    "MatchedNoise",
    "Motion",
    "RicianNoise",
    "SaltPepper",
    "Spike",
    "corrupt",
    "list_corruptions",
]
