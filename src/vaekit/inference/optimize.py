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
# torch.optim.Adam's defaults, which ``ascend_rows`` applies row by row.
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


@dataclass(frozen=True)
class RowStop:
    """When a row's ascent of unknown length stops: every ``every`` steps the row's ELBO is
    scored under ``samples`` fixed draws of its own (the same at every check, so that two scores
    differ by the change of q alone, not by Monte Carlo noise); when a check gains less than
    ``tol`` nats that row's rates are divided by 10 (constant-rate Adam on noisy gradients only
    jitters around the optimum), and after ``decays`` such divisions its next plateau stops it."""

    every: int = 25
    tol: float = 1e-3
    decays: int = 2
    samples: int = 16


def ascend_rows(
    model, x: torch.Tensor, params: list[torch.Tensor], make_q: Callable[..., Distribution], steps: int,
    rates: list[torch.Tensor], n_samples: int, seed: int = 0, stop: RowStop | None = RowStop(),
    uses: tuple[int, int] = (RowStreams.FIT, RowStreams.STOP), compact: bool = True, beta: float = 1.0,
) -> tuple[list[torch.Tensor], torch.Tensor]:  # fmt: skip
    """(q's parameters after Adam on −ELBO_β(x; make_q(*params)) with θ fixed, steps each row took):
    ``steps`` steps, or fewer for a row that ``stop`` stops (None: every row takes them all),
    with ``rates[i]`` (n, 1) the rows' starting rates of ``params[i]``, and reparameterized
    gradients from ``n_samples`` draws per step.

    Adam's update is elementwise and each row's term of the summed ELBO depends on its own
    parameters only, so this is one Adam run per row with a learning rate of its own; with the
    rows' own noise streams (``RowStreams`` of ``seed``; ``uses`` name those of the gradients and
    of the stopping rule) and their own stopping decisions, a row's result depends on that row
    and θ alone, never on the rows batched with it. With ``compact`` rows that stop leave the
    batch, so the remaining steps cost only what is left to fit; that needs a ``make_q`` of any
    rows' parameters (a q that holds its batch's x, as a structured one does, keeps every row
    and freezes the stopped ones instead). ``beta`` weighs the KL term, ELBO_β = E_q[log p(x|z)]
    − β KL(q || p) (``objective_of``): 1 is the ELBO, and for a point mass, whose KL is
    −log p(ẑ), ELBO_β is log p(x|ẑ) + β log p(ẑ)."""
    n = x.shape[0]
    out = [p.detach().clone() for p in params]
    taken = torch.zeros(n, dtype=torch.long, device=x.device)
    if steps == 0 or n == 0:
        return out, taken
    (beta1, beta2), t = ADAM_BETAS, 0
    live = torch.arange(n, device=x.device)  # the rows still in the batch
    xs, ps = x, [p.detach().clone() for p in params]
    lrs = [r.detach().to(p).expand(n, 1).clone() for r, p in zip(rates, ps)]
    m, v = [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps]
    moving = torch.ones(n, dtype=torch.bool, device=x.device)  # without compact: rows not stopped
    fit = RowStreams(x, seed, use=uses[0])
    if stop is not None:
        decays_left = torch.full((n,), stop.decays, device=x.device)
        stop_eps = RowStreams(x, seed, use=uses[1]).randn(stop.samples, make_q(*ps).noise_size, ps[0].dtype)

        def score() -> torch.Tensor:
            with torch.no_grad():
                return objective_of(elbo(model, xs, q=make_q(*ps), eps=stop_eps), beta)

        last = score()
    while t < steps and len(live):
        for _ in range(min(stop.every if stop else steps, steps - t)):
            with torch.enable_grad():
                leaves = [p.requires_grad_(True) for p in ps]
                objective = objective_of(elbo(model, xs, q=make_q(*leaves), n_samples=n_samples, generator=fit), beta).sum()
                grads = torch.autograd.grad(-objective, leaves)
            t += 1
            with torch.no_grad():
                for i, g in enumerate(grads):
                    m[i].mul_(beta1).add_(g, alpha=1 - beta1)
                    v[i].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    denom = (v[i] / (1 - beta2**t)).sqrt_().add_(ADAM_EPS)
                    step = lrs[i] / (1 - beta1**t) * m[i] / denom
                    ps[i] = ps[i].detach() - (step if compact else torch.where(moving.unsqueeze(1), step, 0.0))
            taken[live[moving]] += 1
        if stop is None:
            continue
        now = score()
        flat = (now - last < stop.tol) & moving
        done, decay = flat & (decays_left == 0), flat & (decays_left > 0)
        for lr in lrs:
            lr[decay] /= 10
        decays_left = decays_left - decay.long()
        last = now
        if not compact:
            moving &= ~done
            if not bool(moving.any()):
                break
            continue
        for i, p in enumerate(ps):
            out[i][live] = p.detach()
        keep = (~done).nonzero().squeeze(1)
        if len(keep) < len(live):
            live, xs, last, decays_left, moving = live[keep], xs[keep], last[keep], decays_left[keep], moving[keep]
            ps, m, v, lrs = ([a[keep] for a in arrays] for arrays in (ps, m, v, lrs))
            stop_eps, fit = stop_eps[:, keep], fit.take(keep)
    for i, p in enumerate(ps):
        out[i][live] = p.detach()
    return out, taken


def objective_of(terms, beta: float = 1.0) -> torch.Tensor:
    """ELBO_β = recon − β·kl per point from the ELBO's terms (β = 1: the ELBO itself, bit for bit)."""
    return terms.elbo if beta == 1.0 else terms.recon - beta * terms.kl


def _ascend(model, x, params, make_q, steps: int, lr: float, n_samples: int, seed: int = 0, beta: float = 1.0) -> list[torch.Tensor]:
    # Every row takes every step at one rate: a q for new data is a function of the row and θ.
    rates = [torch.full((x.shape[0], 1), float(lr), dtype=params[0].dtype, device=x.device)] * len(params)
    return ascend_rows(model, x, params, make_q, steps, rates, n_samples, seed, stop=None, beta=beta)[0]


@torch.no_grad()
def _better(model, x: torch.Tensor, start, end, seed: int = 0, beta: float = 1.0):
    """Per point, the better of ``start`` and ``end`` (two DiagonalNormals, or two PointMasses)
    by the objective they were fitted on: never worse than the start. A Gaussian's ELBO is
    compared under one fixed set of draws (common random numbers) from streams of their own,
    since draws the steps were taken on would favour the end; a point mass's objective
    log p(x|z) + β log p(z) has no noise."""
    if isinstance(start, PointMass):
        s, e = (objective_of(elbo(model, x, q=q), beta) for q in (start, end))
        return PointMass(torch.where((e >= s).unsqueeze(-1), end.z, start.z))
    s, e = (
        objective_of(elbo(model, x, q=q, n_samples=CHECK_SAMPLES, generator=RowStreams(x, seed, use=RowStreams.CHECK)), beta)
        for q in (start, end)
    )
    better = (e >= s).unsqueeze(-1)
    return DiagonalNormal(torch.where(better, end.mu, start.mu), torch.where(better, end.logvar, start.logvar))


def optimize_gaussian(
    model, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, steps: int, lr: float, n_samples: int = 1,
    seed: int = 0, beta: float = 1.0,
) -> DiagonalNormal:
    """argmax over (μ, log σ²) of ELBO_β(x; N(μ, diag σ²)) = E_q[log p(x|z)] − β KL(q || p(z))
    with θ fixed (β = 1: the ELBO), from the given start, by ``steps`` Adam steps on
    reparameterized gradients, keeping per point the better of start and end by that
    objective. ``seed`` names the noise stream (0 for new data: q a function of x and θ)."""
    logvar = logvar.expand_as(mu)
    new_mu, new_logvar = _ascend(model, x, [mu, logvar], DiagonalNormal, steps, lr, n_samples, seed, beta=beta)
    if steps == 0:
        return DiagonalNormal(new_mu, new_logvar)
    return _better(model, x, DiagonalNormal(mu.detach(), logvar.detach()), DiagonalNormal(new_mu, new_logvar), seed, beta)


def optimize_point(
    model, x: torch.Tensor, z: torch.Tensor, steps: int, lr: float, seed: int = 0, beta: float = 1.0, reach: float = 0.0
) -> PointMass:
    """argmax_z log p(x|z) + β log p(z) with θ fixed, from z; never worse than the start. β = 1
    is MAP; β = 0 is the maximum-likelihood code argmax_z log p(x|z) of the notes' decoder-only
    estimation without a prior (objective reconstruction).

    ``reach`` is the size (RMS) of the codes sought, e.g. the training rows' codes for a new row
    started at 0. Adam moves a coordinate by about its rate per step, and without a prior to
    hold them codes lie far out, so where POINT_LR_SCALE · reach exceeds ``lr`` a first ascent
    starts at that rate, divided by 10 on each row's plateaus (``RowStop``), to cross the
    distance; the ``steps`` at ``lr`` then refine where it ended."""
    rate = POINT_LR_SCALE * reach
    if steps and rate > lr:
        rates = [torch.full((x.shape[0], 1), rate, dtype=z.dtype, device=z.device)]
        (far,), _ = ascend_rows(model, x, [z], PointMass, steps, rates, 1, seed, stop=RowStop(samples=1), beta=beta)
        z = _better(model, x, PointMass(z.detach()), PointMass(far), beta=beta).z
    (new_z,) = _ascend(model, x, [z], PointMass, steps, lr, 1, seed, beta)
    return _better(model, x, PointMass(z.detach()), PointMass(new_z), beta=beta)


def gaussian_around(model, x: torch.Tensor, z: torch.Tensor, steps: int, lr: float) -> DiagonalNormal:
    """The ELBO-optimal diagonal Gaussian around a point estimate ẑ: the importance proposal of
    methods without a q of their own. Two ascents of at most ``steps`` Adam steps each, every
    row stopped when its objective stops improving (``ascend_rows``): first the posterior mode
    argmax_z log p(x|z) + log p(z) from ẑ, with the rate starting at max(lr, POINT_LR_SCALE ·
    RMS(ẑ)) per row (no noise, so its plateaus are the mode's; with the rate divided at each
    it ends near the mode, to within the stopping rule's tolerance, not exactly on it); then
    N(μ, diag σ²) from that mode with a small σ², at ``lr``. Per point, each ascent keeps the
    better of its start and end.

    Both ascents are of the model p(z) p(x|z) as it stands (β = 1), whatever objective ẑ was
    trained on: the proposal serves log p(x) = log ∫ p(z) p(x|z) dz, and the closer it is to
    that model's posterior, the tighter the estimate."""
    z = z.detach()
    if steps == 0:
        return DiagonalNormal(z, torch.full_like(z, POINT_LOGVAR))
    rate = (POINT_LR_SCALE * z.pow(2).mean(-1, keepdim=True).sqrt()).clamp_min(lr)
    (mode,), _ = ascend_rows(model, x, [z], PointMass, steps, [rate], 1, stop=RowStop(samples=1))
    mode = _better(model, x, PointMass(z), PointMass(mode)).z
    logvar = torch.full_like(mode, POINT_LOGVAR)
    rate = torch.full_like(rate, lr)
    (mu, new_logvar), _ = ascend_rows(model, x, [mode, logvar], DiagonalNormal, steps, [rate, rate], 1)
    return _better(model, x, DiagonalNormal(mode, logvar), DiagonalNormal(mu, new_logvar))
