from __future__ import annotations

import numpy as np
import torch

from ..distributions import BernoulliLogits
from . import LIKELIHOODS, Likelihood


@LIKELIHOODS.register("bernoulli")
class Bernoulli(Likelihood):
    """p(x|z) = ∏_d Bernoulli(x_d; σ(decoder(z)_d)), for binary data (Kingma & Welling 2014, C.1)."""

    support = "values 0 or 1"
    discrete = True

    def forward(self, logits: torch.Tensor) -> BernoulliLogits:
        return BernoulliLogits(logits)

    def supported(self, x: np.ndarray) -> np.ndarray:
        return (x == 0) | (x == 1)
