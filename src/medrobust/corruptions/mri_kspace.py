"""MRI k-space artifacts: ghosting and spikes (TorchIO), Gibbs ringing (MONAI).

Each edits the centred Fourier transform of the signal ``x - low`` and transforms back (real part).
TorchIO computes in float32, so a float64 input comes back with float32 precision (its dtype is kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from medrobust.corruptions._checks import check_range
from medrobust.corruptions.mri import (
    MRIArtifact,
    Params,
    check_axis,
    check_int_range,
    integers,
    per_volume,
    pick_axes,
    spatial_dims,
    to_tio_axis,
    uniform,
)
from medrobust.types import Bounds


@dataclass(frozen=True)
class Ghosting(MRIArtifact):
    """Discrete ghosts along the phase-encode axis from periodic motion (pulsation, breathing).

    Every ``num_ghosts``-th k-space plane across ``axis`` is scaled by (1 - intensity), the centre plane kept, so
    ``num_ghosts`` faint copies of the object appear shifted by multiples of size / num_ghosts along that axis
    (TorchIO ``Ghosting``, the deterministic twin of ``RandomGhosting``, restore=None).

    intensity: strength relative to the k-space maximum, in [0, 1]; 0 returns x exactly, 1 removes those planes.
        Graded severities: 0.1, 0.25, 0.5, 0.75, 1.0. The artifact is linear in intensity.
    num_ghosts: (min, max), integers with 2 <= min <= max: the number of ghosts is drawn per sample from it.
    axis: spatial axis of x (0 = first spatial axis) the ghosts run along, or None to draw it per sample.

    ``draw`` returns ``{"intensity", "num_ghosts": [per sample], "axis": [per sample]}``.
    """

    intensity: float = 0.5
    num_ghosts: tuple[int, int] = (4, 10)
    axis: int | None = None
    strength_param: ClassVar[str | None] = "intensity"
    severities: ClassVar[tuple[float, ...]] = (0.1, 0.25, 0.5, 0.75, 1.0)

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_range(name, "intensity", self.intensity, 0.0, 1.0)
        try:
            low, high = self.num_ghosts
        except (TypeError, ValueError):
            raise ValueError(f"{name}: num_ghosts={self.num_ghosts!r} must be a pair (min, max) of integers") from None
        low = check_int_range(name, "num_ghosts[0]", low, 2)
        high = check_int_range(name, "num_ghosts[1]", high, low)
        object.__setattr__(self, "num_ghosts", (low, high))
        check_axis(name, self.axis)

    def _draw(self, x: torch.Tensor, generator: torch.Generator) -> Params:
        n = x.shape[0]
        return {
            "num_ghosts": integers(generator, n, *self.num_ghosts),
            "axis": pick_axes(self.axis, n, spatial_dims(x), generator, type(self).__name__),
        }

    def _render(self, x: torch.Tensor, params: Params, bounds: Bounds) -> torch.Tensor:
        import torchio as tio  # imported on use: it adds a noticeable start-up time to the CLI

        dims = spatial_dims(x)

        def ghost(i: int, volume: torch.Tensor) -> torch.Tensor:
            axis = to_tio_axis(int(params["axis"][i]), dims)
            transform = tio.Ghosting(
                num_ghosts=int(params["num_ghosts"][i]), axis=axis, intensity=float(params["intensity"]), restore=None
            )
            return transform(volume)

        return per_volume(x - bounds[0], ghost) + bounds[0]


@dataclass(frozen=True)
class Spike(MRIArtifact):
    """Spike (herringbone, corduroy) artifact: bright k-space points from electrical discharges, seen as stripes.

    ``num_spikes`` k-space positions are drawn uniformly per sample and ``intensity`` times the k-space maximum is
    added at each (TorchIO ``Spike``, the deterministic twin of ``RandomSpike``). One spike adds a plane wave of
    amplitude about intensity * mean(x - low) across the image.

    intensity: spike size relative to the k-space maximum, >= 0 (TorchIO's RandomSpike draws 1 to 3).
        intensity=0 returns x exactly. Graded severities: 0.05, 0.1, 0.25, 0.5, 1.0. Linear in intensity.
    num_spikes: spikes per sample, integer >= 1.

    ``draw`` returns ``{"intensity", "positions": [per sample: num_spikes lists of one fraction in [0, 1) per
    spatial axis of x]}``.
    """

    intensity: float = 0.25
    num_spikes: int = 1
    strength_param: ClassVar[str | None] = "intensity"
    severities: ClassVar[tuple[float, ...]] = (0.05, 0.1, 0.25, 0.5, 1.0)

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_range(name, "intensity", self.intensity)
        check_int_range(name, "num_spikes", self.num_spikes, 1)

    def _draw(self, x: torch.Tensor, generator: torch.Generator) -> Params:
        positions = uniform(generator, (x.shape[0], self.num_spikes, spatial_dims(x)))
        return {"positions": positions.tolist()}

    def _render(self, x: torch.Tensor, params: Params, bounds: Bounds) -> torch.Tensor:
        import torchio as tio  # imported on use: it adds a noticeable start-up time to the CLI

        dims = spatial_dims(x)

        def spike(i: int, volume: torch.Tensor) -> torch.Tensor:
            positions = np.asarray(params["positions"][i], dtype=np.float64).reshape(-1, dims)
            if dims == 2:  # the flat first axis of a 2D slice laid as (C, 1, H, W)
                positions = np.concatenate([np.zeros((len(positions), 1)), positions], axis=1)
            return tio.Spike(spikes_positions=positions, intensity=float(params["intensity"]))(volume)

        return per_volume(x - bounds[0], spike) + bounds[0]


@dataclass(frozen=True)
class GibbsRinging(MRIArtifact):
    """Gibbs ringing (truncation artifact): k-space is cut to a disc/ball, so edges ring and fine detail blurs.

    MONAI ``GibbsNoise``: k-space outside the radius (1 - alpha) * max(size) * sqrt(2) / 2 around the centre is
    zeroed, over all spatial axes, for every channel. Deterministic: the generator is not used (and ``draw``
    returns only ``{"alpha"}``). Vectorised over the batch.

    alpha: in [0, 1]. alpha=0 returns x exactly; as alpha -> 1 only the lowest frequencies remain (MONAI's
        alpha=1 keeps at most the mean). Graded severities: 0.2, 0.35, 0.5, 0.65, 0.8.
    """

    alpha: float = 0.5
    strength_param: ClassVar[str | None] = "alpha"
    severities: ClassVar[tuple[float, ...]] = (0.2, 0.35, 0.5, 0.65, 0.8)

    def __post_init__(self) -> None:
        check_range(type(self).__name__, "alpha", self.alpha, 0.0, 1.0)

    def _render(self, x: torch.Tensor, params: Params, bounds: Bounds) -> torch.Tensor:
        from monai.transforms import GibbsNoise
        from monai.utils import convert_to_tensor

        # GibbsNoise reads its first axis as channels and transforms the rest: fold the batch into it.
        flat = (x - bounds[0]).reshape(-1, *x.shape[2:])
        out = convert_to_tensor(GibbsNoise(alpha=float(params["alpha"]))(flat), track_meta=False)
        return out.reshape(x.shape).to(dtype=x.dtype) + bounds[0]
