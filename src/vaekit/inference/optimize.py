"""Optimisation of a per-point q with θ fixed: the core of MAP and non-amortized VI for new
points, of refinement (semi-amortized VI) and of the optimal q* of the gaps.

All points of a batch are optimised at once: each point's parameters affect only its own
term of the summed objective, and Adam's update is elementwise, so this is exactly one
independent optimisation per point, done as a few large matrix products.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch.distributions import Distribution

from ..distributions import DiagonalNormal, PointMass, RowStreams
from ..objectives import elbo
from ..optim import Adam

# Fixed-noise samples used to decide, per point, whether the optimised q beats the start.
CHECK_SAMPLES = 16
# Initial σ² of a Gaussian grown around a point estimate: small, so the start is near ẑ.
POINT_LOGVAR = math.log(1e-2)


@dataclass(frozen=True)
class Plateau:
    """When an ascent of unknown length stops (q* of the gaps): every ``every`` steps the batch's
    mean ELBO is scored under the fixed noise ``eps`` (the same at every check, so that two
    scores differ by the change of q alone, not by Monte Carlo noise); when a check gains less
    than ``tol`` nats per point the learning rate is divided by 10 (constant-rate Adam on noisy
    gradients only jitters around the optimum), and after ``decays`` such divisions the next
    plateau stops the ascent."""

    eps: torch.Tensor
    tol: float
    every: int
    decays: int


def ascend(
    model,
    x: torch.Tensor,
    params: list[torch.Tensor],
    make_q: Callable[..., Distribution],
    steps: int,
    lr: float,
    n_samples: int,
    generator: torch.Generator,
    plateau: Plateau | None = None,
) -> tuple[list[torch.Tensor], int]:
    """(q's parameters after Adam on −ELBO(x; make_q(*params)) with θ fixed, steps taken):
    ``steps`` steps, or fewer where ``plateau`` stops them. Reparameterized gradients from
    ``n_samples`` draws of ``generator`` each step."""
    params = [p.detach().clone().requires_grad_(True) for p in params]
    opt = Adam(params, lr=lr)

    def score() -> float:
        with torch.no_grad():
            return float(elbo(model, x, q=make_q(*params), eps=plateau.eps).elbo.mean())

    taken, decays = 0, 0
    last = score() if plateau is not None and steps > 0 else None
    while taken < steps:
        with torch.enable_grad():
            for _ in range(min(plateau.every if plateau else steps, steps - taken)):
                objective = elbo(model, x, q=make_q(*params), n_samples=n_samples, generator=generator).elbo.sum()
                # Gradients for q's parameters only: θ's .grad is left alone.
                for p, grad in zip(params, torch.autograd.grad(-objective, params)):
                    p.grad = grad
                opt.step()
                taken += 1
        if plateau is None:
            continue
        now = score()
        if now - last < plateau.tol:
            if decays == plateau.decays:
                break
            decays += 1
            for group in opt.param_groups:
                group["lr"] /= 10
        last = now
    return [p.detach() for p in params], taken


def _ascend(model, x, params, make_q, steps: int, lr: float, n_samples: int, seed: int = 0) -> list[torch.Tensor]:
    # A noise stream of its own per row: each row's q for new data is then a function of that
    # row and θ alone (the ELBO is summed over rows and Adam is elementwise, so rows do not
    # meet), and inference never moves the global stream that training draws from.
    return ascend(model, x, params, make_q, steps, lr, n_samples, RowStreams(x, seed, use=RowStreams.FIT))[0]


@torch.no_grad()
def _keep_better(model, x: torch.Tensor, start: Distribution, end: Distribution, seed: int = 0):
    """Per point, the better of start and end under one fixed set of noise draws (common
    random numbers): the result is never worse than the start by that estimate."""
    scores = []
    for q in (start, end):
        # Streams of their own: draws the steps were taken on would favour the end.
        scores.append(elbo(model, x, q=q, n_samples=CHECK_SAMPLES, generator=RowStreams(x, seed, use=RowStreams.CHECK)).elbo)
    return scores[1] >= scores[0]


def optimize_gaussian(
    model, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, steps: int, lr: float, n_samples: int = 1,
    seed: int = 0,
) -> DiagonalNormal:
    """argmax over (μ, log σ²) of ELBO(x; N(μ, diag σ²)) with θ fixed, from the given start,
    by ``steps`` Adam steps on reparameterized gradients, keeping per point the better of
    start and end. ``seed`` names the noise stream (0 for new data: q a function of x and θ)."""
    logvar = logvar.expand_as(mu)
    new_mu, new_logvar = _ascend(model, x, [mu, logvar], DiagonalNormal, steps, lr, n_samples, seed)
    if steps == 0:
        return DiagonalNormal(new_mu, new_logvar)
    start, end = DiagonalNormal(mu.detach(), logvar.detach()), DiagonalNormal(new_mu, new_logvar)
    better = _keep_better(model, x, start, end, seed).unsqueeze(-1)
    return DiagonalNormal(torch.where(better, new_mu, start.mu), torch.where(better, new_logvar, start.logvar))


def optimize_point(model, x: torch.Tensor, z: torch.Tensor, steps: int, lr: float, seed: int = 0) -> PointMass:
    """argmax_z log p(x|z) + log p(z) with θ fixed (MAP), from z; never worse than the start."""
    (new_z,) = _ascend(model, x, [z], PointMass, steps, lr, 1, seed)
    with torch.no_grad():
        start = elbo(model, x, q=PointMass(z.detach())).elbo
        end = elbo(model, x, q=PointMass(new_z)).elbo
    return PointMass(torch.where((end >= start).unsqueeze(-1), new_z, z.detach()))


def gaussian_around(model, x: torch.Tensor, z: torch.Tensor, steps: int, lr: float) -> DiagonalNormal:
    """The ELBO-optimal diagonal Gaussian started at a point estimate ẑ with small variance."""
    return optimize_gaussian(model, x, z, torch.full_like(z, POINT_LOGVAR), steps, lr)
