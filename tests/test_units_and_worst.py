"""Honest statistics beyond accuracy: each metric's own worst case and paired test, drops compared between models,
and independent units (volumes, patients) as the sampling unit of every interval and test."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from medrobust import resampling
from medrobust.metrics import quadratic_kappa
from medrobust.results import compare_models, summarise

K = 5
GRADES = ["g0", "g1", "g2", "g3", "g4"]


def _cls_records(model, pert, kind, strength, labels, preds, p_pred, group=None):
    out = []
    for i, (y, p) in enumerate(zip(labels, preds)):
        rest = (1 - p_pred) / (K - 1)
        probs = [p_pred if k == p else rest for k in range(K)]
        out.append({"model": model, "perturbation": pert, "kind": kind, "strength": strength, "sample_index": i,
                    "sample_id": f"s{i}", "label": y, "clean_pred": y, "pred": p, "probs_json": json.dumps(probs),
                    "l2": 0.1, "linf": 0.1, "l0": 1.0, "ssim": 1.0, "psnr": None, "rho": 0.0,
                    "score": float(y == p), "detail_json": None, "sample_group": group})
    return out


def _ordinal_case():
    """20 samples of 5 grades. Attack "flip" moves every grade by one, confidently (true-class probability
    0.025); attack "far" leaves half the samples right and moves the other half 2-4 grades (0.05). By correctness
    "flip" is the worst everywhere; by grade distance "far" is worse on the first half."""
    labels = [i % K for i in range(20)]
    flip = [y + 1 if y < K - 1 else y - 1 for y in labels]
    far = [(4 if y <= 1 else 0) if i < 10 else y for i, y in enumerate(labels)]
    recs = (_cls_records("m", "clean", "clean", 0.0, labels, labels, 0.9)
            + _cls_records("m", "flip", "attack", 0.1, labels, flip, 0.9)
            + _cls_records("m", "far", "attack", 0.1, labels, far, 0.8))
    return labels, flip, far, recs


def _kappa(pred, labels):
    return quadratic_kappa(torch.tensor(pred), torch.tensor(labels), K)


def test_worst_case_of_kappa_and_grade_error_is_never_better_than_a_single_attack():
    labels, flip, far, recs = _ordinal_case()
    rows = summarise(recs, {"flip": "linf", "far": "linf"}, {"m": "ordinal"}, {"m": GRADES})
    value = {(r["perturbation"], r["metric"]): r["value"] for r in rows}
    # grade errors: flip 1 everywhere (mean 1.0); far 4 3 2 3 4 4 3 2 3 4 on the first half, 0 after (32 / 20)
    assert value[("flip", "mae")] == pytest.approx(1.0)
    assert value[("far", "mae")] == pytest.approx(1.6)
    # the worst grade per sample: far's on the first half (32), flip's 1 on the second (10): 42 / 20
    assert value[("worst_case", "mae")] == pytest.approx(2.1)
    worst_pred = far[:10] + flip[10:]
    assert value[("worst_case", "quadratic_kappa")] == pytest.approx(
        min(_kappa(worst_pred, labels), _kappa(flip, labels), _kappa(far, labels)))
    for attack in ("flip", "far"):
        assert value[("worst_case", "quadratic_kappa")] <= value[(attack, "quadratic_kappa")] + 1e-12
        assert value[("worst_case", "mae")] >= value[(attack, "mae")] - 1e-12
        assert value[("worst_case", "accuracy")] <= value[(attack, "accuracy")]
        assert value[("worst_case", "balanced_accuracy")] <= value[(attack, "balanced_accuracy")] + 1e-12
    assert value[("worst_case", "accuracy")] == 0.0
    # the selection by correctness alone (the flip everywhere) would have reported grade error 1.0
    assert value[("worst_case", "mae")] > value[("flip", "mae")]


def test_kappa_comparison_is_on_kappa_and_drops_are_compared():
    labels, flip, far, recs = _ordinal_case()
    # model "n": the same clean predictions, every attack moves the grade by one only
    recs2 = [{**r, "model": "n"} for r in _cls_records("x", "clean", "clean", 0.0, labels, labels, 0.9)]
    recs2 += [{**r, "model": "n"} for r in _cls_records("x", "flip", "attack", 0.1, labels, flip, 0.9)]
    recs2 += [{**r, "model": "n"} for r in _cls_records("x", "far", "attack", 0.1, labels, flip, 0.9)]
    rows = compare_models(recs + recs2, {"flip": "linf", "far": "linf"}, {"m": "ordinal", "n": "ordinal"},
                          {"m": GRADES, "n": GRADES})
    by = {(r["perturbation"], r["metric"], r["quantity"]): r for r in rows}
    kappa = by[("worst_case", "quadratic_kappa", "value")]
    accuracy = by[("worst_case", "accuracy", "value")]
    worst_m = min(_kappa(far[:10] + flip[10:], labels), _kappa(flip, labels), _kappa(far, labels))
    assert kappa["value_a"] == pytest.approx(worst_m) and kappa["value_b"] == pytest.approx(_kappa(flip, labels))
    assert kappa["difference"] == pytest.approx(worst_m - _kappa(flip, labels))
    assert kappa["test"].startswith("permutation") and 0 < kappa["p"] <= 1
    # accuracy: both models are wrong everywhere under attack: no difference, McNemar p = 1
    assert accuracy["difference"] == 0.0 and accuracy["test"] == "mcnemar-exact" and accuracy["p"] == 1.0
    # grade error: compared on its own numbers (2.1 vs 1.0)
    mae = by[("worst_case", "mae", "value")]
    assert (mae["value_a"], mae["value_b"]) == pytest.approx((2.1, 1.0))
    # drops from the same clean scores: kappa 1 - worst; model m loses more kappa than n
    drop = by[("worst_case", "quadratic_kappa", "drop")]
    assert drop["value_a"] == pytest.approx(1.0 - worst_m)
    assert drop["value_b"] == pytest.approx(1.0 - _kappa(flip, labels))
    assert drop["difference"] > 0 and drop["ci_low"] <= drop["difference"] <= drop["ci_high"]


def _seg_records(model, pert, kind, strength, scores, groups):
    return [{"model": model, "perturbation": pert, "kind": kind, "strength": strength, "sample_index": i,
             "sample_id": f"s{i}", "label": -1, "clean_pred": -1, "pred": -1, "probs_json": "[]",
             "l2": 1.0, "linf": 0.1, "l0": 1.0, "ssim": 0.9, "psnr": 30.0, "rho": 0.1, "score": s,
             "detail_json": json.dumps({"dice": [s], "hd95": [None], "flip": 0.0, "flip_s": [0.0]}),
             "sample_group": g} for i, (s, g) in enumerate(zip(scores, groups))]


def _volumes(means, slices=40, seed=0):
    rng = np.random.default_rng(seed)
    return [float(np.clip(m + rng.normal(0, 0.02), 0, 1)) for m in means for _ in range(slices)]


def test_three_volumes_of_forty_slices_are_three_units():
    groups = [f"vol{v}" for v in range(3) for _ in range(40)]
    a, b = _volumes([0.8, 0.7, 0.9]), _volumes([0.7, 0.6, 0.85], seed=1)
    recs = _seg_records("a", "clean", "clean", 0.0, a, groups) + _seg_records("b", "clean", "clean", 0.0, b, groups)
    names = {"a": ["bg", "brain"], "b": ["bg", "brain"]}
    tasks = {"a": "segmentation", "b": "segmentation"}
    (row,) = compare_models(recs, {}, tasks, names)
    assert (row["n"], row["units"], row["unit"]) == (120, 3, "group")
    # every volume favours a: of the 2^3 swaps of whole volumes only "none" and "all" reach |d|: p = 2 / 8
    assert row["test"].startswith("permutation-exact") and row["p"] == pytest.approx(0.25)
    per_volume = [np.mean(np.subtract(a, b)[v * 40:(v + 1) * 40]) for v in range(3)]
    # a cluster bootstrap of 3 equal volumes averages 3 volume differences drawn with replacement
    assert min(per_volume) - 1e-9 <= row["ci_low"] <= row["ci_high"] <= max(per_volume) + 1e-9
    # treating the 120 slices as independent gives a far narrower interval and a tiny p: the pseudo-replication
    # the units prevent
    slices = compare_models([{**r, "sample_group": None} for r in recs], {}, tasks, names)[0]
    assert slices["p"] < 1e-10 and slices["ci_high"] - slices["ci_low"] < (row["ci_high"] - row["ci_low"]) / 2
    summary = {(r["model"], r["metric"]): r for r in summarise(recs, {}, tasks, names)}
    lo, hi = summary[("a", "dice")]["ci_low"], summary[("a", "dice")]["ci_high"]
    vol_means = [np.mean(a[v * 40:(v + 1) * 40]) for v in range(3)]
    assert min(vol_means) - 1e-9 <= lo < hi <= max(vol_means) + 1e-9


def test_one_volume_gives_numbers_but_no_inference():
    groups = ["vol0"] * 40
    a, b = _volumes([0.8]), _volumes([0.7], seed=1)
    recs = _seg_records("a", "clean", "clean", 0.0, a, groups) + _seg_records("b", "clean", "clean", 0.0, b, groups)
    names = {"a": ["bg", "brain"], "b": ["bg", "brain"]}
    tasks = {"a": "segmentation", "b": "segmentation"}
    (row,) = compare_models(recs, {}, tasks, names)
    assert row["difference"] == pytest.approx(np.mean(a) - np.mean(b))
    assert row["p"] is None and row["p_adjusted"] is None and row["ci_low"] is None
    assert row["test"] == "none: 1 independent unit" and row["units"] == 1
    summary = {(r["model"], r["metric"]): r for r in summarise(recs, {}, tasks, names)}
    assert summary[("a", "dice")]["value"] == pytest.approx(np.mean(a))
    assert summary[("a", "dice")]["ci_low"] is None


def test_dice_drops_are_compared_per_unit():
    n = 60
    rng = np.random.default_rng(3)
    a_clean = list(0.9 + rng.normal(0, 0.01, n))
    b_clean = list(0.7 + rng.normal(0, 0.01, n))
    a_pert = [v - 0.1 - abs(e) for v, e in zip(a_clean, rng.normal(0, 0.01, n))]  # a loses 0.1 and more
    b_pert = [v - 0.02 - abs(e) for v, e in zip(b_clean, rng.normal(0, 0.01, n))]  # b loses 0.02 and more
    none = [None] * n
    recs = (_seg_records("a", "clean", "clean", 0.0, a_clean, none) + _seg_records("b", "clean", "clean", 0.0, b_clean, none)
            + _seg_records("a", "pgd", "attack", 1.0, a_pert, none) + _seg_records("b", "pgd", "attack", 1.0, b_pert, none))
    tasks = {"a": "segmentation", "b": "segmentation"}
    rows = compare_models(recs, {"pgd": "l2"}, tasks, {"a": ["bg", "s"], "b": ["bg", "s"]})
    drop = next(r for r in rows if r["quantity"] == "drop")
    level = next(r for r in rows if r["quantity"] == "value" and r["perturbation"] == "worst_case")
    want = (np.mean(a_clean) - np.mean(a_pert)) - (np.mean(b_clean) - np.mean(b_pert))
    assert drop["difference"] == pytest.approx(want) and drop["difference"] > 0.07
    # every per-sample drop of a exceeds b's: Wilcoxon signed-rank (normal approximation at n = 60, z = 6.7)
    assert drop["test"] == "wilcoxon" and drop["p"] == pytest.approx(1.63e-11, rel=0.01)
    assert drop["ci_low"] < want < drop["ci_high"]
    assert level["difference"] > 0  # a still scores higher under attack: the drop test says who loses more


def test_permutation_test_by_hand_and_unit_bootstrap_weights():
    # 4 units of one sample each, differences +1 +1 +1 -1: of 16 sign patterns, |sum| >= 2 for 10 -> p = 10/16
    a = {"v": np.array([1.0, 1.0, 1.0, 0.0])}
    b = {"v": np.array([0.0, 0.0, 0.0, 1.0])}
    p, name = resampling.permutation_p(resampling.mean("v"), a, b, resampling.Units.samples(4), key="t")
    assert p == pytest.approx(10 / 16) and name.startswith("permutation-exact")
    units = resampling.Units.of(["x", "x", "y", None, "y"])
    assert (units.count, units.grouped) == (3, True)
    w = np.concatenate(list(resampling.bootstrap_weights(units, key="w", resamples=50)))
    # samples of one unit always share their weight; three units are drawn per resample
    assert np.all(w[:, 0] == w[:, 1]) and np.all(w[:, 2] == w[:, 4])
    assert np.all(w[:, [0, 2, 3]].sum(axis=1) == 3)
    assert math.isclose(resampling.smallest_p(units), 0.25)


def test_the_headline_quotes_the_headline_metrics_own_comparison():
    """Under attack model "near" moves every grade by one (accuracy 0, kappa high), model "reverse" reverses the
    grades (accuracy 0.2 from the middle grade, kappa -1): the accuracy gap and the kappa gap point opposite
    ways. A kappa headline quotes the kappa row: its difference, interval and p."""
    from medrobust.report.analysis import Headline, headline_sentence

    labels = [i % K for i in range(60)]
    near = [y + 1 if y < K - 1 else y - 1 for y in labels]
    reverse = [K - 1 - y for y in labels]
    recs = []
    for model, preds in (("near", near), ("reverse", reverse)):
        recs += [{**r, "model": model} for r in _cls_records("x", "clean", "clean", 0.0, labels, labels, 0.9)]
        recs += [{**r, "model": model} for r in _cls_records("x", "pgd", "attack", 0.1, labels, preds, 0.9)]
    tasks = {"near": "ordinal", "reverse": "ordinal"}
    rows = compare_models(recs, {"pgd": "linf"}, tasks, {"near": GRADES, "reverse": GRADES}, "quadratic_kappa")
    by = {(r["perturbation"], r["metric"], r["quantity"]): r for r in rows}
    kappa, accuracy = by[("worst_case", "quadratic_kappa", "value")], by[("worst_case", "accuracy", "value")]
    assert kappa["difference"] == pytest.approx(_kappa(near, labels) - _kappa(reverse, labels))
    assert accuracy["difference"] == pytest.approx(-0.2)  # reverse is right on the middle grade
    head = Headline("linf", "worst_case", 0.1, ["pgd"], [
        {"model": "near", "clean": 1.0, "worst": _kappa(near, labels)},
        {"model": "reverse", "clean": 1.0, "worst": _kappa(reverse, labels)}], True)
    sentence = headline_sentence([head], "quadratic_kappa", rows)
    gap = f"reverse is {100 * kappa['difference']:.0f} points below near"
    ci = f"95% interval {100 * kappa['ci_low']:.0f} to {100 * kappa['ci_high']:.0f}"
    assert gap in sentence and ci in sentence and "quadratic weighted kappa" in sentence
    assert kappa["p_adjusted"] < 0.001 and "p = < 0.001" in sentence
    assert "20 points" not in sentence  # the accuracy gap is not quoted
    # an accuracy headline quotes the accuracy row (McNemar): near is 20 points below reverse
    assert "near is 20 points below reverse" in headline_sentence([head], "accuracy", rows)


def _volume_store(run, volumes):
    """A results.db written by hand: two segmentation models on 40 slices of each of ``volumes`` volumes, clean and
    under FGSM at one strength; model a above b on every volume."""
    from medrobust.store import CellInfo, ModelRow, Record, Store

    store = Store(run / "results.db")
    rows = [ModelRow(m, f"fp-{m}", "segmentation", ["background", "brain"], (0.0, 1.0), "hand-written", {})
            for m in ("a", "b")]
    keys = [f"{m}-{c}" for m in ("a", "b") for c in ("clean", "fgsm")]
    run_id = store.start_run({"name": run.name}, "hash", {"medrobust": "test"}, "cpu", 0, rows, keys)
    groups = [f"vol{v}" for v in range(volumes) for _ in range(40)]
    means = {"a": [0.85, 0.8, 0.9][:volumes], "b": [0.75, 0.7, 0.85][:volumes]}
    for m in ("a", "b"):
        clean = _volumes(means[m], seed=ord(m))
        for kind, scores in (("clean", clean), ("fgsm", [s - 0.1 for s in clean])):
            threat = {"bounds": [0, 1], "seed": 0, "group_unit": "volume"}
            if kind == "fgsm":
                threat.update(norm="linf", eps=[0.01], minimal=False, strengths=[0.01], name="fgsm")
            recs = [Record(cell_key=f"{m}-{kind}", model=m, perturbation=kind, kind="clean" if kind == "clean" else
                           "attack", strength=0.0 if kind == "clean" else 0.01, sample_index=i, sample_id=f"s{i}",
                           label=-1, clean_pred=-1, pred=-1, probs=[], l2=0.1, linf=0.01, l0=10.0, ssim=0.99,
                           psnr=40.0, rho=0.01, score=s, detail={"dice": [s], "hd95": [1.0], "flip": 0.1,
                                                                 "flip_s": [0.1]}, sample_group=g)
                    for i, (s, g) in enumerate(zip(scores, groups))]
            store.write_cell(CellInfo(f"{m}-{kind}", m, kind, "clean" if kind == "clean" else "attack", {},
                                      [0.0 if kind == "clean" else 0.01], threat), recs, run_id, 0.0)
    store.close()


def test_the_report_says_when_no_inference_is_possible(tmp_path):
    from medrobust.report import build_report

    one, three = tmp_path / "one", tmp_path / "three"
    _volume_store(one, 1)
    _volume_store(three, 3)
    html, md = (p.read_text() for p in build_report(one))
    assert "No inference is possible: the 40 test samples come from 1 independent volume" in html
    assert "No inference is possible: the 40 test samples come from 1 independent volume" in md
    assert "no inference is possible from 1 independent unit" in html  # the headline sentence
    assert "none: 1 independent unit" in md and "(p = " not in html
    comparisons = json.loads((one / "comparisons.json").read_text())
    assert comparisons and all(c["p"] is None and c["ci_low"] is None for c in comparisons)
    html, md = (p.read_text() for p in build_report(three))
    assert "No inference is possible" not in html
    rows = json.loads((three / "comparisons.json").read_text())
    clean = next(r for r in rows if r["perturbation"] == "clean")
    # three volumes, all in a's favour: the exact swap test's smallest p, 2 / 8
    assert (clean["units"], clean["unit"], clean["p"]) == (3, "group", 0.25)
    assert "permutation-exact (8 swaps)" in md
    drops = [r for r in rows if r["quantity"] == "drop"]
    assert drops and "Which model loses less" in html and "Which model loses less" in md
