"""Gated MLPs: every hidden layer a gated linear unit h = (W x + b) ⊙ σ(V x + c) (Dauphin et
al. 2017, "Language modeling with gated convolutional networks"), as in the encoder and decoder
trunks of the VampPrior models (Tomczak & Welling 2018, ``GatedDense`` in
jmtomczak/vae_vampprior), then a plain linear map to the output.

The gate is the layers' non-linearity, so ``activation`` does not apply to these networks
(the VampPrior code applies none after ``GatedDense``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import NETS, GatedLinear, Net


class GatedMLP(nn.Sequential):
    """in_dim → hidden[0] → … → hidden[-1] → out_dim: a GatedLinear per hidden width, then an
    nn.Linear to ``out_dim``. With ``hidden = ()`` it is one affine map, like MLP's.
    Works on any leading dims: (..., in_dim) → (..., out_dim)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int):
        widths = [in_dim, *hidden]
        layers: list[nn.Module] = [GatedLinear(a, b) for a, b in zip(widths[:-1], widths[1:])]
        layers.append(nn.Linear(widths[-1], out_dim))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under bfloat16 autocast the layers compute in bfloat16; the output returns to the
        # input's dtype, as MLP's does, so every log-density and KL downstream stays in float32.
        return super().forward(x).to(x.dtype)


@NETS.register("gated")
class GatedNet(Net):
    """Gated MLPs: the encoder with widths ``hidden``, the decoder with ``decoder_hidden`` (the
    encoder's reversed by default); ``activation`` is not used (the gates are the non-linearity)."""

    @classmethod
    def encoder(cls, config, out_dim: int) -> nn.Module:
        return GatedMLP(config.input_dim, config.hidden, out_dim)

    @classmethod
    def decoder(cls, config, in_dim: int, widths: tuple[int, ...] | None = None) -> nn.Module:
        return GatedMLP(in_dim, config.decoder_widths if widths is None else widths, config.input_dim)

    @classmethod
    def uses_activation(cls, widths: tuple[int, ...]) -> bool:
        return False  # the gates are the non-linearity

    @classmethod
    def dense(cls, config, in_dim: int, widths: tuple[int, ...], out_dim: int) -> nn.Module:
        return GatedMLP(in_dim, widths, out_dim)

    @classmethod
    def layer(cls, config, in_dim: int, out_dim: int) -> nn.Module:
        return GatedLinear(in_dim, out_dim)
