"""Attack objectives per decision unit (class axis at dim 1, so they serve classification and segmentation).

DLR, the Difference of Logits Ratio of Croce & Hein (ICML 2020), is invariant to shifting and scaling the
logits, so a model cannot look robust by saturating its softmax:

    untargeted: -(z_y - max_{k != y} z_k) / (z_pi1 - z_pi3 + 1e-12)
    targeted:   -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)

with z_pi1 >= z_pi2 >= ... the sorted logits. With few classes the original denominators index logits that do
not exist or involve the competing logits themselves. With K = 2 (untargeted or targeted) z_pi1 - z_pi2 =
|z_y - z_other|, so the ratio would be the constant +-1 with zero gradient. With K = 3 targeted, z_pi4 does not
exist, and replacing it by z_pi3 makes the denominator the logit range, which the attack can raise by pushing the
third, non-competing logit down instead of crossing the boundary (on the derm-synth demo's DenseNet this left 2
of 15 samples robust that a margin loss breaks). In these cases the denominator is the logit range at the
starting point (``scale``, held fixed): the loss is the margin (Carlini-Wagner) loss at a fixed scale, still
invariant to scaling the logits. Untargeted DLR with K = 3 keeps the original z_pi1 - z_pi3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_TINY = 1e-12


def logit_range(logits: torch.Tensor) -> torch.Tensor:
    """z_max - z_min per unit, shape (N, *spatial): the fixed DLR scale for two-class problems."""
    return (logits.amax(dim=1) - logits.amin(dim=1)).detach()


def _other_max(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.scatter(1, y.unsqueeze(1), float("-inf")).amax(dim=1)


def needs_scale(num_classes: int, targeted: bool) -> bool:
    """Does DLR need the fixed scale of the starting point: two classes, or targeted with three."""
    return num_classes < (4 if targeted else 3)


def _denominator(logits: torch.Tensor, targeted: bool, scale: torch.Tensor | None) -> torch.Tensor:
    if needs_scale(logits.shape[1], targeted):
        if scale is None:
            raise ValueError(
                f"the {'targeted ' if targeted else ''}DLR loss of a {logits.shape[1]}-class model needs the fixed "
                "logit scale of the starting point (losses.logit_range)"
            )
        return scale + _TINY
    top = logits.sort(dim=1, descending=True).values
    if targeted:
        return top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _TINY
    return top[:, 0] - top[:, 2] + _TINY


def dlr(logits: torch.Tensor, y: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Untargeted DLR per unit (N, *spatial); to be maximised."""
    true = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    return -(true - _other_max(logits, y)) / _denominator(logits, False, scale)


def dlr_targeted(
    logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """Targeted DLR per unit towards ``target`` (same shape as ``y``); to be maximised."""
    true = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    goal = logits.gather(1, target.unsqueeze(1)).squeeze(1)
    return -(true - goal) / _denominator(logits, True, scale)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per unit; to be maximised (untargeted)."""
    return F.cross_entropy(logits, y, reduction="none")


def ranked_targets(logits: torch.Tensor, y: torch.Tensor, rank: int) -> torch.Tensor:
    """Per unit, the class with the ``rank``-th highest logit among the classes other than the true one
    (rank 1: the runner-up). Shape like ``y``. AutoAttack's APGD-T targets ranks 1..9 at the clean input."""
    others = logits.scatter(1, y.unsqueeze(1), float("-inf"))
    return others.topk(rank, dim=1).indices.select(1, rank - 1)


def sample_mean(units: torch.Tensor) -> torch.Tensor:
    """Mean over the units of each sample: (N, *spatial) -> (N,)."""
    return units.reshape(units.shape[0], -1).mean(dim=1)
