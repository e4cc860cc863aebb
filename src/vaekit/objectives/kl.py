"""KL(q || p): closed forms registered with ``torch.distributions.kl.register_kl``,
and a Monte Carlo estimate where none is registered (as Pyro's TraceMeanField_ELBO does)."""

from __future__ import annotations

import torch
from torch.distributions import Distribution, kl_divergence, register_kl

from ..distributions import DiagonalNormal, PointMass, StandardNormal


def _twice_variance_term(logvar: torch.Tensor) -> torch.Tensor:
    """σ_i² − log σ_i² − 1, twice each dimension's share of the KL's variance term."""
    return torch.exp(logvar) - logvar - 1.0


def _twice_kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """σ_i² − log σ_i² − 1 + μ_i², twice each dimension's KL(N(μ_i, σ_i²) || N(0, 1)); the
    ½ is applied after the sum in the total, as it always was (the training step's bits)."""
    return _twice_variance_term(logvar) + mu**2


@register_kl(DiagonalNormal, StandardNormal)
def _kl_diagonal_standard(q: DiagonalNormal, p: StandardNormal) -> torch.Tensor:
    """KL(N(μ, diag σ²) || N(0, I)) = ½ Σ_i (σ_i² − log σ_i² − 1 + μ_i²)  (notes, eq. 4)."""
    return 0.5 * _twice_kl_per_dim(q.mu, q.logvar).sum(-1)


def kl_per_dim(q: Distribution, p: Distribution) -> torch.Tensor | None:
    """KL(q || p) of each latent dimension, (..., d), where both factorise per dimension with
    a closed form: q a DiagonalNormal and p the standard normal, ½ (σ_i² − log σ_i² − 1 + μ_i²),
    which sums to the KL. None for any other pair (a mixture or learned prior, a point mass):
    their KL does not split into per-dimension terms."""
    if isinstance(q, DiagonalNormal) and isinstance(p, StandardNormal):
        return 0.5 * _twice_kl_per_dim(q.mu, q.logvar)
    return None


def bubble_forces(q: Distribution, p: Distribution) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The KL of the notes' eq. 4 as two of the three "bubble forces" of the notes, per point:

    - the mean term ½ Σ_i μ_i², which pulls every bubble q(z|x) towards the origin and so
      wraps all bubbles into one;
    - the variance term ½ Σ_i (σ_i² − log σ_i² − 1), zero at σ_i = 1 and growing as a bubble
      shrinks or swells, which keeps bubbles at unit size.

    They sum to KL(q || p) (the third force, the reconstruction term, pushes bubbles apart).
    Defined where the KL splits that way: q a DiagonalNormal and p the standard normal; None
    otherwise."""
    if not (isinstance(q, DiagonalNormal) and isinstance(p, StandardNormal)):
        return None
    mean = 0.5 * (q.mu**2).sum(-1)
    variance = 0.5 * _twice_variance_term(q.logvar).sum(-1)
    return mean, variance


@register_kl(DiagonalNormal, DiagonalNormal)
def _kl_diagonal_diagonal(q: DiagonalNormal, p: DiagonalNormal) -> torch.Tensor:
    """KL(N(μ_q, σ_q²) || N(μ_p, σ_p²)) = ½ Σ_i (log σ_p²/σ_q² + (σ_q² + (μ_q − μ_p)²)/σ_p² − 1)."""
    return 0.5 * (
        p.logvar - q.logvar + (torch.exp(q.logvar) + (q.mu - p.mu) ** 2) * torch.exp(-p.logvar) - 1.0
    ).sum(-1)


@register_kl(PointMass, Distribution)
def _kl_point(q: PointMass, p: Distribution) -> torch.Tensor:
    """For a point mass the KL is +∞ (its entropy is −∞); its finite part, the cross-entropy
    −log p(ẑ), is what MAP and the ELBO of a point estimate use."""
    return -p.log_prob(q.z)


def kl(q: Distribution, p: Distribution, z: torch.Tensor | None = None, analytic: bool = True) -> torch.Tensor:
    """KL(q || p) per datapoint: the closed form when registered and ``analytic``, else the
    Monte Carlo estimate mean_s [log q(z_s) − log p(z_s)] over the given samples z (S, n, d)."""
    if analytic:
        try:
            return kl_divergence(q, p)
        except NotImplementedError:
            pass
    if z is None:
        raise ValueError("a Monte Carlo KL needs samples z from q")
    return (q.log_prob(z) - p.log_prob(z)).mean(0)
