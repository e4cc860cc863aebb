"""The evidence lower bound (notes: log p(x) = ELBO + KL(q(z|x) || p(z|x)))."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.distributions import Distribution

from .kl import kl as kl_divergence


class Elbo(NamedTuple):
    """Per-datapoint terms, each of shape (n,): elbo = recon − kl."""

    elbo: torch.Tensor
    recon: torch.Tensor  # E_q[log p(x|z)], estimated with the reparameterization trick
    kl: torch.Tensor  # KL(q(z|x) || p(z))


def elbo(
    model,
    x: torch.Tensor,
    idx: torch.Tensor | None = None,
    n_samples: int = 1,
    analytic_kl: bool = True,
    q: Distribution | None = None,
    generator: torch.Generator | None = None,
    eps: torch.Tensor | None = None,
) -> Elbo:
    """ELBO(x) = E_{q(z|x)}[log p(x|z)] − KL(q(z|x) || p(z)), the expectation by S reparameterized
    samples z = μ + ε·σ (Kingma & Welling 2014, eq. 7). ``model`` supplies ``posterior``
    (q, from whichever inference method), ``prior`` and ``decode``; ``q`` overrides the posterior
    (for test-time optimisation of a free q); ``eps`` of shape (S, n, d) supplies the noise
    of the reparameterization instead of drawing it, so that data-parallel ranks share one draw."""
    if q is None:
        q = model.posterior(x, idx)
    if eps is not None:
        z = q.reparameterize(eps)  # (S, n, d)
    else:
        z = q.rsample((n_samples,), generator=generator)
    recon = model.decode(z).log_prob(x).mean(0)
    kl = kl_divergence(q, model.prior(), z, analytic=analytic_kl)
    return Elbo(recon - kl, recon, kl)


def loss(terms: Elbo, beta: float = 1.0) -> torch.Tensor:
    """The training loss of the notes (eq. 3): −mean(recon − β·KL); β = 1 gives −ELBO."""
    if beta == 1.0:
        return -terms.elbo.mean()
    return -(terms.recon - beta * terms.kl).mean()
