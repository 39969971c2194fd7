"""MRI intensity artifacts: Rician noise (MONAI) and a smooth multiplicative bias field (TorchIO)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from medrobust.corruptions._checks import check_range
from medrobust.corruptions.mri import MRIArtifact, Params, check_int_range, seed, spatial_dims, uniform
from medrobust.types import Bounds


@dataclass(frozen=True)
class RicianNoise(MRIArtifact):
    """Rician noise: the magnitude of complex data with Gaussian noise in both channels (Gudbjartsson & Patz 1995).

    out = low + sqrt((x - low + n1)^2 + n2^2), n1, n2 ~ N(0, s^2) per voxel, s = sigma * (high - low), then clipped.
    On a zero background (x = low) this is Rayleigh noise with mean s * sqrt(pi / 2); on bright tissue it is close
    to Gaussian noise of std s. It also brightens dark regions (the Rician bias).

    sigma: noise std as a fraction of the bounds range, in [0, 1]. sigma=0 returns x exactly.
    Graded severities: 0.01, 0.02, 0.05, 0.1, 0.2.

    Uses MONAI ``RandRicianNoise`` (fixed std, prob 1) on the whole batch at once, its numpy RandomState seeded
    from a value drawn from the generator. ``draw`` returns ``{"sigma", "seed"}``.
    """

    sigma: float = 0.05
    strength_param: ClassVar[str | None] = "sigma"
    severities: ClassVar[tuple[float, ...]] = (0.01, 0.02, 0.05, 0.1, 0.2)

    def __post_init__(self) -> None:
        check_range(type(self).__name__, "sigma", self.sigma, 0.0, 1.0)

    def _draw(self, x: torch.Tensor, generator: torch.Generator) -> Params:
        return {"seed": seed(generator)}

    def _render(self, x: torch.Tensor, params: Params, bounds: Bounds) -> torch.Tensor:
        from monai.transforms import RandRicianNoise
        from monai.utils import convert_to_tensor

        std = float(params["sigma"]) * (bounds[1] - bounds[0])
        noise = RandRicianNoise(prob=1.0, mean=0.0, std=std, channel_wise=False, sample_std=False, dtype=None)
        noise.set_random_state(seed=int(params["seed"]))
        out = convert_to_tensor(noise(x - bounds[0]), track_meta=False)
        return out.to(dtype=x.dtype) + bounds[0]


def _num_terms(order: int) -> int:
    """How many polynomial coefficients TorchIO's bias field of this order takes (monomials of degree <= order)."""
    return (order + 1) * (order + 2) * (order + 3) // 6


@dataclass(frozen=True)
class BiasField(MRIArtifact):
    """Smooth multiplicative intensity inhomogeneity (RF coil / B1 field), as in Van Leemput et al. 1999.

    out = low + (x - low) * exp(sum_k c_k * P_k), P_k the monomials of degree <= ``order`` in the normalised
    coordinates (-1..1) of each axis, c_k ~ U(-coefficient, coefficient) drawn per sample; the same field
    multiplies all channels of a sample. For 2D slices only the in-plane monomials vary.

    coefficient: largest coefficient magnitude, in [0, 1] (TorchIO's RandomBiasField default is 0.5).
        coefficient=0 returns x exactly. Graded severities: 0.05, 0.1, 0.2, 0.35, 0.5.
    order: polynomial order, integer in [0, 5] (default 3).

    The field is TorchIO's ``BiasField.generate_bias_field`` (the deterministic twin of ``RandomBiasField``);
    the product is taken in x's dtype and device. ``draw`` returns ``{"coefficient", "order", "coefficients"}``
    with one list of coefficients per sample, in TorchIO's order.
    """

    coefficient: float = 0.3
    order: int = 3
    strength_param: ClassVar[str | None] = "coefficient"
    severities: ClassVar[tuple[float, ...]] = (0.05, 0.1, 0.2, 0.35, 0.5)

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_range(name, "coefficient", self.coefficient, 0.0, 1.0)
        check_int_range(name, "order", self.order, 0, 5)

    def _draw(self, x: torch.Tensor, generator: torch.Generator) -> Params:
        units = uniform(generator, (x.shape[0], _num_terms(self.order)), -1.0, 1.0)
        return {"order": self.order, "coefficients": (float(self.coefficient) * units).tolist()}

    def _render(self, x: torch.Tensor, params: Params, bounds: Bounds) -> torch.Tensor:
        import torchio as tio  # imported on use: it adds a noticeable start-up time to the CLI

        dims = spatial_dims(x)
        spatial = tuple(x.shape[2:])
        # TorchIO's field is 3D (X, Y, Z); a 2D slice is laid as (1, H, W) so its first axis is the flat one.
        shape = spatial if dims == 3 else (1, *spatial)
        fields = []
        for coefficients in params["coefficients"]:
            field = tio.BiasField.generate_bias_field(torch.empty((1, *shape)), int(params["order"]), coefficients)
            fields.append(torch.from_numpy(field).reshape(spatial))
        field_t = torch.stack(fields).unsqueeze(1).to(device=x.device, dtype=x.dtype)
        return bounds[0] + (x - bounds[0]) * field_t
