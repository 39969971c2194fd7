"""The Task adapter: model output -> decision units.

Classification has one unit per image (logits (N, K), labels (N,)); segmentation has one unit per pixel or
voxel (logits (N, K, *spatial), labels (N, *spatial)). The class axis is always dim 1, so loss, margin and
"unit still correct" are written once here. Attacks use only this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F


class Task(ABC):
    name: str = ""

    def check(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        if logits.dim() != y.dim() + 1 or logits.shape[0] != y.shape[0] or logits.shape[2:] != y.shape[1:]:
            raise ValueError(
                f"{self.name}: model output of shape {tuple(logits.shape)} does not match labels of shape "
                f"{tuple(y.shape)}; expected output (N, K{', *spatial' if y.dim() > 1 else ''}) for labels "
                f"{tuple(y.shape)}"
            )
        if not bool(torch.isfinite(logits).all()):
            bad = int((~torch.isfinite(logits)).reshape(logits.shape[0], -1).any(1).sum())
            raise ValueError(
                f"{self.name}: the model returned NaN or infinite outputs for {bad} of {logits.shape[0]} samples; "
                "scores on such outputs would be meaningless (check the weights and the input range)"
            )
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= logits.shape[1]):
            raise ValueError(
                f"{self.name}: labels range over [{int(y.min())}, {int(y.max())}] but the model has "
                f"{logits.shape[1]} outputs; expected labels in [0, {logits.shape[1] - 1}]"
            )

    def unit_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy per decision unit: shape (N,) or (N, *spatial)."""
        return F.cross_entropy(logits, y, reduction="none")

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample loss, shape (N,): the mean unit loss of each sample."""
        return self.unit_loss(logits, y).reshape(y.shape[0], -1).mean(dim=1)

    def margin(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z_true - max_{k != true} z_k per unit; negative where the unit is misclassified."""
        true = logits.gather(1, y.unsqueeze(1))
        other = logits.scatter(1, y.unsqueeze(1), float("-inf")).amax(dim=1, keepdim=True)
        return (true - other).squeeze(1)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=1)

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Boolean per unit: is this unit still labelled correctly."""
        return self.predict(logits) == y

    @abstractmethod
    def score(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample task score in [0, 1], shape (N,): accuracy (0/1) or Dice."""

    @abstractmethod
    def is_adversarial(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Boolean per sample: has the attack reached its goal."""
