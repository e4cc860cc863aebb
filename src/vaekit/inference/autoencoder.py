from __future__ import annotations

import torch

from ..distributions import PointMass
from ..nets import NETS
from . import INFERENCE, InferenceMethod


@INFERENCE.register("autoencoder")
class Autoencoder(InferenceMethod):
    """The notes' vanilla autoencoder: ẑ = e_φ(x), trained on the reconstruction term
    log p(x|ẑ) alone (for a Gaussian likelihood with fixed σ², the squared error).

    It is not a generative model by training, but its decoder with the prior is one, so its
    log p(x) can still be estimated and compared with the other methods: the importance proposal
    is the ELBO-optimal Gaussian around the posterior mode that ẑ ascends to
    (``optimize.gaussian_around``). Its codes can lie tens of prior standard deviations out,
    which that ascent's rate, scaled to the code, crosses within ``local_steps`` steps.
    """

    point_estimate = True
    default_objective = "reconstruction"

    def __init__(self, config, latents):
        super().__init__(config, latents)
        self.encoder = NETS.get(config.encoder_net).encoder(config, self.size)

    def forward(self, model, x: torch.Tensor, idx: torch.Tensor | None = None) -> PointMass:
        return PointMass(self.encoder(x))
