"""What the MRI artifacts share: draw the random parameters, record them, apply them with a deterministic twin.

The artifacts themselves (``mri_noise``, ``mri_kspace``, ``mri_motion``) call MONAI or TorchIO transforms; this
module holds the TorchIO habit they follow. ``draw(x, generator)`` returns a plain dict of every parameter the
corruption uses (JSON-friendly lists and numbers, plus the strength value itself); ``replay(x, params, bounds=)``
applies exactly those parameters without any randomness. ``corruption(x, generator=g)`` is
``replay(x, draw(x, g))``, so a stored dict reproduces a result. TorchIO's Random* classes draw from torch's
global RNG, so they are never called: parameters come only from the generator given.

Inputs are 2D slices (N, C, H, W) or 3D volumes (N, C, D, H, W) inside ``bounds = (low, high)``. The MR signal is
taken to be ``x - low`` (magnitude images have a zero background at the lower bound): multiplicative and k-space
artifacts act on it, and ``low`` is added back before clipping to bounds.

Random draws are unit values scaled by the strength parameter, so the same generator state gives the same random
"direction" at every severity and a severity sweep with a fixed seed changes only the size of the artifact.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from medrobust.corruptions.base import Corruption
from medrobust.types import Bounds, check_bounds

Params = dict[str, Any]


@dataclass(frozen=True)
class MRIArtifact(Corruption):
    """Base of the MRI artifacts: ``apply`` = ``replay(draw(...))``; the strength value ``identity_strength``
    (0 for most, 1 for a resampling factor) returns the input exactly.

    ``severities`` lists five graded strengths (mild to severe, as in ImageNet-C) for sweeps and reports.
    """

    identity_strength: ClassVar[float] = 0.0
    severities: ClassVar[tuple[float, ...]] = ()

    def draw(self, x: torch.Tensor, generator: torch.Generator) -> Params:
        """Draw (from ``generator`` only) and return every parameter the corruption of x uses."""
        spatial_dims(x)
        name = self._strength_name()
        return {name: float(getattr(self, name)), **self._draw(x, generator)}

    def replay(self, x: torch.Tensor, params: Params, *, bounds: Bounds = (0.0, 1.0)) -> torch.Tensor:
        """Apply recorded ``params`` (from ``draw``) to x deterministically; same shape, dtype, device, in bounds."""
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
        bounds = check_bounds(bounds)
        return self._replay(x.detach(), params, bounds).clamp(bounds[0], bounds[1]).to(dtype=x.dtype)

    def apply(self, x: torch.Tensor, *, generator: torch.Generator, bounds: Bounds) -> torch.Tensor:
        if float(getattr(self, self._strength_name())) == self.identity_strength:
            return x.clone()
        return self._replay(x, self.draw(x, generator), bounds)

    def _replay(self, x: torch.Tensor, params: Params, bounds: Bounds) -> torch.Tensor:
        spatial_dims(x)
        if float(params[self._strength_name()]) == self.identity_strength:
            return x.clone()
        return self._render(x, params, bounds)

    def _strength_name(self) -> str:
        """``strength_param``, which every MRI artifact sets."""
        name = self.strength_param
        if name is None:
            raise TypeError(f"{type(self).__name__} must set strength_param")
        return name

    def _draw(self, x: torch.Tensor, generator: torch.Generator) -> Params:
        """The random parameters (the strength value is added by ``draw``); none by default."""
        return {}

    @abstractmethod
    def _render(self, x: torch.Tensor, params: Params, bounds: Bounds) -> torch.Tensor:
        """The deterministic artifact for non-degenerate params; the result is clipped by the caller."""


def spatial_dims(x: torch.Tensor) -> int:
    """2 for (N, C, H, W), 3 for (N, C, D, H, W); ValueError otherwise (the MRI artifacts are 2D/3D only)."""
    if x.dim() not in (4, 5):
        raise ValueError(
            f"MRI artifacts need 2D slices (N, C, H, W) or 3D volumes (N, C, D, H, W), got shape {tuple(x.shape)}"
        )
    return x.dim() - 2


def uniform(generator: torch.Generator, shape: tuple[int, ...], low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """U(low, high) draws as a float64 CPU tensor (parameters, not data: they are recorded as Python numbers)."""
    u = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64).cpu()
    return low + (high - low) * u


def integers(generator: torch.Generator, n: int, low: int, high: int) -> list[int]:
    """n integers drawn uniformly from {low, ..., high}."""
    return torch.randint(low, high + 1, (n,), generator=generator, device=generator.device).cpu().tolist()


def seed(generator: torch.Generator) -> int:
    """A seed for a library that keeps its own RNG (MONAI's numpy RandomState), drawn from ``generator``."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))


def to_tio_axis(axis: int, dims: int) -> int:
    """An axis of x's spatial dims as an axis of the TorchIO 4D tensor built by ``per_volume``."""
    return axis + 1 if dims == 2 else axis


def per_volume(x: torch.Tensor, fn: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply ``fn(i, volume)`` to each sample i as a TorchIO tensor (C, X, Y, Z), CPU float32, and restack.

    TorchIO transforms are per volume, so this loops over the batch (the one place a per-sample loop is the
    design, not a bug). A 2D slice (C, H, W) becomes (C, 1, H, W): the singleton axis goes first because
    TorchIO's Motion combines k-space segments along the last axis, which must be an in-plane one.
    """
    dims = spatial_dims(x)
    out = []
    # Every TorchIO transform call draws torch.rand(1) from the global RNG for its probability p, even at p=1;
    # the result does not depend on it, but the caller's global RNG state must not move.
    with torch.random.fork_rng(devices=[]):
        for i in range(x.shape[0]):
            volume = x[i].detach().to(device="cpu", dtype=torch.float32)
            volume = volume.unsqueeze(1) if dims == 2 else volume
            result = torch.as_tensor(fn(i, volume))
            out.append(result.squeeze(1) if dims == 2 else result)
    return torch.stack(out).to(device=x.device, dtype=x.dtype)


def check_int_range(owner: str, name: str, value: object, low: int, high: float = math.inf) -> int:
    """Return ``int(value)`` or raise ValueError unless it is an integer in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        upper = "" if math.isinf(high) else f", {int(high)}"
        raise ValueError(f"{owner}: {name}={value!r} must be an integer in [{low}{upper}{']' if upper else ', inf)'}")
    return value


def check_axis(owner: str, axis: object) -> int | None:
    """None (drawn per sample) or a spatial axis 0, 1 or 2 of x's spatial dims."""
    if axis is None:
        return None
    return check_int_range(owner, "axis", axis, 0, 2)


def pick_axes(axis: int | None, n: int, dims: int, generator: torch.Generator, owner: str) -> list[int]:
    """The fixed spatial axis n times, or n axes drawn uniformly from the spatial axes."""
    if axis is None:
        return integers(generator, n, 0, dims - 1)
    if axis >= dims:
        raise ValueError(f"{owner}: axis={axis} is not a spatial axis of a {dims}D input; expected 0 to {dims - 1}")
    return [axis] * n
