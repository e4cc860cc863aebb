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
from ..data.checks import row_name
from ..errors import DataError
from ..registry import LIKELIHOODS

__all__ = ["LIKELIHOODS", "Likelihood", "choose"]


class Likelihood(nn.Module):
    name: str
    support: str = "real numbers"
    # A probability mass rather than a density: a one-to-one map of the values (the model's
    # input scaling) moves the mass with them and adds no log |det| to log p(x|z).
    discrete: bool = False

    def __init__(self, config: ModelConfig):
        super().__init__()

    def forward(self, out: torch.Tensor) -> Distribution:  # pragma: no cover - interface
        raise NotImplementedError

    def supported(self, x: np.ndarray) -> np.ndarray:
        """Elementwise: which values of ``x`` this likelihood gives a density (all, by default)."""
        return np.ones(x.shape, dtype=bool)

    def check(self, x: np.ndarray, what: str = "data", scaling=None, rows=None) -> None:
        """Raise DataError if some value of ``x`` (the model's values) is outside this
        likelihood's support; the message says what the values were and why: the model's input
        map ``scaling`` (vaekit.scaling.Scaling) that made them, or that there is none.
        ``rows``: the 1-based file row of each row of x, for the message (default: 1, 2, ...)."""
        ok = self.supported(x)
        if ok.all():
            return
        r, c = (int(i) for i in np.argwhere(~ok)[0])
        head = f"{what} has values outside the support of the {self.name} likelihood ({self.support})"
        if scaling is not None:
            raise DataError(
                f"{head} once this model's input scaling {scaling.describe()} is applied: "
                f"e.g. {scaling.user_value(float(x[r, c]), c)!r} becomes {x[r, c]!s} ({row_name(r, rows)}, column {c + 1})"
            )
        # numpy's str of each value: the shortest digits that give it back in x's dtype, so that
        # 1.0000001 is not shown as 1 beside the bounds it breaks.
        shown = ", ".join(str(v) for v in np.unique(x[~ok])[:3])
        raise DataError(
            f"{head}, e.g. {shown}: values from {x.min()!s} to {x.max()!s}, and this model applies "
            "no scaling to its input: give values in its support, or train with a likelihood whose support holds them"
        )


def choose(x: np.ndarray | MappedRows) -> str:
    """The likelihood a user means when they say ``auto``: Bernoulli for 0/1 data,
    continuous Bernoulli for values in [0, 1], Gaussian otherwise, for an array, ``MappedRows``
    (read block by block by ``vaekit.data.summarize``, never whole) or a tuple of them."""
    values = summarize(x)
    if values.binary:
        return "bernoulli"
    if values.min >= 0 and values.max <= 1:
        return "continuous_bernoulli"
    return "gaussian"
