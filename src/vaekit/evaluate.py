"""Evidence per datapoint and averaged: the ELBO with its terms, and the importance-weighted
estimate of log p(x), in nats and bits per dimension.

Evaluation draws its noise from its own seeded generator, so that numbers are repeatable and
evaluating never moves the training random stream.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch

from .objectives import elbo as elbo_terms
from .objectives import iwae


def batches(model, x, batch_size: int):
    """Rows of x as tensors on the model's device; a memory-mapped split is read block by block."""
    from .data import MappedRows

    p = next(model.parameters())
    if isinstance(x, MappedRows):
        for block in x.chunks():
            for start in range(0, len(block), batch_size):
                yield torch.as_tensor(block[start : start + batch_size], dtype=p.dtype, device=p.device)
        return
    x = torch.as_tensor(x, dtype=p.dtype, device=p.device)
    for start in range(0, x.shape[0], batch_size):
        yield x[start : start + batch_size]


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """The module in eval mode for the block, and back in its previous mode however it ends."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def _generator(model, seed: int) -> torch.Generator:
    device = next(model.parameters()).device
    return torch.Generator(device=device).manual_seed(seed)


# no_grad rather than inference_mode: methods that optimise q for new points need autograd
# inside (they switch it back on), and inference-mode tensors cannot take part in it.
@torch.no_grad()
def elbo_per_point(model, x, n_samples: int = 1, batch_size: int = 1024, seed: int = 0) -> dict[str, np.ndarray]:
    """ELBO, E_q[log p(x|z)] and KL(q || p) for each row, each (n,) float64."""
    g = _generator(model, seed)
    with eval_mode(model):
        parts = [
            elbo_terms(model, xb, q=model.evaluation_posterior(xb), n_samples=n_samples, generator=g)
            for xb in batches(model, x, batch_size)
        ]
    return {name: torch.cat([getattr(p, name) for p in parts]).double().cpu().numpy() for name in ("elbo", "recon", "kl")}


@torch.no_grad()
def log_px_per_point(model, x, k: int = 1000, batch_size: int | None = None, seed: int = 0) -> np.ndarray:
    """The K-sample importance-weighted estimate of log p(x) for each row, (n,) float64."""
    g = _generator(model, seed)
    if batch_size is None:
        # Rows per call: enough that each K-chunk is a large matrix product, few enough that
        # one chunk covers many samples (see objectives.iwae.DEFAULT_BLOCK).
        batch_size = 256 if k >= 64 else 1024
    with eval_mode(model):
        out = [iwae(model, xb, k, q=model.evaluation_posterior(xb), generator=g) for xb in batches(model, x, batch_size)]
    return torch.cat(out).double().cpu().numpy()


def evaluate(model, x, k: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Averages over the rows of x: elbo, recon, kl, log_likelihood (IWAE, K = k), both in
    nats, and bits_per_dim = −log_likelihood / (D ln 2)."""
    terms = elbo_per_point(model, x, seed=seed)
    log_px = log_px_per_point(model, x, k=k, seed=seed + 1)
    n, dim = np.shape(x)
    ll = float(log_px.mean())
    return {
        "elbo": float(terms["elbo"].mean()),
        "recon": float(terms["recon"].mean()),
        "kl": float(terms["kl"].mean()),
        "log_likelihood": ll,
        "bits_per_dim": -ll / (dim * math.log(2)),
        "n": int(n),
        "k": int(k),
    }


# Adam steps and samples for q* and the ELBOs of the gaps: more than test-time inference uses,
# because the approximation gap is only as good as the optimisation of q*.
GAP_STEPS = 300
GAP_SAMPLES = 32


@torch.no_grad()
def gaps_per_point(
    model, x, k: int = 1000, steps: int = GAP_STEPS, lr: float | None = None, n_samples: int = GAP_SAMPLES,
    batch_size: int = 256, seed: int = 0,
) -> dict[str, np.ndarray]:
    """The decomposition of Cremer, Li & Duvenaud (2018), "Inference Suboptimality in VAEs":

        log p(x) − ELBO(q) = [log p(x) − ELBO(q*)] + [ELBO(q*) − ELBO(q)]
                              approximation gap       amortization gap

    q is the model's own q(z|x) for new x (the encoder's, refined or not; or the method's
    test-time optimum), q* the best diagonal Gaussian for x with θ fixed, found by ``steps``
    Adam steps started at q (never worse than q: see ``inference.optimize``). Both ELBOs use
    the same ``n_samples`` noise draws (common random numbers), so their difference is not
    swamped by Monte Carlo noise. log p(x) is the K-sample importance-weighted estimate with
    q* as the proposal (the better of the two proposals, hence the lower-variance estimate).
    """
    from .distributions import DiagonalNormal
    from .inference.optimize import optimize_gaussian

    was = model.training
    model.eval()
    lr = model.config.local_lr if lr is None else lr
    out: dict[str, list[torch.Tensor]] = {"log_px": [], "elbo": [], "elbo_optimal": []}
    for i, xb in enumerate(batches(model, x, batch_size)):
        q = model.evaluation_posterior(xb)
        if not isinstance(q, DiagonalNormal):
            raise TypeError(f"gaps need a diagonal Gaussian q, got {type(q).__name__}")
        q_star = optimize_gaussian(model, xb, q.mu, q.logvar, steps, lr)
        e, e_star = (
            elbo_terms(model, xb, q=qq, n_samples=n_samples, generator=_generator(model, seed + 1000 * i)).elbo
            for qq in (q, q_star)
        )
        out["elbo"].append(e)
        # q itself is a candidate for q*: under the same noise draws the better of the two
        # counts, so the amortization gap is never negative for any point.
        out["elbo_optimal"].append(torch.maximum(e, e_star))
        out["log_px"].append(iwae(model, xb, k, q=q_star, generator=_generator(model, seed + 1000 * i + 1)))
    model.train(was)
    return {name: torch.cat(v).double().cpu().numpy() for name, v in out.items()}


def gaps(model, x, k: int = 1000, steps: int = GAP_STEPS, seed: int = 0) -> dict[str, Any]:
    """Averages of ``gaps_per_point``: log_likelihood, elbo, elbo_optimal, approximation_gap,
    amortization_gap (nats), with n and k."""
    p = gaps_per_point(model, x, k=k, steps=steps, seed=seed)
    ll, e, e_opt = (float(p[name].mean()) for name in ("log_px", "elbo", "elbo_optimal"))
    return {
        "log_likelihood": ll,
        "elbo": e,
        "elbo_optimal": e_opt,
        "approximation_gap": ll - e_opt,
        "amortization_gap": e_opt - e,
        "n": int(len(p["log_px"])),
        "k": int(k),
        "steps": int(steps),
        "per_point": p,
    }
