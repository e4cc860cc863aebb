"""Evidence per datapoint and averaged: the ELBO with its terms, and the importance-weighted
estimate of log p(x), in nats and bits per dimension.

Evaluation draws its noise from its own seeded generator, so that numbers are repeatable and
evaluating never moves the training random stream.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .objectives import elbo as elbo_terms
from .objectives import iwae


def _batches(model, x: np.ndarray | torch.Tensor, batch_size: int):
    p = next(model.parameters())
    x = torch.as_tensor(x, dtype=p.dtype, device=p.device)
    for start in range(0, x.shape[0], batch_size):
        yield x[start : start + batch_size]


def _generator(model, seed: int) -> torch.Generator:
    device = next(model.parameters()).device
    return torch.Generator(device=device).manual_seed(seed)


@torch.inference_mode()
def elbo_per_point(model, x, n_samples: int = 1, batch_size: int = 1024, seed: int = 0) -> dict[str, np.ndarray]:
    """ELBO, E_q[log p(x|z)] and KL(q || p) for each row, each (n,) float64."""
    was = model.training
    model.eval()
    g = _generator(model, seed)
    parts = [elbo_terms(model, xb, n_samples=n_samples, generator=g) for xb in _batches(model, x, batch_size)]
    model.train(was)
    return {name: torch.cat([getattr(p, name) for p in parts]).double().cpu().numpy() for name in ("elbo", "recon", "kl")}


@torch.inference_mode()
def log_px_per_point(model, x, k: int = 1000, batch_size: int | None = None, seed: int = 0) -> np.ndarray:
    """The K-sample importance-weighted estimate of log p(x) for each row, (n,) float64."""
    was = model.training
    model.eval()
    g = _generator(model, seed)
    if batch_size is None:
        # Rows per call: enough that each K-chunk is a large matrix product, few enough that
        # one chunk covers many samples (see objectives.iwae.DEFAULT_BLOCK).
        batch_size = 256 if k >= 64 else 1024
    out = [iwae(model, xb, k, generator=g) for xb in _batches(model, x, batch_size)]
    model.train(was)
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
