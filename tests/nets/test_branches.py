"""vaekit.nets.layers.Branches and each family's one-layer ``layer``: inputs split by size,
each through its own network, joined, then the trunk; leading dims, dtype, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vaekit.config import ModelConfig
from vaekit.nets import Branches, GatedLinear
from vaekit.registry import NETS


def _branches():
    torch.manual_seed(0)
    return Branches([3, 2], [nn.Linear(3, 4), nn.Identity()], nn.Linear(6, 5))


@pytest.mark.parametrize("lead", [(), (7,), (2, 7)])
def test_split_each_read_by_its_own_net_then_the_trunk(lead):
    b = _branches()
    x = torch.randn(*lead, 5)
    first, second = x[..., :3], x[..., 3:]
    expected = b.trunk(torch.cat([b.branches[0](first), second], -1))
    torch.testing.assert_close(b(x), expected, rtol=0, atol=0)
    assert b(x).shape == (*lead, 5)


def test_each_input_reaches_only_its_own_branch():
    """The gradient of a branch's weights depends on its own input columns only."""
    b = _branches()
    x = torch.randn(4, 5)
    b(x).sum().backward()
    g = b.branches[0].weight.grad.clone()
    b.zero_grad()
    y = x.clone()
    y[:, 3:] = torch.randn(4, 2)  # the second input changed, the first not
    b(y).sum().backward()
    torch.testing.assert_close(b.branches[0].weight.grad, g)
    assert b.trunk.weight.grad[:, 4:].abs().sum() > 0


def test_sizes_must_match_the_branches():
    with pytest.raises(ValueError, match="2 input sizes for 1 branches"):
        Branches([3, 2], [nn.Identity()], nn.Identity())


def test_output_returns_to_the_input_dtype_under_bf16_autocast():
    b = Branches([3, 2], [GatedLinear(3, 4), GatedLinear(2, 4)], nn.Linear(8, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert b(torch.randn(6, 5)).dtype == torch.float32


@pytest.mark.parametrize("net, kind", [("mlp", nn.Sequential), ("gated", GatedLinear), ("conv", nn.Sequential)])
def test_each_family_has_a_one_layer_block(net, kind):
    """``layer``: gated families a GatedLinear, the others a linear map and the activation."""
    config = ModelConfig(input_dim=64, latent_dim=(4, 2), hidden=(8,), net=net, activation="tanh", image_shape=(8, 8))
    layer = NETS.get(net).layer(config, 5, 3)
    assert isinstance(layer, kind)
    v = torch.randn(2, 5)
    if kind is nn.Sequential:
        assert isinstance(layer[1], nn.Tanh)
        torch.testing.assert_close(layer(v), torch.tanh(layer[0](v)))
    assert layer(v).shape == (2, 3)
