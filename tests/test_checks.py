"""Sanity checks: each one fires on a model built to break it and stays quiet on a sound model; the black-box check
on hand-counted outcomes and stored records; the checks table of the store."""

from __future__ import annotations

import json
import math
import re
import sqlite3

import pytest
import torch
import torch.nn.functional as F
from conftest import ToyCNN, make_toy_segmentation
from torch import nn

from medrobust.checks import (
    MEANINGS,
    CheckResult,
    black_box_outcomes,
    check_black_box,
    check_deterministic,
    check_gradients,
    check_logits,
    check_more_steps,
    check_unbounded,
    run_model_checks,
)
from medrobust.models.wrapper import Model
from medrobust.store import Store

CLS = "classification"


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Quantised(nn.Module):
    """The issue's example: the input is rounded to 5 grey levels (a non-differentiable step) before the network,
    so the input gradient is 0 almost everywhere."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x * 4) / 4)


class Randomised(nn.Module):
    """Dropout kept active in eval mode (MC-dropout style defence)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(F.dropout(x, p=0.3, training=True))


class Rugged(nn.Module):
    """Two classes; logit_1 - logit_0 = sum_i [t_i + B_i sin(w_i t_i + p_i) - B_i sin(p_i)] - c with t = x - 0.5.

    The linear term makes t = +eps the best point of the eps-ball; the sine adds local maxima about 0.3 eps apart
    (B_i w_i = 2, twice the slope, so the gradient sign flips inside every period). PGD's default step
    2.5 eps / steps is 0.5 eps for 5 steps (it jumps over the bumps and drifts up the slope) but 0.1 eps for 25
    steps (each coordinate climbs into the bump it started in and stays): more steps leave the model more
    accurate. c = 0.2 * d * eps: the weak attack's drift passes it, a trapped random start rarely does.
    """

    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        g = gen(0)
        w = 2 * math.pi / (0.3 * eps) * (0.7 + 0.6 * torch.rand(d, generator=g))
        self.register_buffer("w", w)
        self.register_buffer("p", 2 * math.pi * torch.rand(d, generator=g))
        self.register_buffer("b", 2.0 / w)
        self.c = 0.2 * d * eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.flatten(1) - 0.5
        s = (t + self.b * torch.sin(self.w * t + self.p) - self.b * torch.sin(self.p)).sum(1)
        return torch.stack([torch.zeros_like(s), s - self.c], 1)


def pgd_scores(message: str) -> tuple[float, float]:
    """(strong, weak) scores from a more_steps message."""
    m = re.search(r"is ([0-9.]+) with 25 steps x 2 restarts and ([0-9.]+) with 5 steps", message)
    assert m, message
    return float(m.group(1)), float(m.group(2))


def test_logits_check(toy_model, toy_batch):
    x, y = toy_batch
    ok = check_logits(toy_model, CLS, x, y)
    assert ok.passed and ok.value == 0.0 and ok.name == "logits" and ok.meaning == MEANINGS["logits"]
    for head, kind in ((nn.Softmax(dim=1), "probabilities"), (nn.LogSoftmax(dim=1), "log-probabilities")):
        bad = check_logits(nn.Sequential(toy_model, head), CLS, x, y)
        assert not bad.passed and bad.value == 1.0
        assert bad.message.startswith(f"100% of 30 output rows are {kind}")
    # segmentation: one row per pixel
    probs = check_logits(nn.Sequential(nn.Conv2d(1, 3, 1), nn.Softmax(dim=1)), "segmentation",
                         torch.rand(2, 1, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))
    assert not probs.passed and "32 output rows" in probs.message


def test_deterministic_check(toy_model, toy_batch):
    x, y = toy_batch
    ok = check_deterministic(toy_model, CLS, x, y)
    assert ok.passed and ok.value == 0.0
    # nn.Dropout inside the network is switched off by eval mode: still deterministic
    assert check_deterministic(nn.Sequential(nn.Dropout(0.5), toy_model), CLS, x, y).passed
    torch.manual_seed(0)  # test-only: the randomised model draws from the global generator
    bad = check_deterministic(Randomised(toy_model), CLS, x, y)
    assert not bad.passed and bad.value > 0.1
    assert "differ by up to" in bad.message and "of 30 samples" in bad.message


def test_quantised_model_is_flagged_by_gradient_and_unbounded_checks(toy_model, toy_batch):
    x, y = toy_batch
    model = Quantised(toy_model)
    grads = check_gradients(model, CLS, x, y)
    assert not grads.passed and grads.value == 1.0  # round() has zero derivative everywhere
    assert "all zero for 30 and non-finite for 0 of 30 samples" in grads.message
    with torch.no_grad():
        assert (model(x).argmax(1) == y).all()  # correct on every clean input
    bad = check_unbounded(model, CLS, x, y, generator=gen(0))
    # Zero gradients: PGD never leaves its random start x + U(-1, 1), clipped to [0, 1] (eps = the full range), so
    # it fools exactly the samples that this random image fools.
    start = (x + 2 * torch.rand(x.shape, generator=gen(0)) - 1).clamp(0, 1)
    with torch.no_grad():
        expected = float((model(start).argmax(1) == y).double().mean())
    assert expected > 0.5
    assert not bad.passed and bad.value == pytest.approx(expected)
    assert "eps = 1, the full input range [0, 1]" in bad.message and "limit 0.050" in bad.message
    # the same network without the rounding passes both
    assert check_gradients(toy_model, CLS, x, y).value == 0.0
    ok = check_unbounded(toy_model, CLS, x, y, generator=gen(0))
    assert ok.passed and ok.value == 0.0


def test_gradient_check_counts_zero_and_nan_gradients():
    class Broken(nn.Module):
        """Samples 0-3: sqrt(z - z), value 0 but gradient 0 * inf = NaN; 4-7: a constant (zero gradient);
        8-19: linear in x."""

        def forward(self, x):
            z = x.flatten(1)[:, :1]
            out = torch.cat([torch.sqrt(z[:4] - z[:4]), z[4:8] * 0 + 1, z[8:]])
            return torch.cat([out, -out], 1)

    x = torch.rand(20, 1, 2, 2, generator=gen(0))
    y = torch.zeros(20, dtype=torch.long)
    r = check_gradients(Broken(), CLS, x, y)
    assert r.value == pytest.approx(8 / 20) and not r.passed
    assert "all zero for 4 and non-finite for 4 of 20 samples (share 0.40, limit 0.10)" in r.message
    assert check_gradients(Broken(), CLS, x, y, max_share=0.4).passed  # 0.4 is not above 0.4
    assert not check_gradients(Broken(), CLS, x, y, max_share=0.35).passed


def test_more_steps_check():
    d, eps, n = 64, 0.1, 32
    x = torch.full((n, 1, 1, d), 0.5)
    y = torch.zeros(n, dtype=torch.long)
    model = Model(Rugged(d, eps))
    assert check_gradients(model, CLS, x, y).passed  # the gradients are fine; the landscape traps small steps
    bad = check_more_steps(model, CLS, x, y, eps=eps, generator=gen(1))
    assert not bad.passed and bad.value >= 0.5
    strong, weak = pgd_scores(bad.message)
    assert weak <= 0.1 and strong - weak == pytest.approx(bad.value, abs=1e-3)
    assert "more steps raise accuracy" in bad.message and "slack 0.031" in bad.message
    with pytest.raises(ValueError, match="eps=0"):
        check_more_steps(model, CLS, x, y, eps=0)


def test_more_steps_passes_on_a_sound_model(toy_model, toy_batch):
    x, y = toy_batch
    ok = check_more_steps(toy_model, CLS, x, y, eps=0.2, generator=gen(1))
    assert ok.passed and ok.value <= 1 / 30 + 1e-9
    strong, weak = pgd_scores(ok.message)
    assert strong <= weak + 1 / 30 + 1e-9 and weak < 0.9  # eps = 0.2 hurts this model


def test_run_model_checks_restores_the_model(toy_batch):
    x, y = toy_batch
    torch.manual_seed(0)  # test-only: fixed initial weights
    net = ToyCNN().train()
    results = run_model_checks(net, CLS, x, y, eps=None, generator=gen(0))
    assert [r.name for r in results] == ["logits", "deterministic", "gradients", "unbounded"]
    assert all(isinstance(r, CheckResult) for r in results)
    assert net.training and all(p.requires_grad for p in net.parameters())


class GreyLevels(nn.Module):
    """A hand-built segmenter for conftest's toy segmentation images: per pixel, class k's logit is
    -40 (x - c_k)^2 for the grey levels c = (0.2, 0.8, 0.5) of background, square and disk."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centres = torch.tensor([0.2, 0.8, 0.5]).view(1, 3, 1, 1)
        return -40 * (x - centres) ** 2


def test_run_model_checks_on_a_sound_model(toy_model, toy_batch):
    x, y = toy_batch
    results = run_model_checks(toy_model, CLS, x, y, eps=0.1, generator=gen(0))
    assert [r.name for r in results] == ["logits", "deterministic", "gradients", "unbounded", "more_steps"]
    assert all(r.passed for r in results), [r.message for r in results if not r.passed]
    xs, ys = make_toy_segmentation(6, seed=2)
    seg = run_model_checks(GreyLevels(), "segmentation", xs, ys, eps=0.05, generator=gen(0))
    assert all(r.passed for r in seg), [r.message for r in seg if not r.passed]
    unbounded = seg[3]
    assert "share of foreground units still correct" in unbounded.message and unbounded.value < 0.05


# --- black box vs white box --------------------------------------------------------------------------------


def test_black_box_check_on_hand_counted_outcomes():
    white = {i: True for i in range(40)} | {i: False for i in range(40, 45)}  # 40 survive every white-box attack
    black = {0: True, 1: True, 2: False, 40: True, 41: True}  # 0 and 1: fooled only by the black box
    r = check_black_box(white, black, where="Linf eps=0.03", white=["pgd"], black=["square"])
    assert not r.passed and r.value == 2  # limit max(2, ceil(0.05 * 40)) = 2
    assert r.message == ("At Linf eps=0.03, black-box attacks (square) fooled 2 of the 40 samples that every "
                         "white-box attack (pgd) left correct (limit 2): samples 0, 1.")
    one = check_black_box(white, {0: True, 40: True})
    assert one.passed and one.value == 1
    # 60 robust samples: the limit is ceil(0.05 * 60) = 3, so 2 pass and 3 fail
    white60 = {i: True for i in range(60)}
    assert check_black_box(white60, {0: True, 1: True}).passed
    assert not check_black_box(white60, {0: True, 1: True, 59: True}).passed
    assert check_black_box({}, {}).passed


def _record(model, pert, strength, i, label, clean, pred, detail=None, kind="attack"):
    return {"model": model, "perturbation": pert, "kind": kind, "strength": strength, "sample_index": i,
            "label": label, "clean_pred": clean, "pred": pred, "score": float(label == pred),
            "detail_json": None if detail is None else json.dumps(detail)}


def masked_records(model: str = "a") -> list[dict]:
    """6 samples at Linf 0.03: 0 clean-wrong; 1, 2 fooled by pgd; 3, 4 survive pgd and AutoAttack's APGD members
    but Square breaks them; 5 survives everything. A transfer attack fools 1 and 5."""
    recs = []
    for i in range(6):
        label, clean = 1, (0 if i == 0 else 1)
        recs.append(_record(model, "pgd", 0.03, i, label, clean, 0 if i in (0, 1, 2) else 1))
        broken = {0: None, 1: "apgd-ce", 2: "apgd-t", 3: "square", 4: "square", 5: None}[i]
        detail = {"broken_by": broken, "square.queries": 812 if i in (3, 4, 5) else None}  # Square ran on 3, 4, 5
        recs.append(_record(model, "autoattack", 0.03, i, label, clean, 1 if broken is None and i else 0, detail))
        recs.append(_record(model, "transfer", 0.03, i, label, clean, 0 if i in (0, 1, 5) else 1))
        recs.append(_record(model, "matched_noise[pgd]", 0.03, i, label, clean, 0, kind="corruption"))
    return recs


def test_black_box_outcomes_from_records():
    names = {"pgd": "pgd", "autoattack": "autoattack", "transfer": "transfer", "fgsm": "fgsm"}
    norms = {"pgd": "linf", "autoattack": "linf", "transfer": "linf", "fgsm": "linf"}
    recs = masked_records("a")
    # model b: only white-box attacks -> no result; a segmentation model (label -1) -> ignored
    recs += [_record("b", "fgsm", 0.03, i, 1, 1, 0) for i in range(3)]
    recs += [_record("seg", "transfer", 0.03, 0, -1, -1, -1), _record("seg", "pgd", 0.03, 0, -1, -1, -1)]
    out = black_box_outcomes(recs, names, norms)
    assert list(out) == ["a"]
    r = out["a"]
    # white-box robust among clean-correct 1..5: 3, 4, 5 (pgd fooled 1, 2; APGD broke 1, 2). Black box fooled
    # 3, 4 (square) and 5 (transfer) -> 3 samples >= limit 2
    assert not r.passed and r.value == 3 and r.name == "black_box"
    assert "fooled 3 of the 3 samples" in r.message and "samples 3, 4, 5" in r.message
    assert "(autoattack: square, transfer)" in r.message and "(autoattack, pgd)" in r.message
    # without the transfer attack only Square's two samples remain; with an extra strength that passes, the
    # per-model result names the failing point only
    no_transfer = [x for x in recs if x["perturbation"] != "transfer"]
    no_transfer += [_record("a", "pgd", 0.01, i, 1, 1, 1) for i in range(1, 6)]
    no_transfer += [_record("a", "autoattack", 0.01, i, 1, 1, 1, {"broken_by": None, "square.queries": 5000})
                    for i in range(1, 6)]
    r2 = black_box_outcomes(no_transfer, names, norms)["a"]
    assert not r2.passed and r2.value == 2 and "Linf eps=0.03" in r2.message and "0.01" not in r2.message
    # AutoAttack records without details, or where Square never ran ("fast" version, or APGD broke every sample),
    # are white-box only: no black-box source is left
    plain = [dict(x, detail_json=None) for x in no_transfer]
    assert black_box_outcomes(plain, names, norms) == {}
    fast = [dict(x, detail_json=json.dumps({"broken_by": None})) for x in no_transfer if x["perturbation"] != "pgd"]
    assert black_box_outcomes(fast, names, norms) == {}
    # a model where Square adds nothing passes, with its largest count in the message
    fine = [x for x in no_transfer if x["strength"] == 0.01]
    ok = black_box_outcomes(fine, names, norms)["a"]
    assert ok.passed and ok.value == 0 and ok.message.startswith("Checked at 1 (norm, eps) point")


# --- store -------------------------------------------------------------------------------------------------


def test_store_checks_table(tmp_path):
    results = [CheckResult("logits", True, 0.0, "fine", "m1"),
               CheckResult("unbounded", False, float("nan"), "bad", "m2")]
    store = Store(tmp_path / "results.db")
    assert store.checks() == [] and not store.has_checks("a", "f1")
    store.write_checks("a", "f1", results)
    store.write_checks("b", "f9", results[:1])
    rows = store.checks()
    assert [(r["model"], r["name"], r["passed"], r["value"]) for r in rows] == [
        ("a", "logits", True, 0.0), ("a", "unbounded", False, None), ("b", "logits", True, 0.0)]
    assert rows[1]["meaning"] == "m2" and rows[1]["fingerprint"] == "f1" and rows[1]["created"] > 0
    assert store.has_checks("a", "f1") and not store.has_checks("a", "f2")
    store.write_checks("a", "f2", [CheckResult("gradients", True, 0.0, "ok", "m3")])  # replaces a's rows
    assert [(r["model"], r["name"]) for r in store.checks()] == [("a", "gradients"), ("b", "logits")]
    assert store.has_checks("a", "f2") and not store.has_checks("a", "f1")
    with pytest.raises(ValueError, match="repeat"):
        store.write_checks("a", "f3", results[:1] * 2)
    assert store.has_checks("a", "f2")  # the failed write left the rows alone
    store.close()


def test_store_without_checks_table_opens(tmp_path):
    path = tmp_path / "old.db"
    Store(path).close()
    con = sqlite3.connect(path)
    con.execute("DROP TABLE checks")
    con.commit()
    con.close()
    store = Store(path)
    assert store.checks() == []
    store.write_checks("a", "f", [CheckResult("logits", True, 0.0, "ok", "m")])
    assert store.has_checks("a", "f")
    store.close()
