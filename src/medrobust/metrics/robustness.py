"""Robustness scores: how often an attack succeeds, and how large the perturbations that fool a model are."""

from __future__ import annotations

import math

import torch

from medrobust.metrics.perturbation import l2_norm


def attack_success_rate(clean_pred: torch.Tensor, adv_pred: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of the originally correct samples that the attack made wrong, in [0, 1].

    ASR = #{i : clean_pred_i == y_i and adv_pred_i != y_i} / #{i : clean_pred_i == y_i}. Samples the model
    already got wrong are left out (they are not evidence of the attack's strength). nan when no sample was
    correct. clean_pred, adv_pred, y: labels of the same shape, usually (N,).
    """
    clean_pred, adv_pred, y = (torch.as_tensor(t).reshape(-1) for t in (clean_pred, adv_pred, y))
    if not clean_pred.shape == adv_pred.shape == y.shape:
        raise ValueError(
            f"clean_pred, adv_pred and y must have the same number of elements, got "
            f"{clean_pred.numel()}, {adv_pred.numel()} and {y.numel()}"
        )
    correct = clean_pred == y
    n = int(correct.sum())
    if n == 0:
        return math.nan
    return float((correct & (adv_pred != y)).sum()) / n


def empirical_robustness_per_sample(delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """||delta_i||_2 / ||x_i||_2 per sample (N,): the perturbation's size relative to the input's.

    delta = x_adv - x and x: (N, ...), same shape. inf where x_i is all zeros (nan if delta_i is too).
    """
    if delta.shape != x.shape:
        raise ValueError(f"delta and x must have the same shape, got {tuple(delta.shape)} and {tuple(x.shape)}")
    return l2_norm(delta) / l2_norm(x)


def empirical_robustness(delta: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """rho = mean_i ||delta_i||_2 / ||x_i||_2 (Moosavi-Dezfooli et al., DeepFool, CVPR 2016, eq. 15).

    delta: minimal adversarial perturbations x_adv - x, (N, ...); x: the clean inputs, same shape. ``mask``
    (bool (N,)) selects the samples to average over, e.g. those where a minimal-norm attack succeeded, as the
    DeepFool paper averages over the adversarial examples found. Smaller rho means a less robust model.
    nan when no sample is selected.
    """
    ratio = empirical_robustness_per_sample(delta, x)
    if mask is not None:
        mask = torch.as_tensor(mask, dtype=torch.bool, device=ratio.device).reshape(-1)
        if mask.shape != ratio.shape:
            raise ValueError(f"mask must have shape ({ratio.shape[0]},), got {tuple(mask.shape)}")
        ratio = ratio[mask]
    if ratio.numel() == 0:
        return math.nan
    return float(ratio.double().mean())
