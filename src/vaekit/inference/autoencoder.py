from __future__ import annotations

import torch

from ..config import ModelConfig
from ..distributions import PointMass
from ..nets import MLP
from . import INFERENCE, InferenceMethod


@INFERENCE.register("autoencoder")
class Autoencoder(InferenceMethod):
    """The notes' vanilla autoencoder: ẑ = e_φ(x), trained on the reconstruction term
    log p(x|ẑ) alone (for a Gaussian likelihood with fixed σ², the squared error).

    It is not a generative model by training, but its decoder with the prior N(0, I) is one,
    so its log p(x) can still be estimated (with the ELBO-optimal Gaussian around ẑ as the
    importance proposal) and compared with the other methods.
    """

    point_estimate = True
    trains_elbo = False

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.encoder = MLP(config.input_dim, config.hidden, config.latent_dim, config.activation)

    def forward(self, model, x: torch.Tensor, idx: torch.Tensor | None = None) -> PointMass:
        return PointMass(self.encoder(x))

    def loss(self, model, x, idx, beta, n_samples, analytic_kl, eps=None):
        from ..objectives import elbo

        terms = elbo(model, x, q=self(model, x, idx))
        return -terms.recon.mean(), terms
