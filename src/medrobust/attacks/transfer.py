"""Transfer attacks: adversarial examples crafted on surrogate models, evaluated on the target (black-box).

The setting of Papernot et al. ("Practical black-box attacks", 2017) and Tramer et al. ("Ensemble adversarial
training", ICLR 2018): the attacker has no access to the target, only to other models trained for the same task.
With several sources the examples are crafted on their ensemble (the mean of their logits, Liu et al. 2017),
which transfers better than any single source. The target model is never queried.

A transfer attack that succeeds where white-box attacks on the target itself failed is a sign of gradient
masking: the target's own gradients are uninformative, not its decision boundary robust.

In a spec, ``sources`` name other models of the same spec (or checkpoint folders); the runner resolves them and
evaluates the perturbation on every model that is not one of its sources. In Python, pass modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from medrobust.attacks.base import Attack
from medrobust.models.wrapper import Model, as_model
from medrobust.tasks import Task


class LogitEnsemble(nn.Module):
    """The mean of the logits of several models, each applying its own normalisation; inputs in ``bounds``."""

    def __init__(self, models: list[Model]) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(dim=0)


@dataclass(frozen=True)
class Transfer(Attack):
    """sources: surrogate models (nn.Module or Model), or model names a runner resolves. attack: the registered
    budget attack run on the surrogates (default "pgd"); attack_params: its hyperparameters."""

    gradient_free: ClassVar[bool] = True  # the target's gradients are never used
    needs_sources: ClassVar[bool] = True

    sources: tuple[Any, ...] = ()
    attack: str = "pgd"
    attack_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "sources", tuple(self.sources) if isinstance(self.sources, (list, tuple)) else (self.sources,)
        )
        if not self.sources:
            raise ValueError("transfer needs at least one source model in 'sources'")
        if self.attack == "transfer":
            raise ValueError("transfer cannot run a transfer attack on its sources")
        inner = self.inner()
        if inner.minimal:
            raise ValueError(
                f"transfer runs budget attacks (e.g. pgd, apgd, fgsm); {self.attack!r} is a minimal-norm attack"
            )

    def inner(self) -> Attack:
        from medrobust.attacks import ATTACKS

        return ATTACKS.build(self.attack, **dict(self.attack_params))

    @property
    def threat_norm(self) -> str:
        return self.inner().threat_norm

    def source_names(self) -> list[str]:
        return [s for s in self.sources if isinstance(s, str)]

    def with_sources(self, sources: list[nn.Module]) -> Transfer:
        """The same attack with resolved source models."""
        return Transfer(tuple(sources), self.attack, dict(self.attack_params))

    def run(self, model: Model, task: Task, x: torch.Tensor, y: torch.Tensor, *, eps, generator) -> torch.Tensor:
        unresolved = self.source_names()
        if unresolved:
            raise ValueError(
                f"transfer sources {unresolved} are names; pass source models (nn.Module), or run the attack from a "
                "spec, where names refer to the spec's models"
            )
        # plain modules take the target's bounds; a source Model whose bounds differ is an error (as_model says so)
        surrogates = [as_model(s, model.bounds) for s in self.sources]
        surrogate = Model(LogitEnsemble(surrogates), bounds=model.bounds)
        return self.inner()(surrogate, task, x, y, eps=eps, generator=generator)
