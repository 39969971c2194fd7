"""Metrics against hand-computed values and independent references (pairwise counts, closed formulas)."""

from __future__ import annotations

import math

import pytest
import torch

from medrobust.metrics import (
    accuracy,
    attack_success_rate,
    auc_ovr,
    balanced_accuracy,
    confusion_matrix,
    empirical_robustness,
    empirical_robustness_per_sample,
    l0_norm,
    l2_norm,
    linf_norm,
    per_class_sensitivity,
    perturbation_norm,
    psnr,
    ssim,
)

PRED = torch.tensor([0, 1, 2, 2, 1, 0])
Y = torch.tensor([0, 1, 1, 2, 0, 0])


def pairwise_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Mann-Whitney: the fraction of (positive, negative) pairs ranked correctly, ties counting one half."""
    pos, neg = scores[positive].tolist(), scores[~positive].tolist()
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_accuracy_of_six_samples() -> None:
    assert accuracy(PRED, Y) == pytest.approx(4 / 6)
    assert accuracy(Y, Y) == 1.0
    assert math.isnan(accuracy(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long)))
    with pytest.raises(ValueError, match="same shape"):
        accuracy(PRED, Y[:5])


def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(PRED, Y, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        confusion_matrix(PRED, Y, 2)


def test_per_class_sensitivity_and_balanced_accuracy() -> None:
    expected = torch.tensor([2 / 3, 1 / 2, 1.0], dtype=torch.float64)
    torch.testing.assert_close(per_class_sensitivity(PRED, Y, 3), expected)
    assert balanced_accuracy(PRED, Y, 3) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


def test_balanced_accuracy_skips_absent_class() -> None:
    y = torch.tensor([0, 0, 0, 1, 1, 1])  # class 2 never occurs
    pred = torch.tensor([0, 0, 0, 1, 2, 2])
    sens = per_class_sensitivity(pred, y, 3)
    assert sens[:2].tolist() == pytest.approx([1.0, 1 / 3]) and math.isnan(float(sens[2]))
    assert balanced_accuracy(pred, y, 3) == pytest.approx(2 / 3)


def test_auc_binary_textbook_case() -> None:
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    y = torch.tensor([0, 0, 1, 1])
    assert auc_ovr(scores, y, 2) == pytest.approx(0.75)  # 3 of the 4 (pos, neg) pairs are ordered correctly
    probs = torch.stack([1 - scores, scores], dim=1)
    assert auc_ovr(probs, y, 2) == pytest.approx(0.75)


def test_auc_multiclass_against_pairwise_count_with_ties_and_absent_class() -> None:
    g = torch.Generator().manual_seed(0)
    n, k = 40, 4
    y = torch.randint(0, 3, (n,), generator=g)  # class 3 absent
    probs = torch.softmax(torch.randn((n, k), generator=g) + 1.5 * torch.nn.functional.one_hot(y, k), dim=1)
    probs = (probs * 10).round() / 10  # many ties
    expected = sum(pairwise_auc(probs[:, c], y == c) for c in range(3)) / 3
    assert auc_ovr(probs, y, k) == pytest.approx(expected, abs=1e-12)


def test_auc_undefined_when_one_class_only() -> None:
    assert math.isnan(auc_ovr(torch.rand(5, 3), torch.zeros(5, dtype=torch.long), 3))
    with pytest.raises(ValueError, match=r"\(5, 3\)"):
        auc_ovr(torch.rand(5, 2), torch.zeros(5, dtype=torch.long), 3)


def test_attack_success_rate_counts_only_originally_correct() -> None:
    y = torch.tensor([0, 1, 1, 0])
    clean = torch.tensor([0, 1, 2, 0])  # samples 0, 1, 3 correct
    adv = torch.tensor([1, 1, 1, 2])  # 0 and 3 flipped; 2 was already wrong (now right: ignored)
    assert attack_success_rate(clean, adv, y) == pytest.approx(2 / 3)
    assert math.isnan(attack_success_rate(torch.tensor([1, 0]), torch.tensor([1, 0]), torch.tensor([0, 1])))


def test_perturbation_norms_of_hand_made_delta() -> None:
    delta = torch.tensor([[3.0, -4.0, 0.0, 0.0], [0.0, 1e-9, 0.0, -0.5]]).view(2, 1, 2, 2)
    assert l0_norm(delta).tolist() == [2, 2]
    assert l0_norm(delta, tol=1e-6).tolist() == [2, 1]
    torch.testing.assert_close(l2_norm(delta), torch.tensor([5.0, 0.5]))
    torch.testing.assert_close(linf_norm(delta), torch.tensor([4.0, 0.5]))
    torch.testing.assert_close(perturbation_norm(delta, "L2"), l2_norm(delta))
    with pytest.raises(ValueError, match="l0, l2, linf"):
        perturbation_norm(delta, "l1")


@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (2, 3, 8, 8), (2, 1, 6, 7, 9), (2, 1, 32)])
def test_ssim_of_identical_images_is_one(shape: tuple[int, ...]) -> None:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ssim(x, x), torch.ones(shape[0]))
    noisy = (x + 0.2 * torch.randn(shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert bool((ssim(x, noisy) < 0.9).all())


def test_ssim_of_constant_images_closed_form() -> None:
    # No variance: SSIM reduces to the luminance term (2ab + c1) / (a^2 + b^2 + c1), c1 = (0.01 * range)^2.
    a, b, data_range = 0.5, 0.6, 1.0
    c1 = (0.01 * data_range) ** 2
    x, x_adv = torch.full((1, 1, 28, 28), a), torch.full((1, 1, 28, 28), b)
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    # MONAI computes in float32: sigma = E[x^2] - E[x]^2 cancels to ~1e-7, about 2e-4 once divided by c2.
    assert float(ssim(x, x_adv, data_range)) == pytest.approx(expected, abs=1e-3)
    assert float(ssim(x, x_adv, data_range)) < 0.99


def test_psnr_against_formula() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand((3, 1, 10, 10), generator=g, dtype=torch.float64) * 2 - 1
    x_adv = x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    x_adv[1] = x[1]
    mse = ((x_adv - x) ** 2).flatten(1).mean(dim=1)
    got = psnr(x, x_adv, data_range=2.0)
    for i in (0, 2):
        assert float(got[i]) == pytest.approx(10 * math.log10(2.0**2 / float(mse[i])), rel=1e-9)
    assert math.isinf(float(got[1])) and float(got[1]) > 0
    with pytest.raises(ValueError, match="data_range"):
        psnr(x, x_adv, data_range=0.0)


def test_empirical_robustness_by_hand() -> None:
    x = torch.tensor([[6.0, 8.0], [0.0, 4.0]]).view(2, 1, 1, 2)  # norms 10 and 4
    delta = torch.tensor([[3.0, 4.0], [1.0, 0.0]]).view(2, 1, 1, 2)  # norms 5 and 1
    torch.testing.assert_close(empirical_robustness_per_sample(delta, x), torch.tensor([0.5, 0.25]))
    assert empirical_robustness(delta, x) == pytest.approx(0.375)
    assert empirical_robustness(delta, x, mask=torch.tensor([False, True])) == pytest.approx(0.25)
    assert math.isnan(empirical_robustness(delta, x, mask=torch.tensor([False, False])))
