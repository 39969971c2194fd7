"""Corruptions: realistic noise, outliers, blur and contrast changes, MRI artifacts, plus noise matched to an
attack's size.

Each is a frozen dataclass of parameters called as ``corruption(x, *, generator=None, bounds=(0, 1))`` (see
``base.Corruption``), registered by name in ``CORRUPTIONS``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from medrobust._lazy import lazy_getattr
from medrobust.corruptions.base import Corruption
from medrobust.registry import Registry
from medrobust.types import Bounds

if TYPE_CHECKING:
    from medrobust.corruptions.blur import GaussianBlur
    from medrobust.corruptions.contrast import Contrast
    from medrobust.corruptions.matched_noise import MatchedNoise
    from medrobust.corruptions.mri import MRIArtifact
    from medrobust.corruptions.mri_kspace import Ghosting, GibbsRinging, Spike
    from medrobust.corruptions.mri_motion import Downsample, Motion
    from medrobust.corruptions.mri_noise import BiasField, RicianNoise
    from medrobust.corruptions.noise import GaussianNoise
    from medrobust.corruptions.salt_pepper import SaltPepper

# class -> its module; each module is imported when the class is first used (built, described or named)
_CLASSES = {
    "GaussianBlur": "medrobust.corruptions.blur",
    "Contrast": "medrobust.corruptions.contrast",
    "MatchedNoise": "medrobust.corruptions.matched_noise",
    "MRIArtifact": "medrobust.corruptions.mri",
    "Ghosting": "medrobust.corruptions.mri_kspace",
    "GibbsRinging": "medrobust.corruptions.mri_kspace",
    "Spike": "medrobust.corruptions.mri_kspace",
    "Downsample": "medrobust.corruptions.mri_motion",
    "Motion": "medrobust.corruptions.mri_motion",
    "BiasField": "medrobust.corruptions.mri_noise",
    "RicianNoise": "medrobust.corruptions.mri_noise",
    "GaussianNoise": "medrobust.corruptions.noise",
    "SaltPepper": "medrobust.corruptions.salt_pepper",
}
__getattr__ = lazy_getattr(__name__, _CLASSES)

CORRUPTIONS: Registry[type[Corruption]] = Registry("corruption")
for _name, _cls in [
    ("gaussian_noise", "GaussianNoise"),
    ("salt_pepper", "SaltPepper"),
    ("gaussian_blur", "GaussianBlur"),
    ("contrast", "Contrast"),
    ("matched_noise", "MatchedNoise"),
    ("rician_noise", "RicianNoise"),
    ("bias_field", "BiasField"),
    ("ghosting", "Ghosting"),
    ("motion", "Motion"),
    ("spike", "Spike"),
    ("gibbs", "GibbsRinging"),
    ("downsample", "Downsample"),
]:
    CORRUPTIONS.register_lazy(_name, f"{_CLASSES[_cls]}:{_cls}")
del _name, _cls


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
