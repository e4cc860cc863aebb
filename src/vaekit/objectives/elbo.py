"""The evidence lower bound (notes: log p(x) = ELBO + KL(q(z|x) || p(z|x)))."""

from __future__ import annotations

import numbers
from typing import NamedTuple

import torch
from torch.distributions import Distribution

from ..errors import ConfigError
from ..registry import K_MAX, OBJECTIVES, Option
from .base import Objective, in_model_dtype


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
    if eps is None and (isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or n_samples < 1):
        raise ConfigError(f"n_samples must be an integer >= 1, got {n_samples!r}")
    x = in_model_dtype(model, x)
    if q is None:
        q = model.posterior(x, idx)
    z, recon = _recon(model, x, q, n_samples, generator, eps)
    kl = model.kl(q, z, analytic=analytic_kl)
    return Elbo(recon - kl, recon, kl)


def _recon(model, x, q, n_samples=1, generator=None, eps=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(z (S, n, D), E_q[log p(x|z)] (n,)): the reparameterized draws and the Monte Carlo mean."""
    z = q.reparameterize(eps) if eps is not None else q.rsample((n_samples,), generator=generator)  # (S, n, D)
    return z, model.log_px_given_z(z, x).mean(0)


def free_bits_loss(
    model, x: torch.Tensor, q: Distribution, eps: torch.Tensor, free_bits: float, beta: float = 1.0, analytic_kl: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, ELBO per point (n,)) with free bits (Kingma et al. 2016, "Improved variational
    inference with inverse autoregressive flow", eq. 15):

        loss = −mean_n E_q[log p(x_n|z)] + β Σ_j max(λ, mean_n KL_j(x_n)),

    KL_j the KL of latent group j (``model.kl_per_group``) averaged over the minibatch, λ =
    ``free_bits`` nats. A group whose batch-mean KL is below λ adds the constant λ, so the loss
    gives it no gradient: the encoder is not pushed to collapse it onto the prior. The
    per-point value returned is the plain ELBO, recon − Σ_j KL_j (what the logs report)."""
    z, recon = _recon(model, x, q, eps=eps)
    kl = model.kl_per_group(q, z, analytic=analytic_kl)
    floored = sum(torch.clamp(kl_j.mean(), min=free_bits) for kl_j in kl.values())
    return beta * floored - recon.mean(), recon - sum(kl.values())


def loss(terms: Elbo, beta: float = 1.0) -> torch.Tensor:
    """The training loss of the notes (eq. 3): −mean(recon − β·KL); β = 1 gives −ELBO."""
    if beta == 1.0:
        return -terms.elbo.mean()
    return -(terms.recon - beta * terms.kl).mean()


@OBJECTIVES.register(
    "elbo",
    options={
        "beta": Option(1.0, "weight of the KL term (β-VAE; 1 is the ELBO)", minimum=0.0),
        "warmup": Option(0, "epochs of linear KL warm-up: epoch e (from 1) trains with beta·min(1, e/N)", minimum=0),
        "n_samples": Option(1, f"posterior samples per datapoint in E_q[log p(x|z)], at most {K_MAX}", minimum=1, maximum=K_MAX),
        "analytic_kl": Option(True, "closed-form KL where one is registered, else Monte Carlo"),
        "free_bits": Option(0.0, "nats: floor on each latent group's batch-mean KL in the training loss (free bits; 0 is off; a group below the floor gets no KL gradient, even at a tiny floor where a sampled KL is below 0)", minimum=0.0),
    },
)
class ElboObjective(Objective):
    """Loss = −mean(E_q[log p(x|z)] − β·KL(q || p)) (notes, eq. 3), β rising over ``warmup``
    epochs; with ``free_bits`` λ > 0 the KL term is β Σ_j max(λ, batch-mean KL_j) over the
    latent groups (``free_bits_loss``). Under data parallelism the batch mean is each rank's
    share of the batch. The best epoch is the one with the highest validation ELBO (β = 1,
    no floor)."""

    @property
    def samples(self) -> int:
        return self.config.n_samples

    @property
    def kl_weight(self) -> float:
        # The β that warm-up rises to: the objective the run trains, once annealed.
        return float(self.config.beta)

    def check_model(self, model) -> None:
        if self.config.beta == 0:
            self.refuse_untrained_prior(model, "--beta 0")

    def loss(self, model, x, idx, eps, beta=1.0):
        total, value = None, None
        # Each q the method trains from (the encoder's, and a refined one) adds its term; the
        # same noise for all, so every data-parallel rank draws alike.
        free_bits = self.config.free_bits
        for q in model.training_posteriors(x, idx):
            if free_bits > 0:
                part, point = free_bits_loss(model, x, q, eps, free_bits, beta, self.config.analytic_kl)
            else:
                terms = elbo(model, x, q=q, analytic_kl=self.config.analytic_kl, eps=eps)
                part, point = loss(terms, beta), terms.elbo
            total = part if total is None else total + part
            value = point if value is None else value
        return total, value

    def validate(self, model, x, terms, seed):
        return float(terms["elbo"].mean())
