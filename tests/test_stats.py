"""Intervals and paired tests (medrobust.stats): hand-computed values, coverage on simulated data, and the
summary and comparison rows built from them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medrobust import resampling, stats
from medrobust.metrics import auc_ovr, balanced_accuracy
from medrobust.results import compare_models, summarise


def test_wilson_by_hand():
    # 8 of 10: centre (0.8 + z^2/20) / (1 + z^2/10), half-width z / (1 + z^2/10) * sqrt(0.016 + z^2/400)
    z = 1.959963984540054
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z / (1 + z * z / 10) * math.sqrt(0.8 * 0.2 / 10 + z * z / 400)
    assert stats.wilson(8, 10) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert stats.wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    lo, hi = stats.wilson(0, 20)
    assert lo == 0.0 and hi == pytest.approx(z * z / (20 + z * z), abs=1e-12)  # k = 0: upper bound z^2 / (n + z^2)
    assert all(math.isnan(v) for v in stats.wilson(0, 0))
    with pytest.raises(ValueError, match="within 0..n=5"):
        stats.wilson(6, 5)


def test_wilson_covers_the_true_rate_93_to_97_percent():
    """2,000 simulated test sets of 100 samples, each at its own known rate in [0.05, 0.95]; and, without
    simulation noise, the exact coverage at rates 0.05, 0.10, ..., 0.95 (sum of binomial probabilities of the
    outcomes whose interval holds the rate)."""
    from scipy import stats as sps

    rng = np.random.default_rng(0)
    rates = rng.uniform(0.05, 0.95, size=2000)
    draws = rng.binomial(100, rates)
    covered = sum(lo <= p <= hi for p, (lo, hi) in zip(rates, (stats.wilson(int(k), 100) for k in draws)))
    assert 0.93 <= covered / 2000 <= 0.97, covered / 2000
    table = [stats.wilson(k, 100) for k in range(101)]
    for rate in np.arange(0.05, 0.951, 0.05):
        pmf = sps.binom.pmf(np.arange(101), 100, rate)
        exact = sum(pmf[k] for k, (lo, hi) in enumerate(table) if lo <= rate <= hi)
        assert 0.93 <= exact <= 0.97, (rate, exact)


def test_bootstrap_mean_covers_the_true_mean():
    """Per-sample Dice-like values from Beta(5, 2) (mean 5/7), 100 samples, 2,000 simulated test sets."""
    rng = np.random.default_rng(1)
    covered = 0
    for i in range(2000):
        data = {"v": rng.beta(5, 2, size=100)}
        lo, hi = resampling.interval(lambda w: resampling.mean("v")(data, w), resampling.Units.samples(100), key=i)
        covered += lo <= 5 / 7 <= hi
    assert 0.93 <= covered / 2000 <= 0.97, covered / 2000


def test_bootstrap_is_deterministic_and_brackets_the_estimate():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 80)
    pred = np.where(rng.random(80) < 0.7, y, rng.integers(0, 3, 80))
    probs = rng.dirichlet(np.ones(3), 80)
    probs[np.arange(80), y] += 0.5
    units = resampling.Units.samples(80)
    data = {"pred": pred, "label": y, "probs": probs, "k": 3}

    def interval(statistic, data):
        return resampling.interval(lambda w: statistic(data, w), units, key="k")

    a = interval(resampling.balanced_accuracy, data)
    assert a == interval(resampling.balanced_accuracy, data)  # same key, same bytes
    assert a[0] < float(balanced_accuracy(torch.tensor(pred), torch.tensor(y), 3)) < a[1]
    auc = float(auc_ovr(torch.tensor(probs), torch.tensor(y), 3))
    assert float(resampling.auc(data, None)[0]) == pytest.approx(auc)
    lo, hi = interval(resampling.auc, data)
    assert lo < auc < hi and hi <= 1.0
    # a classifier that separates the classes perfectly: every resample has AUC 1
    assert interval(resampling.auc, {**data, "probs": np.eye(3)[y]}) == (1.0, 1.0)


def test_mcnemar_exact_by_hand():
    # discordant pairs b = 1 (only A right), c = 9 (only B right): p = 2 * P(Bin(10, 1/2) <= 1) = 2 * 11 / 1024
    a = [True] * 20 + [True] + [False] * 9 + [False] * 5
    b = [True] * 20 + [False] + [True] * 9 + [False] * 5
    assert stats.mcnemar(a, b) == (1, 9, pytest.approx(22 / 1024, abs=1e-15))
    assert stats.mcnemar(a, a) == (0, 0, 1.0)
    assert stats.mcnemar([True, False], [False, True])[2] == 1.0  # 1 vs 1: min(1, 2 * 3/4)
    with pytest.raises(ValueError, match="differ in number"):
        stats.mcnemar([True], [True, False])


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm([]) == []


def test_samples_needed_by_hand():
    # Connor (1987): psi = 0.2, delta = 0.1: ((1.95996 * sqrt(0.2) + 0.84162 * sqrt(0.19)) / 0.1)^2 = 154.6
    assert stats.mcnemar_samples(5, 15, 100) == 155
    assert stats.mcnemar_samples(7, 7, 100) is None


def test_wilcoxon_of_equal_and_shifted_scores():
    assert stats.wilcoxon([0.5, 0.6], [0.5, 0.6]) == 1.0
    a = np.linspace(0.6, 0.9, 30)
    # all 30 differences positive and distinct: the exact two-sided p is 2 / 2^30
    assert stats.wilcoxon(a, a - np.linspace(0.01, 0.05, 30)) == pytest.approx(2 / 2**30, rel=1e-6)


def _records(model, pert, kind, strength, labels, preds):
    return [{"model": model, "perturbation": pert, "kind": kind, "strength": strength, "sample_index": i,
             "sample_id": str(i), "label": y, "clean_pred": y, "pred": p,
             "probs_json": "[" + ",".join("0.9" if k == p else "0.05" for k in range(2)) + "]",
             "l2": 0.0, "linf": 0.0, "l0": 0.0, "ssim": 1.0, "psnr": None, "rho": 0.0,
             "score": float(y == p), "detail_json": None} for i, (y, p) in enumerate(zip(labels, preds))]


def test_summary_rows_carry_intervals_and_comparisons_are_paired():
    labels = [i % 2 for i in range(40)]
    a_clean = list(labels)  # 40/40
    b_clean = [1 - y if i < 10 else y for i, y in enumerate(labels)]  # 30/40, wrong on samples 0..9
    a_pgd = [1 - y if i < 30 else y for i, y in enumerate(labels)]  # 10/40
    b_pgd = [1 - y if 10 <= i < 20 else y for i, y in enumerate(labels)]  # 30/40
    recs = (_records("a", "clean", "clean", 0.0, labels, a_clean) + _records("b", "clean", "clean", 0.0, labels, b_clean)
            + _records("a", "pgd", "attack", 0.1, labels, a_pgd) + _records("b", "pgd", "attack", 0.1, labels, b_pgd))
    tasks = {"a": "classification", "b": "classification"}
    rows = summarise(recs, {"pgd": "linf"}, tasks, {"a": ["no", "yes"], "b": ["no", "yes"]})
    acc = {(r["model"], r["perturbation"]): r for r in rows if r["metric"] == "accuracy"}
    assert (acc[("b", "clean")]["ci_low"], acc[("b", "clean")]["ci_high"]) == pytest.approx(stats.wilson(30, 40))
    assert (acc[("a", "worst_case")]["ci_low"], acc[("a", "worst_case")]["ci_high"]) == pytest.approx(stats.wilson(10, 40))
    sizes = [r for r in rows if r["metric"] == "l2"]
    assert sizes and all(r["ci_low"] is None and r["ci_high"] is None for r in sizes)
    names = {"a": ["no", "yes"], "b": ["no", "yes"]}
    comp = {r["perturbation"]: r for r in compare_models(recs, {"pgd": "linf"}, tasks, names)
            if r["metric"] == "accuracy" and r["quantity"] == "value"}
    clean, worst = comp["clean"], comp["worst_case"]
    # clean: only A right on samples 0..9 (10), only B right on none: p = 2 * 0.5^10
    assert (clean["only_a"], clean["only_b"]) == (10, 0)
    assert clean["p"] == pytest.approx(2 * 0.5**10) and clean["difference"] == pytest.approx(0.25)
    # worst case: A wrong on 0..29, B wrong on 10..19 -> only A right: none; only B right: 0..9 and 20..29 (20)
    assert (worst["only_a"], worst["only_b"]) == (0, 20)
    assert worst["p"] == pytest.approx(2 * 0.5**20) and worst["difference"] == pytest.approx(-0.5)
    assert worst["ci_low"] < -0.5 < worst["ci_high"] < 0
    assert worst["p_adjusted"] == worst["p"]  # one pair per family
