"""Fast Minimum-Norm attack, FMN (Pintor, Roli, Brendel & Biggio, "Fast Minimum-norm Adversarial Attacks through
Adaptive Norm Constraints", NeurIPS 2021), untargeted, L2 or Linf; a minimal-norm attack.

FMN runs projected gradient descent on the margin inside a ball whose radius eps adapts at every step: it grows
while the iterate is not adversarial and shrinks towards the smallest adversarial perturbation found once it is.
With L(x') = z_y(x') - max_{k != y} z_k(x') (the task's margin, negative once x' is misclassified), delta_0 = 0,
eps_0 = inf and, at steps k = 0, ..., K - 1 on the iterate x_k = x + delta_k:

- g = grad_x L(x_k); alpha_k = alpha_final + (alpha_init - alpha_final) (1 + cos(pi k / K)) / 2 (cosine
  annealing), gamma_k likewise from gamma_init to gamma_final;
- if x_k is adversarial: delta* = delta_k when ||delta_k|| <= ||delta*|| (the best so far), and the ball shrinks,
  eps = min(eps (1 - gamma_k), ||delta*||);
- otherwise, before any iterate was adversarial, eps jumps to the linearised boundary,
  eps = ||delta_k|| + L(x_k) / ||g||_* (||.||_* the dual norm: L1 for Linf, L2 for L2), but to no less than
  ||delta_k|| (1 + gamma_k); after one was, the ball grows, eps = eps (1 + gamma_k);
- eps is capped at the norm of the largest perturbation the bounds allow;
- delta_{k+1} = delta_k - alpha_k g / ||g||_2 (the L2-normalised descent direction for every norm, as in the
  paper's Algorithm 1), projected onto the eps-ball, then clipped so that x + delta_{k+1} stays inside the bounds.

The floor ||delta_k|| (1 + gamma_k) on the linearised jump is ours: neither the paper nor foolbox has it. Without
it an iterate that lands exactly on the boundary of a linear model, where the true class wins the tie, is sent back
to the same point at every step and the sample is never fooled. The floor acts only when the linearised boundary
lies within a factor 1 + gamma_k of the iterate.

The last iterate is checked too (one forward pass without gradient), so K steps cost K gradient and K + 1 forward
evaluations. There is no randomness: the generator is not used.

Unlike foolbox 3.3.4's ``L2FMNAttack``, whose projection ignores eps (it scales by ``norms / norms``), the L2 ball is
enforced here as the paper states; ``bench/fmn_reference.py`` cross-checks both norms against foolbox.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from medrobust.attacks.base import Attack, check_int, check_positive, clamp_bounds, clean_outputs, flat_norm, per_sample
from medrobust.models.wrapper import Model
from medrobust.tasks import Task

NORMS = ("l2", "linf")
# The norm the distance to the linearised boundary is measured in: the dual of the threat norm.
_DUAL = {"l2": "l2", "linf": "l1"}


def _dual_norm(g: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample dual norm of the gradient g (N, ...) -> (N,)."""
    if _DUAL[norm] == "l1":
        return g.flatten(1).abs().sum(dim=1)
    return flat_norm(g, "l2")


def _project(delta: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """Project each perturbation of delta (N, ...) onto its own ``norm`` ball of radius eps (N,), which may be
    infinite."""
    radius = per_sample(eps, delta)
    if norm == "linf":
        return torch.maximum(torch.minimum(delta, radius), -radius)
    size = per_sample(flat_norm(delta, "l2"), delta)
    return delta * torch.where(size > radius, radius / size.clamp_min(1e-12), torch.ones_like(size))


@dataclass(frozen=True)
class FMN(Attack):
    """Minimal-norm FMN for classification, in L2 or Linf.

    steps: K, gradient steps (the paper's and foolbox's 100).
    norm: "l2" (default) or "linf"; the norm that is minimised and in which eps is measured.
    alpha_init, alpha_final: the step size, in input units of L2 length, cosine-annealed from alpha_init to
        alpha_final over the steps (None: alpha_init / 100, as in foolbox). The step is L2-normalised for both
        norms, so under Linf each feature moves by far less than alpha; the eps-ball, not alpha, bounds the
        perturbation.
    gamma_init, gamma_final: the relative change of the ball's radius per step, cosine-annealed (0.05 to 0.001,
        the paper's values); both in (0, 1).

    Input x: (N, C, *spatial) inside the model's bounds; labels y: (N,). Returns x_adv of x's shape, dtype and
    device: each sample's smallest adversarial iterate (in ``norm``, input units). Samples misclassified from the
    start, and samples never fooled within ``steps``, are returned as the original x, unperturbed (as C&W does).
    Norms ``l1`` and ``l0`` are not offered: the framework measures and clips budgets in linf, l2 and l0 only, and
    FMN's L0 variant needs a rounding scheme of its own.
    """

    strong: ClassVar[bool] = True

    minimal: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("classification",)

    steps: int = 100
    norm: str = "l2"
    alpha_init: float = 1.0
    alpha_final: float | None = None
    gamma_init: float = 0.05
    gamma_final: float = 0.001

    def __post_init__(self) -> None:
        norm = str(self.norm).lower()
        if norm not in NORMS:
            raise ValueError(f"norm={self.norm!r} is not supported by FMN; expected one of {', '.join(NORMS)}")
        object.__setattr__(self, "norm", norm)
        check_int("steps", self.steps)
        check_positive("alpha_init", self.alpha_init)
        if self.alpha_final is not None:
            check_positive("alpha_final", self.alpha_final)
        for name in ("gamma_init", "gamma_final"):
            value = getattr(self, name)
            check_positive(name, value)
            if value >= 1:
                raise ValueError(f"{name}={value!r} must be in (0, 1): the ball shrinks by a factor 1 - gamma")

    def schedule(self, k: int) -> tuple[float, float]:
        """(alpha_k, gamma_k) at step k = 0, ..., steps - 1: cosine annealing from the initial to the final
        value."""
        alpha_final = self.alpha_init / 100 if self.alpha_final is None else self.alpha_final
        t = (1 + math.cos(math.pi * k / self.steps)) / 2
        return (
            alpha_final + (self.alpha_init - alpha_final) * t,
            self.gamma_final + (self.gamma_init - self.gamma_final) * t,
        )

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
        clean = clean_outputs(model, task, x, y, "FMN")
        result = x.clone()
        # Only samples still classified correctly need an attack; the others are adversarial at distance 0.
        todo = task.correct(clean, y).nonzero().flatten()
        if todo.numel():
            result[todo] = self._search(model, task, x[todo], y[todo])
        return result

    def _search(self, model: Model, task: Task, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """FMN on correctly classified x (n, ...). Returns each sample's smallest adversarial iterate, or x."""
        low, high = model.bounds
        n = x.shape[0]
        inf = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        # the largest perturbation the bounds allow: a larger ball changes nothing
        cap = flat_norm(torch.maximum(x - low, high - x), self.norm)
        best, best_norm = x.clone(), inf.clone()
        radius = inf.clone()
        found = torch.zeros(n, dtype=torch.bool, device=x.device)

        def keep_best(x_k: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
            size = flat_norm(x_k - x, self.norm)
            better = adv & (size <= best_norm)
            best[better] = x_k[better]
            best_norm.copy_(torch.where(better, size, best_norm))
            return size

        x_k = x.clone()
        for k in range(self.steps):
            alpha, gamma = self.schedule(k)
            x_in = x_k.detach().requires_grad_(True)
            logits = model(x_in)
            margin = task.margin(logits, y)
            (g,) = torch.autograd.grad(margin.sum(), x_in)
            with torch.no_grad():
                adv = task.is_adversarial(logits, y)
                size = keep_best(x_k, adv)
                found |= adv
                # a zero gradient gives a huge linearised distance (capped below) and a zero step, not NaN
                boundary = size + margin.detach().abs() / _dual_norm(g, self.norm).clamp_min(1e-12)
                # An iterate on the linearised boundary that is not adversarial (a tie the true class wins, or a
                # margin of rounding size) would be sent back to the same point forever: grow by at least gamma.
                boundary = torch.maximum(boundary, size * (1 + gamma))
                radius = torch.where(
                    adv,
                    torch.minimum(radius * (1 - gamma), best_norm),
                    torch.where(found, radius * (1 + gamma), boundary),
                )
                radius = torch.minimum(radius, cap)
                step = g / per_sample(flat_norm(g, "l2").clamp_min(1e-12), g)
                delta = _project(x_k - x - alpha * step, radius, self.norm)
                x_k = clamp_bounds(x + delta, model.bounds)
        with torch.no_grad():
            keep_best(x_k, task.is_adversarial(model(x_k), y))
        return best
