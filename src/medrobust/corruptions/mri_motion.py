"""MRI resampling artifacts: rigid motion during the acquisition and low (anisotropic) resolution, via TorchIO.

TorchIO resamples with SimpleITK in float32, so a float64 input comes back with float32 precision (its dtype is
kept). Voxels are taken as 1 mm, so translations are in voxels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, cast

import numpy as np
import torch

from medrobust.corruptions._checks import check_range
from medrobust.corruptions.mri import (
    MRIArtifact,
    Params,
    check_axis,
    check_int_range,
    per_volume,
    pick_axes,
    spatial_dims,
    to_tio_axis,
    uniform,
)
from medrobust.types import Bounds


@dataclass(frozen=True)
class Motion(MRIArtifact):
    """Rigid head motion during the acquisition (Shaw et al., MIDL 2019), TorchIO ``Motion``.

    The subject takes ``num_transforms`` rigid poses; k-space along the last spatial axis of x is filled in
    segments, each from the image at one pose (the segment holding the k-space centre from the original pose),
    giving ghosted, smeared edges. Per sample, rotation angles are drawn from
    U(-severity * max_degrees, severity * max_degrees) and translations from
    U(-severity * max_translation, severity * max_translation) voxels, about/along every spatial axis for 3D and
    in-plane for 2D; the motion times are drawn as in TorchIO's ``RandomMotion``.

    severity: >= 0, scales the motion; 0 returns x exactly; 1 is TorchIO's default (10 degrees, 10 voxels).
        Graded severities: 0.1, 0.2, 0.35, 0.5, 0.75.
    max_degrees, max_translation: the ranges at severity 1 (>= 0).
    num_transforms: number of movements, integer >= 1.

    ``draw`` returns ``{"severity", "degrees", "translation", "times"}`` per sample: degrees a list of
    num_transforms rows (one angle for 2D, rotation about spatial axes 0, 1, 2 for 3D), translation rows
    (one value per spatial axis, voxels), times in (0, 1) (fraction of k-space acquired before each movement).
    """

    severity: float = 0.5
    max_degrees: float = 10.0
    max_translation: float = 10.0
    num_transforms: int = 2
    strength_param: ClassVar[str | None] = "severity"
    severities: ClassVar[tuple[float, ...]] = (0.1, 0.2, 0.35, 0.5, 0.75)

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_range(name, "severity", self.severity)
        check_range(name, "max_degrees", self.max_degrees, 0.0, 180.0)
        check_range(name, "max_translation", self.max_translation)
        check_int_range(name, "num_transforms", self.num_transforms, 1)

    def _draw(self, x: torch.Tensor, generator: torch.Generator) -> Params:
        n, dims, moves = x.shape[0], spatial_dims(x), self.num_transforms
        angles = 1 if dims == 2 else 3
        degrees = uniform(generator, (n, moves, angles), -1.0, 1.0) * float(self.severity * self.max_degrees)
        translation = uniform(generator, (n, moves, dims), -1.0, 1.0) * float(self.severity * self.max_translation)
        # TorchIO's RandomMotion times: evenly spaced in (0, 1), each jittered by up to 30% of the spacing.
        step = 1.0 / (moves + 1)
        times = step * torch.arange(1, moves + 1, dtype=torch.float64) + uniform(
            generator, (n, moves), -0.3 * step, 0.3 * step
        )
        return {"degrees": degrees.tolist(), "translation": translation.tolist(), "times": times.tolist()}

    def _render(self, x: torch.Tensor, params: Params, bounds: Bounds) -> torch.Tensor:
        import torchio as tio  # imported on use: it adds a noticeable start-up time to the CLI

        dims = spatial_dims(x)

        def move(i: int, volume: torch.Tensor) -> torch.Tensor:
            degrees = np.asarray(params["degrees"][i], dtype=np.float64).reshape(-1, 1 if dims == 2 else 3)
            translation = np.asarray(params["translation"][i], dtype=np.float64).reshape(-1, dims)
            if dims == 2:  # a slice is laid as (C, 1, H, W): rotate about the flat axis, translate in-plane
                zeros = np.zeros((len(degrees), 2))
                degrees = np.concatenate([degrees, zeros], axis=1)
                translation = np.concatenate([zeros[:, :1], translation], axis=1)
            transform = tio.Motion(
                degrees=degrees,
                translation=translation,
                times=np.asarray(params["times"][i], dtype=np.float64),
                image_interpolation="linear",
            )
            return transform(volume)

        return per_volume(x - bounds[0], move) + bounds[0]


@dataclass(frozen=True)
class Downsample(MRIArtifact):
    """Low through-plane resolution (thick slices): downsample along one axis, then resample back.

    The deterministic equivalent of TorchIO ``RandomAnisotropy`` (Billot et al. 2020): TorchIO ``Resample`` to a
    spacing ``factor`` times coarser along the axis with nearest-neighbour sampling, then back to the original grid
    with linear interpolation.

    factor: downsampling factor, >= 1; factor=1 returns x exactly. Graded severities: 1.5, 2, 3, 4, 6.
    axis: spatial axis of x (0 = first spatial axis) to downsample, or None to draw it per sample.

    ``draw`` returns ``{"factor", "axis": [per sample]}``.
    """

    factor: float = 2.0
    axis: int | None = None
    identity_strength: ClassVar[float] = 1.0
    strength_param: ClassVar[str | None] = "factor"
    severities: ClassVar[tuple[float, ...]] = (1.5, 2.0, 3.0, 4.0, 6.0)

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_range(name, "factor", self.factor, 1.0)
        check_axis(name, self.axis)

    def _draw(self, x: torch.Tensor, generator: torch.Generator) -> Params:
        return {"axis": pick_axes(self.axis, x.shape[0], spatial_dims(x), generator, type(self).__name__)}

    def _render(self, x: torch.Tensor, params: Params, bounds: Bounds) -> torch.Tensor:
        import torchio as tio  # imported on use: it adds a noticeable start-up time to the CLI

        dims = spatial_dims(x)

        def resample(i: int, volume: torch.Tensor) -> torch.Tensor:
            spacing = [1.0, 1.0, 1.0]
            spacing[to_tio_axis(int(params["axis"][i]), dims)] = float(params["factor"])
            # A Subject keeps the coarse image's affine between the two steps (a bare tensor would lose it).
            subject = tio.Subject(image=tio.ScalarImage(tensor=volume))
            coarse = tio.Resample(target=(spacing[0], spacing[1], spacing[2]), image_interpolation="nearest")(subject)
            fine = tio.Resample(target=(tuple(volume.shape[1:]), np.eye(4)), image_interpolation="linear")(coarse)
            return cast(tio.Image, fine["image"]).data

        return per_volume(x - bounds[0], resample) + bounds[0]
