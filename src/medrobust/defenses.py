"""Training for robustness: what a training batch's loss is under each defense.

- ``adversarial``: train on adversarial examples of the model being trained. ``method: pgd`` is Madry et al.
  (2018): each batch's examples by a registered attack (``attack``: pgd, or segpgd for segmentation) with
  ``steps`` steps inside the ``eps`` ball; ``method: fast`` is Wong et al. (2020): one signed step of 1.25 eps from
  a uniform random start (FGSM with random start, the cheap variant); ``method: trades`` is Zhang et al. (2019):
  the clean loss plus ``beta`` times the KL divergence between the model's outputs on x and on the x' in the ball
  that maximises it. ``share`` is the fraction of each batch replaced by adversarial examples (pgd, fast).
- ``ensemble_adversarial``: Tramer et al. (2018): the adversarial examples of a batch are crafted, in turn, on
  the model itself and on each static, pre-trained source model (``sources``), by the ``method`` (fast or pgd).
- ``jacobian``: the contractive penalty of Gu & Rigazio's deep contractive network on the input-output Jacobian,
  ``weight / 2 * ||J||_F^2`` per sample, estimated with random projections (Hoffman et al. 2019): for v uniform
  on the unit sphere of the output space (dimension C), ``||J||_F^2 = C * E_v ||v^T J||^2``, so each projection
  costs one extra backward pass (with a graph, for the second-order gradient).

``eps`` ramps up linearly over the first ``warmup_epochs`` (eps warm-up); every random draw comes from a
generator derived from the training seed, the epoch and the batch, so training stays deterministic given the
seed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medrobust.attacks import ATTACKS, Attack
from medrobust.attacks.base import clamp_bounds, project, step_direction
from medrobust.models.wrapper import Model, attack_mode
from medrobust.seeding import make_generator
from medrobust.tasks import Task


class DefenseSpec(BaseModel):
    """How a model is trained for robustness (``train: {defense: ...}`` in a spec, ``--defense`` on the command
    line); every setting is recorded in the model card."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["none", "adversarial", "ensemble_adversarial", "jacobian"] = "none"
    method: Literal["pgd", "fast", "trades"] = "pgd"
    attack: str = "pgd"  # the registered attack crafting examples for method pgd (pgd, segpgd, apgd)
    eps: float = Field(0.0, ge=0)  # in input units
    norm: Literal["linf", "l2"] = "linf"
    steps: int = Field(7, ge=1)
    step_size: float | None = Field(None, gt=0)  # default: 2.5 eps / steps (pgd, trades), 1.25 eps (fast)
    share: float = Field(1.0, gt=0, le=1)
    beta: float = Field(6.0, ge=0)
    warmup_epochs: int = Field(0, ge=0)
    sources: list[str] = Field(default_factory=list)
    weight: float = Field(0.01, gt=0)
    projections: int = Field(1, ge=1)
    select: Literal["clean", "robust"] = "clean"  # validation score that picks the checkpoint

    @field_validator("sources", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        """A comma-separated string (the command line's ``sources=a,b`` or ``[a,b]``) is a list of names."""
        if isinstance(value, str):
            return [v.strip() for v in value.strip().strip("[]").split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> DefenseSpec:
        if self.kind in ("adversarial", "ensemble_adversarial") and not self.eps > 0:
            raise ValueError(f"defense {self.kind} needs eps > 0 (in input units), got eps={self.eps!r}")
        if self.kind == "ensemble_adversarial":
            if not self.sources:
                raise ValueError("defense ensemble_adversarial needs sources: checkpoint folders or model names")
            if self.method == "trades":
                raise ValueError("defense ensemble_adversarial crafts with method fast or pgd, not trades")
        elif self.sources:
            raise ValueError(f"sources are for defense ensemble_adversarial, not {self.kind}")
        if self.select == "robust" and not self.eps > 0:
            raise ValueError("select: robust scores validation under PGD at eps; give eps > 0")
        if self.method == "pgd" and self.kind != "none":
            if self.attack not in ATTACKS:
                from medrobust.registry import unknown_name_message

                raise ValueError(unknown_name_message("attack", self.attack, ATTACKS.names()))
            if ATTACKS.get(self.attack).minimal:
                raise ValueError(f"attack {self.attack!r} is a minimal attack; adversarial training needs a budget")
        return self

    def describe(self) -> str:
        """One line for tables: "PGD adversarial (pgd, Linf eps 0.00784, 7 steps)"."""
        if self.kind == "none":
            return "standard"
        if self.kind == "jacobian":
            return f"Jacobian penalty (weight {self.weight:g}, {self.projections} projection(s))"
        how = {"pgd": f"{self.attack}, {self.steps} steps", "fast": "FGSM with random start", "trades": "TRADES"}
        extra = f", beta {self.beta:g}" if self.method == "trades" else ""
        where = f", sources {', '.join(self.sources)}" if self.sources else ""
        name = "ensemble adversarial" if self.kind == "ensemble_adversarial" else f"{self.method.upper()} adversarial"
        return f"{name} ({how[self.method]}{extra}, {self.norm.capitalize()} eps {self.eps:.4g}{where})"


def jacobian_norm_estimate(
    model: torch.nn.Module, x: torch.Tensor, projections: int, generator: torch.Generator, logits=None
) -> torch.Tensor:
    """Per-sample unbiased estimate of ``||d model(x) / dx||_F^2`` (N,) from ``projections`` random unit
    vectors in the output space (Hoffman et al. 2019), differentiable in the model's parameters. ``x`` must
    require grad; ``logits`` = model(x) when already computed."""
    out = model(x) if logits is None else logits
    dim = out[0].numel()
    total = torch.zeros(x.shape[0], dtype=out.dtype, device=out.device)
    for _ in range(projections):
        v = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
        v = v / v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.dim() - 1)))
        (jv,) = torch.autograd.grad((out * v).sum(), x, create_graph=True)
        total = total + jv.flatten(1).pow(2).sum(1)
    return dim * total / projections


class DefenseTrainer:
    """The loss of one training batch under a defense. ``sources``: static source models by name (ensemble
    adversarial training; batches take turns: the model itself, then each source); ``used`` counts the batches
    whose examples each source crafted."""

    def __init__(
        self, spec: DefenseSpec, task: Task, seed: int, sources: dict[str, Model] | None = None, epochs: int = 1
    ) -> None:
        self.spec, self.task, self.seed, self.epochs = spec, task, seed, epochs
        self.sources = dict(sources or {})
        missing = [s for s in spec.sources if s not in self.sources]
        if missing:
            raise ValueError(f"ensemble_adversarial: source models {missing} are not loaded")
        self.loss_fn = task.training_loss()
        self.used: Counter[str] = Counter()

    def eps_at(self, progress: float) -> float:
        """eps after ``progress`` epochs (fractional): ramped linearly over ``warmup_epochs``."""
        if self.spec.warmup_epochs == 0:
            return self.spec.eps
        return self.spec.eps * min(1.0, progress / self.spec.warmup_epochs)

    def crafting_attack(self) -> Attack:
        s = self.spec
        if s.method == "fast":
            return ATTACKS.build("pgd", steps=1, step_size=s.step_size or 1.25 * s.eps, norm=s.norm, keep_best=False)
        params: dict[str, Any] = {"steps": s.steps, "norm": s.norm}
        if s.step_size is not None:
            params["step_size"] = s.step_size
        if s.attack in ("pgd", "segpgd"):
            params["keep_best"] = False  # the last iterate, as Madry et al. train on
        return ATTACKS.build(s.attack, **params)

    def loss(self, model: Model, x: torch.Tensor, y: torch.Tensor, progress: float, key: Sequence[Any]) -> torch.Tensor:
        """The training loss of batch (x, y) at ``progress`` epochs; ``key`` (epoch, batch) seeds its draws."""
        s = self.spec
        gen = make_generator(self.seed, "defense", *key, device=x.device)
        if s.kind == "none":
            return self.loss_fn(model(x), y)
        if s.kind == "jacobian":
            x = x.detach().requires_grad_(True)
            logits = model(x)
            penalty = jacobian_norm_estimate(model, x, s.projections, gen, logits)
            return self.loss_fn(logits, y) + s.weight / 2 * penalty.mean()
        eps = self.eps_at(progress)
        if s.method == "trades":
            return self._trades(model, x, y, eps, gen)
        n = max(1, math.ceil(s.share * x.shape[0]))
        source: torch.nn.Module = model
        if s.kind == "ensemble_adversarial":
            names = ["self", *s.sources]
            name = names[sum(self.used.values()) % len(names)]  # in turn, over all batches of the training
            self.used[name] += 1
            source = model if name == "self" else self.sources[name]
        x_adv = self.crafting_attack()(source, self.task, x[:n], y[:n], eps=eps, generator=gen) if eps > 0 else x[:n]
        return self.loss_fn(model(torch.cat([x_adv, x[n:]])), y)

    def _trades(self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float, gen: torch.Generator):
        s = self.spec
        alpha = s.step_size or 2.5 * eps / s.steps
        with attack_mode(model), torch.enable_grad():
            p_clean = model(x).softmax(1).detach()
            x_adv = clamp_bounds(x + 0.001 * torch.randn(x.shape, generator=gen, device=x.device), model.bounds)
            for _ in range(s.steps if eps > 0 else 0):
                x_adv = x_adv.detach().requires_grad_(True)
                kl = F.kl_div(model(x_adv).log_softmax(1), p_clean, reduction="sum")
                (grad,) = torch.autograd.grad(kl, x_adv)
                delta = project(x_adv.detach() + alpha * step_direction(grad, s.norm) - x, eps, s.norm)
                x_adv = clamp_bounds(x + delta, model.bounds)
        logits = model(x)
        logits_adv = model(x_adv.detach())
        kl = F.kl_div(logits_adv.log_softmax(1), logits.softmax(1), reduction="none").sum(1)
        return self.loss_fn(logits, y) + s.beta * kl.reshape(x.shape[0], -1).mean(1).mean()

    def robust_scores(
        self, model: Model, x: torch.Tensor, y: torch.Tensor, epoch: int, batch_size: int = 256
    ) -> torch.Tensor:
        """Per-sample task score under PGD (10 steps, the defense's eps and norm), for checkpoint selection."""
        attack = ATTACKS.build("pgd", steps=10, norm=self.spec.norm)
        scores = []
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            gen = make_generator(self.seed, "select", epoch, i, device=x.device)
            x_adv = attack(model, self.task, xb, yb, eps=self.spec.eps, generator=gen)
            with torch.no_grad():
                scores.append(self.task.score(model(x_adv), yb))
        return torch.cat(scores)
