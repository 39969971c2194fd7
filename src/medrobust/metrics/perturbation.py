"""How big is a perturbation: per-sample norms of delta = x_adv - x, and perceptual similarity (SSIM, PSNR).

All functions take batches with the sample axis first and return one value per sample, shape (N,).
"""

from __future__ import annotations

import math
from typing import cast

import torch

PERTURBATION_NORMS = ("l0", "l2", "linf")


def _flat(t: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(t) or t.dim() == 0:
        raise ValueError(f"expected a tensor with a sample axis (N, ...), got {getattr(t, 'shape', type(t))}")
    return t.flatten(1) if t.dim() > 1 else t.unsqueeze(1)


def l0_norm(delta: torch.Tensor, tol: float = 0.0) -> torch.Tensor:
    """Number of changed features per sample: #{j : |delta_ij| > tol}. delta (N, ...) -> int64 (N,).

    Every element counts (an RGB pixel whose three channels change counts 3). ``tol`` >= 0 ignores changes
    at or below it (float round-off from x + (x_adv - x)).
    """
    if not math.isfinite(float(tol)) or float(tol) < 0:
        raise ValueError(f"tol={tol!r} must be a finite number >= 0")
    return (_flat(delta).abs() > float(tol)).sum(dim=1)


def l2_norm(delta: torch.Tensor) -> torch.Tensor:
    """Euclidean norm per sample, sqrt(sum_j delta_ij^2), in input units. delta (N, ...) -> (N,)."""
    return _flat(delta).norm(dim=1)


def linf_norm(delta: torch.Tensor) -> torch.Tensor:
    """Largest absolute change per sample, max_j |delta_ij|, in input units. delta (N, ...) -> (N,); 0 if empty."""
    flat = _flat(delta)
    if flat.shape[1] == 0:
        return flat.new_zeros(flat.shape[0])
    return flat.abs().amax(dim=1)


def perturbation_norm(delta: torch.Tensor, norm: str, *, tol: float = 0.0) -> torch.Tensor:
    """Dispatch to ``l0_norm`` (with ``tol``), ``l2_norm`` or ``linf_norm`` by name. delta (N, ...) -> (N,)."""
    key = str(norm).lower()
    if key == "l0":
        return l0_norm(delta, tol)
    if key == "l2":
        return l2_norm(delta)
    if key == "linf":
        return linf_norm(delta)
    raise ValueError(f"norm={norm!r} is not supported; expected one of {', '.join(PERTURBATION_NORMS)}")


def _check_pair(x: torch.Tensor, x_adv: torch.Tensor, data_range: float) -> None:
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv must have the same shape, got {tuple(x.shape)} and {tuple(x_adv.shape)}")
    if x.dim() not in (3, 4, 5):
        raise ValueError(f"expected images (N, C, *spatial) with 1 to 3 spatial axes, got {tuple(x.shape)}")
    if not math.isfinite(float(data_range)) or float(data_range) <= 0:
        raise ValueError(f"data_range={data_range!r} must be a finite number > 0 (bounds[1] - bounds[0])")


def ssim(
    x: torch.Tensor,
    x_adv: torch.Tensor,
    data_range: float = 1.0,
    *,
    win_size: int = 11,
    kernel_sigma: float = 1.5,
) -> torch.Tensor:
    """Structural similarity per sample (Wang et al., IEEE TIP 2004), via ``monai.metrics.compute_ssim_and_cs``.

    x, x_adv: (N, C, *spatial) with 1 to 3 spatial axes; data_range: bounds[1] - bounds[0].
    Gaussian window (sigma ``kernel_sigma``, ``win_size`` wide), valid positions only; the SSIM map is averaged
    over channels and positions. An axis shorter than the window gets the largest odd window that fits, so
    small images (8x8 toys, 28x28 MedMNIST) work. Returns (N,) in [-1, 1], 1 for identical images.
    MONAI computes in float32; its local variances E[x^2] - E[x]^2 lose about 1e-7, so values carry an
    absolute error of order 1e-4 (smaller than any difference worth reporting). Returned in x's dtype.
    """
    _check_pair(x, x_adv, data_range)
    if isinstance(win_size, bool) or not isinstance(win_size, int) or win_size < 1:
        raise ValueError(f"win_size={win_size!r} must be an integer >= 1")
    if x.dim() == 3:  # (N, C, L): a 2-D image of height 1
        x, x_adv = x.unsqueeze(2), x_adv.unsqueeze(2)
    spatial = x.shape[2:]
    window = [min(win_size, s) for s in spatial]
    window = [w if w % 2 == 1 else w - 1 for w in window]
    from monai.metrics import compute_ssim_and_cs  # MONAI on first use: `import medrobust` stays light

    ssim_map, _ = compute_ssim_and_cs(
        y_pred=x_adv,
        y=x,
        spatial_dims=len(spatial),
        kernel_size=window,
        kernel_sigma=[float(kernel_sigma)] * len(spatial),
        data_range=float(data_range),
    )
    return ssim_map.flatten(1).mean(dim=1).to(x.dtype)


def psnr(x: torch.Tensor, x_adv: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per sample in dB: 10 * log10(data_range^2 / MSE_i), via ``monai.metrics.PSNRMetric``.

    x, x_adv: (N, C, *spatial); data_range: bounds[1] - bounds[0]. MSE_i is the mean over all features of
    sample i. Returns (N,); +inf where x_adv equals x.
    """
    _check_pair(x, x_adv, data_range)
    from monai.metrics import PSNRMetric

    metric = PSNRMetric(max_val=float(data_range), reduction="none")
    values = cast(torch.Tensor, metric(y_pred=x_adv, y=x))  # reduction="none": one tensor
    return values.reshape(x.shape[0])
