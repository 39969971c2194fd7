"""Random noise of the same size as a given perturbation: the paper's noise baseline.

Paschali et al. (MICCAI 2018) compare each adversarial example with random noise of the same norm, to show that
the attack's damage comes from its direction, not its size. ``MatchedNoise`` draws a random direction and scales
it per sample to the L2 or Linf norm of a reference (an attack's ``x_adv - x`` or a vector of norms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from medrobust.corruptions._checks import check_choice
from medrobust.corruptions.base import Corruption
from medrobust.metrics.perturbation import l2_norm, linf_norm
from medrobust.seeding import rand, randn
from medrobust.types import Bounds

MATCHED_NORMS = ("l2", "linf")
DISTRIBUTIONS = ("gaussian", "uniform_sign")


@dataclass(frozen=True, eq=False)
class MatchedNoise(Corruption):
    """x + r_i * u_i / ||u_i||, with u_i random and r_i the norm of the reference for sample i.

    reference: a perturbation delta with x's shape (N, C, *spatial), whose per-sample ``norm`` is matched, or
        the per-sample norms themselves, shape (N,), in input units, >= 0.
    norm: "l2" or "linf", the norm that is matched.
    distribution: "gaussian" (u ~ N(0, I)) or "uniform_sign" (u_j = +-1 with equal probability; with Linf every
        feature moves by exactly +-r_i, the random counterpart of an FGSM step).

    The noise has exactly the reference norm before clipping to bounds. Clipping to bounds can only reduce it
    (each coordinate moves towards x), so the realised noise is never larger than the reference. Samples whose
    reference norm is 0 are returned exactly. There is no strength parameter: the reference sets the size.
    Compared by identity (the reference is a tensor).
    """

    reference: torch.Tensor
    norm: str = "l2"
    distribution: str = "gaussian"
    strength_param: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        ref = self.reference
        if not torch.is_tensor(ref):
            try:
                ref = torch.as_tensor(ref, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(
                    f"{name}: reference must be a tensor (a perturbation like x, or per-sample norms (N,)), "
                    f"got {type(self.reference).__name__}"
                ) from None
        if not ref.is_floating_point():
            ref = ref.double()
        if ref.numel() and not bool(torch.isfinite(ref).all()):
            raise ValueError(f"{name}: reference contains non-finite values")
        if ref.dim() == 1 and ref.numel() and float(ref.min()) < 0:
            raise ValueError(f"{name}: reference norms must be >= 0, got minimum {float(ref.min())!r}")
        object.__setattr__(self, "reference", ref.detach())
        object.__setattr__(self, "norm", check_choice(name, "norm", self.norm, MATCHED_NORMS))
        object.__setattr__(self, "distribution", check_choice(name, "distribution", self.distribution, DISTRIBUTIONS))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(reference=<tensor {tuple(self.reference.shape)}>, norm={self.norm!r}, "
            f"distribution={self.distribution!r})"
        )

    def target_norms(self, x: torch.Tensor) -> torch.Tensor:
        """The per-sample norms (N,) to match, on x's device and dtype; ValueError if the shape fits neither form."""
        ref = self.reference.to(device=x.device, dtype=x.dtype)
        n = x.shape[0]
        if ref.shape == x.shape:
            return l2_norm(ref) if self.norm == "l2" else linf_norm(ref)
        if ref.shape == (n,):
            return ref
        raise ValueError(
            f"MatchedNoise: reference of shape {tuple(ref.shape)} fits neither x's shape {tuple(x.shape)} "
            f"nor per-sample norms ({n},)"
        )

    def apply(self, x: torch.Tensor, *, generator: torch.Generator, bounds: Bounds) -> torch.Tensor:
        radius = self.target_norms(x)
        if not bool((radius > 0).any()):
            return x.clone()
        if self.distribution == "gaussian":
            u = randn(x.shape, x, generator)
        else:
            u = torch.where(rand(x.shape, x, generator) < 0.5, -1.0, 1.0).to(x.dtype)
        size = l2_norm(u) if self.norm == "l2" else linf_norm(u)
        scale = torch.where(radius > 0, radius / size.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(radius))
        return x + u * scale.view((-1,) + (1,) * (x.dim() - 1))
