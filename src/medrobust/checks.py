"""Sanity checks that flag a broken evaluation or gradient masking (Carlini et al. 2019, "On Evaluating
Adversarial Robustness"; Croce & Hein 2020, AutoAttack's checks; Athalye et al. 2018, obfuscated gradients).

Each check is a pure function returning a :class:`CheckResult`. Model-level checks take
``(model, task, x, y)`` with x of shape (N, C, *spatial) inside the model's input bounds and labels y, and run the
model in attack mode (eval, no parameter gradients; mode and flags restored after):

- :func:`check_logits`: the model returns probabilities or log-probabilities instead of logits.
- :func:`check_deterministic`: two eval-mode forward passes on the same input differ (a randomised model).
- :func:`check_gradients`: the input gradient of the task loss is all zero or non-finite for many samples.
- :func:`check_unbounded`: PGD with eps = the full input range does not drive the score to about 0.
- :func:`check_more_steps`: PGD with 5x the steps and 2 restarts leaves a higher score than PGD with 10 steps.

:func:`run_model_checks` runs all five on one batch. The record-level check :func:`check_black_box` (and
:func:`black_box_outcomes`, which builds its inputs from stored records) flags samples that a black-box attack
fools although every white-box attack failed on them. Nothing here writes anything; the runner stores the
results (``Store.write_checks``) and the report reads them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medrobust.attacks import AutoAttack, capabilities
from medrobust.attacks.base import loss_and_grad
from medrobust.attacks.pgd import PGD
from medrobust.models.wrapper import as_model, attack_mode
from medrobust.seeding import generator_for
from medrobust.tasks import Task, get_task


@dataclass(frozen=True)
class CheckResult:
    """name: the check's id (a key of TITLES). value: the measured quantity (see each check). message: what was
    measured, with the numbers. meaning: what a failure means and what to do about it."""

    name: str
    passed: bool
    value: float
    message: str
    meaning: str


#: A short title per check, shown when it fails.
TITLES = {
    "logits": "outputs are not logits",
    "deterministic": "randomised model",
    "gradients": "zero or non-finite gradients",
    "unbounded": "unbounded attack fails",
    "more_steps": "more steps raise the score",
    "black_box": "black box beats white box",
}
#: What each check verifies, for the report's list of checks.
DESCRIPTIONS = {
    "logits": "the model returns logits, not probabilities or log-probabilities",
    "deterministic": "two forward passes in eval mode on the same input agree",
    "gradients": "the input gradient of the loss is nonzero and finite for at least 90% of the samples",
    "unbounded": "PGD with eps = the full input range drives the score to about 0",
    "more_steps": "PGD with 5x the steps and 2 restarts does not leave a higher score than PGD with 10 steps",
    "black_box": "a black-box attack (Square, AutoAttack's Square, transfer) fools almost no sample that every "
    "white-box attack left correct",
}
MEANINGS = {
    "logits": (
        "Attacks differentiate a loss (cross-entropy, margin) that expects logits. On probabilities the loss "
        "applies a second softmax and its gradients vanish, so gradient attacks stall and robustness is "
        "overestimated. Remove the final softmax / log-softmax so the model returns logits."
    ),
    "deterministic": (
        "The model or its defense is randomised (dropout or noise active in eval mode, random transforms). Its "
        "gradient is then a random draw and one-shot attacks underestimate it: attack the expectation instead "
        "(Expectation over Transformation: average the gradient over many passes) or make eval mode deterministic, "
        "and treat every robust accuracy of this model as an upper bound."
    ),
    "gradients": (
        "Gradient attacks get no signal on these samples: a non-differentiable step (rounding, quantisation, "
        "thresholding, JPEG), a saturated softmax (loss exactly 0 in float32) or NaN-producing operations mask "
        "the gradient, so gradient attacks report robustness that is not there. Replace such steps by a "
        "differentiable approximation in the backward pass (BPDA) and rely on gradient-free attacks (Square)."
    ),
    "unbounded": (
        "With a budget covering the whole input range any input can be turned into any other, so a working "
        "attack must fool about every sample. If it does not, the attack is not following useful gradients "
        "(masked or obfuscated gradients, a bug in the attack or the loss), and this model's robust scores are "
        "upper bounds at best. See the gradient and logits checks; try BPDA, EOT or gradient-free attacks."
    ),
    "more_steps": (
        "A stronger attack must never do less harm. Here smaller steps get trapped in local maxima of a rugged "
        "loss surface (a sign of obfuscated gradients) or the step size is badly tuned, so the score reported "
        "for few-step attacks is not an upper bound you can trust. Use an adaptive step size (APGD), several "
        "restarts, and the per-sample worst case over attacks."
    ),
    "black_box": (
        "Black-box attacks see only the model's outputs; they should not succeed where attacks that use the "
        "gradient fail. When they do, the gradients are masked or the white-box attacks are misconfigured, and "
        "scores that rest on white-box attacks alone overestimate robustness. Include a gradient-free attack "
        "(Square) in the worst case and check the gradient-based checks of this model."
    ),
}

#: The check's tolerances (see each function).
UNBOUNDED_TOL = 0.05
SCORE_SLACK = 0.02
GRADIENT_MAX_SHARE = 0.1
BLACK_BOX_MIN_COUNT = 2
BLACK_BOX_MIN_SHARE = 0.05


def _result(name: str, passed: bool, value: float, message: str) -> CheckResult:
    return CheckResult(name, bool(passed), float(value), message, MEANINGS[name])


def _prepared(model: nn.Module, task: str | Task, x: torch.Tensor) -> tuple[Any, Task]:
    if not torch.is_tensor(x) or not x.is_floating_point() or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty floating-point batch (N, C, *spatial), got {getattr(x, 'shape', x)}")
    return as_model(model), get_task(task)


def _forward(model, x: torch.Tensor) -> torch.Tensor:
    with attack_mode(model), torch.no_grad():
        return model(x)


def _rows(out: torch.Tensor) -> torch.Tensor:
    """(N, K, *spatial) -> (units, K): one row per decision unit, classes along the row."""
    return out.movedim(1, -1).reshape(-1, out.shape[1]).double()


# --- model-level checks ----------------------------------------------------------------------------------


def check_logits(
    model: nn.Module, task: str | Task, x: torch.Tensor, y: torch.Tensor | None = None, *, atol: float = 1e-4
) -> CheckResult:
    """Do the outputs look like probabilities (each row in [0, 1], summing to 1 over dim 1) or log-probabilities
    (each row <= 0, logsumexp over dim 1 = 0)? value: the share of decision units whose output row is normalised
    in either way, to ``atol``. Fails when at least half of them are; logits almost never are."""
    model, task = _prepared(model, task, x)
    out = _forward(model, x)
    if out.shape[1] < 2:
        return _result("logits", True, 0.0, f"The model has {out.shape[1]} output per unit; nothing to check.")
    rows = _rows(out)
    finite = torch.isfinite(rows).all(1)
    rows = rows[finite]
    prob = ((rows >= -atol) & (rows <= 1 + atol)).all(1) & ((rows.sum(1) - 1).abs() <= atol)
    logp = (rows <= atol).all(1) & (torch.logsumexp(rows, 1).abs() <= atol)
    n = int(finite.numel())
    share = float((prob | logp).sum()) / n
    unit = "rows" if n == x.shape[0] else f"rows (one per decision unit of {x.shape[0]} samples)"
    if share >= 0.5:
        kind = (
            "probabilities (in [0, 1], summing to 1)"
            if int(prob.sum()) >= int(logp.sum())
            else "log-probabilities (logsumexp 0)"
        )
        return _result(
            "logits",
            False,
            share,
            (
                f"{share:.0%} of {n} output {unit} are {kind} over the class axis: the model outputs a normalised "
                "distribution instead of logits."
            ),
        )
    return _result("logits", True, share, f"Outputs are logits: {share:.0%} of {n} output {unit} are normalised.")


def check_deterministic(
    model: nn.Module,
    task: str | Task,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    rtol: float = 1e-4,
    atol: float = 1e-6,
) -> CheckResult:
    """Two eval-mode forward passes on ``x``. value: the largest absolute difference between their outputs;
    fails above ``atol + rtol * max |output|`` (room for non-deterministic GPU kernels, not for randomness)."""
    model, task = _prepared(model, task, x)
    a, b = _forward(model, x), _forward(model, x)
    both_nan = torch.isnan(a) & torch.isnan(b)
    diff = torch.where(both_nan, torch.zeros_like(a), (a - b).abs())
    diff = torch.nan_to_num(diff, nan=float("inf"))
    value = float(diff.max())
    scale = float(torch.nan_to_num(a.abs(), nan=0.0, posinf=0.0).max())
    limit = atol + rtol * scale
    changed = int((task.predict(a) != task.predict(b)).reshape(a.shape[0], -1).any(1).sum())
    n = x.shape[0]
    if value > limit:
        return _result(
            "deterministic",
            False,
            value,
            (
                f"Two forward passes in eval mode on the same {n} inputs differ by up to {value:.3g} (largest output "
                f"magnitude {scale:.3g}); the prediction changed on {changed} of {n} samples."
            ),
        )
    return _result(
        "deterministic",
        True,
        value,
        f"Two forward passes in eval mode on the same {n} inputs agree (largest difference {value:.3g}).",
    )


def check_gradients(
    model: nn.Module, task: str | Task, x: torch.Tensor, y: torch.Tensor, *, max_share: float = GRADIENT_MAX_SHARE
) -> CheckResult:
    """Input gradient of the task loss (medrobust.attacks.base.loss_and_grad) per sample. value: the share of
    samples whose gradient is all zero or has a non-finite entry; fails above ``max_share`` (0.1: a few
    saturated, confidently-correct samples are normal, a tenth of the batch is not)."""
    model, task = _prepared(model, task, x)
    y = y.to(x.device).long()
    with attack_mode(model), torch.enable_grad():
        _, loss, grad = loss_and_grad(model, task, x, y)
    flat = grad.flatten(1)
    nonfinite = ~torch.isfinite(flat).all(1)
    zero = (flat == 0).all(1) & ~nonfinite
    n = x.shape[0]
    value = float((zero | nonfinite).sum()) / n
    saturated = int((zero & (loss == 0)).sum())
    text = (
        f"The input gradient of the loss is all zero for {int(zero.sum())} and non-finite for "
        f"{int(nonfinite.sum())} of {n} samples (share {value:.2f}, limit {max_share:.2f})"
    )
    if saturated:
        text += f"; {saturated} of the zero gradients come with a loss of exactly 0 (a saturated softmax)"
    return _result("gradients", value <= max_share, value, text + ".")


def _units_correct(task: Task, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample, the share of decision units still labelled correctly: accuracy (0/1) for classification,
    the foreground units for segmentation (all units of a sample without foreground)."""
    correct = task.correct(logits, y)
    if correct.dim() == 1:
        return correct.to(logits.dtype)
    correct, fg = correct.flatten(1), (y > 0).flatten(1)
    fg = torch.where(fg.any(1, keepdim=True), fg, torch.ones_like(fg))
    return (correct & fg).sum(1).to(logits.dtype) / fg.sum(1).to(logits.dtype)


def check_unbounded(
    model: nn.Module,
    task: str | Task,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    steps: int = 20,
    tol: float = UNBOUNDED_TOL,
) -> CheckResult:
    """PGD (Linf, ``steps`` steps, default step size 2.5 * eps / steps, random start) with eps = high - low of the
    model's bounds, so every input in bounds is reachable. value: the mean share of decision units still correct
    under it (accuracy for classification; for segmentation the share of foreground units still correct, which
    reaches 0 where Dice may not: a model can keep background pixels right). Fails above max(tol, 1/n): one
    sample of slack."""
    model, task = _prepared(model, task, x)
    y = y.to(x.device).long()
    low, high = as_model(model).bounds
    eps = high - low
    x_adv = PGD(steps=steps, norm="linf")(model, task, x, y, eps=eps, generator=generator_for(x, generator))
    value = float(_units_correct(task, _forward(model, x_adv), y).mean())
    clean = float(_units_correct(task, _forward(model, x), y).mean())
    limit = max(tol, 1.0 / x.shape[0])
    what = task.units_title
    text = (
        f"PGD (Linf, {steps} steps) with eps = {eps:.4g}, the full input range [{low:g}, {high:g}], leaves "
        f"{what} {value:.3f} on {x.shape[0]} samples (clean {clean:.3f}, limit {limit:.3f})"
    )
    return _result("unbounded", value <= limit, value, text + ("; it should reach about 0." if value > limit else "."))


def check_more_steps(
    model: nn.Module,
    task: str | Task,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    generator: torch.Generator | None = None,
    norm: str = "linf",
    steps: int = 5,
    factor: int = 5,
    restarts: int = 2,
    tol: float = SCORE_SLACK,
) -> CheckResult:
    """PGD with ``steps`` steps (weak) and with ``factor * steps`` steps and ``restarts`` restarts (strong) at the
    same ``eps`` (input units, ``norm``), both with the default step size 2.5 * eps / steps. value: the strong
    attack's mean task score (accuracy or Dice) minus the weak one's; fails above max(tol, 1/n)."""
    model, task = _prepared(model, task, x)
    if not (math.isfinite(float(eps)) and float(eps) > 0):
        raise ValueError(f"eps={eps!r} must be a finite number > 0 (input units, norm {norm})")
    y = y.to(x.device).long()
    gen = generator_for(x, generator)
    scores = []
    for attack in (PGD(steps=steps, norm=norm), PGD(steps=steps * factor, restarts=restarts, norm=norm)):
        x_adv = attack(model, task, x, y, eps=float(eps), generator=gen)
        scores.append(float(task.score(_forward(model, x_adv), y).mean()))
    weak, strong = scores
    value = strong - weak
    slack = max(tol, 1.0 / x.shape[0])
    score = task.metric_title
    text = (
        f"Under PGD ({norm.capitalize()}, eps = {float(eps):.4g}) {score} is {strong:.3f} with "
        f"{steps * factor} steps x {restarts} restarts and {weak:.3f} with {steps} steps"
    )
    if value > slack:
        return _result(
            "more_steps", False, value, text + f": more steps raise {score} by {value:.3f} (slack {slack:.3f})."
        )
    return _result("more_steps", True, value, text + f" (slack {slack:.3f}).")


def run_model_checks(
    model: nn.Module,
    task: str | Task,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | None,
    generator: torch.Generator | None = None,
) -> list[CheckResult]:
    """All model-level checks on one batch (the runner passes the first <= 32 test samples and the run's
    reference Linf eps; ``eps=None`` skips check_more_steps). ``generator`` (on x's device) drives the random
    starts. Costs about 80 forward-backward passes: 1 (gradients) + 20 (unbounded) + 5 + 25 x 2 (more steps; the
    second restart only on samples still correct), plus a few forward passes."""
    model, task = _prepared(model, task, x)
    gen = generator_for(x, generator)
    out = [
        check_logits(model, task, x, y),
        check_deterministic(model, task, x, y),
        check_gradients(model, task, x, y),
        check_unbounded(model, task, x, y, generator=gen),
    ]
    if eps is not None:
        out.append(check_more_steps(model, task, x, y, eps=eps, generator=gen))
    return out


# --- record-level check: black box vs white box ------------------------------------------------------------


def check_black_box(
    white_robust: Mapping[int, bool],
    black_success: Mapping[int, bool],
    *,
    where: str = "",
    white: Sequence[str] = (),
    black: Sequence[str] = (),
    min_count: int = BLACK_BOX_MIN_COUNT,
    min_share: float = BLACK_BOX_MIN_SHARE,
) -> CheckResult:
    """Gradient masking shows as samples a black-box attack fools although every white-box attack failed.

    white_robust: sample -> True when it was correct clean and survived every white-box attack (samples fooled by
    some white-box attack map to False; clean-wrong samples are left out). black_success: sample -> True when a
    black-box attack fooled it. where / white / black: the threat (e.g. "Linf eps=0.03") and attack labels, for
    the message. value: the number of such samples. Fails when it reaches max(min_count, ceil(min_share * number
    of white-box-robust samples)): one sample can be the luck of a random search, two or more and 5% of the
    robust ones are a pattern (AutoAttack's Square rarely adds anything on a model with honest gradients).
    """
    robust = [i for i, r in white_robust.items() if r]
    masked = sorted(i for i in robust if black_success.get(i, False))
    limit = max(min_count, math.ceil(min_share * len(robust)))
    at = f"At {where}, " if where else ""
    names_b = f" ({', '.join(black)})" if black else ""
    names_w = f" ({', '.join(white)})" if white else ""
    shown = ", ".join(map(str, masked[:8])) + (", ..." if len(masked) > 8 else "")
    text = (
        f"{at}black-box attacks{names_b} fooled {len(masked)} of the {len(robust)} samples that every "
        f"white-box attack{names_w} left correct (limit {limit})" + (f": samples {shown}." if masked else ".")
    )
    return _result("black_box", len(masked) < limit, len(masked), text)


def _gradient_free(name: str) -> bool:
    cls = capabilities(name)
    return cls is not None and cls.gradient_free


def _detail(record: Mapping[str, Any]) -> dict[str, Any]:
    raw = record.get("detail_json")
    try:
        detail = json.loads(raw) if raw else None
    except (TypeError, ValueError):
        return {}
    return detail if isinstance(detail, dict) else {}


@dataclass
class _Group:
    white: dict[int, bool]
    black: dict[int, bool]
    white_names: set[str]
    black_names: set[str]


def black_box_outcomes(
    records: Iterable[Mapping[str, Any]], attack_names: Mapping[str, str], norms: Mapping[str, str]
) -> dict[str, CheckResult]:
    """:func:`check_black_box` per (model, norm, strength) from stored records (dicts with the columns of
    ``medrobust.store.RECORD_COLUMNS``), combined into one result per model, in the order models appear.

    attack_names: perturbation label -> registered attack name; norms: label -> threat norm. Only attack records
    of clean-correct classification samples count. Attacks whose class is ``gradient_free`` are black-box. A record
    whose detail_json has "broken_by" (an ensemble such as AutoAttack, whose members run in cascade) is
    white-box, except that a sample broken by a gradient-free member ("square") counts as fooled by a
    black-box attack and not by the white-box members; the member counts as a black-box source on the samples it
    ran on (it broke them, or the record carries its facts, e.g. "square.queries"; in a cascade it runs only on
    samples every white-box member failed on). All other attacks are white-box. A model gets a result
    only where some (norm, strength) has both a white-box and a black-box source.
    """
    black_members = AutoAttack.gradient_free_members()
    groups: dict[tuple[str, str, float], _Group] = {}
    for r in records:
        label = r["perturbation"]
        name, norm = attack_names.get(label), norms.get(label)
        if r["kind"] != "attack" or name is None or norm is None:
            continue
        if int(r["label"]) < 0 or int(r["clean_pred"]) != int(r["label"]):
            continue
        key = (r["model"], norm, round(float(r["strength"]), 12))
        g = groups.setdefault(key, _Group({}, {}, set(), set()))
        i, fooled = int(r["sample_index"]), int(r["pred"]) != int(r["label"])
        detail = _detail(r)
        if _gradient_free(name):
            g.black[i] = g.black.get(i, False) or fooled
            g.black_names.add(label)
        elif "broken_by" in detail:
            by_black = fooled and detail["broken_by"] in black_members
            g.white[i] = g.white.get(i, True) and not (fooled and not by_black)
            g.white_names.add(label)
            # the black-box member ran on this sample if it broke it or reported facts ("square.queries")
            ran = [
                m
                for m in black_members
                if by_black or any(k.split(".")[0] == m and v is not None for k, v in detail.items())
            ]
            if ran:
                g.black[i] = g.black.get(i, False) or by_black
                for m in ran:
                    g.black_names.add(f"{label}: {m}")
        else:
            g.white[i] = g.white.get(i, True) and not fooled
            g.white_names.add(label)
    per_model: dict[str, list[CheckResult]] = {}
    for (model, norm, strength), g in groups.items():
        if not g.white_names or not g.black_names:
            continue
        where = f"{norm.capitalize()} eps={strength:.4g}"
        per_model.setdefault(model, []).append(
            check_black_box(g.white, g.black, where=where, white=sorted(g.white_names), black=sorted(g.black_names))
        )
    out = {}
    for model, results in per_model.items():
        failed = [r for r in results if not r.passed]
        if failed:
            out[model] = _result("black_box", False, max(r.value for r in failed), " ".join(r.message for r in failed))
        else:
            worst = max(results, key=lambda r: r.value)
            out[model] = _result(
                "black_box",
                True,
                worst.value,
                (
                    f"Checked at {len(results)} (norm, eps) point{'s' if len(results) > 1 else ''}; the largest count: "
                    + worst.message[0].lower()
                    + worst.message[1:]
                ),
            )
    return out
