"""Gaussian blur: defocus, motion-free smoothing, low-resolution acquisition."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from medrobust.corruptions._checks import check_range
from medrobust.corruptions.base import Corruption
from medrobust.types import Bounds


@dataclass(frozen=True)
class GaussianBlur(Corruption):
    """Isotropic Gaussian smoothing over all spatial axes, channels filtered independently.

    Works on (N, C, L), (N, C, H, W) and (N, C, D, H, W). Uses MONAI's separable filtering with the
    error-function discretised Gaussian (``monai.networks.layers.gaussian_1d``, renormalised to sum 1) and
    replicate padding at the borders, so a constant image stays constant (MONAI's ``GaussianFilter`` pads
    with zeros, which darkens the borders).

    sigma: standard deviation in pixels (voxels), >= 0. sigma=0 returns x exactly.
    truncated: kernel half-width in units of sigma (> 0).
    """

    sigma: float = 1.0
    truncated: float = 4.0
    strength_param: ClassVar[str | None] = "sigma"

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_range(name, "sigma", self.sigma)
        if check_range(name, "truncated", self.truncated) == 0.0:
            raise ValueError(f"{name}: truncated={self.truncated!r} must be a finite number > 0")

    def apply(self, x: torch.Tensor, *, generator: torch.Generator, bounds: Bounds) -> torch.Tensor:
        if float(self.sigma) == 0.0:
            return x.clone()
        spatial_dims = x.dim() - 2
        if spatial_dims > 3:
            raise ValueError(f"GaussianBlur supports 1 to 3 spatial dimensions, got x of shape {tuple(x.shape)}")
        # MONAI on first use: `import medrobust` stays light
        from monai.networks.layers import gaussian_1d, separable_filtering

        kernel = gaussian_1d(torch.tensor(float(self.sigma)), truncated=float(self.truncated), approx="erf")
        kernel = kernel.to(device=x.device, dtype=x.dtype)
        kernel = kernel / kernel.sum()
        return separable_filtering(x, [kernel] * spatial_dims, mode="replicate")
