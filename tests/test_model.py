"""VAEModel's generative nets between stochastic layers: p(z_l | z_{l+1}) takes the decoder's
net family (or --downward's), and runs saved before that choice existed load unchanged."""

from __future__ import annotations

import json
import re

import pytest
import torch

from config_helpers import as_version

from vaekit.checkpoint import load_run, save_model
from vaekit.config import CONFIG_VERSION, ModelConfig, RunConfig
from vaekit.errors import ConfigError
from vaekit.model import VAEModel
from vaekit.nets import MLP
from vaekit.nets.gated import GatedMLP
from vaekit.objectives import elbo


def _hierarchy(**kw) -> ModelConfig:
    return ModelConfig(**{"input_dim": 6, "latent_dim": (4, 2), "hidden": (8,), **kw})


@pytest.mark.parametrize(
    "kw, family",
    [
        ({"net": "gated"}, GatedMLP),  # Tomczak & Welling's two-layer model: gated p(z1|z2)
        ({"net": "mlp"}, MLP),
        ({"net": "gated", "decoder": "mlp"}, MLP),  # the decoder's family, not the encoder's
        ({"net": "mlp", "decoder": "gated"}, GatedMLP),
        ({"net": "gated", "downward": "mlp"}, MLP),
        ({"net": "mlp", "downward": "gated"}, GatedMLP),
    ],
)
def test_downward_net_is_the_decoders_family_unless_given(kw, family):
    config = _hierarchy(**kw)
    model = VAEModel(config)
    (head,) = model.downward
    assert type(head.net) is family
    assert config.downward_net == {MLP: "mlp", GatedMLP: "gated"}[family]
    # The encoder's widths, then (μ, log σ²) of z1 from z2, on any leading dims.
    linears = [m for m in head.net.modules() if isinstance(m, torch.nn.Linear)]
    assert (linears[0].in_features, linears[0].out_features) == (2, 8)
    assert (linears[-1].in_features, linears[-1].out_features) == (8, 2 * 4)
    mu, logvar = head(torch.randn(5, 3, 2))
    assert mu.shape == logvar.shape == (5, 3, 4)


@pytest.mark.parametrize("inference", ["amortized", "topdown", "ladder"])
def test_gated_downward_learns_under_every_hierarchical_inference(inference):
    """The ELBO's gradient reaches the gated p(z1|z2) under bottom-up, top-down and ladder q
    (the ladder also reads the downward nets inside q)."""
    torch.manual_seed(0)
    model = VAEModel(_hierarchy(net="gated", inference=inference))
    x = torch.rand(7, 6).round()
    loss = -elbo(model, x, eps=torch.randn(1, 7, model.noise_size)).elbo.mean()
    loss.backward()
    grads = [p.grad for p in model.downward.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_downward_on_one_layer_is_refused():
    with pytest.raises(ConfigError, match=re.escape("downward applies to models with several latent groups")):
        ModelConfig(input_dim=6, latent_dim=5, downward="gated")
    with pytest.raises(ConfigError, match="downward must be one of"):
        _hierarchy(downward="nope")


@pytest.mark.parametrize("layers", [(4, 2), 5])
def test_version_4_run_loads_with_its_mlp_downward_net(tmp_path, layers):
    """Before version 5 p(z_l | z_{l+1}) was an MLP of the encoder's widths and activation
    whatever the net family: such a run (here gated, tanh) loads with downward "mlp", its
    weights in place and its densities unchanged. A one-layer run gets no downward net."""
    torch.manual_seed(3)
    config = RunConfig(model=ModelConfig(input_dim=6, latent_dim=layers, hidden=(8,), net="gated", activation="tanh",
                                         downward="mlp" if layers != 5 else None))  # fmt: skip
    model = VAEModel(config.model)
    save_model(tmp_path, model, config)
    old = json.loads((tmp_path / "config.json").read_text())
    as_version(old, 4)
    assert "downward" not in old["model"]
    (tmp_path / "config.json").write_text(json.dumps(old))

    loaded_config, loaded = load_run(tmp_path)
    assert loaded_config.version == CONFIG_VERSION == 10
    assert loaded_config.model.downward == ("mlp" if layers != 5 else None)
    z = torch.randn(4, model.latent_size)
    with torch.no_grad():
        assert torch.equal(loaded.log_pz(z), model.eval().log_pz(z))
    if layers != 5:
        assert isinstance(loaded.downward[0].net, MLP)
        assert isinstance(loaded.downward[0].net[1], torch.nn.Tanh)


def _weighted_layers(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d))]


@pytest.mark.parametrize("net", ["gated", "conv"])
def test_he_init_draws_every_weight_from_n_0_2_over_fan_in(net):
    """init="he": each weight tensor's spread is √(2/fan_in) (fan_in = inputs × kernel area),
    against √(1/(3·fan_in)) for PyTorch's default; the biases are the default's, untouched."""
    kw = {"input_dim": 784, "latent_dim": (40, 20), "hidden": (64, 32) if net == "conv" else (300, 300), "net": net,
          "inference": "topdown", "decoder_input": "all", "image_shape": (28, 28)}  # fmt: skip
    torch.manual_seed(0)
    default = VAEModel(ModelConfig(**kw))
    torch.manual_seed(0)
    he = VAEModel(ModelConfig(**kw, init="he"))
    checked = 0
    for (name, a), (_, b) in zip(_weighted_layers(default), _weighted_layers(he)):
        w = b.weight
        fan_in = w.shape[1] * w[0, 0].numel() if not isinstance(b, torch.nn.ConvTranspose2d) else w[0].numel()
        if w.numel() >= 5000:  # enough draws for the sample spread to be within 5%
            assert float(w.detach().std()) == pytest.approx((2 / fan_in) ** 0.5, rel=0.05), name
            assert float(a.weight.detach().std()) == pytest.approx((1 / (3 * fan_in)) ** 0.5, rel=0.05), name
            checked += 1
        if a.bias is not None:
            assert torch.equal(a.bias, b.bias), name
    assert checked >= 4
    assert any(isinstance(m, torch.nn.Conv2d) for _, m in _weighted_layers(he)) == (net == "conv")


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"latent_dim": 5, "inference": "topdown", "decoder_input": "all"}, "join branch applies to networks that read several inputs"),
        ({"inference": "amortized", "decoder_input": "bottom"}, "decoder_input bottom, inference amortized"),
        ({"inference": "topdown", "hidden": ()}, "join branch needs hidden layers"),
        ({"decoder_input": "all", "decoder_hidden": ()}, "join branch needs hidden layers"),
    ],
)
def test_join_branch_is_refused_where_nothing_reads_several_inputs(kw, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _hierarchy(join="branch", **kw)
    with pytest.raises(ConfigError, match="join must be one of"):
        _hierarchy(join="nope")


def _linears(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)]


@pytest.mark.parametrize("net", ["mlp", "gated", "conv"])
def test_join_branch_decoder_is_as_deep_as_the_concat_one(net):
    """The branch decoder splits its first hidden layer per group (z1 → 6, z2 → 6) and keeps
    the rest of the decoder on the joined 12 numbers, as deep as concat's, for every family;
    runs saved without the option load as concat."""
    kw = {"input_dim": 64, "latent_dim": (4, 2), "hidden": (8, 6), "net": net, "decoder_input": "all",
          "image_shape": (8, 8)}  # fmt: skip
    concat, branch = VAEModel(ModelConfig(**kw)), VAEModel(ModelConfig(**kw, join="branch"))
    first = _linears(concat.decoder)[0]
    assert (first.in_features, first.out_features) == (6, 6)  # decoder widths (6, 8)
    sizes = [(_linears(b)[0].in_features, _linears(b)[0].out_features) for b in branch.decoder.branches]
    assert sizes == [(4, 6), (2, 6)]
    assert _linears(branch.decoder.trunk)[0].in_features == 12
    # The trunk is concat's decoder after its first layer: the same widths from there on.
    gates = 2 if net == "gated" else 1  # a gated layer holds two linear maps
    outs = lambda m: [l.out_features for l in _linears(m)]  # noqa: E731
    assert outs(branch.decoder.trunk) == outs(concat.decoder)[gates:]
    z = torch.randn(3, 6)
    assert branch.decode(z).logits.shape == concat.decode(z).logits.shape == (3, 64)
    config = RunConfig(model=ModelConfig(**kw)).to_dict()
    del config["model"]["join"]
    as_version(config, 5)  # written before join existed: the layout those runs had
    assert RunConfig.from_dict(config).model.join == "concat"


@pytest.mark.parametrize("kw", [
    dict(inference="vi", local_steps=3),
    dict(inference="map"),
    dict(inference="autoencoder"),
    dict(inference="amortized", refine_steps=4, prior="vampprior", pseudo_inputs=5),
])
def test_methods_that_fit_q_for_new_rows_work_under_inference_mode(kw):
    """Inference mode cannot be undone by enable_grad: the per-row fits run outside it and give
    what they give under no_grad, and the caller's grad mode is left as it was."""
    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=6, latent_dim=2, hidden=(5,), likelihood="bernoulli", n_points=8, **kw))
    x = torch.bernoulli(torch.full((3, 6), 0.5))
    with torch.no_grad(), model.fixed_prior():
        want = model.evaluation_posterior(x).mean, model.representation(x).mean
    with torch.inference_mode():
        x_inf = x.clone()
        with model.fixed_prior():
            got = model.evaluation_posterior(x_inf).mean, model.representation(x_inf).mean
        assert torch.is_inference_mode_enabled() and not torch.is_grad_enabled()
    for a, b in zip(want, got):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("kw", [
    dict(inference="vi", local_steps=3),
    dict(inference="map"),
    dict(inference="vi", local_steps=3, latent_dim=(3, 2)),
    dict(inference="amortized", refine_steps=4),
])
def test_the_objectives_of_per_point_methods_work_under_inference_mode(kw):
    """elbo(model, x) and model.posterior(x) fit q for new rows by gradients: under the
    caller's inference mode they give what they give under no_grad."""
    from vaekit.objectives import elbo

    kw = {"latent_dim": 2, **kw}
    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=6, hidden=(5,), likelihood="bernoulli", n_points=8, **kw))
    x = torch.bernoulli(torch.full((3, 6), 0.5))
    results = []
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            torch.manual_seed(1)
            results.append((elbo(model, x.clone()), model.posterior(x.clone()).mean, model.training_posteriors(x.clone())[-1].mean))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
