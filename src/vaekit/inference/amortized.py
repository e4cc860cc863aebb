from __future__ import annotations

import torch

from ..config import ModelConfig
from ..distributions import DiagonalNormal
from ..nets import MLP, GaussianHead
from . import INFERENCE, InferenceMethod


@INFERENCE.register("amortized")
class Amortized(InferenceMethod):
    """Amortized VI: (μ, log σ²) = DNN_enc(x; φ), q(z|x) = N(μ, diag σ²) (notes; Kingma & Welling 2014).

    One network serves every datapoint, so a new x gets its q in one forward pass.
    """

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.encoder = GaussianHead(MLP(config.input_dim, config.hidden, 2 * config.latent_dim, config.activation))

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> DiagonalNormal:
        mu, logvar = self.encoder(x)
        return DiagonalNormal(mu, logvar)
