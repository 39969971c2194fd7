"""A targeted structured-output attack: drive the predicted label map toward a target mask.

Adaptive Segmentation Mask Attack, ASMA (Ozbulak, Van Messem & De Neve, "Impact of Adversarial Examples on Deep
Learning Models for Biomedical Image Segmentation", MICCAI 2019), in the spirit of Show-and-Fool (Chen et al.
2018): a target output plus a differentiable surrogate loss. Each iteration sums, over the pixels not yet
predicted as their target label, the log-probability of the target label (the cross-entropy surrogate of
"pixel reaches its target"), and steps ``gamma * g / ||g||_2`` along its input gradient. Unlike DAG, a pixel stays in
the active set until it carries its *target* label, not merely until it is wrong; a sample stops once more than
``1 - tolerance`` of its pixels match the target (default: all of them). The accumulated perturbation is
minimal-size in L2 (the runner evaluates strengths by clipping). Success is measured by the IoU of the
prediction with the target mask.

Targets come from the DAG rules (``target``, ``classes``, ``radius``; see dag.py), or are given directly as a
mask through ``attack.run_targeted(model, task, x, target_mask)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from medrobust.attacks.base import Attack, normalised_ascent
from medrobust.attacks.dag import check_target_params, dag_target
from medrobust.models.wrapper import Model, as_model, attack_mode
from medrobust.tasks import Task, get_task


@dataclass(frozen=True)
class ASMA(Attack):
    minimal: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("segmentation",)

    steps: int = 100
    gamma: float = 0.05
    target: str = "background"
    classes: tuple[int, ...] = ()
    radius: int = 2
    tolerance: float = 0.0
    norm: str = "l2"

    def __post_init__(self) -> None:
        classes = check_target_params("ASMA", self.steps, self.gamma, self.target, self.classes, self.radius, self.norm)
        object.__setattr__(self, "classes", classes)
        if not 0.0 <= self.tolerance < 1.0:
            raise ValueError(f"tolerance={self.tolerance!r} must be in [0, 1)")

    def target_map(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        """The target label map this attack drives toward, for true labels ``y`` (N, *spatial)."""
        return dag_target(y, num_classes, self.target, self.classes, self.radius)

    def run(self, model: Model, task: Task, x: torch.Tensor, y: torch.Tensor, *, eps, generator) -> torch.Tensor:
        with torch.no_grad():
            logits = model(x)
        task.check(logits, y)
        return self._drive(model, x, self.target_map(y, logits.shape[1]))

    def run_targeted(self, model: torch.nn.Module, x: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
        """Drive ``model``'s prediction on x (N, C, *spatial) toward a user-given ``target_mask`` (N, *spatial)."""
        model = as_model(model)
        target_mask = target_mask.to(x.device).long()
        if target_mask.shape != (x.shape[0], *x.shape[2:]):
            raise ValueError(f"target_mask has shape {tuple(target_mask.shape)}; expected {(x.shape[0], *x.shape[2:])}")
        with attack_mode(model), torch.enable_grad():
            get_task("segmentation").check(model(x[:1]).detach(), target_mask[:1])
            return self._drive(model, x.detach(), target_mask).detach()

    def _drive(self, model: Model, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        units = target[0].numel()
        task = get_task("segmentation")

        def objective(out: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            # log-probability of the target label, on the units not yet at their target
            ta = target[rows]
            live = ~task.correct(out, ta)
            log_p = out.log_softmax(1).gather(1, ta.unsqueeze(1)).squeeze(1)
            return log_p, live, live.flatten(1).sum(1) > self.tolerance * units

        return normalised_ascent(model, x, self.steps, self.gamma, objective)
