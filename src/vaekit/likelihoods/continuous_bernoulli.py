from __future__ import annotations

import numpy as np
import torch

from ..distributions import ContinuousBernoulliLogits
from . import LIKELIHOODS, Likelihood


@LIKELIHOODS.register("continuous_bernoulli")
class ContinuousBernoulli(Likelihood):
    """p(x|z) = ∏_d CB(x_d; σ(decoder(z)_d)) for values in [0, 1] (Loaiza-Ganem & Cunningham 2019)."""

    support = "values in [0, 1]"

    def forward(self, logits: torch.Tensor) -> ContinuousBernoulliLogits:
        return ContinuousBernoulliLogits(logits)

    def supported(self, x: np.ndarray) -> np.ndarray:
        return (x >= 0) & (x <= 1)
