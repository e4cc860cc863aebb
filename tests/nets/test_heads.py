"""vaekit.nets.layers.GaussianHead: (μ, log σ²) halves of a network's output, and the optional
hardtanh bounds on log σ² (logvar_min / logvar_max) of Tomczak & Welling (2018)'s code, in
every head a model has: q(z|x) of each inference method and p(z_l | z_{l+1})."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import vaekit
from vaekit.config import ModelConfig
from vaekit.errors import ConfigError
from vaekit.model import VAEModel
from vaekit.nets import GaussianHead
from cli_helpers import cli


def _wide_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Linear(3, 8)
    nn.init.normal_(net.weight, std=10.0)  # log σ² far beyond [−6, 2] for most inputs
    return net


def test_unbounded_head_splits_the_output_in_halves():
    net = _wide_net()
    x = torch.randn(5, 3)
    mu, logvar = GaussianHead(net)(x)
    out = net(x)
    torch.testing.assert_close(mu, out[:, :4], rtol=0, atol=0)
    torch.testing.assert_close(logvar, out[:, 4:], rtol=0, atol=0)


def test_bounds_are_a_hardtanh_on_log_var_only():
    net = _wide_net()
    x = torch.randn(64, 3, requires_grad=True)
    mu, logvar = GaussianHead(net, -6.0, 2.0)(x)
    out = net(x)
    torch.testing.assert_close(mu, out[:, :4], rtol=0, atol=0)
    reference = nn.functional.hardtanh(out[:, 4:], -6.0, 2.0)
    torch.testing.assert_close(logvar, reference, rtol=0, atol=0)
    assert (out[:, 4:] < -6).any() and (out[:, 4:] > 2).any()  # both bounds are reached
    # The gradient is hardtanh's: the raw value's where it lies inside, zero outside.
    g = torch.randn_like(logvar)
    (got,) = torch.autograd.grad((logvar * g).sum(), x)
    (want,) = torch.autograd.grad((reference * g).sum(), x)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("lo, hi", [(-1.0, None), (None, 0.5)])
def test_one_sided_bounds(lo, hi):
    net = _wide_net(1)
    _, logvar = GaussianHead(net, lo, hi)(torch.randn(64, 3))
    if lo is not None:
        assert logvar.min() == lo
    if hi is not None:
        assert logvar.max() == hi


def _extreme_model(**kw) -> VAEModel:
    config = ModelConfig(input_dim=6, hidden=(5,), logvar_min=-6.0, logvar_max=2.0, **kw)
    torch.manual_seed(0)
    model = VAEModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(50.0)  # every head's raw log σ² far outside [−6, 2]
    return model


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"latent_dim": (3, 2)},
        {"latent_dim": (3, 2), "inference": "topdown", "decoder_input": "all"},
        {"latent_dim": (3, 2), "inference": "ladder"},
        {"latent_dim": (3, 2), "inference": "vi", "n_points": 4},
    ],
    ids=["amortized", "bottom-up", "topdown", "ladder", "vi-hierarchy"],
)
def test_every_head_of_a_model_is_bounded(kw):
    model = _extreme_model(**kw)
    heads = [m for m in model.modules() if isinstance(m, GaussianHead)]
    assert heads and all((h.logvar_min, h.logvar_max) == (-6.0, 2.0) for h in heads)
    seen = []
    for h in heads:
        h.register_forward_hook(lambda _m, _in, out: seen.append(out[1]))
    x = torch.rand(32, 6)
    q = model.posterior(x, torch.arange(4).repeat(8))
    z = q.rsample() if kw.get("inference") == "vi" else q.reparameterize(torch.randn(32, q.event_shape[0]))
    model.log_pz(z)  # p(z_l | z_{l+1}) of a hierarchy
    assert len(seen) >= len(heads)
    for logvar in seen:
        assert logvar.min() >= -6.0 and logvar.max() <= 2.0
    assert min(v.min() for v in seen) == -6.0 and max(v.max() for v in seen) == 2.0  # the bounds bind
    if kw.get("inference") in (None, "topdown"):
        # q's own log σ² is a head's output there (the ladder's combines a head with p(z_l|z_{l+1})).
        logvar = q.params()["logvar"]
        assert logvar.min() >= -6.0 and logvar.max() <= 2.0


def test_bounds_must_be_ordered_and_need_a_head():
    with pytest.raises(ConfigError, match="logvar_min must be below logvar_max"):
        ModelConfig(input_dim=4, logvar_min=2.0, logvar_max=-6.0)
    with pytest.raises(ConfigError, match="logvar_max must be a finite number"):
        ModelConfig(input_dim=4, logvar_max=float("nan"))
    # A per-point q holds log σ² as free parameters: with one layer there is no head to bound.
    with pytest.raises(ConfigError, match="logvar_min applies to the log σ² of a network's Gaussian head"):
        ModelConfig(input_dim=4, inference="vi", n_points=3, logvar_min=-6.0)
    ModelConfig(input_dim=4, inference="vi", n_points=3, latent_dim=(2, 2), logvar_min=-6.0)  # p(z1|z2) has one


def test_numpy_scalars_are_numbers():
    config = ModelConfig(input_dim=4, logvar_min=np.float32(-3), logvar_max=np.int64(2))
    assert (config.logvar_min, config.logvar_max) == (-3.0, 2.0)
    assert type(config.logvar_min) is float and type(config.logvar_max) is float
    with pytest.raises(ConfigError, match="logvar_max must be a finite number"):
        ModelConfig(input_dim=4, logvar_max=np.bool_(True))


def test_cli_flags_are_saved_and_checked(tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--epochs", "1", "--eval-k", "5", "--hidden", "8", "--latent-dim", "2",
                       "--logvar-min", "-6", "--logvar-max", "2", "--out", tmp_path / "run")  # fmt: skip
    assert code == 0, err
    model = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert (model["logvar_min"], model["logvar_max"]) == (-6.0, 2.0)
    loaded = vaekit.load(tmp_path / "run")
    assert loaded.get_params()["logvar_min"] == -6.0
    code, _, err = cli(capsys, "train", "--epochs", "1", "--logvar-min", "1", "--logvar-max", "0", "--out", tmp_path / "bad")
    assert code != 0 and err.count("\n") == 1
    assert "--logvar-min must be below --logvar-max" in err
    assert not (tmp_path / "bad").exists()


def test_estimator_parameter_bounds_the_encoder():
    x = np.random.default_rng(0).random((120, 5)).astype(np.float32)
    vae = vaekit.VAE(latent_dim=2, hidden=(8,), epochs=1, logvar_min=-0.5, logvar_max=0.5, seed=0).fit(x)
    q = vae.model_.posterior(torch.as_tensor(x))
    logvar = q.params()["logvar"]
    assert logvar.min() >= -0.5 and logvar.max() <= 0.5
