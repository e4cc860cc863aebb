"""Convolutional encoder and decoder for image rows: the small convnets of Kingma & Welling
(2014) and the DCGAN layout (Radford et al. 2016), strided convolutions down, transposed
convolutions up, an MLP between the feature map and the vector (μ, log σ² or z).

Rows arrive flattened, (..., C·H·W) with any leading dims ((n, D) to encode, (S, n, D) draws
to decode); the image shape is the config's ``image_shape``, (H, W) for grey or (C, H, W)
channels first.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Option
from . import ACTIVATIONS, MLP, NETS, Net


def image_chw(config) -> tuple[int, int, int]:
    """(C, H, W) of a row under ``config``; ConfigError when the rows are not images."""
    shape = config.image_shape
    # Name the option that chose conv: --encoder conv --decoder mlp is not --net conv.
    role = next((r for r in ("encoder", "decoder", "downward") if getattr(config, r, None) == "conv"), "net")
    if shape is None:
        raise ConfigError(
            f"{role} conv needs image-shaped data (rows of shape (H, W) or (C, H, W)), got rows of "
            f"{config.input_dim} features with no image shape; give images as a 3-D (n, H, W) or 4-D (n, C, H, W) array"
        )
    if len(shape) not in (2, 3):
        raise ConfigError(f"{role} conv needs image_shape (H, W) or (C, H, W), got {tuple(shape)}")
    return (1, *shape) if len(shape) == 2 else tuple(shape)


def halved(size: int) -> int:
    """A side after a 3x3 convolution of stride 2 and padding 1: ceil(size / 2), never 0, so
    an 8x8 digit is 2x2 after two layers and 1x1 after three, and an odd side loses nothing."""
    return (size + 1) // 2


class Crop(nn.Module):
    """(N, C, h', w') → (N, C, h, w), the first h rows and w columns: a transposed convolution
    doubles a side, which is one more than the encoder's side where it rounded an odd side up."""

    def __init__(self, h: int, w: int):
        super().__init__()
        self.h, self.w = h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., : self.h, : self.w]

    def extra_repr(self) -> str:
        return f"h={self.h}, w={self.w}"


class ConvEncoder(nn.Module):
    """x (..., C·H·W) → (..., out_dim): per entry of ``channels`` a 3x3 convolution of stride 2
    and the activation, then an MLP with widths ``hidden`` on the flattened feature map."""

    def __init__(self, chw: tuple[int, int, int], channels, hidden, out_dim: int, activation: str = "relu"):
        super().__init__()
        self.chw = chw
        c, h, w = chw
        layers: list[nn.Module] = []
        for width in channels:
            layers += [nn.Conv2d(c, width, 3, stride=2, padding=1), ACTIVATIONS[activation]()]
            c, h, w = width, halved(h), halved(w)
        self.conv = nn.Sequential(*layers)
        self.head = MLP(c * h * w, hidden, out_dim, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        # An explicit row count, not -1: a batch of 0 rows has no unique -1.
        maps = self.conv(x.reshape(math.prod(lead), *self.chw))  # (N, C_last, h, w)
        out = self.head(maps.flatten(1))  # (N, out_dim)
        # Under bfloat16 autocast the convolutions compute in bfloat16; the output returns to
        # the input's dtype, as MLP's does, so every log-density downstream stays in float32.
        return out.reshape(*lead, out.shape[-1]).to(x.dtype)


class ConvDecoder(nn.Module):
    """z (..., in_dim) → (..., C·H·W), the encoder mirrored: an MLP with widths ``hidden`` to the
    encoder's last feature map (C_last, h, w), then per entry of ``channels`` (reversed) a 4x4
    transposed convolution of stride 2 (every output pixel from two taps per axis, so no
    checkerboard of uneven overlap), cropped to the encoder's size at that depth, and the
    activation; a 3x3 convolution to C channels gives the likelihood's parameters, one per pixel.
    """

    def __init__(self, chw: tuple[int, int, int], channels, hidden, in_dim: int, activation: str = "relu"):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, math.prod(chw)
        c_img, h, w = chw
        sizes = [(h, w)]  # the encoder's side at each depth, the image first
        for _ in channels:
            h, w = halved(h), halved(w)
            sizes.append((h, w))
        widths = tuple(channels[::-1]) or (c_img,)  # (C_last, …, C_first)
        self.head = nn.Sequential(
            MLP(in_dim, hidden, widths[0] * h * w, activation),
            ACTIVATIONS[activation](),
            nn.Unflatten(-1, (widths[0], h, w)),
        )
        layers: list[nn.Module] = []
        # Each layer brings the map one depth up; the last keeps C_first channels for the 3x3.
        outs = widths[1:] + widths[-1:]
        for c_in, c_out, (h, w) in zip(widths, outs, reversed(sizes[:-1])):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), Crop(h, w), ACTIVATIONS[activation]()]
        layers.append(nn.Conv2d(outs[-1], c_img, 3, padding=1))
        self.up = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        maps = self.head(z.reshape(math.prod(lead), self.in_dim))  # (N, C_last, h, w)
        x = self.up(maps)  # (N, C, H, W)
        return x.reshape(*lead, self.out_dim).to(z.dtype)


@NETS.register(
    "conv",
    options={
        "channels": Option((32, 64), "channels of the conv net's stride-2 convolutions, comma-separated (each halves the image side, down to 1x1: layers beyond that keep the 1x1 map); the decoder mirrors them", type="widths"),
    },
)
class ConvNet(Net):
    """Convolutions over image rows (``image_shape``): the encoder with ``channels`` and an MLP
    head of widths ``hidden``, the decoder mirrored with ``decoder_hidden``."""

    vector_net = False

    @classmethod
    def check_config(cls, config) -> None:
        image_chw(config)

    @classmethod
    def uses_activation(cls, widths: tuple[int, ...]) -> bool:
        return True  # after every convolution, whatever the head's widths

    @classmethod
    def encoder(cls, config, out_dim: int) -> nn.Module:
        return ConvEncoder(image_chw(config), config.channels, config.hidden, out_dim, config.activation)

    @classmethod
    def decoder(cls, config, in_dim: int, widths: tuple[int, ...] | None = None) -> nn.Module:
        widths = config.decoder_widths if widths is None else widths
        return ConvDecoder(image_chw(config), config.channels, widths, in_dim, config.activation)
