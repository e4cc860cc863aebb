from __future__ import annotations

import math

import torch
from torch import nn

from ..distributions import DiagonalNormal
from ..registry import Option
from . import LIKELIHOODS, Likelihood

# A learned σ² may not shrink below this: on a feature that the decoder fits exactly the
# likelihood would otherwise grow without bound (the degenerate maximum of Gaussian mixtures).
MIN_LOGVAR = math.log(1e-6)


def floored_logvar(raw: torch.Tensor, floor: float = MIN_LOGVAR) -> torch.Tensor:
    """A smooth floor: log σ² = raw where raw ≥ floor + 1, else floor + exp(raw − floor − 1).

    Continuous with its first derivative at the join, always above the floor, and its gradient
    exp(raw − floor − 1) never vanishes below it (a clamp's is zero there, so a parameter that
    sank below could never come back). Unlike softplus or logaddexp it is the identity above
    the join, so every σ² above e·floor (here 2.7e-6) is exactly the stored one.
    """
    # The clamp keeps exp finite, and so its gradient 0, where the branch is not taken.
    below = floor + torch.exp((raw - floor - 1).clamp(max=0))
    return torch.where(raw >= floor + 1, raw, below)


@LIKELIHOODS.register(
    "gaussian",
    options={
        "variance": Option("shared", "σ² of the gaussian likelihood (shared: one learned for all features; feature: one per feature)", choices=("fixed", "shared", "feature")),
        "fixed_std": Option(1.0, "σ of the gaussian likelihood with variance fixed", minimum=0.0, exclusive=True),
    },
)
class Gaussian(Likelihood):
    """p(x|z) = N(x; decoder(z), diag σ²) with σ² fixed, shared and learned, or learned per feature.

    With a linear decoder this is the linear-Gaussian model whose marginal is
    N(b, WWᵀ + diag σ²), known exactly (probabilistic PCA when σ² is shared).
    """

    def __init__(self, config):
        super().__init__(config)
        self.variance = config.variance
        if config.variance == "fixed":
            self.register_buffer("logvar", torch.full((1,), 2 * math.log(config.fixed_std)))
        elif config.variance == "shared":
            self.logvar = nn.Parameter(torch.zeros(1))
        else:
            self.logvar = nn.Parameter(torch.zeros(config.input_dim))

    def forward(self, mean: torch.Tensor) -> DiagonalNormal:
        logvar = self.logvar if self.variance == "fixed" else floored_logvar(self.logvar)
        return DiagonalNormal(mean, logvar)
