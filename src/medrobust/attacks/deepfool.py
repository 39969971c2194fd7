"""DeepFool, multi-class L2 (Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and accurate method to
fool deep neural networks", CVPR 2016), one of the paper's minimal-norm attacks.

At each step the classifier is linearised around the current iterate x_t. For every candidate class k != y,
f_k = z_k - z_y (logit difference, negative while the sample is still correct) and w_k = grad_x f_k. The
closest linearised boundary is l = argmin_k |f_k| / ||w_k||_2, and the step that reaches it is
r = (|f_l| + 1e-4) / ||w_l||_2^2 * w_l (the 1e-4 steps just past it). Steps accumulate in r_total and the
iterate is x_{t+1} = clip_bounds(x + (1 + overshoot) * r_total). A sample stops as soon as it is misclassified.

For a linear classifier the first step lands (times 1 + overshoot) exactly on the nearest decision boundary, at
distance min_k |f_k| / ||w_k||_2 in input units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from medrobust.attacks.base import Attack, check_int, check_positive, clamp_bounds, clean_outputs, per_sample
from medrobust.models.wrapper import Model
from medrobust.tasks import Task

# Pushes each linearised step just past the boundary instead of onto it (as in the reference implementation).
_STEP_SLACK = 1e-4


@dataclass(frozen=True)
class DeepFool(Attack):
    """Minimal-L2 DeepFool for classification.

    steps: maximum number of linearisation steps per sample.
    overshoot: the accumulated perturbation is scaled by (1 + overshoot) so that iterates cross the boundary.
    candidates: how many classes other than the true one are considered, chosen per sample as those with the
        highest clean logits; None means all K - 1 other classes. (foolbox's ``candidates`` counts the true class
        too, so foolbox's c equals our c - 1.) Values above K - 1 are capped.
    norm: always "l2"; a field so that configs may state it.

    Input x: (N, C, *spatial) inside the model's bounds; labels y: (N,). Returns x_adv of x's shape, dtype and
    device. Samples misclassified from the start are returned unchanged; samples not fooled within ``steps``
    return their last iterate.
    """

    minimal: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("classification",)

    steps: int = 50
    overshoot: float = 0.02
    candidates: int | None = 10
    norm: str = "l2"

    def __post_init__(self) -> None:
        check_int("steps", self.steps)
        check_positive("overshoot", self.overshoot, allow_zero=True)
        if self.candidates is not None:
            check_int("candidates", self.candidates)
        if str(self.norm).lower() != "l2":
            raise ValueError(f"norm={self.norm!r} is not supported by DeepFool; expected 'l2'")
        object.__setattr__(self, "norm", "l2")

    def run(
        self,
        model: Model,
        task: Task,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        eps: float | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        clean = clean_outputs(model, task, x, y, "DeepFool")
        n_classes = clean.shape[1]
        m = n_classes - 1 if self.candidates is None else min(self.candidates, n_classes - 1)
        # Candidate classes are fixed from the clean logits (as in the paper's code): the m most likely others.
        others = clean.detach().scatter(1, y.unsqueeze(1), float("-inf"))
        cand = others.topk(m, dim=1).indices  # (N, m)

        x_adv = x.clone()
        r_total = torch.zeros_like(x)
        active = task.correct(clean, y).nonzero().flatten()  # indices of samples still to fool
        feature_shape = x.shape[1:]
        for _ in range(self.steps):
            if active.numel() == 0:
                break
            n = active.numel()
            # One replica of each active sample per candidate class: a single forward and backward then give every
            # class gradient at once. Replicas share logits, so replica 0 of each sample tells if it is done.
            xr = x_adv[active].repeat_interleave(m, dim=0).requires_grad_(True)  # (n*m, C, *spatial)
            logits = model(xr)
            k = cand[active].reshape(-1, 1)  # (n*m, 1)
            yr = y[active].repeat_interleave(m).unsqueeze(1)
            f = (logits.gather(1, k) - logits.gather(1, yr)).squeeze(1)  # (n*m,)
            (grad,) = torch.autograd.grad(f.sum(), xr)
            with torch.no_grad():
                still = task.correct(logits.view(n, m, -1)[:, 0], y[active])
                if not bool(still.any()):
                    break
                f = f.detach().view(n, m)[still]  # (n', m)
                w = grad.view(n, m, -1)[still]  # (n', m, D)
                w_norm = w.norm(dim=2)  # (n', m)
                dist = f.abs() / w_norm.clamp_min(1e-12)
                best = dist.argmin(dim=1)  # (n',)
                rows = torch.arange(best.numel(), device=x.device)
                f_l, w_l, w_l_norm = f[rows, best], w[rows, best], w_norm[rows, best]
                # A zero gradient gives a zero step (not NaN): the sample then stays put until steps run out.
                scale = (f_l.abs() + _STEP_SLACK) / (w_l_norm**2).clamp_min(1e-24)
                step = (per_sample(scale, w_l) * w_l).view((-1,) + feature_shape)
                active = active[still]
                r_total[active] += step
                x_adv[active] = clamp_bounds(x[active] + (1 + self.overshoot) * r_total[active], model.bounds)
        return x_adv
