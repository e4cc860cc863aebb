"""Networks: plain functions of tensors, no probability inside (that is the likelihoods' job).

A network family registered in ``NETS`` builds the encoder (x → a vector of ``out_dim``
numbers, e.g. (μ, log σ²)) and the decoder (z → the likelihood's parameters for x, one per
feature). Both act on any leading dims: (..., in) → (..., out). A new family is one file in
this folder that registers itself with ``@NETS.register``.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import NETS
from .layers import ACTIVATIONS, MLP, Branches, GatedLinear, GaussianHead, he_init

__all__ = ["NETS", "Net", "MLP", "Branches", "GatedLinear", "GaussianHead", "ACTIVATIONS", "he_init"]


class Net:
    """A family of encoder and decoder networks; ``config`` is the ModelConfig.

    Every network a family builds is run once on two rows of zeros as it is built, and one
    whose output has another width than the model asks for is refused there (ConfigError
    naming the family and the network), not left to a broadcasting error inside the loss."""

    name: str
    # Whether ``dense`` is a network of this family's own. Latents are vectors: conv's is
    # mlp's, so ``--downward`` (p(z_l | z_{l+1}), dense only) refuses it rather than rename mlp.
    vector_net: bool = True

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for role in _BUILDERS:
            if role in cls.__dict__:
                raw = cls.__dict__[role]
                # A classmethod gets the family first; a staticmethod or a plain function does not.
                takes_cls = isinstance(raw, classmethod)
                build = raw.__func__ if isinstance(raw, (classmethod, staticmethod)) else raw
                setattr(cls, role, classmethod(_checked(role, build, takes_cls)))

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


# builder -> (input width, output width) of the network it builds, from its arguments.
_BUILDERS = {
    "encoder": lambda config, out_dim: (config.input_dim, out_dim),
    "decoder": lambda config, in_dim, widths=None: (in_dim, config.input_dim),
    "dense": lambda config, in_dim, widths, out_dim: (in_dim, out_dim),
    "layer": lambda config, in_dim, out_dim: (in_dim, out_dim),
}


def _checked(role: str, build, takes_cls: bool = True):
    """``build`` (a family's builder: a classmethod's function if ``takes_cls``, else a static
    one), whose network is run on two rows of zeros (no gradient, in eval mode: no running
    statistics move, no random numbers are drawn)."""

    @functools.wraps(build)
    def checked(cls, config, *args, **kwargs):
        net = build(cls, config, *args, **kwargs) if takes_cls else build(config, *args, **kwargs)
        d_in, d_out = _BUILDERS[role](config, *args, **kwargs)
        p = next(net.parameters(), None)
        if p is not None and p.is_meta:
            # Built to be measured (hardware.check_model_fits), not run: the model built for use
            # is checked. (On meta tensors a product would import torch._dynamo, ~1 s.)
            return net
        modes = [m.training for m in net.modules()]
        try:
            net.eval()
            with torch.no_grad():
                out = net(torch.zeros(2, d_in, dtype=p.dtype if p is not None else torch.get_default_dtype()))
        except Exception as e:
            raise ConfigError(f"network {cls.name}'s {role} fails on rows of {d_in} numbers: {type(e).__name__}: {e}") from e
        finally:
            for m, mode in zip(net.modules(), modes):
                m.training = mode
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, d_out):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"network {cls.name}'s {role} maps 2 rows of {d_in} numbers to {got}; the model needs (2, {d_out})")
        return net

    return checked
