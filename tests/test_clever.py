"""CLEVER: exact on a linear classifier, below the minimal perturbations real attacks find on a ReLU network,
and degenerate extreme-value fits caught."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import medrobust
from medrobust.attacks import CarliniWagnerL2 as CW, DeepFool
from medrobust.metrics.clever import clever_estimate, fit_location, sample_ball


def linear_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    with torch.no_grad():
        net[1].weight.mul_(4.0)
    return net.double()


@pytest.mark.parametrize(("norm", "q"), [("l2", 2.0), ("linf", 1.0), ("l1", math.inf)])
def test_linear_classifier_matches_the_exact_distance(norm, q):
    """For logits Wx + b the margin to class j falls at exactly ||w_c - w_j||_q per unit of ||delta||_p, so
    the distance to the nearest boundary is min_j (z_c - z_j) / ||w_c - w_j||_q (q the dual norm)."""
    net = linear_net()
    x = torch.rand(20, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.5 + 0.25
    with torch.no_grad():
        z = net(x)
    y = z.argmax(1)  # every sample correct
    w = net[1].weight.detach()
    exact = torch.stack([
        torch.stack([(z[i, y[i]] - z[i, j]) / (w[y[i]] - w[j]).norm(p=q) for j in range(3) if j != y[i]]).min()
        for i in range(20)
    ])
    est = clever_estimate(net, x, y, norm=norm, n_batches=10, batch_size=5, radius=100.0,
                          bounds=(-1e3, 1e3), generator=torch.Generator().manual_seed(0))
    assert est.fit == ["constant"] * 20 and not est.flagged.any()
    assert torch.allclose(est.scores, exact, rtol=0.05)
    assert torch.allclose(est.scores, exact, rtol=1e-9)  # in fact exact: the gradient is the same everywhere
    assert torch.equal(medrobust.clever(net, x, y, norm=norm, radius=100.0, bounds=(-1e3, 1e3)), est.scores)


def test_misclassified_samples_score_zero_and_radius_caps():
    net = linear_net()
    x = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        pred = net(x).argmax(1)
    y = pred.clone()
    y[0] = (pred[0] + 1) % 3
    est = clever_estimate(net, x, y, radius=1e-4, bounds=(-10.0, 10.0))
    assert est.scores[0] == 0 and est.fit[0] == "misclassified"
    assert torch.all(est.scores[1:] <= 1e-4) and torch.all(est.scores[1:] > 0)


def test_ball_samples_stay_in_their_ball():
    center = torch.zeros(2, 1, 5, 5, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    for norm, p in (("l2", 2), ("linf", math.inf), ("l1", 1)):
        pts = sample_ball(center, 4000, 0.7, norm, gen)
        sizes = pts.flatten(2).norm(p=p, dim=2)
        assert float(sizes.max()) <= 0.7 + 1e-12
        # uniform in the ball: the radius fraction r has P(r <= t) = t^25, so the median is 0.5^(1/25) = 0.973
        assert float(sizes.median() / 0.7) == pytest.approx(0.5 ** (1 / 25), abs=0.01)


def test_degenerate_fits_are_caught():
    rng = np.random.default_rng(0)
    sample = 2.0 - rng.weibull(3.0, 1000) * 0.5  # reverse Weibull with upper end 2.0
    loc, how = fit_location(sample)
    # the maximum-likelihood upper end, within 5% (over 20 seeds it fell within 2.6%)
    assert how == "weibull" and float(sample.max()) <= loc and loc == pytest.approx(2.0, rel=0.05)
    assert loc == pytest.approx(2.0302, abs=1e-3)  # scipy.stats.weibull_max.fit gives 2.0302 on this sample
    assert fit_location(np.full(10, 0.7)) == (0.7, "constant")
    # nine tiny maxima and one large: scipy's unguided fit puts the upper end near 6e7, which would make the
    # score ~1e-8 (the spurious scores ART reports); here the likelihood has no interior optimum, so the
    # observed maximum is used and flagged
    degenerate = np.array([1e-6] * 9 + [1.0])
    from scipy import stats as sps

    assert sps.weibull_max.fit(degenerate)[1] > 1e3
    assert fit_location(degenerate) == (1.0, "max")


def test_batched_fits_agree_with_scipy():
    """Where scipy's own maximum-likelihood fit converges to an acceptable location, ours finds the same one."""
    import warnings

    from scipy import stats as sps

    from medrobust.metrics.clever import fit_locations

    rng = np.random.default_rng(0)
    data = 2.0 - rng.weibull(2.5, (40, 50)) * 0.5
    ours, how = fit_locations(data)
    agree = 0
    for row, loc, h in zip(data, ours, how):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = sps.weibull_max.fit(row)[1]
        if h == "weibull" and row.max() <= ref <= 2 * row.max():
            agree += abs(loc - ref) <= 1e-3 * ref
    assert agree >= 36, agree  # of 40


def test_degenerate_fits_flag_their_samples(monkeypatch):
    import medrobust.metrics.clever as C

    def no_fit(maxima):  # every fit degenerate
        return np.asarray(maxima).max(axis=1), ["max"] * len(maxima)

    monkeypatch.setattr(C, "fit_locations", no_fit)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 3)).double()
    x = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        y = net(x).argmax(1)
    est = C.clever_estimate(net, x, y, radius=2.0)
    assert est.flagged.all() and est.fit == ["max"] * 3
    # the scores then rest on the largest observed gradient norms: margin / max norm per class
    assert torch.all(est.scores > 0)


def test_relu_network_scores_lie_below_the_minimal_attacks():
    """A small ReLU network trained on two Gaussian blobs: CLEVER (L2) must not exceed the smallest adversarial
    L2 perturbation DeepFool or C&W finds, for at least 95% of the samples both attacks break."""
    gen = torch.Generator().manual_seed(0)
    n, d = 400, 16
    y = torch.randint(0, 2, (n,), generator=gen)
    x = (0.5 + 0.08 * torch.randn(n, 1, 4, 4, generator=gen) + (y.view(-1, 1, 1, 1) * 2 - 1) * 0.06).clamp(0, 1)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    xs, ys = x[:60], y[:60]
    with torch.no_grad():
        ok = net(xs).argmax(1) == ys
    assert int(ok.sum()) >= 50
    xs, ys = xs[ok], ys[ok]
    sizes = []
    for attack in (DeepFool(steps=100), CW(steps=200, binary_search_steps=6)):
        adv = attack(net, "classification", xs, ys, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            fooled = net(adv).argmax(1) != ys
        size = (adv - xs).flatten(1).norm(dim=1)
        sizes.append(torch.where(fooled, size, torch.full_like(size, math.inf)))
    minimal = torch.minimum(*sizes)
    broken = torch.isfinite(minimal)
    assert int(broken.sum()) >= 0.9 * len(ys)
    est = clever_estimate(net, xs, ys, norm="l2", n_batches=50, batch_size=100, radius=2.0,
                          generator=torch.Generator().manual_seed(0))
    below = (est.scores[broken].float() <= minimal[broken] + 1e-6).float().mean()
    assert float(below) >= 0.95, (est.scores[broken], minimal[broken])
    assert float(est.scores[broken].median()) > 0.3 * float(minimal[broken].median())  # not vacuous
