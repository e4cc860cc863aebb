"""Layers the network families share: the MLP, the gated linear layer, branches per input,
the (μ, log σ²) head, and the He-normal start of their weights."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}


class MLP(nn.Sequential):
    """in_dim → hidden[0] → … → hidden[-1] → out_dim, an activation after every hidden layer.

    With ``hidden = ()`` it is one affine map, which makes a Gaussian VAE a linear-Gaussian
    model (probabilistic PCA, Tipping & Bishop 1999). Works on any leading dims: (..., in_dim).
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, activation: str = "relu"):
        layers: list[nn.Module] = []
        widths = [in_dim, *hidden]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
        layers.append(nn.Linear(widths[-1], out_dim))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under bfloat16 autocast the layers compute in bfloat16; the output returns to the
        # input's dtype so that every log-density and KL downstream is computed in float32.
        return super().forward(x).to(x.dtype)


class GatedLinear(nn.Module):
    """h = (W x + b) ⊙ σ(V x + c): a linear map scaled elementwise by a learned sigmoid gate, the
    gated linear unit of Dauphin et al. (2017), used as ``GatedDense`` in the VampPrior models
    of Tomczak & Welling (2018). The gate is the non-linearity; none follows it.
    Works on any leading dims: (..., in_dim) → (..., out_dim).
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)  # W, b
        self.gate = nn.Linear(in_dim, out_dim)  # V, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * torch.sigmoid(self.gate(x))  # (..., out_dim)


class Branches(nn.Module):
    """Several inputs side by side, (..., Σ sizes): each read by a network of its own, their
    outputs joined and passed on to ``trunk``. This is how Tomczak & Welling's two-layer models
    (jmtomczak/vae_vampprior, ``HVAE_2level``) read (z1, z2) in p(x|z1, z2) and (x, z2) in
    q(z1|x, z2): a gated layer per input, then the joint layers.
    Works on any leading dims; the output is in the input's dtype, as MLP's."""

    def __init__(self, sizes: Sequence[int], branches: Sequence[nn.Module], trunk: nn.Module):
        super().__init__()
        if len(sizes) != len(branches):
            raise ValueError(f"{len(sizes)} input sizes for {len(branches)} branches")
        self.sizes = [int(s) for s in sizes]
        self.branches = nn.ModuleList(branches)
        self.trunk = trunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = x.split(self.sizes, dim=-1)
        h = torch.cat([branch(part) for branch, part in zip(self.branches, parts)], dim=-1)
        return self.trunk(h).to(x.dtype)


class GaussianHead(nn.Module):
    """Wraps a network whose output is split into (μ, log σ²) halves: (μ, log Σ) = DNN_enc(x).

    ``logvar_min``/``logvar_max`` bound log σ² as a hardtanh does (the gradient is zero outside
    the bounds): Tomczak & Welling (2018)'s code bounds every such head to [−6, 2]."""

    def __init__(self, net: nn.Module, logvar_min: float | None = None, logvar_max: float | None = None):
        super().__init__()
        self.net = net
        self.logvar_min, self.logvar_max = logvar_min, logvar_max

    @classmethod
    def of(cls, config, net: nn.Module) -> "GaussianHead":
        """The head on ``net`` with the model config's log σ² bounds."""
        return cls(net, config.logvar_min, config.logvar_max)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(x).chunk(2, dim=-1)
        if self.logvar_min is not None or self.logvar_max is not None:
            logvar = torch.clamp(logvar, self.logvar_min, self.logvar_max)
        return mu, logvar


# The layers whose weights ``init="he"`` draws anew.
WEIGHTED_LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def he_init(module: nn.Module) -> None:
    """Every linear and conv weight of ``module`` drawn from N(0, 2/fan_in) (He et al. 2015,
    torch's kaiming_normal_), biases left as they are: the start of Tomczak & Welling's
    networks (their ``he_init``), about 2.4x the spread of PyTorch's default. Pseudo-inputs,
    per-point tables and likelihood parameters are not layers and keep their own start."""
    for m in module.modules():
        if isinstance(m, WEIGHTED_LAYERS):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
