"""Small shared types: bounds, norms, batches."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

Bounds = tuple[float, float]
NORMS: tuple[str, ...] = ("linf", "l2")


def check_norm(norm: str) -> str:
    """Return ``norm`` lower-cased, or raise naming the valid norms."""
    value = str(norm).lower()
    if value not in NORMS:
        raise ValueError(f"norm={norm!r} is not supported; expected one of {', '.join(NORMS)}")
    return value


def check_bounds(bounds: Bounds) -> Bounds:
    """Validate an input range ``(low, high)`` with ``low < high``."""
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds={bounds!r} must be a pair (low, high) of numbers") from None
    if not low < high:
        raise ValueError(f"bounds={bounds!r} must satisfy low < high")
    return (low, high)


def parse_device(device: str | torch.device) -> torch.device:
    """The torch device named by ``device`` (whether or not this machine has it)."""
    try:
        return torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device {str(device)!r} is not a torch device; expected cpu, cuda, cuda:N or mps") from None


def check_device(device: str | torch.device) -> torch.device:
    """The torch device named by ``device``, after checking that this machine has it."""
    d = parse_device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: CUDA is not available here (torch {torch.__version__}); use cpu")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r}: MPS is not available here; use cpu")
    return d


@dataclass(frozen=True)
class Batch:
    """A batch of samples.

    x: inputs, float tensor (N, C, *spatial) in the dataset's input units.
    y: labels, long tensor (N,) for classification or (N, *spatial) for segmentation.
    ids: one stable identifier per sample.
    groups: per sample, the independent unit it belongs to (volume, patient, subject), or empty when every
    sample is its own unit.
    """

    x: torch.Tensor
    y: torch.Tensor
    ids: list[str] = field(default_factory=list)
    groups: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} samples but y has {self.y.shape[0]}")
        if self.ids and len(self.ids) != self.x.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} samples but ids has {len(self.ids)}")
        if self.groups and len(self.groups) != self.x.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} samples but groups has {len(self.groups)}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.x.to(device), self.y.to(device), list(self.ids), list(self.groups))


#: the largest seed: seeds are stored in results.db as SQLite integers (signed 64-bit)
SEED_MAX = 2**63 - 1
