"""CLEVER: exact on a linear classifier, below the minimal perturbations real attacks find on a ReLU network,
degenerate extreme-value fits caught and resolved by adaptive sampling, and the summary rows (the 20% withhold
rule, the share above the attacks' distances) on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import medrobust
from medrobust.attacks import CarliniWagnerL2 as CW
from medrobust.attacks import DeepFool
from medrobust.config import CleverSpec
from medrobust.metrics.clever import attack_distances, clever_estimate, fit_location, sample_ball
from medrobust.results import clever_rows


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
    exact = torch.stack(
        [
            torch.stack([(z[i, y[i]] - z[i, j]) / (w[y[i]] - w[j]).norm(p=q) for j in range(3) if j != y[i]]).min()
            for i in range(20)
        ]
    )
    est = clever_estimate(
        net,
        x,
        y,
        norm=norm,
        n_batches=10,
        batch_size=5,
        radius=100.0,
        bounds=(-1e3, 1e3),
        generator=torch.Generator().manual_seed(0),
    )
    assert est.fit == ["constant"] * 20 and not est.flagged.any()
    assert est.batches.tolist() == [10] * 20  # an accepted first draw draws no more
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
    assert est.scores[0] == 0 and est.fit[0] == "misclassified" and est.batches[0] == 0  # not sampled
    assert torch.isnan(est.per_class[0]).all()
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


def test_degenerate_fits_draw_more_batches_up_to_the_budget(monkeypatch):
    """A fit that stays degenerate below 40 maxima: the samples double 10 -> 20 -> 40 batches and are refitted
    on all their maxima; with a budget of 30 the last round draws 10 and the samples stay flagged."""
    import medrobust.metrics.clever as C

    real, widths = C.fit_locations, []  # the real fit's locations, its verdict replaced

    def needs_40(maxima):
        widths.append(maxima.shape[1])
        locs, how = real(maxima)
        return locs, ["weibull" if maxima.shape[1] >= 40 else "max"] * len(maxima)

    monkeypatch.setattr(C, "fit_locations", needs_40)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 3)).double()
    x = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        y = net(x).argmax(1)
    est = C.clever_estimate(net, x, y, radius=2.0, n_batches=10, max_batches=80)
    assert widths == [10, 20, 40] and est.batches.tolist() == [40] * 3 and not est.flagged.any()
    widths.clear()
    est = C.clever_estimate(net, x, y, radius=2.0, n_batches=10, max_batches=30)
    assert widths == [10, 20, 30] and est.batches.tolist() == [30] * 3
    assert est.flagged.all() and est.fit == ["max"] * 3
    # the scores then rest on the largest observed gradient norms: margin / max norm per class
    assert torch.all(est.scores > 0)
    with pytest.raises(ValueError, match="max_batches=5 must be >= n_batches=10"):
        C.clever_estimate(net, x, y, n_batches=10, max_batches=5)


class Quadratic(nn.Module):
    """Two logits (w.x + a ||x - 0.5||^2, 0): the margin's gradient w + 2a (x - 0.5) has a norm that is close to
    normal over a ball in 48 dimensions, as a trained network's is (Gumbel-like batch maxima, whose reverse Weibull
    fit often runs off)."""

    def __init__(self, d: int = 48, a: float = 2.0) -> None:
        super().__init__()
        self.w = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        self.a = a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.flatten(1)
        g = f @ self.w + self.a * ((f - 0.5) ** 2).sum(1)
        return torch.stack([g, torch.zeros_like(g)], 1)


def test_adaptive_sampling_resolves_degenerate_first_draws():
    net = Quadratic()
    x = 0.5 + 0.05 * torch.randn(60, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        y = net(x).argmax(1)

    def run(max_batches):
        return clever_estimate(
            net,
            x,
            y,
            n_batches=10,
            batch_size=5,
            radius=1.0,
            max_batches=max_batches,
            bounds=(-10.0, 10.0),
            generator=torch.Generator().manual_seed(0),
        )

    fixed, adaptive = run(10), run(160)
    assert int(fixed.flagged.sum()) == 14  # 23% of the first draws of 10 maxima are degenerate
    assert not adaptive.flagged.any() and set(adaptive.fit) == {"weibull"}
    # the first draw is the same; exactly the samples degenerate in it drew more, by doubling
    assert torch.equal(adaptive.batches > 10, fixed.flagged)
    assert set(adaptive.batches.tolist()) == {10, 20, 40, 80} and float(adaptive.batches.double().mean()) == 16.0
    assert torch.equal(adaptive.scores[~fixed.flagged], fixed.scores[~fixed.flagged])
    assert torch.equal(run(160).scores, adaptive.scores)  # deterministic through the generator
    # the gradient norm at a point: ||c + 2a delta|| with c the gradient at the centre, so a typical point of the
    # sphere of radius 1 has sqrt(||c||^2 + (2a)^2) and the exact Lipschitz constant over the ball is ||c|| + 2a:
    # the fitted upper end lies above the typical norm and, in the median, below the exact constant, which random
    # points (almost orthogonal to c in 48 dimensions) do not reach
    centre = (net.w + 2 * net.a * (x.flatten(1) - 0.5)).norm(dim=1)
    lip = adaptive.lipschitz.gather(1, (1 - y).unsqueeze(1))[:, 0]  # towards the other class
    assert torch.all(lip >= centre)
    assert float((lip / (centre**2 + (2 * net.a) ** 2).sqrt()).median()) == pytest.approx(1.14, abs=0.01)
    assert float((lip / (centre + 2 * net.a)).median()) == pytest.approx(0.84, abs=0.01)


def test_relu_network_scores_lie_below_the_minimal_attacks():
    """A small ReLU network trained on two Gaussian blobs: CLEVER (L2) should not exceed the smallest adversarial
    L2 perturbation DeepFool or C&W finds on the samples the attacks break (here: all 60)."""
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
    # batches of 5 points (ART's), adaptive: every score below the attacks' distance (a fixed 50 x 100 points leaves
    # 19 of these fits degenerate, adaptive 10 x 5 none)
    est = clever_estimate(net, xs, ys, norm="l2", batch_size=5, generator=torch.Generator().manual_seed(0))
    assert not est.flagged.any()
    assert bool((est.scores[broken].float() <= minimal[broken] + 1e-6).all()), (est.scores[broken], minimal[broken])
    # the defaults' batches of 2 points (40% of the network work; bench/clever.py): 56 of the 60 below, the other
    # four less than 10% above (random points miss the steepest direction a little more often)
    est = clever_estimate(net, xs, ys, norm="l2", generator=torch.Generator().manual_seed(0))
    assert not est.flagged.any()
    ratio = est.scores[broken].float() / minimal[broken]
    assert float((ratio <= 1 + 1e-6).float().mean()) >= 0.9 and float(ratio.max()) < 1.1, ratio
    assert float(est.scores[broken].median()) > 0.8 * float(minimal[broken].median())  # not vacuous


def scores(flags: list[bool], values: list[float] | None = None, misclassified: int = 0) -> list[dict]:
    values = values or [0.1 * (i + 1) for i in range(len(flags))]
    out = [
        {"sample_index": i, "score": v, "fit": "max" if f else "weibull", "flagged": f}
        for i, (v, f) in enumerate(zip(values, flags))
    ]
    return out + [
        {"sample_index": len(out) + i, "score": 0.0, "fit": "misclassified", "flagged": False}
        for i in range(misclassified)
    ]


def row(rows: list[dict], metric: str) -> dict:
    (hit,) = [r for r in rows if r["metric"] == metric]
    return hit


def test_the_median_is_withheld_when_more_than_a_fifth_of_the_fits_are_degenerate():
    # 2 of 10 clean-correct samples flagged (20%: not more than a fifth); misclassified samples do not count
    rows = clever_rows("m", "clever[l2]", scores([True, True] + [False] * 8, misclassified=5))
    assert row(rows, "clever")["value"] == pytest.approx(0.55) and row(rows, "clever")["ci_low"] is not None
    assert row(rows, "clever_flagged")["value"] == pytest.approx(0.2) and row(rows, "clever_flagged")["n"] == 10
    assert row(rows, "clever_withheld")["value"] == 0.0
    assert [r["metric"] for r in rows] == ["clever", "clever_flagged", "clever_withheld"]  # no distances: no check
    # 3 of 10: withheld, the reason beside it
    rows = clever_rows("m", "clever[l2]", scores([True] * 3 + [False] * 7))
    assert math.isnan(row(rows, "clever")["value"]) and row(rows, "clever")["ci_low"] is None
    assert row(rows, "clever_withheld")["value"] == 1.0 and row(rows, "clever_flagged")["value"] == pytest.approx(0.3)


def test_share_of_scores_above_the_attack_distance():
    # scores 0.1, 0.5, 0.9 (clean-correct) and a misclassified sample; the attacks broke samples 0, 1 and 3
    rows = clever_rows(
        "m", "clever[l2]", scores([False] * 3, [0.1, 0.5, 0.9], misclassified=1), {0: 0.2, 1: 0.4, 3: 0.05}
    )
    above = row(rows, "clever_above_attack")
    assert above["value"] == pytest.approx(1 / 3) and above["n"] == 3  # sample 1 only; 2 was not broken
    assert above["ci_low"] < 1 / 3 < above["ci_high"]
    assert row(clever_rows("m", "clever[l2]", scores([False] * 3), {}), "clever_above_attack")["value"] == 0.0


def test_attack_distances_take_the_smallest_successful_minimal_perturbation():
    def rec(pert, strength, i, pred, l2, label=0, clean=0, model="m", kind="attack"):
        return {
            "model": model,
            "perturbation": pert,
            "kind": kind,
            "strength": strength,
            "sample_index": i,
            "label": label,
            "clean_pred": clean,
            "pred": pred,
            "l2": l2,
            "linf": l2 / 10,
        }

    records = [
        rec("deepfool", 0.25, 0, 1, 0.25),  # clipped to 0.25 and still adversarial
        rec("deepfool", 1.0, 0, 1, 0.31),
        rec("cw", 1.0, 0, 2, 0.28),
        rec("deepfool", 0.1, 1, 0, 0.1),  # not adversarial at 0.1
        rec("deepfool", 1.0, 1, 1, 0.6),
        rec("cw", 1.0, 2, 1, 0.3, clean=1),  # already wrong on the clean image: no distance
        rec("fgsm", 0.5, 1, 1, 0.01),  # not a minimal attack of the set
        rec("deepfool", 1.0, 0, 1, 0.7, model="other"),
    ]
    found = attack_distances(records, {"deepfool", "cw"}, "l2")
    assert found == {"m": {0: 0.25, 1: 0.6}, "other": {0: 0.7}}
    assert attack_distances(records, {"deepfool"}, "linf")["m"] == {0: pytest.approx(0.025), 1: pytest.approx(0.06)}


def test_spec_defaults_are_the_measured_ones():
    import inspect

    spec, defaults = CleverSpec(), inspect.signature(clever_estimate).parameters
    for name in ("n_batches", "batch_size", "radius", "max_batches", "norm"):
        assert getattr(spec, name) == defaults[name].default, name
    # the old keys keep working
    spec = CleverSpec.model_validate({"norm": "l2", "n_batches": 10, "batch_size": 5, "radius": 5.0})
    assert spec.max_batches == CleverSpec().max_batches
    with pytest.raises(ValueError, match="max_batches=10 is below n_batches=20"):
        CleverSpec(n_batches=20, max_batches=10)
