"""``derm-synth``: a procedural, dermoscopy-like skin-lesion dataset with the three ISIC 2017 classes.

THIS DATA IS SYNTHETIC. It exists so that demos, tutorials and tests run offline in seconds; it makes no clinical
claim, and no result obtained on it says anything about real patients or real dermoscopy models.

The three classes follow the ISIC 2017 challenge used by Paschali et al. (MICCAI 2018), and they differ the way
the clinical ABCD rule says (Asymmetry, Border, Colour, Diameter):

- ``nevus``: symmetric round/oval, regular smooth border, one or two homogeneous brown tones, smaller diameter.
- ``melanoma``: asymmetric, irregular notched border, colour variegation (dark brown/black, blue-grey veil,
  red areas, white regression), larger diameter on average.
- ``seborrheic_keratosis``: waxy "stuck-on" lesion with a sharp, well-demarcated border, light to dark brown,
  cerebriform (gyri/sulci) texture with milia-like white dots and comedo-like dark openings.

Nuisances shared by all classes: skin tone (fair to dark) and skin texture, hair strands, an illumination
gradient, dermoscope vignetting (sometimes the black circular field), scale, rotation, position, sensor noise.

The classes overlap on purpose: each sample draws three feature groups (size, border, pigment pattern); each
group comes from another class's look with probability ``overlap`` (atypical nevi, small featureless melanomas,
flat untextured keratoses). With the default overlap a small CNN trained for a few epochs lands well below 100%
clean accuracy, and a mean-colour + lesion-size baseline lands far below that.

Images are float32 (3, size, size) in [0, 1] (stored as uint8, scaled by 1/255 on access). Generation is
deterministic from (seed, split): each split has its own random stream, and sample ``i`` has its own child stream,
so the first k samples do not depend on ``n``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from medrobust.data.base import (
    DATASETS,
    TensorImageDataset,
    check_split,
    float_param,
    int_param,
    numbers_param,
    seed_param,
)

CLASS_NAMES = ("nevus", "melanoma", "seborrheic_keratosis")
NEVUS, MELANOMA, SK = 0, 1, 2
DEFAULT_N = {"train": 1200, "val": 300, "test": 300}
DEFAULT_OVERLAP = 0.15
_SPLIT_CODE = {"train": 101, "val": 202, "test": 303}

# Per-channel optical densities (RGB) per unit of pigment: the lesion multiplies the skin by exp(-density * eps).
_EPS_BROWN = np.array([0.55, 0.85, 1.10])
_EPS_BLACK = np.array([1.00, 1.00, 0.95])
_EPS_BLUE = np.array([1.00, 0.55, 0.12])
_EPS_RED = np.array([0.08, 1.00, 0.60])
_EPS_WAXY = np.array([0.40, 0.62, 1.05])
# Lesion size (mean radius, in half-image units) and elongation ranges per class: D of the ABCD rule.
_RADIUS = {NEVUS: (0.24, 0.42), MELANOMA: (0.36, 0.62), SK: (0.28, 0.52)}
_ASPECT = {NEVUS: (1.0, 1.3), MELANOMA: (1.0, 1.5), SK: (1.05, 1.45)}
_FAIR_SKIN = np.array([0.95, 0.80, 0.72])
_DARK_SKIN = np.array([0.50, 0.34, 0.25])


class DermSynthDataset(TensorImageDataset):
    """The in-memory synthetic dermoscopy dataset (see the module docstring)."""

    name = "derm-synth"


#: the largest image side and the most bytes of images (uint8) one split may be built with
MAX_SIZE = 1024
MAX_BYTES = 4 * 2**30


@DATASETS.register("derm-synth")
def build_derm_synth(
    split: str = "test",
    size: int = 64,
    n: int | None = None,
    seed: int = 0,
    overlap: float = DEFAULT_OVERLAP,
    class_prior: Sequence[float] | None = None,
) -> DermSynthDataset:
    """Build the ``split`` of derm-synth: ``n`` RGB images (3, size, size) in [0, 1].

    n defaults to 1200 / 300 / 300 for train / val / test. ``overlap`` in [0, 1] is the probability that each
    of the three feature groups (size, border, pigment) is drawn from another class (0: cleanly separable
    classes; the default keeps a small CNN well below 100%). ``class_prior`` (3 weights) draws labels at random
    with those proportions; by default labels are exactly balanced in every block of three samples.
    """
    check_split(split)
    size = int_param(size, "size", "derm-synth", unit="pixels")  # a whole number: 1.5 or "abc" is not truncated
    if size < 16:
        raise ValueError(f"size={size!r} must be >= 16 pixels")
    if size > MAX_SIZE:
        raise ValueError(f"size={size!r} must be <= {MAX_SIZE} pixels")
    n = DEFAULT_N[split] if n is None else int_param(n, "n", "derm-synth")
    if n < 1:
        raise ValueError(f"n={n!r} must be >= 1")
    seed = seed_param(seed, "derm-synth")
    overlap = float_param(overlap, "overlap", "derm-synth", low=0.0, high=1.0)
    if n * 3 * size * size > MAX_BYTES:
        raise ValueError(
            f"n={n} images of {size}x{size} would take {n * 3 * size * size / 2**30:.1f} GiB (at most "
            f"{MAX_BYTES / 2**30:.0f} GiB); use fewer or smaller images"
        )
    prior = None
    if class_prior is not None:
        p = np.asarray(numbers_param(class_prior, "class_prior", 3, "derm-synth", "weights of the 3 classes"))
        if (p < 0).any() or p.sum() <= 0:
            raise ValueError(f"class_prior={class_prior!r} must be 3 non-negative weights, not all zero")
        prior = tuple(float(v) for v in p / p.sum())
    images, labels = _generate(int(seed), split, n, size, float(overlap), prior)
    ids = [f"derm-synth-{split}-{i:06d}" for i in range(n)]
    return DermSynthDataset(images, labels, ids, CLASS_NAMES, split)


@functools.lru_cache(maxsize=16)
def _generate(
    seed: int, split: str, n: int, size: int, overlap: float, prior: tuple[float, ...] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """All images (n, 3, size, size) uint8 and labels (n,) of one split; cached, so treat them as read-only."""
    root = np.random.SeedSequence([seed, _SPLIT_CODE[split]])
    labels = _labels(np.random.default_rng(root.spawn(1)[0]), n, prior)
    children = np.random.SeedSequence([seed, _SPLIT_CODE[split], 1]).spawn(n)
    grid = _Grid.get(size)
    out = np.empty((n, 3, size, size), dtype=np.uint8)
    for i in range(n):
        img = _render(np.random.default_rng(children[i]), int(labels[i]), grid, overlap)
        out[i] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return torch.from_numpy(out), torch.from_numpy(labels.astype(np.int64))


def _labels(rng: np.random.Generator, n: int, prior: tuple[float, ...] | None) -> np.ndarray:
    if prior is not None:
        return rng.choice(3, size=n, p=prior)
    blocks = -(-n // 3)
    return rng.permuted(np.tile(np.arange(3), (blocks, 1)), axis=1).reshape(-1)[:n]


class _Grid:
    """Coordinates in [-1, 1] and smoothing matrices for one image size (built once per size)."""

    _cache: dict[int, _Grid] = {}

    def __init__(self, size: int) -> None:
        self.size = size
        self.px = 2.0 / size
        c = (np.arange(size) + 0.5) * self.px - 1.0
        self.c = c
        self.X, self.Y = np.meshgrid(c, c)
        self.R = np.hypot(self.X, self.Y)
        self._smooth: dict[int, np.ndarray] = {}

    @classmethod
    def get(cls, size: int) -> _Grid:
        if size not in cls._cache:
            cls._cache[size] = _Grid(size)
        return cls._cache[size]

    def smoother(self, k: int) -> np.ndarray:
        """(size, k) Gaussian interpolation from a k x k lattice, rows scaled so the field has unit variance."""
        if k not in self._smooth:
            nodes = np.linspace(-1.15, 1.15, k)
            s = 2.3 / (k - 1)
            w = np.exp(-0.5 * ((self.c[:, None] - nodes[None, :]) / s) ** 2)
            self._smooth[k] = w / np.sqrt((w**2).sum(1, keepdims=True))
        return self._smooth[k]

    def noise(self, rng: np.random.Generator, k: int, m: int = 1) -> np.ndarray:
        """m smooth Gaussian random fields (m, size, size), unit variance, correlation length ~ 2/k."""
        u = self.smoother(k)
        return u @ rng.standard_normal((m, k, k)) @ u.T

    def dots(self, centres: np.ndarray, radius: np.ndarray) -> np.ndarray:
        """Sum of isotropic Gaussian bumps (peak 1) at centres (m, 2) with radii (m,): (size, size)."""
        gx = np.exp(-0.5 * ((self.c[None, :] - centres[:, :1]) / radius[:, None]) ** 2)
        gy = np.exp(-0.5 * ((self.c[None, :] - centres[:, 1:]) / radius[:, None]) ** 2)
        return np.minimum(gy.T @ gx, 1.0)


def _look(rng: np.random.Generator, label: int, overlap: float) -> tuple[int, int, int]:
    """Which class each feature group (size, border, pigment) is drawn from."""
    groups = []
    for _ in range(3):
        if rng.random() < overlap:
            groups.append(int((label + rng.integers(1, 3)) % 3))
        else:
            groups.append(label)
    return groups[0], groups[1], groups[2]


def _render(rng: np.random.Generator, label: int, g: _Grid, overlap: float) -> np.ndarray:
    size_cls, border_cls, pigment_cls = _look(rng, label, overlap)
    zoom = rng.uniform(0.85, 1.15)  # scale nuisance, shared by all classes

    # D (diameter): the mean radius in units of the half-image.
    r0 = zoom * rng.uniform(*_RADIUS[size_cls])
    aspect = rng.uniform(*_ASPECT[size_cls])
    cx, cy = np.clip(rng.normal(0.0, 0.08, 2), -0.2, 0.2)
    rot = rng.uniform(0, 2 * np.pi)
    dx, dy = g.X - cx, g.Y - cy
    u = (dx * np.cos(rot) + dy * np.sin(rot)) / np.sqrt(aspect)
    v = (-dx * np.sin(rot) + dy * np.cos(rot)) * np.sqrt(aspect)
    r = np.hypot(u, v)
    phi = np.arctan2(v, u)

    # A and B (asymmetry, border): a radius that varies with the angle, and the edge's sharpness.
    boundary, edge = _border(rng, border_cls, phi, g)
    boundary = r0 * np.maximum(boundary, 0.35)
    alpha = 1.0 / (1.0 + np.exp(-np.clip((boundary - r) / edge, -30, 30)))
    rho = np.clip(r / boundary, 0.0, 1.5)

    skin = _skin(rng, g)
    density = np.zeros((3, g.size, g.size))  # optical density per channel inside the lesion
    whiten = np.zeros((g.size, g.size))
    # C (colour) and texture.
    if pigment_cls == NEVUS:
        _nevus_pigment(rng, g, rho, density)
    elif pigment_cls == MELANOMA:
        whiten = _melanoma_pigment(rng, g, rho, phi, density)
    else:
        whiten = _sk_pigment(rng, g, rho, u, v, density)
    img = skin * np.exp(-density * alpha[None])
    w = whiten * alpha
    img = img * (1 - w) + w * np.array([0.93, 0.90, 0.86])[:, None, None]

    img = _hair(rng, g, img)
    return _optics(rng, g, img)


def _border(rng: np.random.Generator, cls: int, phi: np.ndarray, g: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """Relative boundary radius b(phi) (mean ~1) and the edge width (a scalar or a field)."""
    n_notch: int | np.integer
    edge: float | np.ndarray
    if cls == NEVUS:
        a1, a_low, a_high, n_notch = rng.uniform(0, 0.04), rng.uniform(0, 0.05), rng.uniform(0, 0.015), 0
        edge = rng.uniform(0.025, 0.05)
    elif cls == MELANOMA:
        a1, a_low, a_high = rng.uniform(0.05, 0.16), rng.uniform(0.05, 0.16), rng.uniform(0.03, 0.08)
        n_notch = rng.integers(1, 5)
        # Part of the border ends abruptly, part fades out.
        edge = rng.uniform(0.015, 0.04) * (1 + 0.85 * np.cos(phi - rng.uniform(0, 2 * np.pi)))
    else:
        a1, a_low, a_high, n_notch = rng.uniform(0, 0.06), rng.uniform(0.02, 0.08), rng.uniform(0.01, 0.035), 0
        edge = rng.uniform(0.006, 0.014)  # well demarcated, "stuck on"
    # Harmonics k = 1..12 of the angle as Re(c_k z^k), z = exp(i phi): powers are cheaper than cosines.
    ks = np.arange(1, 13)
    amps = np.empty(12)
    amps[0], amps[1], amps[2] = a1, a_low, 0.7 * a_low
    amps[3:] = a_high * rng.uniform(0.3, 1.0, 9) / np.sqrt(ks[3:] / 4)
    coef = amps * np.exp(1j * rng.uniform(0, 2 * np.pi, 12))
    z = np.exp(1j * phi)
    zk = np.ones_like(z)
    b = np.ones_like(phi)
    for c in coef:
        zk = zk * z
        b += (c * zk).real
    for _ in range(n_notch):
        centre, width = rng.uniform(-np.pi, np.pi), rng.uniform(0.08, 0.25)
        d = np.angle(np.exp(1j * (phi - centre)))
        b -= rng.uniform(0.1, 0.3) * np.exp(-0.5 * (d / width) ** 2)
    return b, np.maximum(edge, g.px * 0.25)


def _skin(rng: np.random.Generator, g: _Grid) -> np.ndarray:
    """Skin colour (3, S, S): a tone from fair to dark, mottled texture, faint erythema."""
    t = rng.uniform(0, 1) ** 1.4
    tone = (1 - t) * _FAIR_SKIN + t * _DARK_SKIN
    tone = tone * rng.uniform(0.95, 1.05, 3)
    fields = g.noise(rng, 10, 2)
    mottle = 1 + rng.uniform(0.01, 0.05) * fields[0]
    red = rng.uniform(0, 0.12) * np.clip(fields[1], 0, None)
    skin = tone[:, None, None] * mottle[None] * np.exp(-red[None] * _EPS_RED[:, None, None])
    return skin


def _nevus_pigment(rng: np.random.Generator, g: _Grid, rho: np.ndarray, density: np.ndarray) -> None:
    """One or two homogeneous brown tones, centre vs periphery."""
    d_centre = rng.uniform(0.6, 1.5)
    d_edge = d_centre * (rng.uniform(0.55, 1.0) if rng.random() < 0.6 else rng.uniform(1.0, 1.3))
    d = d_centre + (d_edge - d_centre) * np.clip(rho, 0, 1) ** 2
    d = d * (1 + 0.05 * g.noise(rng, 8)[0])
    density += d[None] * _EPS_BROWN[:, None, None]


def _patches(rng: np.random.Generator, g: _Grid, rho: np.ndarray, phi: np.ndarray, fracs: np.ndarray) -> np.ndarray:
    """Soft blotch masks (m, S, S) pushed off-centre (asymmetric); mask j covers about fracs[j] of the lesion."""
    m = fracs.size
    ang = rng.uniform(0, 2 * np.pi, m)[:, None, None]
    z = g.noise(rng, 7, m) + 1.2 * rho[None] * np.cos(phi[None] - ang)
    inside = z[:, rho < 1.0]
    if inside.shape[1] == 0:
        return np.zeros_like(z)
    thr = np.array([np.quantile(inside[j], 1 - fracs[j]) for j in range(m)])
    return 1.0 / (1.0 + np.exp(-np.clip((z - thr[:, None, None]) * 4.0, -30, 30)))


def _melanoma_pigment(
    rng: np.random.Generator, g: _Grid, rho: np.ndarray, phi: np.ndarray, density: np.ndarray
) -> np.ndarray:
    """Colour variegation: uneven brown, black, blue-grey veil, red areas, white regression. Returns whitening."""
    base = rng.uniform(0.9, 1.8)
    d = base * (1 + rng.uniform(0.2, 0.45) * g.noise(rng, 6)[0])
    density += np.clip(d, 0.2, None)[None] * _EPS_BROWN[:, None, None]
    present = rng.random(4) < np.array([0.75, 0.55, 0.45, 0.3])
    if not present.any():
        present[rng.integers(0, 3)] = True
    fracs = rng.uniform(0.12, 0.4, 4)
    masks = _patches(rng, g, rho, phi, fracs)
    if present[0]:
        density += rng.uniform(1.2, 2.4) * masks[0][None] * _EPS_BLACK[:, None, None]
    if present[1]:
        density += rng.uniform(0.6, 1.1) * masks[1][None] * _EPS_BLUE[:, None, None]
    if present[2]:
        density += rng.uniform(0.5, 1.0) * masks[2][None] * _EPS_RED[:, None, None]
    whiten = rng.uniform(0.3, 0.6) * masks[3] if present[3] else np.zeros_like(rho)
    return whiten


def _sk_pigment(
    rng: np.random.Generator, g: _Grid, rho: np.ndarray, u: np.ndarray, v: np.ndarray, density: np.ndarray
) -> np.ndarray:
    """Waxy light-to-dark brown, cerebriform ridges, milia-like white dots, comedo-like openings."""
    base = rng.uniform(0.5, 1.6)
    ridges = 0.5 + 0.5 * np.cos(2 * np.pi * rng.uniform(1.5, 3.0) * g.noise(rng, 9)[0])
    d = base * (1 + rng.uniform(0.25, 0.45) * (ridges - 0.5)) * (1 + 0.05 * g.noise(rng, 6)[0])
    density += d[None] * _EPS_WAXY[:, None, None]
    inside = np.flatnonzero(rho.reshape(-1) < 0.85)
    if inside.size == 0:
        return np.zeros_like(rho)
    n_milia, n_comedo = rng.integers(3, 13), rng.integers(3, 11)
    picks = rng.choice(inside, n_milia + n_comedo)
    centres = np.stack([g.X.reshape(-1)[picks], g.Y.reshape(-1)[picks]], 1)
    radius = rng.uniform(0.6, 1.2, picks.size) * g.px
    comedo = g.dots(centres[n_milia:], radius[n_milia:])
    density += rng.uniform(0.8, 1.6) * comedo[None] * _EPS_BLACK[:, None, None]
    milia = g.dots(centres[:n_milia], radius[:n_milia])
    sheen = rng.uniform(0.0, 0.15) * np.clip(1 - np.hypot(u - 0.1, v - 0.1) * 3, 0, 1)
    return np.clip(0.8 * milia + sheen, 0, 1)


def _hair(rng: np.random.Generator, g: _Grid, img: np.ndarray) -> np.ndarray:
    """Random curved dark hair strands (none in about 40% of the images)."""
    m = 0 if rng.random() < 0.4 else int(rng.integers(1, 9))
    if m == 0:
        return img
    ang = rng.uniform(0, np.pi, m)[:, None, None]
    off = rng.uniform(-0.9, 0.9, m)[:, None, None]
    c2, c3 = rng.uniform(-0.5, 0.5, m)[:, None, None], rng.uniform(-0.2, 0.2, m)[:, None, None]
    start, length = rng.uniform(-1.4, 0.2, m)[:, None, None], rng.uniform(0.8, 2.5, m)[:, None, None]
    width = rng.uniform(0.35, 0.8, m)[:, None, None] * g.px
    dark = rng.uniform(0.5, 0.85, m)[:, None, None]
    # float32 halves the cost of these (m, S, S) fields.
    x, y = g.X.astype(np.float32)[None], g.Y.astype(np.float32)[None]
    s = np.cos(ang, dtype=np.float32) * x + np.sin(ang, dtype=np.float32) * y
    t = np.cos(ang, dtype=np.float32) * y - np.sin(ang, dtype=np.float32) * x
    along = np.clip((s - start) / 0.1, 0, 1) * np.clip((start + length - s) / 0.1, 0, 1)
    d = (t - off - (c2 + c3 * s) * s * s) / width
    cover = (dark * along * np.exp(-0.5 * d * d)).sum(0)
    cover = np.clip(cover, 0.0, 0.9)[None]
    hair_colour = np.array([0.12, 0.08, 0.06])[:, None, None]
    return img * (1 - cover) + hair_colour * cover


def _optics(rng: np.random.Generator, g: _Grid, img: np.ndarray) -> np.ndarray:
    """Illumination gradient, vignetting (sometimes the dermoscope's black circle), sensor noise."""
    beta = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0, 0.15) * (np.cos(beta) * g.X + np.sin(beta) * g.Y)
    rmax = np.sqrt(2.0)
    vig = 1 - rng.uniform(0.1, 0.5) * np.clip((g.R - 0.6) / (rmax - 0.6), 0, 1) ** 2
    field = light * vig
    if rng.random() < 0.3:
        radius = rng.uniform(1.0, 1.3)
        field = field / (1 + np.exp((g.R - radius) / 0.03))
    img = img * field[None]
    img = img + rng.uniform(0.005, 0.02) * rng.standard_normal(img.shape)
    return np.clip(img, 0.0, 1.0)
