"""Whole-volume inference, with gradients, for volumes larger than the network's patch.

``SlidingWindow`` wraps a network so that ``forward`` runs MONAI's ``sliding_window_inference`` over the
volume. Gradients flow through it, so every attack works on whole volumes unchanged. With ``checkpoint=True``
(the default) each window's activations are recomputed during backward instead of being kept, so memory holds
one window batch of activations plus the stitched output, not the activations of every window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as torch_checkpoint


class SlidingWindow(nn.Module):
    """net: (N, C, *roi) -> (N, K, *roi). forward: (N, C, *spatial) -> (N, K, *spatial), any spatial size."""

    def __init__(
        self,
        net: nn.Module,
        roi_size: Sequence[int],
        *,
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        mode: str = "gaussian",
        checkpoint: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap={overlap!r} must be in [0, 1)")
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size={sw_batch_size!r} must be >= 1")
        if mode not in ("gaussian", "constant"):
            raise ValueError(f"mode={mode!r}; expected 'gaussian' or 'constant'")
        self.net = net
        self.roi_size = tuple(int(r) for r in roi_size)
        self.sw_batch_size = sw_batch_size
        self.overlap = overlap
        self.mode = mode
        self.checkpoint = checkpoint

    def _window(self, patch: torch.Tensor) -> torch.Tensor:
        if self.checkpoint and torch.is_grad_enabled() and patch.requires_grad:
            return torch_checkpoint(self.net, patch, use_reentrant=False)
        return self.net(patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from monai.inferers import sliding_window_inference

        if len(self.roi_size) != x.dim() - 2:
            raise ValueError(f"roi_size {self.roi_size} has {len(self.roi_size)} axes but the input has {x.dim() - 2}")
        out = sliding_window_inference(
            x, self.roi_size, self.sw_batch_size, self._window, overlap=self.overlap, mode=self.mode
        )
        return cast(torch.Tensor, out)  # the predictor returns one tensor, so the result is one tensor
