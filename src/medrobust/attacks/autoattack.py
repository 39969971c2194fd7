"""AutoAttack (Croce & Hein, ICML 2020): a parameter-free ensemble whose per-sample worst case is a robustness
number one can trust more than any single attack's.

The standard ensemble runs, in cascade, each member only on the samples every earlier member failed on, as the
authors' standard version does:
1. APGD-CE: untargeted Auto-PGD on the cross-entropy;
2. APGD-T: targeted Auto-PGD on the DLR loss, over the top ``target_classes`` other classes;
3. FAB-T: the targeted Fast Adaptive Boundary attack (``fab``), a minimal-norm attack over the same target
   classes, kept where it finds an adversarial within eps; it steps onto linearised decision boundaries instead
   of ascending a loss, a different search that can break samples the APGD members leave;
4. Square: the score-based black-box Square Attack, no gradients at all, so a model that hides its gradients
   (gradient masking) is still broken where the white-box members fail.
``version="fast"`` runs APGD-CE and APGD-T only (the authors' code has no fast version; this one is for quick
looks, not for a reported worst case). FAB-T is defined for classification only: for segmentation it is skipped.

A sample counts as broken when its task score reaches 0 (classification: misclassified); for segmentation,
where a sample is rarely at Dice 0, every member runs on every sample and each keeps the lowest Dice. The result
carries ``broken_by`` per sample: the last member that lowered its score (None: none did), so the run can tell
when only the black-box member succeeded (the sign of gradient masking).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from medrobust.attacks.apgd import APGD
from medrobust.attacks.base import Attack, AttackResult, check_int, keep_better, outcome
from medrobust.attacks.fab import FAB
from medrobust.attacks.square import Square
from medrobust.models.wrapper import Model
from medrobust.tasks import Task
from medrobust.types import check_norm

VERSIONS = ("standard", "fast")


@dataclass(frozen=True)
class AutoAttack(Attack):
    """norm: "linf" or "l2". steps: APGD iterations (100 in AutoAttack). target_classes: APGD-T and FAB-T
    targets (9). queries: Square's query budget per sample (5000). restarts: per APGD and FAB-T member and
    target. fab_steps: FAB-T iterations per target (None: ``steps``). version: "standard" (APGD-CE, APGD-T,
    FAB-T, Square) or "fast" (APGD-CE, APGD-T)."""

    strong: ClassVar[bool] = True

    norm: str = "linf"
    version: str = "standard"
    steps: int = 100
    target_classes: int = 9
    queries: int = 5000
    restarts: int = 1
    fab_steps: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", check_norm(self.norm))
        if self.version not in VERSIONS:
            raise ValueError(f"version={self.version!r} is not supported; expected one of {', '.join(VERSIONS)}")
        for name in ("steps", "target_classes", "queries", "restarts"):
            check_int(name, getattr(self, name))
        if self.fab_steps is not None:
            check_int("fab_steps", self.fab_steps)

    def members(self, family: str | None = None) -> list[tuple[str, Attack]]:
        """The cascade, in the order it runs: (name, attack); with a task ``family``, only the members defined
        for it (FAB-T is not defined for segmentation)."""
        out: list[tuple[str, Attack]] = [
            ("apgd-ce", APGD(steps=self.steps, norm=self.norm, loss="ce", restarts=self.restarts)),
            (
                "apgd-t",
                APGD(
                    steps=self.steps,
                    norm=self.norm,
                    loss="dlr",
                    targeted=True,
                    target_classes=self.target_classes,
                    restarts=self.restarts,
                ),
            ),
        ]
        if self.version == "standard":
            fab = FAB(
                norm=self.norm,
                steps=self.steps if self.fab_steps is None else self.fab_steps,
                restarts=self.restarts,
                targeted=True,
                target_classes=self.target_classes,
            )
            out += [("fab-t", fab), ("square", Square(queries=self.queries, norm=self.norm))]
        return [(name, m) for name, m in out if family is None or family in m.tasks]

    def threat_settings(self, family: str | None = None) -> dict[str, Any]:
        """The hyperparameters, and the members that run on tasks of ``family``."""
        return {**super().threat_settings(family), "members": [name for name, _ in self.members(family)]}

    @classmethod
    def gradient_free_members(cls) -> frozenset[str]:
        """The names of the members that use no gradient (black-box sources in a sample's ``broken_by``)."""
        return frozenset(name for name, m in cls().members() if m.gradient_free)

    def run(self, model: Model, task: Task, x: torch.Tensor, y: torch.Tensor, *, eps, generator) -> AttackResult:
        best = x.clone()
        best_score, best_loss = outcome(model, task, x, y)
        broken_by: list[str | None] = [None] * x.shape[0]
        info: dict[str, list] = {}
        for name, member in self.members(task.family):
            todo = (best_score > 0).nonzero().flatten()
            if todo.numel() == 0:
                break
            result = member.detailed(model, task, x[todo], y[todo], eps=eps, generator=generator)
            before = best_score[todo].clone()
            keep_better(best, best_score, best_loss, result.x_adv, *outcome(model, task, result.x_adv, y[todo]), todo)
            for i in todo[best_score[todo] < before].tolist():
                broken_by[i] = name
            for key, values in result.info.items():  # e.g. Square's queries, on the samples it ran on
                column = info.setdefault(f"{name}.{key}", [None] * x.shape[0])
                for i, v in zip(todo.tolist(), values):
                    column[i] = v
        return AttackResult(best, {"broken_by": broken_by, **info})
