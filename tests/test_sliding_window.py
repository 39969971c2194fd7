"""Attacks on whole 3D volumes through sliding-window inference with gradients."""

from __future__ import annotations

import torch
from torch import nn

import medrobust
from medrobust.models import Model
from medrobust.models.sliding import SlidingWindow


def tiny_3d_net() -> nn.Module:
    torch.manual_seed(0)  # test-only: fixed weights
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 1))


def volume() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand((1, 1, 20, 24, 18), generator=g)
    y = (x[:, 0] * 3).long().clamp(max=2)
    return x, y


def test_sliding_window_equals_direct_inference_for_a_pointwise_net():
    # A 1x1x1 network has no context, so any window tiling and blending must reproduce direct inference.
    torch.manual_seed(0)  # test-only: fixed weights
    net = nn.Sequential(nn.Conv3d(1, 4, 1), nn.Tanh(), nn.Conv3d(4, 3, 1))
    x, _ = volume()
    with torch.no_grad():
        direct = net(x)
        for mode in ("constant", "gaussian"):
            out = SlidingWindow(net, (12, 12, 12), overlap=0.5, mode=mode)(x)
            torch.testing.assert_close(out, direct, atol=1e-5, rtol=1e-5)


def test_checkpointed_gradients_equal_plain_gradients():
    net = tiny_3d_net()
    x, y = volume()
    grads = []
    for ckpt in (False, True):
        sw = SlidingWindow(net, (12, 12, 12), overlap=0.25, checkpoint=ckpt)
        xr = x.clone().requires_grad_(True)
        nn.functional.cross_entropy(sw(xr), y).backward()
        grads.append(xr.grad)
    torch.testing.assert_close(grads[0], grads[1])
    assert float(grads[0].abs().sum()) > 0


def test_pgd_on_a_volume_larger_than_the_patch_stays_in_budget_and_bounds():
    net = tiny_3d_net()
    x, y = volume()
    model = Model(SlidingWindow(net, (12, 12, 12)), bounds=(0.0, 1.0))
    for norm, eps in (("linf", 0.03), ("l2", 0.5)):
        x_adv = medrobust.attack("pgd", model, x, y, task="segmentation", eps=eps, steps=3, norm=norm)
        assert x_adv.shape == x.shape
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
        size = (x_adv - x).abs().max() if norm == "linf" else (x_adv - x).flatten().norm()
        assert float(size) <= eps + 1e-6
        assert float((x_adv - x).abs().max()) > 0
