from __future__ import annotations

from torch import nn

from . import MLP, NETS, Net


@NETS.register("mlp")
class MLPNet(Net):
    """Fully connected networks: the encoder with widths ``hidden``, the decoder with
    ``decoder_hidden`` (the encoder's reversed by default)."""

    @classmethod
    def encoder(cls, config, out_dim: int) -> nn.Module:
        return MLP(config.input_dim, config.hidden, out_dim, config.activation)

    @classmethod
    def decoder(cls, config, in_dim: int, widths: tuple[int, ...] | None = None) -> nn.Module:
        widths = config.decoder_widths if widths is None else widths
        return MLP(in_dim, widths, config.input_dim, config.activation)
