"""The notes' plain autoencoder objective: the reconstruction term alone."""

from __future__ import annotations

import torch

from ..registry import OBJECTIVES
from .base import Objective
from .elbo import _recon


def reconstruction(model, x: torch.Tensor, q, eps: torch.Tensor | None = None, generator=None) -> torch.Tensor:
    """E_q[log p(x|z)] per point (n,), one draw of z (the ELBO's first term); for a point mass,
    log p(x|ẑ)."""
    return _recon(model, x, q, 1, generator, eps)[1]


@OBJECTIVES.register("reconstruction")
class Reconstruction(Objective):
    """Loss = −mean log p(x|ẑ), ẑ = e_φ(x): for a Gaussian likelihood with fixed σ², the
    squared error of the notes' autoencoder. No prior term, so no generative model by
    training; its best epoch is the one that reconstructs the validation rows best. With a
    Gaussian q (amortized, vi) it is the ELBO's expected reconstruction E_q[log p(x|z)] alone,
    the ELBO at β = 0: nothing holds q's variance or its place in the latent space."""

    @property
    def kl_weight(self) -> float:
        # No prior term: a point estimate's code is argmax_z log p(x|z), the notes'
        # decoder-only estimation max Σ_i log p(x_i|z_i) without p(z_i).
        return 0.0

    def check_model(self, model) -> None:
        self.refuse_untrained_prior(model, "objective reconstruction")

    def loss(self, model, x, idx, eps, beta=1.0):
        value = reconstruction(model, x, model.posterior(x, idx), eps)
        return -value.mean(), value

    @torch.no_grad()
    def validate(self, model, x, terms, seed):
        from ..evaluate import batches, eval_mode, noise

        # Its own seeded stream, as the other objectives' validation: repeatable, and the
        # training loop's noise is left where it was.
        source = noise(model, seed, per_row=False)
        with eval_mode(model):
            parts = [reconstruction(model, xb, model.posterior(xb), generator=source(xb)) for xb in batches(model, x, 1024)]
        return float(torch.cat(parts).double().mean())
