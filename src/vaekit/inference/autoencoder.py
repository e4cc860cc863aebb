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
    log p(x) can still be estimated (with a Gaussian grown around ẑ by ``local_steps`` ascent
    steps on its ELBO as the importance proposal) and compared with the other methods. Its codes
    lie far from the prior, so that proposal stays far from the optimal one and the estimate is
    loose (hundreds of nats on digits): ``vaekit gaps``, whose q* ascends to convergence, is
    the tighter reading.
    """

    point_estimate = True
    default_objective = "reconstruction"

    def __init__(self, config, latents):
        super().__init__(config, latents)
        self.encoder = NETS.get(config.encoder_net).encoder(config, self.size)

    def forward(self, model, x: torch.Tensor, idx: torch.Tensor | None = None) -> PointMass:
        return PointMass(self.encoder(x))
