"""Explicit random generators. The library never touches the global seed."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed derived from ``seed`` and any keys, stable across runs and machines."""
    text = "/".join([str(int(seed)), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def make_generator(seed: int, *keys: object, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator seeded from ``seed`` and keys (e.g. a cell key), on ``device``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, *keys))
    return gen


def generator_for(x: torch.Tensor, generator: torch.Generator | None) -> torch.Generator:
    """Return ``generator`` or a fixed-seed one on ``x``'s device, so results never depend on global state."""
    if generator is not None:
        if generator.device.type != x.device.type:
            raise ValueError(
                f"generator is on {generator.device} but the input is on {x.device}; "
                "create the generator on the input's device"
            )
        return generator
    gen = torch.Generator(device=x.device)
    gen.manual_seed(0)
    return gen


def randn(shape: torch.Size | tuple[int, ...], like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def rand(shape: torch.Size | tuple[int, ...], like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)
