"""Inference methods: how q(z|x) is obtained. The prior, decoder and likelihood are shared;
only this part differs between the notes' autoencoder, MAP, per-datapoint VI and the
amortized encoder. Each is an ``nn.Module`` registered in ``INFERENCE`` whose ``forward(x, idx)``
returns q(z|x) for a batch (``idx`` are the rows' indices in the training set, for methods
that keep one set of parameters per datapoint)."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution

from ..config import ModelConfig
from ..registry import Registry


class InferenceMethod(nn.Module):
    name: str
    # False for methods whose q for a new x must be found by optimisation.
    has_encoder: bool = True

    def __init__(self, config: ModelConfig):
        super().__init__()

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> Distribution:  # pragma: no cover
        raise NotImplementedError


INFERENCE: Registry[InferenceMethod] = Registry("inference method")

from . import amortized  # noqa: E402,F401  (fill the registry)
