"""MRI artifacts: exact degenerate cases, determinism and replay, shape/dtype/bounds, graded severity, and physics
checked against definitions (Rayleigh statistics, a smooth multiplicative field, k-space footprints)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from medrobust.corruptions import (
    CORRUPTIONS,
    BiasField,
    Downsample,
    Ghosting,
    GibbsRinging,
    MRIArtifact,
    Motion,
    RicianNoise,
    Spike,
    corrupt,
)

MRI = ["bias_field", "downsample", "ghosting", "gibbs", "motion", "rician_noise", "spike"]
RANDOM = [name for name in MRI if name != "gibbs"]  # Gibbs ringing is deterministic
SHAPE_2D = (3, 1, 40, 40)
SHAPE_3D = (1, 1, 24, 28, 20)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def phantom(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N, C, *spatial) smooth brain-like phantom in [0, 0.9]: an ellipsoid with an intensity ramp and an inner
    brighter ellipsoid, zero background. Samples differ by a small shift so per-sample draws matter."""
    n, c, *spatial = shape
    out = torch.empty(shape, dtype=torch.float64)
    for i in range(n):
        grid = torch.meshgrid(*[torch.linspace(-1, 1, s, dtype=torch.float64) for s in spatial], indexing="ij")
        shift = 0.05 * i
        outer = sum(((g - shift) / a) ** 2 for g, a in zip(grid, (0.8, 0.7, 0.75))) < 1
        inner = sum(((g - 0.1) / a) ** 2 for g, a in zip(grid, (0.35, 0.3, 0.3))) < 1
        out[i] = 0.4 * outer + 0.3 * inner + 0.1 * (1 + grid[0]) * outer
    return out.to(dtype)


def build(name: str, strength: float | None = None, **params) -> MRIArtifact:
    cls = CORRUPTIONS.get(name)
    corruption = cls(**params)
    return corruption if strength is None else corruption.with_strength(strength)


def strongest(name: str) -> MRIArtifact:
    return build(name, CORRUPTIONS.get(name).severities[-1])


def test_registered_with_graded_severities() -> None:
    assert set(MRI) <= set(CORRUPTIONS.names())
    for name in MRI:
        cls = CORRUPTIONS.get(name)
        assert issubclass(cls, MRIArtifact) and cls.strength_param is not None
        assert len(cls.severities) == 5 and list(cls.severities) == sorted(set(cls.severities))
        for s in cls.severities:
            build(name, s)  # every graded severity is a valid parameter


@pytest.mark.parametrize("name", MRI)
@pytest.mark.parametrize("shape", [SHAPE_2D, SHAPE_3D])
def test_identity_strength_returns_input_exactly(name: str, shape: tuple[int, ...]) -> None:
    x = phantom(shape, torch.float64)
    corruption = build(name, CORRUPTIONS.get(name).identity_strength)
    assert torch.equal(corruption(x, generator=gen(1)), x)
    assert torch.equal(corruption.replay(x, corruption.draw(x, gen(1))), x)


@pytest.mark.parametrize("name", MRI)
@pytest.mark.parametrize("shape", [(2, 2, 20, 24), (2, 1, 12, 14, 10)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_bounds(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x = (phantom(shape, dtype) * 2 - 1).clamp(-1, 1)
    out = strongest(name)(x, generator=gen(1), bounds=(-1.0, 1.0))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, x)


@pytest.mark.parametrize("name", MRI)
def test_same_generator_same_output_and_global_rngs_untouched(name: str) -> None:
    x = phantom(SHAPE_2D)
    corruption = strongest(name)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    a = corruption(x, generator=gen(7))
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(s, t) for s, t in zip(np.random.get_state()[1:3], numpy_state[1:3]))
    assert torch.equal(a, corruption(x, generator=gen(7)))
    torch.manual_seed(123)
    np.random.seed(123)
    b = corruption(x)
    torch.manual_seed(456)
    np.random.seed(456)
    assert torch.equal(b, corruption(x))  # without a generator: a fixed seed, never the global RNG


@pytest.mark.parametrize("name", RANDOM)
def test_different_generator_different_output(name: str) -> None:
    x = phantom((6, 1, 32, 32))
    corruption = strongest(name)
    assert corruption.draw(x, gen(7)) != corruption.draw(x, gen(8))
    assert not torch.equal(corruption(x, generator=gen(7)), corruption(x, generator=gen(8)))


def test_gibbs_ignores_the_generator() -> None:
    x = phantom(SHAPE_2D)
    assert torch.equal(GibbsRinging(0.5)(x, generator=gen(7)), GibbsRinging(0.5)(x, generator=gen(8)))


@pytest.mark.parametrize("name", MRI)
@pytest.mark.parametrize("shape", [SHAPE_2D, SHAPE_3D])
def test_recorded_draw_replays_the_output(name: str, shape: tuple[int, ...]) -> None:
    x = phantom(shape)
    corruption = strongest(name)
    params = json.loads(json.dumps(corruption.draw(x, gen(5))))  # recorded as plain JSON
    assert params[corruption.strength_param] == getattr(corruption, corruption.strength_param)
    replayed = corruption.replay(x, params, bounds=(0.0, 1.0))
    assert torch.equal(replayed, corruption(x, generator=gen(5), bounds=(0.0, 1.0)))


@pytest.mark.parametrize("name", MRI)
@pytest.mark.parametrize("shape", [SHAPE_2D, SHAPE_3D])
def test_change_grows_with_severity(name: str, shape: tuple[int, ...]) -> None:
    x = phantom(shape)
    cls = CORRUPTIONS.get(name)
    levels = [cls.identity_strength, *cls.severities]
    change = [float((build(name, s)(x, generator=gen(3)) - x).abs().mean()) for s in levels]
    assert change[0] == 0.0
    assert all(b > a for a, b in zip(change, change[1:])), f"{name}: {change}"


# ---- physics -------------------------------------------------------------------------------------------------


def test_rician_noise_on_zero_image_is_rayleigh() -> None:
    sigma = 0.1
    x = torch.full((4, 1, 64, 64), -1.0, dtype=torch.float64)  # the lower bound: no signal
    out = RicianNoise(sigma)(x, generator=gen(0), bounds=(-1.0, 1.0)) + 1.0
    s = sigma * 2.0  # sigma is a fraction of the bounds range (2)
    assert float(out.mean()) == pytest.approx(s * math.sqrt(math.pi / 2), rel=0.02)
    assert float(out.std()) == pytest.approx(s * math.sqrt(2 - math.pi / 2), rel=0.03)


def test_rician_noise_on_bright_signal_is_nearly_gaussian() -> None:
    x = torch.full((4, 1, 64, 64), 0.6, dtype=torch.float64)
    out = RicianNoise(0.02)(x, generator=gen(0))
    # Rician with SNR 30: mean ~ sqrt(A^2 + s^2) ~ A + s^2 / (2A), std ~ s.
    assert float(out.mean()) == pytest.approx(0.6 + 0.02**2 / 1.2, abs=5e-4)
    assert float(out.std()) == pytest.approx(0.02, rel=0.03)


def test_bias_field_is_multiplicative_smooth_polynomial_and_shared_by_channels() -> None:
    x = 0.1 + 0.5 * phantom((2, 2, 48, 40), torch.float64)  # strictly inside (0, 1): no clipping at 0.05
    other = torch.rand(x.shape, generator=gen(9), dtype=torch.float64) * 0.6 + 0.1
    corruption = BiasField(coefficient=0.05, order=3)
    ratio = corruption(x, generator=gen(2)) / x
    assert torch.allclose(ratio, corruption(other, generator=gen(2)) / other, atol=1e-6)  # same field, any image
    assert torch.allclose(ratio[:, 0], ratio[:, 1], atol=1e-6)  # one field for all channels
    assert float(ratio.amax() - ratio.amin()) > 0.05  # a real inhomogeneity ...
    tv = (ratio.diff(dim=-1).abs().mean() + ratio.diff(dim=-2).abs().mean()) / 2
    assert float(tv) < 0.005  # ... that varies slowly: under 0.5% per pixel on average, though x has edges
    # log(field) is a polynomial of degree <= 3 in the coordinates: a least-squares fit leaves ~no residual.
    h, w = x.shape[2:]
    u, v = torch.meshgrid(*[torch.linspace(-1, 1, n, dtype=torch.float64) for n in (h, w)], indexing="ij")
    basis = torch.stack([u**i * v**j for i in range(4) for j in range(4 - i)], dim=-1).reshape(-1, 10)
    for sample in ratio[:, 0].log():
        coef = torch.linalg.lstsq(basis, sample.reshape(-1, 1)).solution
        assert float((basis @ coef - sample.reshape(-1, 1)).abs().max()) < 1e-5


def _spectrum(x: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(2, x.dim()))
    return torch.fft.fftshift(torch.fft.fftn(x.double(), dim=dims), dim=dims)


@pytest.mark.parametrize("axis", [0, 1])
def test_ghosting_changes_only_every_nth_k_space_plane_across_its_axis(axis: int) -> None:
    x = phantom((2, 1, 48, 40))
    corruption = Ghosting(intensity=0.6, num_ghosts=(3, 5), axis=axis)
    params = corruption.draw(x, gen(4))
    out = corruption.replay(x, params, bounds=(-1.0, 2.0))  # wide bounds: no clipping
    diff = _spectrum(out - x).abs() ** 2
    for i, n in enumerate(params["num_ghosts"]):
        size = x.shape[2 + axis]
        planes = {k for k in range(0, size, n) if k != size // 2}  # the kept centre plane is restored
        planes = sorted(planes | {(2 * (size // 2) - k) % size for k in planes})  # the real part mirrors them
        on_planes = diff[i, 0].index_select(axis, torch.tensor(planes)).sum()
        assert float(on_planes) > 0.999 * float(diff[i, 0].sum())
        assert float(diff[i, 0].sum()) > 0


def test_spike_adds_one_plane_wave_at_the_drawn_position() -> None:
    x = phantom((2, 1, 32, 36))
    corruption = Spike(intensity=0.3)
    params = corruption.draw(x, gen(6))
    out = corruption.replay(x, params, bounds=(-1.0, 2.0))
    diff = _spectrum(out - x).abs()
    for i, [position] in enumerate(params["positions"]):
        k = [int(math.floor(p * s)) for p, s in zip(position, x.shape[2:])]
        mirror = [(2 * (s // 2) - kk) % s for kk, s in zip(k, x.shape[2:])]  # the conjugate of a real wave
        energy = diff[i, 0] ** 2
        assert float(energy[tuple(k)] + energy[tuple(mirror)]) > 0.999 * float(energy.sum())
        # The spike is intensity * max|F(x - low)| (the DC term); the real part splits it over k and -k.
        expected = 0.3 * float((x[i] + 1.0).sum())  # the signal is x - low, low = -1
        got = float(diff[i, 0][tuple(k)]) if k == mirror else 2 * float(diff[i, 0][tuple(k)])
        assert got == pytest.approx(expected, rel=1e-3)


def test_gibbs_removes_high_frequencies() -> None:
    x = phantom((2, 1, 64, 64), torch.float64)
    out = GibbsRinging(alpha=0.5)(x, bounds=(-1.0, 2.0))
    yy, xx = torch.meshgrid(torch.arange(64) - 32, torch.arange(64) - 32, indexing="ij")
    radius = (1 - 0.5) * 64 * math.sqrt(2) / 2  # MONAI's mask radius
    high = (yy**2 + xx**2).sqrt() > radius + 1.5
    energy_in, energy_out = (_spectrum(t).abs() ** 2 for t in (x, out))
    assert float(energy_in[..., high].sum()) > 1e-3 * float(energy_in.sum())
    assert float(energy_out[..., high].sum()) < 1e-12 * float(energy_in.sum())
    assert float(energy_out[..., ~high].sum()) > 0.99 * float(energy_in[..., ~high].sum())


def test_motion_keeps_the_k_space_centre_segment_and_changes_the_rest() -> None:
    x = phantom((2, 1, 48, 40))
    corruption = Motion(severity=0.5)
    params = corruption.draw(x, gen(8))
    out = corruption.replay(x, params, bounds=(-1.0, 2.0))
    width = x.shape[-1]
    spec_in, spec_out = _spectrum(x), _spectrum(out)
    for i, times in enumerate(params["times"]):
        start, stop = (int(width * t) for t in times)  # TorchIO fills k-space segments along the last axis
        assert start < width // 2 < stop
        # The segment with the centre comes from the unmoved image; taking the real part mixes each k with -k,
        # so the columns kept exactly are those whose mirror is in the segment too.
        centre = [k for k in range(start, stop) if start <= 2 * (width // 2) - k < stop]
        scale = float(spec_in[i].abs().max())
        assert float((spec_out[i][..., centre] - spec_in[i][..., centre]).abs().max()) < 1e-4 * scale
        outer = [k for k in range(width) if not start <= k < stop]
        assert float((spec_out[i][..., outer] - spec_in[i][..., outer]).abs().max()) > 1e-2 * scale


def test_motion_of_a_constant_volume_is_constant() -> None:
    x = torch.full((1, 1, 16, 18, 14), 0.4)
    out = Motion(severity=1.0)(x, generator=gen(0))
    assert torch.allclose(out, x, atol=1e-5)


def test_downsample_acts_along_its_axis_only() -> None:
    rows = torch.tensor([0.2, 0.8]).repeat(16)  # alternating rows: detail only along axis 0
    x = rows.view(1, 1, 32, 1).expand(1, 1, 32, 30).contiguous()
    along = Downsample(factor=2.0, axis=0)(x)
    across = Downsample(factor=2.0, axis=1)(x)
    assert torch.allclose(across, x, atol=1e-6)  # nothing varies along axis 1
    assert float(along[..., 2:-2, :].std(dim=2).max()) < 1e-6  # every other row kept, then interpolated: flat
    assert torch.allclose(along, along[..., :1], atol=1e-6)  # still constant along axis 1


# ---- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: RicianNoise(sigma=1.5), r"sigma=1\.5 must be a finite number in \[0, 1\]"),
        (lambda: BiasField(coefficient=-0.1), r"coefficient=-0\.1 .*\[0, 1\]"),
        (lambda: BiasField(order=7), r"order=7 must be an integer in \[0, 5\]"),
        (lambda: Ghosting(intensity=2.0), r"intensity=2\.0 .*\[0, 1\]"),
        (lambda: Ghosting(num_ghosts=(1, 3)), r"num_ghosts\[0\]=1 must be an integer in \[2, inf\)"),
        (lambda: Ghosting(num_ghosts=5), r"num_ghosts=5 must be a pair"),
        (lambda: Ghosting(axis=3), r"axis=3 must be an integer in \[0, 2\]"),
        (lambda: Motion(severity=float("nan")), r"severity=nan"),
        (lambda: Motion(num_transforms=0), r"num_transforms=0 must be an integer in \[1, inf\)"),
        (lambda: Spike(intensity=-1), r"intensity=-1 .*\[0, inf\)"),
        (lambda: GibbsRinging(alpha=1.2), r"alpha=1\.2 .*\[0, 1\]"),
        (lambda: Downsample(factor=0.5), r"factor=0\.5 .*\[1, inf\)"),
    ],
)
def test_invalid_parameters_name_value_and_range(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_inputs_must_be_2d_or_3d_and_axes_must_exist() -> None:
    with pytest.raises(ValueError, match=r"2D slices \(N, C, H, W\) or 3D volumes"):
        Ghosting()(torch.zeros(2, 1, 16), generator=gen(0))
    with pytest.raises(ValueError, match="axis=2 is not a spatial axis of a 2D input"):
        Downsample(axis=2)(torch.zeros(2, 1, 16, 16), generator=gen(0))


def test_built_from_config_values() -> None:
    out = corrupt("ghosting", phantom((1, 1, 16, 16)), generator=gen(0), intensity=0.5, num_ghosts=[2, 4])
    assert out.shape == (1, 1, 16, 16)
    assert CORRUPTIONS.build("ghosting", num_ghosts=[2, 4]).num_ghosts == (2, 4)
