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
# A point estimate's code can lie far from the prior's mass (an autoencoder's, which no KL term
# holds there: RMS 37-56 on the digits), and Adam moves a coordinate by about its rate per step:
# at 0.05 a hundred steps cover 5 units. So μ's rate starts at this fraction of the row's code
# RMS (crossing it in about 20 steps), never under the given rate (which a MAP code, RMS near
# 1, keeps); the per-row decays of ``ascend_rows`` then refine it.
POINT_LR_SCALE = 0.05
# ``ascend_rows``'s stopping rule: every ROW_CHECK_EVERY steps each row's ELBO under fixed draws
# of its own (ROW_CHECK_SAMPLES); a gain under ROW_TOL nats divides that row's rates by 10, and
# after ROW_DECAYS divisions its next such plateau stops it.
ROW_CHECK_EVERY = 25
ROW_CHECK_SAMPLES = 16
ROW_TOL = 1e-3
ROW_DECAYS = 2
# torch.optim.Adam's defaults, which ``ascend_rows`` applies row by row.
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


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


def ascend_rows(
    model, x: torch.Tensor, params: list[torch.Tensor], make_q: Callable[..., Distribution], steps: int,
    rates: list[torch.Tensor], n_samples: int, seed: int = 0, check_samples: int = ROW_CHECK_SAMPLES,
) -> tuple[list[torch.Tensor], torch.Tensor]:  # fmt: skip
    """(q's parameters after Adam on −ELBO(x; make_q(*params)) with θ fixed, steps each row took):
    at most ``steps`` steps, each row stopped by its own plateau (ROW_CHECK_EVERY, ROW_TOL,
    ROW_DECAYS), with ``rates[i]`` (n, 1) the rows' starting rates of ``params[i]``. The plateau
    is judged on ``check_samples`` fixed draws per row (one is enough for a point mass).

    Adam's update is elementwise and each row's term of the summed ELBO depends on its own
    parameters only, so this is one Adam run per row with a learning rate of its own; with the
    rows' own noise streams (``RowStreams``, from ``seed``) and their own stopping decisions, a
    row's result depends on that row and θ alone, never on the rows batched with it. Rows that
    stop leave the batch, so the remaining steps cost only what is left to fit."""
    n = x.shape[0]
    out = [p.detach().clone() for p in params]
    taken = torch.zeros(n, dtype=torch.long, device=x.device)
    if steps == 0 or n == 0:
        return out, taken
    (beta1, beta2), t = ADAM_BETAS, 0
    live = torch.arange(n, device=x.device)
    xs, ps = x, [p.detach().clone() for p in params]
    lrs = [r.detach().clone().to(p).expand(n, 1).clone() for r, p in zip(rates, ps)]
    m, v = [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps]
    decays_left = torch.full((n,), ROW_DECAYS, device=x.device)
    fit = RowStreams(x, seed, use=RowStreams.FIT)
    size = make_q(*ps).noise_size
    stop_eps = RowStreams(x, seed, use=RowStreams.STOP).randn(check_samples, size, ps[0].dtype)

    def score() -> torch.Tensor:
        with torch.no_grad():
            return elbo(model, xs, q=make_q(*ps), eps=stop_eps).elbo

    last = score()
    while t < steps and len(live):
        for _ in range(min(ROW_CHECK_EVERY, steps - t)):
            with torch.enable_grad():
                leaves = [p.requires_grad_(True) for p in ps]
                objective = elbo(model, xs, q=make_q(*leaves), n_samples=n_samples, generator=fit).elbo.sum()
                grads = torch.autograd.grad(-objective, leaves)
            t += 1
            with torch.no_grad():
                for i, g in enumerate(grads):
                    m[i].mul_(beta1).add_(g, alpha=1 - beta1)
                    v[i].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    denom = (v[i] / (1 - beta2**t)).sqrt_().add_(ADAM_EPS)
                    ps[i] = ps[i].detach() - lrs[i] / (1 - beta1**t) * m[i] / denom
        taken[live] = t
        now = score()
        flat = now - last < ROW_TOL
        done, decay = flat & (decays_left == 0), flat & (decays_left > 0)
        for lr in lrs:
            lr[decay] /= 10
        decays_left = decays_left - decay.long()
        last = now
        for i, p in enumerate(ps):
            out[i][live] = p.detach()
        keep = (~done).nonzero().squeeze(1)
        if len(keep) < len(live):
            live, xs, last, decays_left = live[keep], xs[keep], last[keep], decays_left[keep]
            ps, m, v, lrs = ([a[keep] for a in arrays] for arrays in (ps, m, v, lrs))
            stop_eps, fit = stop_eps[:, keep], fit.take(keep)
    return out, taken


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
    """The ELBO-optimal diagonal Gaussian around a point estimate ẑ: the importance proposal of
    methods without a q of their own. Two ascents of at most ``steps`` Adam steps each, every
    row stopped when its objective stops improving (``ascend_rows``): first the posterior mode
    argmax_z log p(x|z) + log p(z) from ẑ, with the rate starting at max(lr, POINT_LR_SCALE ·
    RMS(ẑ)) per row (no noise, so it settles exactly); then N(μ, diag σ²) from that mode with
    a small σ², at ``lr``. Per point, each ascent keeps the better of its start and end."""
    z = z.detach()
    if steps == 0:
        return DiagonalNormal(z, torch.full_like(z, POINT_LOGVAR))
    rate = (POINT_LR_SCALE * z.pow(2).mean(-1, keepdim=True).sqrt()).clamp_min(lr)
    (mode,), _ = ascend_rows(model, x, [z], PointMass, steps, [rate], 1, check_samples=1)
    with torch.no_grad():
        better = elbo(model, x, q=PointMass(mode)).elbo >= elbo(model, x, q=PointMass(z)).elbo
    mode = torch.where(better.unsqueeze(-1), mode, z)
    logvar = torch.full_like(mode, POINT_LOGVAR)
    rate = torch.full_like(rate, lr)
    (mu, new_logvar), _ = ascend_rows(model, x, [mode, logvar], DiagonalNormal, steps, [rate, rate], 1)
    start, end = DiagonalNormal(mode, logvar), DiagonalNormal(mu, new_logvar)
    better = _keep_better(model, x, start, end).unsqueeze(-1)
    return DiagonalNormal(torch.where(better, mu, mode), torch.where(better, new_logvar, logvar))
