"""Priors p(z) of the top latent group: ``nn.Module``s whose ``forward(model)`` returns the
prior distribution.

They are modules so that learned priors train with θ in the same loop, and they see the
model, so that a prior built from the encoder (the VampPrior's pseudo-inputs) is possible.
A new prior is one file in this folder that registers itself with ``@PRIORS.register``.
"""

from __future__ import annotations

from torch import nn
from torch.distributions import Distribution

from ..registry import PRIORS

__all__ = ["PRIORS", "Prior"]


class Prior(nn.Module):
    name: str
    # Components of the distribution ``forward`` builds (a mixture's C; 1 for one Gaussian): the
    # importance-weighted estimate sizes its sample chunks by it without building the prior.
    components: int = 1

    def __init__(self, config, size: int):
        super().__init__()
        self.size = size  # dimension of the group it is the prior of

    @classmethod
    def check_config(cls, config) -> None:
        """Raise ConfigError if the prior cannot serve this model config (checked when the
        ModelConfig is made); every config is fine by default."""

    def check_source(self) -> None:
        """Raise ConfigError (or CheckpointError) if what ``init_from_data`` will read cannot
        serve: asked before a run writes anything (``--overwrite`` empties its directory only
        after). Nothing to check by default."""

    def init_from_data(self, x_train, rng) -> None:
        """Look at the training rows (an array, or ``MappedRows``) once, at the start of a fresh
        run, before the first step; ``rng`` is a ``numpy.random.Generator`` seeded by the run's
        seed. Never called on resume, where the checkpoint holds the state. Nothing by default."""

    def forward(self, model=None) -> Distribution:  # pragma: no cover - interface
        raise NotImplementedError
