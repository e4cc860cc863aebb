"""vaekit.nets: MLP layout and leading dims, GaussianHead's split."""

import re

import pytest
import torch
from torch import nn

from vaekit.config import ModelConfig
from vaekit.model import VAEModel
from vaekit.nets import MLP, GaussianHead

F64 = torch.float64


def test_mlp_without_hidden_is_one_linear():
    net = MLP(5, (), 3)
    assert len(net) == 1 and isinstance(net[0], nn.Linear)
    assert (net[0].in_features, net[0].out_features) == (5, 3)
    x = torch.randn(4, 5)
    torch.testing.assert_close(net(x), x @ net[0].weight.T + net[0].bias)


@pytest.mark.parametrize("activation, cls", [("relu", nn.ReLU), ("tanh", nn.Tanh), ("silu", nn.SiLU)])
def test_mlp_widths_and_activations(activation, cls):
    net = MLP(6, (8, 4), 2, activation)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(6, 8), (8, 4), (4, 2)]
    # An activation after every hidden layer and none after the output.
    assert [type(m) for m in net] == [nn.Linear, cls, nn.Linear, cls, nn.Linear]


def test_mlp_on_leading_dims():
    torch.manual_seed(0)
    net = MLP(3, (7,), 2, "tanh").to(F64)
    x = torch.randn(5, 4, 3, dtype=F64)  # (S, n, in)
    out = net(x)
    assert out.shape == (5, 4, 2)
    # Same as applying it row by row: 1e-12 is float64 rounding of a few dot products.
    torch.testing.assert_close(out, net(x.reshape(20, 3)).reshape(5, 4, 2), rtol=1e-12, atol=1e-12)


def test_gaussian_head_splits_halves():
    torch.manual_seed(0)
    net = MLP(3, (), 4).to(F64)
    head = GaussianHead(net)
    x = torch.randn(6, 3, dtype=F64)
    mu, logvar = head(x)
    full = net(x)
    assert mu.shape == logvar.shape == (6, 2)
    assert torch.equal(mu, full[:, :2]) and torch.equal(logvar, full[:, 2:])
    mu3, _ = head(torch.randn(2, 6, 3, dtype=F64))
    assert mu3.shape == (2, 6, 2)


def test_model_widths_follow_config():
    model = VAEModel(ModelConfig(input_dim=10, latent_dim=3, hidden=(8, 5)))
    enc = [m for m in model.inference.encoder.net if isinstance(m, nn.Linear)]
    dec = [m for m in model.decoder if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in enc] == [(10, 8), (8, 5), (5, 6)]  # 2·latent out
    assert [(m.in_features, m.out_features) for m in dec] == [(3, 5), (5, 8), (8, 10)]  # mirrored
    model = VAEModel(ModelConfig(input_dim=10, latent_dim=3, hidden=(8,), decoder_hidden=(4, 4)))
    dec = [m for m in model.decoder if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in dec] == [(3, 4), (4, 4), (4, 10)]


@pytest.mark.parametrize("role, message", [
    ("encoder", "network wide_net's encoder maps 2 rows of 6 numbers to (2, 5); the model needs (2, 4)"),
    ("decoder", "network wide_net's decoder maps 2 rows of 2 numbers to (2, 12); the model needs (2, 6)"),
])
def test_a_family_whose_network_has_the_wrong_width_is_refused_when_built(role, message):
    """A user's family (registered from a script) whose encoder gives one number too many,
    or whose decoder two per feature: ConfigError at construction, not a broadcast error."""
    from vaekit.errors import ConfigError
    from vaekit.nets import NETS, Net

    class WideNet(Net):
        @classmethod
        def encoder(cls, config, out_dim):
            return MLP(config.input_dim, config.hidden, out_dim + (role == "encoder"), config.activation)

        @classmethod
        def decoder(cls, config, in_dim, widths=None):
            return MLP(in_dim, config.decoder_widths, config.input_dim * (1 + (role == "decoder")), config.activation)

    WideNet.__module__ = "user_script"
    NETS.register("wide_net")(WideNet)
    try:
        with pytest.raises(ConfigError, match=re.escape(message)):
            VAEModel(ModelConfig(input_dim=6, latent_dim=2, hidden=(5,), likelihood="bernoulli", net="wide_net"))
        # A family that builds its networks right passes, and the check leaves them in train mode.
        model = VAEModel(ModelConfig(input_dim=6, latent_dim=2, hidden=(5,), likelihood="bernoulli", net="mlp"))
        assert all(m.training for m in model.modules())
    finally:
        NETS._entries.pop("wide_net", None)
        NETS._outside.pop("wide_net", None)


@pytest.mark.parametrize("kind", ["staticmethod", "function"])
def test_a_family_may_build_with_static_methods_or_plain_functions(kind):
    from vaekit.nets import NETS, Net

    def encoder(config, out_dim):
        return MLP(config.input_dim, config.hidden, out_dim, config.activation)

    def decoder(config, in_dim, widths=None):
        return MLP(in_dim, config.decoder_widths, config.input_dim, config.activation)

    wrap = staticmethod if kind == "staticmethod" else (lambda f: f)
    family = type("StaticNet", (Net,), {"__module__": "user_script", "encoder": wrap(encoder), "decoder": wrap(decoder)})
    NETS.register("static_net")(family)
    try:
        model = VAEModel(ModelConfig(input_dim=6, latent_dim=2, hidden=(5,), likelihood="bernoulli", net="static_net"))
        assert model.decode(torch.zeros(2, 2)).mean.shape == (2, 6)
    finally:
        NETS._entries.pop("static_net", None)
        NETS._outside.pop("static_net", None)


def test_the_configs_activation_names_are_the_networks():
    """config.ACTIVATIONS (read without torch, for --help) names exactly the modules the nets build."""
    from vaekit.config import ACTIVATIONS as NAMES
    from vaekit.nets import ACTIVATIONS as MODULES

    assert set(NAMES) == set(MODULES)
