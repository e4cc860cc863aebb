"""Priors p(z): ``nn.Module``s whose ``forward()`` returns the prior distribution.

They are modules so that learned priors (mixtures, VampPrior, hierarchies) register here
as one new file each and train with θ in the same loop.
"""

from __future__ import annotations

from torch import nn
from torch.distributions import Distribution

from ..config import ModelConfig
from ..registry import PRIORS


class Prior(nn.Module):
    name: str

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.latent_dim = config.latent_dim

    def forward(self) -> Distribution:  # pragma: no cover - interface
        raise NotImplementedError



