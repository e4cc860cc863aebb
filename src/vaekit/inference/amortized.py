from __future__ import annotations

import torch

from ..config import ModelConfig
from ..distributions import DiagonalNormal
from ..nets import MLP, GaussianHead
from . import INFERENCE, InferenceMethod


@INFERENCE.register("amortized")
class Amortized(InferenceMethod):
    """Amortized VI: (μ, log σ²) = DNN_enc(x; φ), q(z|x) = N(μ, diag σ²) (notes; Kingma & Welling 2014).

    One network serves every datapoint, so a new x gets its q in one forward pass. With
    ``refine_steps`` > 0 that q is the start of gradient steps on each point's ELBO (θ fixed)
    at evaluation (semi-amortized VI, Kim et al. 2018); with ``refine_in_training`` the decoder
    also learns from the refined q while the encoder learns from its own ELBO (the
    stop-gradient variant of Krishnan et al. 2018, which needs no Hessian-vector products).
    """

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.encoder = GaussianHead(MLP(config.input_dim, config.hidden, 2 * config.latent_dim, config.activation))

    def forward(self, model, x: torch.Tensor, idx: torch.Tensor | None = None) -> DiagonalNormal:
        mu, logvar = self.encoder(x)
        return DiagonalNormal(mu, logvar)

    def refine(self, model, x: torch.Tensor, q: DiagonalNormal) -> DiagonalNormal:
        from .optimize import optimize_gaussian

        return optimize_gaussian(model, x, q.mu, q.logvar, self.config.refine_steps, self.config.refine_lr)

    def loss(self, model, x, idx, beta, n_samples, analytic_kl, eps=None):
        from ..objectives import elbo, loss

        q = self(model, x, idx)
        terms = elbo(model, x, q=q, n_samples=n_samples, analytic_kl=analytic_kl, eps=eps)
        total = loss(terms, beta)
        if self.config.refine_steps and self.config.refine_in_training:
            # The step's own noise again: every rank of a data-parallel run must draw alike.
            refined = elbo(model, x, q=self.refine(model, x, q), n_samples=n_samples, analytic_kl=analytic_kl, eps=eps)
            total = total + loss(refined, beta)
        return total, terms

    def evaluation_posterior(self, model, x: torch.Tensor) -> DiagonalNormal:
        q = self(model, x)
        return self.refine(model, x, q) if self.config.refine_steps else q
