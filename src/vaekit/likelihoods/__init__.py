"""Likelihoods p(x|z; θ): they turn the decoder's output into a distribution over x.

Each one is an ``nn.Module`` (it may own parameters, like a learned variance) registered in
``LIKELIHOODS``, and says which data it accepts (``check``) so that a model is never fitted
to values outside its support.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.distributions import Distribution

from ..config import ModelConfig
from ..data import MappedRows, summarize
from ..errors import DataError
from ..registry import LIKELIHOODS

__all__ = ["LIKELIHOODS", "Likelihood", "choose"]


class Likelihood(nn.Module):
    name: str
    support: str = "real numbers"

    def __init__(self, config: ModelConfig):
        super().__init__()

    def forward(self, out: torch.Tensor) -> Distribution:  # pragma: no cover - interface
        raise NotImplementedError

    def supported(self, x: np.ndarray) -> np.ndarray:
        """Elementwise: which values of ``x`` this likelihood gives a density (all, by default)."""
        return np.ones(x.shape, dtype=bool)

    def check(self, x: np.ndarray, what: str = "data") -> None:
        """Raise DataError if some value of ``x`` is outside this likelihood's support."""
        ok = self.supported(x)
        if not ok.all():
            shown = ", ".join(f"{v:g}" for v in np.unique(x[~ok])[:3])
            raise DataError(
                f"{what} has values outside the support of the {self.name} likelihood ({self.support}), e.g. {shown}"
            )




def choose(x: np.ndarray | MappedRows) -> str:
    """The likelihood a user means when they say ``auto``: Bernoulli for 0/1 data,
    continuous Bernoulli for values in [0, 1], Gaussian otherwise. ``MappedRows`` are read
    block by block (``vaekit.data.summarize``), never whole."""
    values = summarize(x)
    if values.binary:
        return "bernoulli"
    if values.min >= 0 and values.max <= 1:
        return "continuous_bernoulli"
    return "gaussian"
