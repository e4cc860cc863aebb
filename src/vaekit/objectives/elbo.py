"""The evidence lower bound (notes: log p(x) = ELBO + KL(q(z|x) || p(z|x)))."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.distributions import Distribution

from ..registry import OBJECTIVES, Option
from .base import Objective


class Elbo(NamedTuple):
    """Per-datapoint terms, each of shape (n,): elbo = recon − kl."""

    elbo: torch.Tensor
    recon: torch.Tensor  # E_q[log p(x|z)], estimated with the reparameterization trick
    kl: torch.Tensor  # KL(q(z|x) || p(z)), closed form where one exists


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
    (q, from whichever inference method), ``kl`` and ``decode``; ``q`` overrides the posterior
    (for test-time optimisation of a free q); ``eps`` of shape (S, n, noise) supplies the noise
    of the reparameterization instead of drawing it, so that data-parallel ranks share one draw."""
    if q is None:
        q = model.posterior(x, idx)
    z = q.reparameterize(eps) if eps is not None else q.rsample((n_samples,), generator=generator)  # (S, n, D)
    recon = model.decode(z).log_prob(x).mean(0)
    kl = model.kl(q, z, analytic=analytic_kl)
    return Elbo(recon - kl, recon, kl)


def loss(terms: Elbo, beta: float = 1.0) -> torch.Tensor:
    """The training loss of the notes (eq. 3): −mean(recon − β·KL); β = 1 gives −ELBO."""
    if beta == 1.0:
        return -terms.elbo.mean()
    return -(terms.recon - beta * terms.kl).mean()


@OBJECTIVES.register(
    "elbo",
    options={
        "beta": Option(1.0, "weight of the KL term (β-VAE; 1 is the ELBO)", minimum=0.0),
        "warmup": Option(0, "epochs of linear KL warm-up from 0 to beta", minimum=0),
        "n_samples": Option(1, "posterior samples per datapoint in E_q[log p(x|z)]", minimum=1),
        "analytic_kl": Option(True, "closed-form KL where one is registered, else Monte Carlo"),
    },
)
class ElboObjective(Objective):
    """Loss = −mean(E_q[log p(x|z)] − β·KL(q || p)) (notes, eq. 3), β rising over ``warmup``
    epochs; the best epoch is the one with the highest validation ELBO (β = 1)."""

    @property
    def samples(self) -> int:
        return self.config.n_samples

    def loss(self, model, x, idx, eps, beta=1.0):
        total, value = None, None
        # Each q the method trains from (the encoder's, and a refined one) adds its term; the
        # same noise for all, so every data-parallel rank draws alike.
        for q in model.training_posteriors(x, idx):
            terms = elbo(model, x, q=q, analytic_kl=self.config.analytic_kl, eps=eps)
            part = loss(terms, beta)
            total = part if total is None else total + part
            value = terms.elbo if value is None else value
        return total, value

    def validate(self, model, x, terms, seed):
        return float(terms["elbo"].mean())
