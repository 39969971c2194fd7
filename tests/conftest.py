"""Shared fixtures: a small trained classifier on a toy problem every attack must be able to fool."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(name: str) -> Path:
    """Path under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real-data sample {path} is absent (../shared/data is not laid beside this checkout)")
    return path


def make_toy(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """3 classes of 1x8x8 images in [0, 1]: a bright left half, right half, or centre blob, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.full((n, 1, 8, 8), 0.3)
    x[y == 0, :, :, :4] += 0.35
    x[y == 1, :, :, 4:] += 0.35
    x[y == 2, :, 2:6, 2:6] += 0.4
    x += 0.08 * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1), y


class ToyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> nn.Module:
    """Full-batch Adam on cross-entropy (per image or per pixel); returns the model in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def toy_model() -> nn.Module:
    """A ToyCNN trained to ~100% clean accuracy on the toy problem (deterministic, about a second)."""
    torch.manual_seed(0)  # test-only: makes the fixture's initial weights fixed
    return fit(ToyCNN(), *make_toy(300, seed=1), steps=150, lr=0.01)


#: the derm-synth data the shared checkpoint is trained on and the runner tests evaluate
TINY_DATA = {"name": "derm-synth", "params": {"size": 16, "n": 60}}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A small-cnn (width 4) trained 2 epochs on derm-synth 16x16 (seed 0): the checkpoint run, report and output
    tests evaluate, trained once per test process. Tests read it; none writes into its folder."""
    from medrobust.train import TrainSettings, train

    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    train(TrainSettings(architecture="small-cnn", arch_kwargs={"width": 4}, dataset="derm-synth",
                        dataset_params=TINY_DATA["params"], epochs=2, seed=0), out)
    return out


@pytest.fixture()
def toy_batch() -> tuple[torch.Tensor, torch.Tensor]:
    return make_toy(30, seed=2)


def make_toy_segmentation(n: int, seed: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """1xSxS images with a bright square (class 1) and a mid-grey disk (class 2) on a dark noisy background."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    x = torch.full((n, 1, size, size), 0.2)
    y = torch.zeros((n, size, size), dtype=torch.long)
    for i in range(n):
        r0, c0 = torch.randint(0, size // 2 - 2, (2,), generator=g).tolist()
        square = (yy >= r0) & (yy < r0 + 5) & (xx >= c0) & (xx < c0 + 5)
        cr, cc = torch.randint(size // 2 + 1, size - 3, (2,), generator=g).tolist()
        disk = (yy - cr) ** 2 + (xx - cc) ** 2 <= 6
        x[i, 0][square] = 0.8
        x[i, 0][disk] = 0.5
        y[i][square] = 1
        y[i][disk] = 2
    x += 0.05 * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1), y


class ToySegNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture(scope="session")
def toy_segmenter() -> nn.Module:
    """A ToySegNet trained to high Dice on the toy segmentation problem (deterministic, a few seconds)."""
    torch.manual_seed(0)  # test-only: fixed initial weights
    return fit(ToySegNet(), *make_toy_segmentation(64, seed=1), steps=200, lr=0.02)


@pytest.fixture()
def toy_seg_batch() -> tuple[torch.Tensor, torch.Tensor]:
    return make_toy_segmentation(12, seed=2)


def tiny_spec(checkpoint: Path, **overrides) -> dict:
    """A run spec over the shared checkpoint: 12 test images, FGSM, DeepFool and noise (keys replaced by
    ``overrides``)."""
    spec = {
        "name": "tiny",
        "seed": 3,
        "batch_size": 6,
        "limit": 12,
        "dataset": TINY_DATA,
        "models": [{"name": "tiny", "checkpoint": str(checkpoint)}],
        "perturbations": [
            {"attack": "fgsm", "strengths": [0.01, 0.05]},
            {"attack": "deepfool", "strengths": [0.05, 0.2, 1.0], "params": {"steps": 20}},
            {"corruption": "gaussian_noise", "strengths": [0.05, 0.2]},
        ],
    }
    spec.update(overrides)
    return spec

