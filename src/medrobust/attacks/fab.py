"""FAB, the Fast Adaptive Boundary attack (Croce & Hein, "Minimally distorted adversarial examples with a fast
adaptive boundary attack", ICML 2020), Linf or L2, untargeted or targeted (FAB-T, the member of AutoAttack).

A minimal-norm attack: it looks for the adversarial example closest to x, and is not tied to a budget. Each step
linearises the classifier at the current iterate x_k. For a class s, f_s = z_s - z_y (logit difference,
negative while the sample is correct) and g_s = grad_x f_s; the hyperplane pi_s = {z : f_s(x_k) + <g_s, z - x_k>
= 0} is where the linearised f_s changes sign. Untargeted FAB uses the closest one, s = argmin_s |f_s| /
||g_s||_q (q the dual norm: L1 for Linf, L2 for L2), which needs every class gradient (one forward and backward
over K - 1 replicas of each sample); FAB-T uses the one of a fixed target class t (one gradient).

Projection onto the hyperplane within the box: for a point t, the smallest step d in the attack's norm with t + d
on the hyperplane and inside the input box [low, high]. With c = -f - <g, t - x_k> the change of <g, .> needed, every
coordinate moves toward sign(c g_i) by at most its room r_i to the bound. For Linf d_i = s_i min(lambda, r_i),
for L2 d_i = s_i min(lambda |g_i|, r_i), with the one lambda >= 0 at which sum_i |g_i| |d_i| = |c|. That sum is
piecewise linear in lambda with breakpoints r_i (Linf) or r_i / |g_i| (L2), so sorting them, cumulative sums and
one count give lambda exactly, vectorised over samples (O(D log D) per sample). If the hyperplane misses the box,
every coordinate goes to its bound (the box point closest to the hyperplane).

The step (Algorithm 1): d_k = projection of x_k, d_0 = projection of the original x onto the same hyperplane;
alpha = min(||d_k|| / (||d_k|| + ||d_0||), alpha_max) and

    x_{k+1} = clip_bounds((1 - alpha)(x_k + eta d_k) + alpha (x + eta d_0)),

a convex combination that biases the step toward x (eta > 1 overshoots the linearised boundary). When x_{k+1}
is adversarial it is recorded if it is the closest so far, then pulled back toward x: x_{k+1} = x + beta
(x_{k+1} - x). On a linear classifier far from the bounds the projection is exact, so the first step lands at
eta times the minimal distance and later steps close in on the boundary.

Runs: the first run of each target starts at x; each further restart starts at a random point at distance at most
half of min(best norm found, radius) (``start_radius``; with ``eps``: eps), drawn from the generator only. FAB-T
runs once per target class, the classes ranked 1..``target_classes`` below the true one at the clean input
(AutoAttack: 9, capped at K - 1). Success is misclassification (as in AutoAttack, also for FAB-T).

Shapes and units: x (N, C, *spatial) inside ``model.bounds``; labels y (N,); the returned x_adv has x's shape,
dtype and device: per sample the closest adversarial found over all targets and restarts (norm in input units),
or x where none was found. Samples misclassified at the start are returned unchanged. With ``eps`` (AutoAttack)
a sample stops as soon as it has an adversarial within eps, later targets and restarts run only on the samples
still without one, and ``Attack`` clips the result to eps (an adversarial within eps is left as it is).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from medrobust.attacks import losses
from medrobust.attacks.base import Attack, check_int, check_positive, clean_outputs, flat_norm, per_sample
from medrobust.models.wrapper import Model
from medrobust.tasks import Task
from medrobust.types import Bounds, check_norm

# Start radius for restarts without eps, as a fraction of the bounds' width (the authors' defaults on [0, 1]).
_START_RADIUS = {"linf": 0.3, "l2": 1.0}
_TINY = 1e-12


def project_to_hyperplane(t: torch.Tensor, w: torch.Tensor, c: torch.Tensor, bounds: Bounds, norm: str) -> torch.Tensor:
    """The smallest step d (in ``norm``, "linf" or "l2") with <w, d> = c and t + d inside ``bounds``.

    t, w: (M, D) points and hyperplane normals; c: (M,) the change of <w, .> to reach the hyperplane. Returns d
    (M, D). Where no step inside the box reaches the hyperplane, d moves every coordinate with w_i != 0 to its
    bound toward it (the closest the box gets)."""
    low, high = bounds
    direction = torch.sign(c).unsqueeze(1) * torch.sign(w)  # +1: the coordinate moves up, -1: down, 0: stays
    room = torch.where(direction > 0, high - t, t - low).clamp_min(0) * direction.abs()
    aw = w.abs()
    if norm == "linf":
        weight, knots = aw, room
    elif norm == "l2":
        weight, knots = aw * aw, torch.where(aw > 0, room / aw.clamp_min(_TINY), torch.zeros_like(room))
    else:
        raise ValueError(f"norm={norm!r} is not supported; expected 'linf' or 'l2'")
    lam = _level(weight, knots, c.abs())
    step = lam.unsqueeze(1) if norm == "linf" else lam.unsqueeze(1) * aw
    return direction * torch.minimum(step, room)


def _level(weight: torch.Tensor, knots: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row, the smallest lambda >= 0 with h(lambda) = sum_i weight_i min(lambda, knots_i) >= target, or the
    largest knot where even h(inf) falls short. weight, knots >= 0: (M, D); target >= 0: (M,) -> (M,)."""
    k_s, order = knots.sort(dim=1)
    w_s = weight.gather(1, order)
    cum_wk = (w_s * k_s).cumsum(1)  # sum over the knots passed of weight * knot
    cum_w = w_s.cumsum(1)
    total = cum_w[:, -1:]
    at_knot = cum_wk + k_s * (total - cum_w)  # h at each sorted knot, nondecreasing
    d = k_s.shape[1]
    n = (at_knot < target.unsqueeze(1)).sum(1, keepdim=True)  # knots below the level: lambda in [k_(n), k_(n+1)]
    before = (n - 1).clamp_min(0)
    some = n > 0
    # on that segment h(lambda) = (weight * knot summed over the n knots passed) + lambda * (weight of the rest)
    passed_wk = torch.where(some, cum_wk.gather(1, before), 0.0)
    slope = total - torch.where(some, cum_w.gather(1, before), 0.0)
    lam = (target.unsqueeze(1) - passed_wk) / slope.clamp_min(_TINY)
    # rounding aside lambda lies between its two knots; past the last knot the hyperplane is out of reach
    low = torch.where(some, k_s.gather(1, before), 0.0)
    lam = torch.minimum(lam.clamp_min(0.0).maximum(low), k_s.gather(1, n.clamp_max(d - 1)))
    return lam.squeeze(1)


@dataclass(frozen=True)
class FAB(Attack):
    """Minimal-norm FAB / FAB-T for classification (see the module docstring).

    norm: "linf" or "l2". steps: iterations per run (100 in AutoAttack). restarts: runs per target, the first
    from x, the others from random starts. targeted: FAB-T, one run per target class over the top
    ``target_classes`` other classes (capped at K - 1); else untargeted FAB over all classes at every step.
    alpha_max, eta, beta: the paper's bias toward x, overshoot and backward step (0.1, 1.05, 0.9).
    start_radius: radius of random restarts in input units when no eps is given (None: 0.3 (Linf) or 1.0 (L2)
    times the width of the bounds).
    """

    strong: ClassVar[bool] = True

    minimal: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("classification",)

    norm: str = "linf"
    steps: int = 100
    restarts: int = 1
    targeted: bool = False
    target_classes: int = 9
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9
    start_radius: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", check_norm(self.norm))
        for name in ("steps", "restarts", "target_classes"):
            check_int(name, getattr(self, name))
        check_positive("alpha_max", self.alpha_max, allow_zero=True)
        check_positive("eta", self.eta)
        check_positive("beta", self.beta)
        if self.alpha_max > 1 or self.beta > 1:
            raise ValueError(f"alpha_max={self.alpha_max!r} and beta={self.beta!r} must be in [0, 1] and (0, 1]")
        if self.start_radius is not None:
            check_positive("start_radius", self.start_radius)

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
        clean = clean_outputs(model, task, x, y, "FAB")
        k = clean.shape[1]
        low, high = model.bounds
        radius = eps if eps is not None else self.start_radius or _START_RADIUS[self.norm] * (high - low)
        best = x.clone()
        best_norm = torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device)
        correct = task.correct(clean, y)
        ranks: list[int | None] = list(range(1, min(self.target_classes, k - 1) + 1)) if self.targeted else [None]
        # the classes each run linearises: the target of FAB-T, or every class other than the true one
        others = torch.arange(k, device=x.device).expand(x.shape[0], k)
        others = others[others != y.unsqueeze(1)].view(-1, k - 1)
        for rank in ranks:
            classes = others if rank is None else losses.ranked_targets(clean, y, rank).unsqueeze(1)
            for restart in range(self.restarts):
                todo = correct if eps is None else correct & (best_norm > eps)
                rows = todo.nonzero().flatten()
                if rows.numel() == 0:
                    return best
                x0 = x[rows]
                start = x0 if restart == 0 else self._random_start(x0, best_norm[rows], radius, model.bounds, generator)
                self._single(model, task, x0, y[rows], classes[rows], start, best, best_norm, rows, eps)
        return best

    def _random_start(
        self, x: torch.Tensor, best_norm: torch.Tensor, radius: float, bounds: Bounds, generator: torch.Generator
    ) -> torch.Tensor:
        """x plus a random direction scaled to half of min(best norm, radius) in the attack's norm."""
        if self.norm == "linf":
            t = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
        else:
            t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        size = 0.5 * best_norm.clamp_max(radius)
        t = t / per_sample(flat_norm(t, self.norm).clamp_min(_TINY), t)
        return (x + per_sample(size, t) * t).clamp(bounds[0], bounds[1])

    def _hyperplane(
        self, model: Model, x: torch.Tensor, y: torch.Tensor, classes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The linearised boundary at x: (f (n,), g (n, D)), f = z_s - z_y and g its input gradient, for the class
        s among ``classes`` (n, m) whose hyperplane is closest in the attack's norm (FAB-T: m = 1, the target)."""
        n, m = classes.shape
        # one replica of each sample per class: a single backward gives all m gradients
        xr = (x if m == 1 else x.repeat_interleave(m, dim=0)).detach().requires_grad_(True)
        z = model(xr)
        f = z.gather(1, classes.reshape(-1, 1)) - z.gather(1, y.repeat_interleave(m).unsqueeze(1))
        (g,) = torch.autograd.grad(f.sum(), xr)
        f, g = f.detach().view(n, m), g.reshape(n, m, -1)
        if m == 1:
            return f[:, 0], g[:, 0]
        dual = g.abs().sum(2) if self.norm == "linf" else g.norm(dim=2)
        s = (f.abs() / (dual + _TINY)).argmin(dim=1)
        idx = torch.arange(n, device=x.device)
        return f[idx, s], g[idx, s]

    def _single(
        self,
        model: Model,
        task: Task,
        x0: torch.Tensor,
        y: torch.Tensor,
        classes: torch.Tensor,
        start: torch.Tensor,
        best: torch.Tensor,
        best_norm: torch.Tensor,
        rows: torch.Tensor,
        eps: float | None,
    ) -> None:
        """One run of ``steps`` iterations on the rows ``rows`` of the batch, from ``start``, linearising toward
        ``classes`` (n, m); closer adversarials go into ``best`` and ``best_norm`` in place."""
        bounds = model.bounds
        shape = x0.shape
        x_k = start.clone()
        for _ in range(self.steps):
            n = x0.shape[0]
            f, g = self._hyperplane(model, x_k, y, classes)
            t_k, t_0 = x_k.reshape(n, -1), x0.reshape(n, -1)
            c_k = -f
            c_0 = -f - (g * (t_0 - t_k)).sum(1)
            d = project_to_hyperplane(
                torch.cat([t_k, t_0]), torch.cat([g, g]), torch.cat([c_k, c_0]), bounds, self.norm
            )
            size = flat_norm(d, self.norm).clamp_min(1e-8)
            alpha = (size[:n] / (size[:n] + size[n:])).clamp(0.0, self.alpha_max).unsqueeze(1)
            t_new = ((1 - alpha) * (t_k + self.eta * d[:n]) + alpha * (t_0 + self.eta * d[n:])).clamp(*bounds)
            x_k = t_new.view((n,) + shape[1:])
            with torch.no_grad():
                adv = task.is_adversarial(model(x_k), y)
            dist = flat_norm(x_k - x0, self.norm)
            closer = adv & (dist < best_norm[rows])
            best[rows[closer]] = x_k[closer]
            best_norm[rows[closer]] = dist[closer]
            x_k = torch.where(per_sample(adv, x_k), x0 + self.beta * (x_k - x0), x_k)
            if eps is not None:
                live = best_norm[rows] > eps  # a sample with an adversarial within eps is done
                if not bool(live.any()):
                    return
                if not bool(live.all()):
                    x0, y, x_k, rows, classes = x0[live], y[live], x_k[live], rows[live], classes[live]
