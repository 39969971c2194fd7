"""Segmentation scores per sample and per structure (MONAI's metrics), and the DAG-style flip rate.

Label maps are long tensors (N, *spatial) with class 0 = background; structures are classes 1..K-1.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels.long(), num_classes).movedim(-1, 1).float()


def per_structure_dice(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dice per sample and structure, shape (N, K-1); NaN where the structure is absent from both masks."""
    from monai.metrics import compute_dice

    dice = compute_dice(
        _one_hot(pred, num_classes), _one_hot(y, num_classes), include_background=False, ignore_empty=False
    )
    empty = (_one_hot(pred, num_classes) + _one_hot(y, num_classes))[:, 1:].flatten(2).sum(-1) == 0
    return torch.where(empty, torch.full_like(dice, float("nan")), dice)


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Units (pixels, voxels) of each class per sample, shape (N, K), background first."""
    flat = labels.long().flatten(1)
    counts = torch.zeros(flat.shape[0], num_classes, dtype=torch.long, device=flat.device)
    return counts.scatter_add_(1, flat, torch.ones_like(flat))


def foreground_dice(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean Dice over the foreground structures present in either mask, per sample (N,), in float64; a structure
    absent from both masks is left out (it says nothing about the segmentation), and a sample with no structure in
    either mask scores 1. The one definition of Dice in medrobust: the segmentation task scores attacks and
    records with it.

    pred, y: label maps (N, *spatial) with values in [0, num_classes)."""
    pred_1h = F.one_hot(pred.long(), num_classes).movedim(-1, 1).flatten(2)[:, 1:]
    true_1h = F.one_hot(y.long(), num_classes).movedim(-1, 1).flatten(2)[:, 1:]
    inter = (pred_1h * true_1h).sum(-1).double()
    total = (pred_1h.sum(-1) + true_1h.sum(-1)).double()
    present = total > 0
    dice = torch.where(present, 2 * inter / total.clamp_min(1), torch.zeros_like(total))
    count = present.sum(1)
    return torch.where(count > 0, dice.sum(1) / count.clamp_min(1), torch.ones_like(dice[:, 0]))


def mean_foreground_dice(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean Dice over the structures present in either mask, per sample (N,); 1 when both are empty. The same
    definition as :func:`foreground_dice`, in float32."""
    return foreground_dice(pred, y, num_classes).float()


def hd95(
    pred: torch.Tensor, y: torch.Tensor, num_classes: int, spacing: float | tuple[float, ...] | None = None
) -> torch.Tensor:
    """95th-percentile Hausdorff distance per sample and structure (N, K-1), in voxels or ``spacing`` units;
    NaN where the structure is missing from either mask (undefined there)."""
    from monai.metrics import compute_hausdorff_distance

    p, t = _one_hot(pred, num_classes), _one_hot(y, num_classes)
    with warnings.catch_warnings():
        # empty masks are reported as NaN below; MONAI's own warning about them is noise here
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)  # a deprecated argument MONAI passes to itself
        out = compute_hausdorff_distance(p, t, include_background=False, percentile=95, spacing=spacing)
    missing = (p[:, 1:].flatten(2).sum(-1) == 0) | (t[:, 1:].flatten(2).sum(-1) == 0)
    return torch.where(missing, torch.full_like(out, float("nan")), out.float())


def flip_rate(clean_pred: torch.Tensor, adv_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample (N,): fraction of foreground units (y > 0) whose predicted label the perturbation changed;
    NaN for a sample without foreground."""
    fg = (y > 0).flatten(1)
    changed = (clean_pred != adv_pred).flatten(1) & fg
    n = fg.sum(1)
    return torch.where(n > 0, changed.sum(1) / n.clamp_min(1), torch.full(n.shape, float("nan"), device=n.device))


def flip_rate_per_structure(
    clean_pred: torch.Tensor, adv_pred: torch.Tensor, y: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """(N, num_classes - 1): for each foreground structure s, the fraction of its units (y == s) whose predicted
    label the perturbation changed; NaN where the structure is absent from ``y``."""
    changed = (clean_pred != adv_pred).flatten(1)
    y = y.flatten(1)
    # one structure at a time: a (N, units) mask each, never an (N, units, K) one-hot
    n = torch.stack([(y == k).sum(1) for k in range(1, num_classes)], 1)
    hits = torch.stack([((y == k) & changed).sum(1) for k in range(1, num_classes)], 1)
    return torch.where(n > 0, hits / n.clamp_min(1), torch.full(n.shape, float("nan"), device=n.device))


def target_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per sample (N,): mean IoU over the labels present in the target or the prediction (1 if both empty)."""
    n = pred.shape[0]
    k = int(max(int(pred.max()), int(target.max()))) + 1
    p = torch.nn.functional.one_hot(pred.reshape(n, -1), k).bool()
    t = torch.nn.functional.one_hot(target.reshape(n, -1), k).bool()
    inter = (p & t).sum(1).double()
    union = (p | t).sum(1).double()
    present = union > 0
    iou = torch.where(present, inter / union.clamp_min(1), torch.zeros_like(union))
    return iou.sum(1) / present.sum(1).clamp_min(1)
