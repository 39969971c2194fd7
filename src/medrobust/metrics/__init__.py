"""Pure metric functions on tensors: task scores, perturbation sizes, similarity, robustness scores."""

from __future__ import annotations

from medrobust.metrics.classification import (
    accuracy,
    auc_ovr,
    balanced_accuracy,
    confusion_matrix,
    mean_absolute_error,
    per_class_sensitivity,
    quadratic_kappa,
)
from medrobust.metrics.perturbation import (
    PERTURBATION_NORMS,
    l0_norm,
    l2_norm,
    linf_norm,
    perturbation_norm,
    psnr,
    ssim,
)
from medrobust.metrics.robustness import (
    attack_success_rate,
    empirical_robustness,
    empirical_robustness_per_sample,
)
from medrobust.metrics.segmentation import (
    class_counts,
    flip_rate,
    flip_rate_per_structure,
    foreground_dice,
    hd95,
    mean_foreground_dice,
    per_structure_dice,
    target_iou,
)

__all__ = [
    "flip_rate",
    "class_counts",
    "flip_rate_per_structure",
    "foreground_dice",
    "hd95",
    "mean_foreground_dice",
    "target_iou",
    "per_structure_dice",
    "PERTURBATION_NORMS",
    "accuracy",
    "attack_success_rate",
    "auc_ovr",
    "balanced_accuracy",
    "confusion_matrix",
    "mean_absolute_error",
    "quadratic_kappa",
    "empirical_robustness",
    "empirical_robustness_per_sample",
    "l0_norm",
    "l2_norm",
    "linf_norm",
    "per_class_sensitivity",
    "perturbation_norm",
    "psnr",
    "ssim",
]
