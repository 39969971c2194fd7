"""Corruptions: statistics against their definitions, exact degenerate cases, determinism, dtype/shape, errors."""

from __future__ import annotations

import math

import pytest
import torch

from medrobust.corruptions import (
    CORRUPTIONS,
    Contrast,
    Corruption,
    GaussianBlur,
    GaussianNoise,
    MatchedNoise,
    SaltPepper,
    corrupt,
    list_corruptions,
)

RANDOM = {
    "gaussian_noise": {"sigma": 0.1},
    "salt_pepper": {"amount": 0.2},
    "matched_noise": {"reference": torch.tensor([0.5, 1.0])},
}
ALL = {**RANDOM, "gaussian_blur": {"sigma": 1.0}, "contrast": {"factor": 0.5}}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grey(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.full(shape, 0.5, dtype=dtype)


# Registered too, and covered by tests/test_mri_artifacts.py.
MRI_ARTIFACTS = ("bias_field", "downsample", "ghosting", "gibbs", "motion", "rician_noise", "spike")


def test_registry_lists_every_family() -> None:
    assert list_corruptions() == sorted([*ALL, *MRI_ARTIFACTS])
    for name in list_corruptions():
        assert issubclass(CORRUPTIONS.get(name), Corruption)
    with pytest.raises(KeyError, match="did you mean 'gaussian_noise'"):
        corrupt("gaussian_nois", grey(1, 1, 4, 4))


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("shape", [(2, 1, 12, 12), (2, 3, 12, 12), (2, 1, 5, 6, 7)])
def test_shape_dtype_bounds(name: str, shape: tuple[int, ...]) -> None:
    x = torch.rand(shape, generator=gen(0), dtype=torch.float64) * 2 - 1
    out = corrupt(name, x, generator=gen(1), bounds=(-1.0, 1.0), **ALL[name])
    assert out.shape == x.shape and out.dtype == torch.float64
    assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("name", sorted(RANDOM))
def test_same_seed_same_output_different_seed_different(name: str) -> None:
    x = torch.rand((2, 1, 16, 16), generator=gen(0))
    a = corrupt(name, x, generator=gen(7), **RANDOM[name])
    b = corrupt(name, x, generator=gen(7), **RANDOM[name])
    c = corrupt(name, x, generator=gen(8), **RANDOM[name])
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Without a generator the result is still fixed (never the global RNG).
    torch.manual_seed(123)
    d = corrupt(name, x, **RANDOM[name])
    torch.manual_seed(456)
    assert torch.equal(d, corrupt(name, x, **RANDOM[name]))


@pytest.mark.parametrize(
    "corruption",
    [GaussianNoise(sigma=0.0), SaltPepper(amount=0.0), GaussianBlur(sigma=0.0), Contrast(factor=1.0),
     MatchedNoise(reference=torch.zeros(3)), MatchedNoise(reference=torch.zeros(3, 2, 5, 5), norm="linf")],
)
def test_degenerate_parameters_return_input_exactly(corruption: Corruption) -> None:
    x = torch.rand((3, 2, 5, 5), generator=gen(0), dtype=torch.float64)
    assert torch.equal(corruption(x, generator=gen(1)), x)


def test_gaussian_noise_std_matches_sigma() -> None:
    x = grey(4, 1, 64, 64)  # 0.5 +- 10 sigma: no clipping
    out = GaussianNoise(sigma=0.05)(x, generator=gen(3))
    noise = out - x
    assert float(noise.std()) == pytest.approx(0.05, rel=0.03)
    assert abs(float(noise.mean())) < 0.003


def test_gaussian_noise_clips_to_bounds() -> None:
    out = GaussianNoise(sigma=1.0)(grey(2, 1, 16, 16), generator=gen(0))
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_salt_pepper_changes_exact_fraction_of_locations() -> None:
    x = grey(3, 1, 20, 20)
    out = SaltPepper(amount=0.1)(x, generator=gen(0))
    changed = (out != x).flatten(1).sum(dim=1)
    assert changed.tolist() == [40, 40, 40]  # round(0.1 * 400) per image
    assert set(out.unique().tolist()) == {0.0, 0.5, 1.0}
    salt = float((out == 1.0).sum()) / 120
    assert 0.3 < salt < 0.7


def test_salt_pepper_moves_all_channels_of_a_pixel_together() -> None:
    x = grey(2, 3, 16, 16)
    out = SaltPepper(amount=0.25, salt_ratio=1.0)(x, generator=gen(0), bounds=(-1.0, 2.0))
    changed = out != x
    assert torch.equal(changed.all(dim=1), changed.any(dim=1))
    assert float(changed.all(dim=1).float().mean()) == pytest.approx(0.25)
    assert set(out[changed].unique().tolist()) == {2.0}


def test_salt_pepper_pepper_only() -> None:
    out = SaltPepper(amount=1.0, salt_ratio=0.0)(grey(1, 1, 4, 4), generator=gen(0))
    assert torch.equal(out, torch.zeros(1, 1, 4, 4))


@pytest.mark.parametrize("shape", [(1, 1, 9, 9), (1, 2, 7, 8, 9)])
def test_blur_keeps_constant_image(shape: tuple[int, ...]) -> None:
    x = torch.full(shape, 0.3, dtype=torch.float64)
    out = GaussianBlur(sigma=2.0)(x)
    torch.testing.assert_close(out, x, atol=1e-12, rtol=0)


def test_blur_reduces_noise_variance_and_keeps_mean() -> None:
    x = (0.5 + 0.1 * torch.randn((2, 1, 64, 64), generator=gen(0))).clamp(0, 1)
    out = GaussianBlur(sigma=1.5)(x)
    assert float(out.var()) < 0.1 * float(x.var())
    assert float(out.mean()) == pytest.approx(float(x.mean()), abs=2e-3)


def test_blur_impulse_response_is_a_gaussian_of_width_sigma() -> None:
    # Independent check: the response to a unit impulse sums to 1 and its variance along each axis is
    # sigma^2 + 1/12 (the Gaussian integrated over unit pixels, i.e. convolved with a unit box).
    sigma, size = 2.0, 41
    x = torch.zeros((1, 1, size, size), dtype=torch.float64)
    x[0, 0, size // 2, size // 2] = 1.0
    out = GaussianBlur(sigma=sigma)(x, bounds=(0.0, 1.0))[0, 0]
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-6)
    offsets = torch.arange(size, dtype=torch.float64) - size // 2
    for profile in (out.sum(dim=0), out.sum(dim=1)):
        assert float((profile * offsets).sum()) == pytest.approx(0.0, abs=1e-9)
        assert float((profile * offsets**2).sum()) == pytest.approx(sigma**2 + 1 / 12, rel=1e-3)


def test_blur_3d_smooths_along_depth() -> None:
    x = torch.zeros((1, 1, 9, 5, 5))
    x[:, :, 4] = 1.0  # a bright slice
    out = GaussianBlur(sigma=1.0)(x)
    assert out.shape == x.shape
    assert 0 < float(out[0, 0, 3, 2, 2]) < float(out[0, 0, 4, 2, 2]) < 1.0


def test_contrast_by_hand() -> None:
    x = torch.tensor([0.2, 0.4, 0.6, 0.8, 0.1, 0.1, 0.1, 0.5]).view(2, 1, 2, 2)  # means 0.5 and 0.2
    out = Contrast(factor=0.5)(x)
    expected = torch.tensor([0.35, 0.45, 0.55, 0.65, 0.15, 0.15, 0.15, 0.35]).view(2, 1, 2, 2)
    torch.testing.assert_close(out, expected)
    flat = Contrast(factor=0.0)(x)
    torch.testing.assert_close(flat, torch.tensor([0.5] * 4 + [0.2] * 4).view(2, 1, 2, 2))


@pytest.mark.parametrize("distribution", ["gaussian", "uniform_sign"])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_matched_noise_matches_reference_delta_norm(norm: str, distribution: str) -> None:
    x = grey(4, 3, 8, 8, dtype=torch.float64)
    reference = 0.01 * torch.randn(x.shape, generator=gen(5), dtype=torch.float64)
    reference[2] = 0.0
    out = MatchedNoise(reference=reference, norm=norm, distribution=distribution)(x, generator=gen(0))
    delta = (out - x).flatten(1)
    ref = reference.flatten(1)
    if norm == "l2":
        got, want = delta.norm(dim=1), ref.norm(dim=1)
    else:
        got, want = delta.abs().amax(dim=1), ref.abs().amax(dim=1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert torch.equal(out[2], x[2])
    assert not torch.allclose(delta[0].abs(), ref[0].abs())  # a new random direction, not the reference


def test_matched_noise_per_sample_norms_and_sign_noise() -> None:
    x = grey(3, 1, 10, 10)
    norms = torch.tensor([0.1, 0.0, 0.02])
    out = MatchedNoise(reference=norms, norm="l2")(x, generator=gen(1))
    torch.testing.assert_close((out - x).flatten(1).norm(dim=1), norms, atol=1e-5, rtol=0)
    signs = MatchedNoise(reference=torch.tensor([0.03, 0.01, 0.0]), norm="linf", distribution="uniform_sign")
    d = signs(x, generator=gen(1)) - x
    torch.testing.assert_close(d[0].abs(), torch.full_like(d[0], 0.03))
    torch.testing.assert_close(d[1].abs(), torch.full_like(d[1], 0.01))
    assert torch.equal(d[2], torch.zeros_like(d[2]))
    assert 0.3 < float((d[:2] > 0).float().mean()) < 0.7


def test_matched_noise_clipping_only_shrinks() -> None:
    x = torch.rand((2, 1, 8, 8), generator=gen(0))
    norms = torch.tensor([3.0, 5.0])
    out = MatchedNoise(reference=norms)(x, generator=gen(1))
    size = (out - x).flatten(1).norm(dim=1)
    assert bool((size <= norms + 1e-6).all()) and float(out.min()) >= 0 and float(out.max()) <= 1


def test_matched_noise_wrong_reference_shape() -> None:
    noise = MatchedNoise(reference=torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"\(2, 1, 4, 4\).*\(3, 1, 4, 4\)"):
        noise(grey(3, 1, 4, 4))
    with pytest.raises(ValueError, match=r"\(5,\)"):
        MatchedNoise(reference=torch.ones(5))(grey(3, 1, 4, 4))


def test_strength_sweep_through_with_strength() -> None:
    x = grey(2, 1, 32, 32)
    out = GaussianNoise().with_strength(0.0)(x, generator=gen(0), bounds=(0.0, 1.0))
    assert torch.equal(out, x)
    assert GaussianBlur().with_strength(2.0) == GaussianBlur(sigma=2.0)
    with pytest.raises(ValueError, match="no strength parameter"):
        MatchedNoise(reference=torch.zeros(2)).with_strength(0.1)


@pytest.mark.parametrize(
    ("name", "params", "fragment"),
    [
        ("gaussian_noise", {"sigma": -0.1}, r"sigma=-0\.1 .*\[0, inf\)"),
        ("gaussian_noise", {"sigma": math.nan}, "sigma=nan"),
        ("gaussian_noise", {"sigma": "big"}, "sigma='big'"),
        ("salt_pepper", {"amount": 1.5}, r"amount=1\.5 .*\[0, 1\]"),
        ("salt_pepper", {"salt_ratio": -1}, r"salt_ratio=-1 .*\[0, 1\]"),
        ("gaussian_blur", {"sigma": -1.0}, r"sigma=-1\.0"),
        ("gaussian_blur", {"truncated": 0.0}, r"truncated=0\.0 .*> 0"),
        ("contrast", {"factor": -0.5}, r"factor=-0\.5 .*\[0, inf\)"),
        ("matched_noise", {"reference": torch.zeros(2), "norm": "l1"}, "norm='l1'.*l2, linf"),
        ("matched_noise", {"reference": torch.zeros(2), "distribution": "laplace"}, "gaussian, uniform_sign"),
        ("matched_noise", {"reference": torch.tensor([0.1, -0.2])}, ">= 0"),
        ("matched_noise", {"reference": torch.tensor([math.inf])}, "non-finite"),
    ],
)
def test_bad_parameters_raise(name: str, params: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        CORRUPTIONS.build(name, **params)


def test_bad_input_raises() -> None:
    with pytest.raises(TypeError, match="floating-point"):
        GaussianNoise()(torch.zeros(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="bounds"):
        GaussianNoise()(grey(1, 1, 4, 4), bounds=(1.0, 0.0))
