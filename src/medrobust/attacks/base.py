"""What every attack shares: the call protocol, bounds, norms, projection and input gradients.

An attack is a frozen dataclass holding hyperparameters, called as
``attack(model, task, x, y, *, eps=None, generator=None) -> x_adv``. Subclasses write only ``run``, the core of
the algorithm; ``__call__`` validates inputs, puts the model in attack mode (eval, no parameter gradients,
restored afterwards), and for minimal-norm attacks clips the found perturbation to ``eps`` when one is given.

``attack.detailed(...)`` does the same and returns an :class:`AttackResult`: x_adv plus per-sample facts the
algorithm reports (the queries a black-box attack used, which member of an ensemble broke a sample). ``run`` may
return a bare tensor (no facts) or an AttackResult.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import nn

from medrobust.models.wrapper import Model, as_model, attack_mode
from medrobust.seeding import generator_for
from medrobust.tasks import Task, get_task
from medrobust.types import Bounds

PERTURBATION_NORMS = ("linf", "l2", "l0")


@dataclass(frozen=True)
class AttackResult:
    """x_adv: like the input x. info: per-sample facts, each a list of N JSON-serialisable values (e.g.
    ``{"queries": [812, 5000, ...]}`` or ``{"broken_by": ["apgd-ce", None, ...]}``). From :meth:`Attack.sweep`
    also the model's output on x_adv (``logits``) and whether each sample is adversarial for the task
    (``success``, bool (N,)); None from a single call."""

    x_adv: torch.Tensor
    info: dict[str, list[Any]] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    success: torch.Tensor | None = None


@dataclass(frozen=True)
class Attack(ABC):
    """Base class. ``minimal`` attacks search for the smallest adversarial perturbation and run once; budget
    attacks (``minimal = False``) need ``eps`` and run once per strength."""

    minimal: ClassVar[bool] = False
    #: Tasks the algorithm is defined for.
    tasks: ClassVar[tuple[str, ...]] = ("classification", "segmentation")
    #: Uses no gradient of the attacked model (only its outputs, or other models' gradients): a black-box source
    #: for the gradient-masking check, which asks whether such attacks succeed where gradient attacks failed.
    gradient_free: ClassVar[bool] = False
    #: Strong and independent enough to back a worst case (adaptive steps and restarts, or a minimal-norm search
    #: whose one run covers every strength of its norm); a worst case that rests on no strong attack is flagged.
    strong: ClassVar[bool] = False
    #: Needs source models resolved by name before it runs (:meth:`with_sources`): a transfer attack.
    needs_sources: ClassVar[bool] = False
    #: The hyperparameters a threat model lists, where the attack has them (:meth:`threat_settings`).
    THREAT_KEYS: ClassVar[tuple[str, ...]] = (
        "steps",
        "restarts",
        "step_size",
        "random_start",
        "keep_best",
        "loss",
        "targeted",
        "target_classes",
        "queries",
        "version",
        "binary_search_steps",
        "gamma",
        "candidates",
    )

    def with_sources(self, sources: list[nn.Module]) -> Attack:
        """The attack with its source models resolved (only where :attr:`needs_sources`)."""
        raise TypeError(f"{type(self).__name__} takes no source models")

    def threat_settings(self, family: str | None = None) -> dict[str, Any]:
        """The settings the threat model shows for this attack (its hyperparameters in :attr:`THREAT_KEYS`), on
        tasks of ``family`` (an ensemble lists the members that run there)."""
        return {key: getattr(self, key) for key in self.THREAT_KEYS if hasattr(self, key)}

    @property
    def threat_norm(self) -> str:
        """The norm in which ``eps`` is measured for this attack: its ``norm`` field. Every attack declares one
        (or overrides this property); none is assumed."""
        norm = getattr(self, "norm", None)
        if norm is None:
            raise TypeError(f"{type(self).__name__} declares no norm: give it a `norm` field or override threat_norm")
        return str(norm)

    def __call__(
        self,
        model: nn.Module,
        task: str | Task,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        eps: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """x: (N, C, *spatial) floating inputs inside the model's bounds; y: labels. Returns x_adv like x."""
        return self.detailed(model, task, x, y, eps=eps, generator=generator).x_adv

    def detailed(
        self,
        model: nn.Module,
        task: str | Task,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        eps: float | None = None,
        generator: torch.Generator | None = None,
    ) -> AttackResult:
        """As ``__call__``, returning x_adv with the per-sample facts the algorithm reports."""
        model = as_model(model)
        task = get_task(task)
        name = type(self).__name__
        if task.family not in self.tasks:
            raise ValueError(f"{name} is defined for {', '.join(self.tasks)} tasks only, not {task.name!r}")
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
        y = torch.as_tensor(y, device=x.device)
        if x.dim() < 2 or y.dim() < 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"x of shape {tuple(x.shape)} and y of shape {tuple(y.shape)} do not form a batch: expected x "
                "(N, C, *spatial) and y with the same N (add the batch dimension with x.unsqueeze(0))"
            )
        if y.is_floating_point() or y.is_complex():
            if not bool(torch.isfinite(y).all()) or not bool((y == y.round()).all()):
                raise ValueError(f"labels y must be integer class indices, got non-integer values of dtype {y.dtype}")
        if not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
            raise ValueError(
                f"x holds NaN or infinite values in {bad} of {x.shape[0]} samples; attacks need finite inputs"
            )
        if eps is None and not self.minimal:
            raise ValueError(f"{name} is a budget attack and needs eps (in input units, norm {self.threat_norm})")
        if eps is not None and (not math.isfinite(float(eps)) or float(eps) < 0):
            raise ValueError(f"eps={eps!r} must be a finite number >= 0")
        low, high = model.bounds
        if x.numel() and (float(x.min()) < low - 1e-6 or float(x.max()) > high + 1e-6):
            raise ValueError(
                f"x ranges over [{float(x.min()):.4g}, {float(x.max()):.4g}], outside the model's bounds "
                f"{model.bounds}; pass the bounds the data are in"
            )
        y = y.long()
        if x.shape[0] == 0:  # an empty batch has nothing to attack
            return AttackResult(x.detach().clone())
        gen = generator_for(x, generator)
        x = x.detach()
        # enable_grad: attacks need input gradients even when called inside a no_grad block
        with attack_mode(model), torch.enable_grad():
            if eps is not None and float(eps) == 0.0:
                return AttackResult(x.clone())
            out = self.run(model, task, x, y, eps=None if eps is None else float(eps), generator=gen)
        result = out if isinstance(out, AttackResult) else AttackResult(out)
        x_adv = result.x_adv
        if self.minimal and eps is not None:
            x_adv = clip_perturbation(x, x_adv, float(eps), self.threat_norm, model.bounds)
        return AttackResult(x_adv.detach().to(dtype=x.dtype), result.info)

    def sweep(
        self,
        model: nn.Module,
        task: str | Task,
        x: torch.Tensor,
        y: torch.Tensor,
        strengths: Iterable[float],
        generator_for: Callable[[float | None], torch.Generator],
        *,
        prune: bool = False,
    ) -> Iterator[tuple[float, AttackResult]]:
        """The attack at every strength, each result with the model's output on x_adv and per-sample success (as
        foolbox's ``__call__`` returns): a minimal attack runs once (``generator_for(None)``) and its
        perturbation is clipped to each strength, here and nowhere else; a budget attack runs once per strength
        (``generator_for(eps)``).

        ``prune`` (budget attacks): the strengths run in ascending order and each attacks only the samples no
        smaller strength already made adversarial; those keep the smaller strength's example (and its facts),
        which lies inside every larger ball. Where success is partial (segmentation: a lower Dice is still
        worse), every sample is attacked and keeps whichever example scores lower. So a pruned curve never
        lies above separate runs at each strength (exactly so for deterministic attacks), and costs about one
        attack where the small strengths already break most samples. Yields in ascending order then."""
        wrapped, task = as_model(model), get_task(task)
        labels = torch.as_tensor(y, device=x.device).long()

        def scored(result: AttackResult) -> AttackResult:
            with torch.no_grad():
                logits = wrapped(result.x_adv)
            return replace(result, logits=logits, success=task.is_adversarial(logits, labels))

        if self.minimal:
            base = self.detailed(wrapped, task, x, y, generator=generator_for(None))
            for eps in strengths:
                # an infinite strength: the minimal perturbation itself, whatever its size
                clipped = (
                    base.x_adv
                    if math.isinf(eps)
                    else clip_perturbation(x, base.x_adv, eps, self.threat_norm, wrapped.bounds)
                )
                yield eps, scored(AttackResult(clipped, base.info))
        elif not prune:
            for eps in strengths:
                yield eps, scored(self.detailed(wrapped, task, x, y, eps=eps, generator=generator_for(eps)))
        else:
            previous: AttackResult | None = None
            for eps in sorted(strengths):
                result = self._pruned_step(wrapped, task, x, y, labels, eps, generator_for(eps), previous, scored)
                previous = result
                yield eps, result

    def _pruned_step(
        self,
        model: Model,
        task: Task,
        x: torch.Tensor,
        y: torch.Tensor,
        labels: torch.Tensor,
        eps: float,
        generator: torch.Generator,
        previous: AttackResult | None,
        scored: Callable[[AttackResult], AttackResult],
    ) -> AttackResult:
        """One strength of a pruned sweep (see :meth:`sweep`), given the result at the next smaller strength."""
        if previous is None:
            return scored(self.detailed(model, task, x, y, eps=eps, generator=generator))
        assert previous.success is not None and previous.logits is not None
        if task.dense:  # partial success: attack all, keep the lower-scoring example per sample
            fresh = scored(self.detailed(model, task, x, y, eps=eps, generator=generator))
            assert fresh.logits is not None
            with torch.no_grad():
                keep_old = task.score(previous.logits, labels) < task.score(fresh.logits, labels)
            return _merge(fresh, previous, keep_old)
        todo = (~previous.success).nonzero().flatten()
        if todo.numel() == 0:
            return previous
        part = self.detailed(model, task, x[todo], y[todo], eps=eps, generator=generator)
        with torch.no_grad():
            logits = model(part.x_adv)
        x_adv, out_logits = previous.x_adv.clone(), previous.logits.clone()
        x_adv[todo], out_logits[todo] = part.x_adv, logits
        info = {k: list(v) for k, v in previous.info.items()}
        for key, values in part.info.items():
            merged = info.setdefault(key, [None] * x.shape[0])
            for j, i in enumerate(todo.tolist()):
                merged[i] = values[j]
        return AttackResult(x_adv, info, out_logits, task.is_adversarial(out_logits, labels))

    def target_map(self, y: torch.Tensor, num_classes: int) -> torch.Tensor | None:
        """For a targeted structured-output attack, the label map it drives toward for true labels ``y`` (scored
        by IoU); None for every other attack."""
        return None

    @abstractmethod
    def run(
        self,
        model: Model,
        task: Task,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        eps: float | None,
        generator: torch.Generator,
    ) -> torch.Tensor | AttackResult:
        """The algorithm. ``model`` is in eval mode with frozen parameters; ``x`` is detached."""


def _merge(fresh: AttackResult, previous: AttackResult, keep_old: torch.Tensor) -> AttackResult:
    """Per sample, ``previous`` where ``keep_old`` (bool (N,)) else ``fresh``: examples, outputs, success, facts."""
    assert fresh.logits is not None and previous.logits is not None
    assert fresh.success is not None and previous.success is not None
    x_adv = torch.where(per_sample(keep_old, fresh.x_adv), previous.x_adv, fresh.x_adv)
    logits = torch.where(per_sample(keep_old, fresh.logits), previous.logits, fresh.logits)
    success = torch.where(keep_old, previous.success, fresh.success)
    old = keep_old.tolist()
    info = {
        key: [previous.info.get(key, [None] * len(old))[i] if o else v for i, (v, o) in enumerate(zip(values, old))]
        for key, values in fresh.info.items()
    }
    return AttackResult(x_adv, info, logits, success)


def normalised_ascent(
    model: Model,
    x: torch.Tensor,
    steps: int,
    gamma: float,
    objective: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """The loop DAG and ASMA share: from x, up to ``steps`` steps of ``gamma * g / ||g||_2`` along the gradient
    g of a per-unit objective summed over the live units, each sample stopping once it is done.

    ``objective(logits, rows)`` gets the model's output on the still-active samples (their rows of the batch)
    and returns (per-unit objective, live units (bool), samples to keep going (bool, per sample))."""
    x_adv = x.clone()
    active = torch.arange(x.shape[0], device=x.device)
    for _ in range(steps):
        xa = x_adv[active].detach().requires_grad_(True)
        units, live, keep = objective(model(xa), active)
        if not bool(keep.any()):
            break
        (g,) = torch.autograd.grad((units * live).sum(), xa)
        step = gamma * g / per_sample(flat_norm(g, "l2").clamp_min(1e-12), g)
        x_adv[active] = clamp_bounds(x_adv[active] + step * per_sample(keep.to(g.dtype), g), model.bounds)
        active = active[keep]
    return x_adv


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok or not math.isfinite(float(value)):
        raise ValueError(f"{name}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


def check_int(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


def clamp_bounds(x: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    return x.clamp(bounds[0], bounds[1])


def flat_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm of ``t`` (N, ...) -> (N,)."""
    flat = t.flatten(1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    if norm == "l2":
        return flat.norm(dim=1)
    if norm == "l0":
        return (flat != 0).sum(dim=1).to(t.dtype)
    raise ValueError(f"norm={norm!r} is not supported; expected one of {', '.join(PERTURBATION_NORMS)}")


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape (N,) so it broadcasts against ``like`` (N, ...)."""
    return values.view((-1,) + (1,) * (like.dim() - 1))


def step_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit norm: sign for Linf, grad / ||grad||_2 for L2 (0 where grad is 0)."""
    if norm == "linf":
        return grad.sign()
    if norm == "l2":
        return grad / per_sample(flat_norm(grad, "l2"), grad).clamp_min(1e-12)
    raise ValueError(f"norm={norm!r} is not supported; expected 'linf' or 'l2'")


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project perturbations onto the ``norm`` ball of radius ``eps``."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    if norm == "l2":
        n = per_sample(flat_norm(delta, "l2"), delta)
        return delta * torch.where(n > eps, eps / n.clamp_min(1e-12), torch.ones_like(n))
    raise ValueError(f"norm={norm!r} is not supported; expected 'linf' or 'l2'")


def clip_perturbation(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str, bounds: Bounds) -> torch.Tensor:
    """Limit ``x_adv - x`` to size ``eps`` in ``norm`` (as foolbox evaluates minimal attacks at a budget).

    For L0, ``eps`` is a fraction of the input features: the largest ``floor(eps * features)`` changes are kept.
    """
    delta = x_adv - x
    if norm == "l0":
        flat = delta.flatten(1)
        k = int(math.floor(eps * flat.shape[1] + 1e-9))
        if k >= flat.shape[1]:
            return clamp_bounds(x_adv, bounds)
        keep = torch.zeros_like(flat, dtype=torch.bool)
        if k > 0:
            keep.scatter_(1, flat.abs().topk(k, dim=1).indices, True)
        delta = torch.where(keep, flat, torch.zeros_like(flat)).view_as(delta)
    else:
        delta = project(delta, eps, norm)
    return clamp_bounds(x + delta, bounds)


def loss_and_grad(
    model: nn.Module,
    task: Task,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward and backward once. Returns (logits, per-sample loss (N,), d(sum of losses)/dx).

    ``loss_fn(logits) -> (N,)`` replaces the task's cross-entropy (APGD's DLR loss, targeted losses)."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    task.check(logits, y)
    loss = task.loss(logits, y) if loss_fn is None else loss_fn(logits)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return logits.detach(), loss.detach(), grad


def improves(
    score: torch.Tensor, loss: torch.Tensor, best_score: torch.Tensor, best_loss: torch.Tensor
) -> torch.Tensor:
    """Boolean (N,): is (score, loss) a better adversarial outcome than (best_score, best_loss)?

    Lower task score first (for classification: misclassified beats correct; for segmentation: lower Dice),
    then higher loss. Attacks use it to keep the best point they visited per sample, as AutoAttack does."""
    return (score < best_score) | ((score == best_score) & (loss > best_loss))


def clean_outputs(model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor, attack: str) -> torch.Tensor:
    """The model's clean outputs for a decision-boundary attack (DeepFool, C&W, FMN, FAB), checked against the
    labels by the task, with at least 2 outputs (a boundary needs two sides)."""
    with torch.no_grad():
        clean = model(x)
    task.check(clean, y)
    if clean.shape[1] < 2:
        raise ValueError(f"{attack} needs a model with at least 2 outputs, got {clean.shape[1]}")
    return clean


def outcome(model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (task score, task loss) of ``x``, without gradients."""
    with torch.no_grad():
        logits = model(x)
        task.check(logits, y)
        return task.score(logits, y), task.loss(logits, y)


def keep_better(
    best: torch.Tensor,
    best_score: torch.Tensor,
    best_loss: torch.Tensor,
    cand: torch.Tensor,
    score: torch.Tensor,
    loss: torch.Tensor,
    index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Write candidates that improve on the best into ``best``, ``best_score`` and ``best_loss`` in place.

    ``index`` (M,): rows of the best tensors the M candidates belong to (None: all rows, M = N). Returns the
    boolean (M,) mask of candidates taken."""
    rows = torch.arange(best.shape[0], device=best.device) if index is None else index
    take = improves(score, loss, best_score[rows], best_loss[rows])
    idx = rows[take]
    best[idx] = cand[take].to(best.dtype)
    best_score[idx] = score[take]
    best_loss[idx] = loss[take]
    return take


def random_in_ball(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """A random perturbation uniform in the ``norm`` ball of radius ``eps`` (Madry et al. random start)."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * eps
    if norm == "l2":
        d = x[0].numel()
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        direction = direction / per_sample(flat_norm(direction, "l2"), x).clamp_min(1e-12)
        radius = torch.rand((x.shape[0],), generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / d)
        return direction * per_sample(radius * eps, x)
    raise ValueError(f"norm={norm!r} is not supported; expected 'linf' or 'l2'")
