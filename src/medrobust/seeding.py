"""Explicit random generators. The library never touches the global seed."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def deterministic_algorithms(device: torch.device | str = "cuda", enabled: bool = True) -> Iterator[None]:
    """Bitwise-reproducible kernels on CUDA for the duration, then the previous settings back.

    On the CPU every attack is already reproducible given its generator. On CUDA, cuDNN's default convolution
    backward kernels and autotuning make gradients differ in the last bits from call to call; attacks that use
    gradient magnitudes (DeepFool, DAG, ASMA, C&W) then drift apart over their iterations. This selects cuDNN's
    deterministic algorithms, turns autotuning off and enables torch's deterministic mode (warn-only: an op with no
    deterministic CUDA kernel warns instead of failing). Does nothing for a CPU device or when ``enabled`` is False.
    """
    if not enabled or torch.device(device).type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    previous = (
        cudnn.deterministic,
        cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    # cuBLAS needs a fixed workspace to be deterministic. It reads this when it first initialises, so a process
    # that already ran CUDA matrix products keeps its workspace; convolutions (cuDNN) are covered either way.
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    cudnn.deterministic, cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = previous[0], previous[1]
        torch.use_deterministic_algorithms(previous[2], warn_only=previous[3])
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
