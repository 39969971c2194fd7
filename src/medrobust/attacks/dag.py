"""Dense Adversary Generation, DAG (Xie, Wang, Zhou, Zhou, Xie & Yuille, "Adversarial Examples for Semantic
Segmentation and Object Detection", ICCV 2017): the attack Paschali et al. used on whole-brain segmentation.

Each iteration takes the pixels to be changed (the foreground, or the grown rim for "dilate") still labelled
correctly, sums
(z_target - z_true) over them, and steps ``gamma * g / ||g||_2`` along its input gradient g (per sample), clamps
to bounds, and stops for a sample when none remain (or after ``steps``). The perturbation is the accumulated
steps, so DAG is a minimal-size attack in L2: the runner evaluates strengths by clipping it.

Targets (per pixel): "permutation" - class k -> 1 + (k mod (K-1)) among the foreground classes (a fixed
derangement, so every structure is swapped for another); "background" - every structure -> class 0;
"swap" - ``classes=(a, b)`` exchanged, others kept as targets of the permutation; "dilate" - ``classes=(a,)``
grown over its neighbours: pixels within ``radius`` of structure a take label a.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from medrobust.attacks.base import Attack, check_int, check_positive, normalised_ascent
from medrobust.models.wrapper import Model
from medrobust.tasks import Task

TARGETS = ("permutation", "background", "swap", "dilate")


def check_target_params(
    attack: str, steps: int, gamma: float, target: str, classes, radius: int, norm: str
) -> tuple[int, ...]:
    """Validate the settings DAG and ASMA share; returns ``classes`` as a tuple of ints."""
    check_int("steps", steps)
    check_positive("gamma", gamma)
    check_int("radius", radius, minimum=0)
    if target not in TARGETS:
        raise ValueError(f"target={target!r}; expected one of {', '.join(TARGETS)}")
    classes = tuple(int(c) for c in classes)
    need = {"swap": 2, "dilate": 1}.get(target, 0)
    if len(classes) != need:
        raise ValueError(f"target={target!r} needs classes with {need} entries, got {classes!r}")
    if norm != "l2":
        raise ValueError(f"norm={norm!r}; {attack} accumulates L2-normalised steps, expected 'l2'")
    return classes


def dag_target(
    y: torch.Tensor, num_classes: int, kind: str, classes: tuple[int, ...] = (), radius: int = 2
) -> torch.Tensor:
    """Target label map for DAG, same shape as ``y`` (N, *spatial)."""
    if any(c < 0 or c >= num_classes for c in classes):
        raise ValueError(f"classes={classes!r} outside the model's {num_classes} classes")
    if kind == "background":
        return torch.zeros_like(y)
    perm = torch.arange(num_classes, device=y.device)
    if num_classes > 2:
        perm[1:] = 1 + (torch.arange(1, num_classes, device=y.device) % (num_classes - 1))
    else:
        perm = torch.tensor([1, 0], device=y.device)
    if kind == "permutation":
        return perm[y]
    if kind == "swap":
        a, b = classes
        perm = torch.arange(num_classes, device=y.device)
        perm[a], perm[b] = b, a
        return perm[y]
    if kind == "dilate":
        (a,) = classes
        mask = (y == a).float().unsqueeze(1)
        size = 2 * radius + 1
        pool = F.max_pool2d if y.dim() == 3 else F.max_pool3d
        grown = pool(mask, size, stride=1, padding=radius).squeeze(1) > 0
        return torch.where(grown, torch.full_like(y, a), y)
    raise ValueError(f"target={kind!r}; expected one of {', '.join(TARGETS)}")


@dataclass(frozen=True)
class DAG(Attack):
    minimal: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("segmentation",)

    steps: int = 100
    gamma: float = 0.05
    target: str = "permutation"
    classes: tuple[int, ...] = ()
    radius: int = 2
    norm: str = "l2"

    def __post_init__(self) -> None:
        classes = check_target_params("DAG", self.steps, self.gamma, self.target, self.classes, self.radius, self.norm)
        object.__setattr__(self, "classes", classes)

    def run(self, model: Model, task: Task, x: torch.Tensor, y: torch.Tensor, *, eps, generator) -> torch.Tensor:
        """x: (N, C, *spatial); y: (N, *spatial) true labels. Returns x + accumulated DAG steps, in bounds."""
        with torch.no_grad():
            logits = model(x)
        task.check(logits, y)
        target = dag_target(y, logits.shape[1], self.target, self.classes, self.radius)
        # Pixels whose target differs from their label: the foreground for permutation, swap and background
        # targets (background maps to itself), and the grown rim (often background) for dilate.
        attackable = target != y

        def objective(out: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            # target logit minus true logit, on the units the task still scores correct
            ya, ta = y[rows], target[rows]
            live = attackable[rows] & task.correct(out, ya)
            diff = out.gather(1, ta.unsqueeze(1)).squeeze(1) - out.gather(1, ya.unsqueeze(1)).squeeze(1)
            return diff, live, live.flatten(1).any(1)

        return normalised_ascent(model, x, self.steps, self.gamma, objective)
