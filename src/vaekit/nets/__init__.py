"""Networks: plain functions of tensors, no probability inside (that is the likelihoods' job).

A network family registered in ``NETS`` builds the encoder (x → a vector of ``out_dim``
numbers, e.g. (μ, log σ²)) and the decoder (z → the likelihood's parameters for x, one per
feature). Both act on any leading dims: (..., in) → (..., out). A new family is one file in
this folder that registers itself with ``@NETS.register``.
"""

from __future__ import annotations

from torch import nn

from ..registry import NETS
from .layers import ACTIVATIONS, MLP, Branches, GatedLinear, GaussianHead, he_init

__all__ = ["NETS", "Net", "MLP", "Branches", "GatedLinear", "GaussianHead", "ACTIVATIONS", "he_init"]


class Net:
    """A family of encoder and decoder networks; ``config`` is the ModelConfig."""

    name: str

    @classmethod
    def check_config(cls, config) -> None:
        """Raise ConfigError if the family cannot serve this model config (the data's shape)."""

    @classmethod
    def encoder(cls, config, out_dim: int) -> nn.Module:  # pragma: no cover - interface
        """x (..., input_dim) → (..., out_dim)."""
        raise NotImplementedError

    @classmethod
    def decoder(cls, config, in_dim: int, widths: tuple[int, ...] | None = None) -> nn.Module:  # pragma: no cover - interface
        """z (..., in_dim) → (..., input_dim), through hidden ``widths`` (default: the config's
        ``decoder_widths``)."""
        raise NotImplementedError

    @classmethod
    def uses_activation(cls, widths: tuple[int, ...]) -> bool:
        """Whether a network of this family with hidden ``widths`` applies ``activation``: an
        MLP's hidden layers do; one without hidden layers is a linear map."""
        return bool(widths)

    @classmethod
    def dense(cls, config, in_dim: int, widths: tuple[int, ...], out_dim: int) -> nn.Module:
        """A vector network of this family, (..., in_dim) → (..., out_dim), for the parts that
        read features and latents rather than x itself: an MLP with ``activation``."""
        return MLP(in_dim, widths, out_dim, config.activation)

    @classmethod
    def layer(cls, config, in_dim: int, out_dim: int) -> nn.Module:
        """One hidden layer of this family, (..., in_dim) → (..., out_dim) features: a linear map
        and ``activation``. A branch of ``Branches`` (``join="branch"``)."""
        return nn.Sequential(nn.Linear(in_dim, out_dim), ACTIVATIONS[config.activation]())
