"""Top-down inference that reads x at every layer (Tomczak & Welling 2018's two-layer models):
q against densities written with torch.distributions, the ELBO of p(z2) p(z1|z2) p(x|z1, z2)
against a direct Monte Carlo (standard and VampPrior top), the decoder that reads every group,
the VampPrior on a hierarchy, a linear-Gaussian hierarchy whose log p(x) is exact, and the CLI."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent, MixtureSameFamily, Normal

from vaekit.config import ModelConfig
from vaekit.errors import ConfigError
from vaekit.latents import TopDown
from vaekit.model import VAEModel
from vaekit.nets import GatedLinear
from vaekit.objectives import elbo, iwae

from hierarchy_helpers import fit_inference, linear_hierarchy, top_down_reference

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _topdown(sizes, seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"input_dim": 7, "hidden": (5,), "activation": "tanh", "inference": "topdown", **kw}
    model = VAEModel(ModelConfig(latent_dim=sizes, **kw)).to(F64)
    x = torch.bernoulli(torch.full((4, 7), 0.4, dtype=F64), generator=_gen(1))
    return model, x


def _normal(mu, logvar):
    return Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)


def _conditional(model, x, l, parent):
    """q(z_l | z_{l+1} = parent, x) by hand: the encoder's Gaussian for the top group (parent
    None), else the joint net on [h_l(x), z_{l+1}]."""
    inf = model.inference
    if parent is None:
        return _normal(*inf.encoder(x))
    h = inf.features[l](x)
    h = h.expand(*parent.shape[:-1], h.shape[-1])
    return _normal(*inf.joint[l](torch.cat([h, parent], -1)))


def _reference(model, x, eps):
    return top_down_reference(model, x, eps, _conditional)


@pytest.mark.parametrize("join, x_path", [("concat", "trunk"), ("branch", "trunk"), ("concat", "layer"), ("branch", "layer")])
@pytest.mark.parametrize("sizes", [(3, 2), (3, 2, 2)])
def test_draw_and_log_q_equal_the_hand_written_reference(sizes, join, x_path):
    model, x = _topdown(sizes, join=join, x_path=x_path)
    q = model.posterior(x)
    assert isinstance(q, TopDown) and q.noise_size == model.noise_size == sum(sizes)
    eps = torch.randn(3, 4, sum(sizes), generator=_gen(2), dtype=F64)
    z_ref, qs, zs = _reference(model, x, eps)
    torch.testing.assert_close(q.reparameterize(eps), z_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(q.log_prob(z_ref), sum(ql.log_prob(zl) for ql, zl in zip(qs, zs)), rtol=1e-12, atol=1e-12)
    by_group = q.log_prob_groups(z_ref, model.latents)
    for g, ql, zl in zip(model.latents, qs, zs):
        torch.testing.assert_close(by_group[g.name], ql.log_prob(zl), rtol=1e-12, atol=1e-12)
    # At a z that q did not draw: each conditional reads the given parent.
    z_any = torch.randn(2, 4, sum(sizes), generator=_gen(3), dtype=F64)
    ref_any = sum(
        _conditional(model, x, l, z_any[..., model.latents[l + 1].columns] if l + 1 < len(sizes) else None).log_prob(
            z_any[..., g.columns]
        )
        for l, g in enumerate(model.latents)
    )
    torch.testing.assert_close(q.log_prob(z_any), ref_any, rtol=1e-12, atol=1e-12)
    # The top group's q is the encoder's Gaussian of x alone.
    top = model.inference.top_posterior(model, x)
    torch.testing.assert_close(top.mu, q.params()["mu"][:, model.latents[-1].columns], rtol=0, atol=0)


def test_decoder_input_all_reads_every_group():
    """p(x|z1) ignores z2; p(x|z1, z2) does not, and its decoder takes both groups' columns."""
    z = torch.randn(5, 5, generator=_gen(4), dtype=F64)
    z_moved = z.clone()
    z_moved[:, 3:] += 1.0  # z2 only
    for reads, changes in (("bottom", False), ("all", True)):
        model, _ = _topdown((3, 2), decoder_input=reads)
        assert model.decoder[0].in_features == (5 if reads == "all" else 3)
        a, b = model.decode(z).logits, model.decode(z_moved).logits
        assert bool((a != b).any()) is changes


def _layer_by_hand(layer, v):
    """One hidden layer from its weights: the gated (W v + b) ⊙ σ(V v + c) of a GatedLinear,
    else tanh(W v + b) of a linear map (alone, or first in a (Linear, Tanh) block)."""
    if isinstance(layer, GatedLinear):
        return (v @ layer.linear.weight.T + layer.linear.bias) * torch.sigmoid(v @ layer.gate.weight.T + layer.gate.bias)
    linear = layer[0] if isinstance(layer, torch.nn.Sequential) else layer
    return torch.tanh(v @ linear.weight.T + linear.bias)


@pytest.mark.parametrize("net", ["mlp", "gated"])
def test_join_branch_reads_each_input_through_a_layer_of_its_own(net):
    """join="branch", as Tomczak & Welling's code: p(x|z1, z2) = trunk([a(z1), b(z2)]) with one
    hidden layer per group (the decoder's first, split), and q(z1|x, z2) from
    [h(x), c(z2)] through the joint net; both written out from the weights."""
    model, x = _topdown((3, 2), net=net, decoder_input="all", join="branch")
    z = torch.randn(4, 5, generator=_gen(11), dtype=F64)
    z1, z2 = z[:, :3], z[:, 3:]
    dec = model.decoder
    joined = torch.cat([_layer_by_hand(dec.branches[0], z1), _layer_by_hand(dec.branches[1], z2)], -1)
    (out,) = dec.trunk  # hidden (5,): the split first layer was the only one; the output map is left
    assert joined.shape == (4, 10) and out.in_features == 10
    torch.testing.assert_close(model.decode(z).logits, joined @ out.weight.T + out.bias, rtol=1e-12, atol=1e-12)
    # q(z1 | x, z2): x's features h(x) as they are, z2 through a layer of its own, then the joint net.
    joint = model.inference.joint[0].net
    assert isinstance(joint.branches[0], torch.nn.Identity)
    h = model.inference.features[0](x)
    c = _layer_by_hand(joint.branches[1], z2)
    hidden = _layer_by_hand(joint.trunk[0], torch.cat([h, c], -1))  # the joint net's one hidden layer
    last = joint.trunk[-1]
    mu, logvar = (hidden @ last.weight.T + last.bias).chunk(2, -1)
    q = model.posterior(x)
    torch.testing.assert_close(q.conditionals[0](z2), (mu, logvar), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("net", ["mlp", "gated"])
def test_x_path_layer_reads_raw_x_through_one_layer_of_the_family(net):
    """x_path="layer", as Tomczak & Welling's q(z1|x, z2): h(x) is one hidden layer of the net
    family on x itself, hidden[0] wide, whatever the encoder's depth; the default trunk is an
    encoder of the family (here two hidden layers, then hidden[-1] features)."""
    model, x = _topdown((3, 2), net=net, hidden=(6, 5), x_path="layer")
    (h,) = model.inference.features
    assert isinstance(h, GatedLinear) if net == "gated" else isinstance(h[0], torch.nn.Linear)
    torch.testing.assert_close(h(x), _layer_by_hand(h, x), rtol=1e-12, atol=1e-12)
    assert h(x).shape == (4, 6)
    # The joint net reads [h(x), z2]: 6 + 2 inputs, one hidden layer of hidden[-1] = 5 units.
    linears = [m for m in model.inference.joint[0].modules() if isinstance(m, torch.nn.Linear)]
    assert linears[0].in_features == 8 and linears[0].out_features == 5
    trunk, _ = _topdown((3, 2), net=net, hidden=(6, 5))
    assert sum(isinstance(m, torch.nn.Linear) for m in trunk.inference.features[0].modules()) == (5 if net == "gated" else 3)  # two gated layers (two maps each) or two hidden, then the output map
    assert trunk.inference.features[0](x).shape == (4, 5)


def test_x_path_layer_needs_hidden_layers_and_applies_to_topdown_only():
    with pytest.raises(ConfigError, match="x_path layer needs hidden layers"):
        _topdown((3, 2), hidden=(), x_path="layer")
    with pytest.raises(ConfigError, match="x_path applies to inference topdown"):
        _topdown((3, 2), inference="amortized", x_path="layer")
    with pytest.raises(ConfigError, match="x_path must be one of"):
        _topdown((3, 2), x_path="deep")


@pytest.mark.parametrize("join", ["concat", "branch"])
@pytest.mark.parametrize("prior", ["standard_normal", "vampprior"])
def test_elbo_is_the_direct_monte_carlo_of_log_p_minus_log_q(prior, join):
    """log p(x|z1, z2) + log p(z1|z2) + log p(z2) − log q(z1|z2, x) − log q(z2|x) on the same
    draws, every density a torch.distributions object; the VampPrior's p(z2) the mixture of
    the encoder's q(z2|u_k) at the clamped pseudo-inputs."""
    kw = {"prior": prior, "pseudo_inputs": 3} if prior == "vampprior" else {}
    model, x = _topdown((3, 2), decoder_input="all", join=join, **kw)
    eps = torch.randn(6, 4, 5, generator=_gen(5), dtype=F64)
    z, qs, (z1, z2) = _reference(model, x, eps)
    if prior == "vampprior":
        u = model.prior.pseudo_inputs.clamp(0, 1)
        mu_u, logvar_u = model.inference.encoder(u)
        pz2 = MixtureSameFamily(Categorical(logits=torch.zeros(3, dtype=F64)), _normal(mu_u, logvar_u))
    else:
        pz2 = _normal(torch.zeros_like(z2), torch.zeros_like(z2))
    log_p = (
        Independent(Bernoulli(logits=model.decoder(torch.cat([z1, z2], -1))), 1).log_prob(x)
        + _normal(*model.downward[0](z2)).log_prob(z1)
        + pz2.log_prob(z2)
    )
    ref = (log_p - qs[0].log_prob(z1) - qs[1].log_prob(z2)).mean(0)
    torch.testing.assert_close(elbo(model, x, eps=eps).elbo, ref, rtol=1e-12, atol=1e-12)


def test_vampprior_on_a_hierarchy_needs_the_top_group_from_x():
    """Bottom-up q draws z2 from z1, so q(z2|u) is no Gaussian: refused with one line; topdown
    and ladder give q(z2|x) of x alone, and the pseudo-inputs then receive gradients."""
    kw = {"input_dim": 7, "latent_dim": (3, 2), "hidden": (5,), "prior": "vampprior", "pseudo_inputs": 4}
    with pytest.raises(ConfigError, match="needs q\\(z_L\\|x\\) of x alone.*topdown or ladder"):
        ModelConfig(inference="amortized", **kw)
    x = torch.bernoulli(torch.full((6, 7), 0.4), generator=_gen(6))
    for method in ("topdown", "ladder"):
        torch.manual_seed(0)
        model = VAEModel(ModelConfig(inference=method, **kw))
        model.prior.pseudo_inputs.data.uniform_(0.2, 0.8)  # inside the clamp, so gradients pass
        top = model.prior(model)
        q = model.posterior(model.prior.pseudo_inputs)
        torch.testing.assert_close(top.mu, q.params()["mu"][:, 3:], rtol=1e-6, atol=1e-6)
        (-elbo(model, x, eps=torch.randn(2, 6, 5, generator=_gen(7))).elbo.mean()).backward()
        assert model.prior.pseudo_inputs.grad is not None and model.prior.pseudo_inputs.grad.abs().sum() > 0


@pytest.mark.parametrize("method", ["topdown", "ladder"])
def test_one_group_is_refused_as_the_amortized_encoder_it_would_be(method):
    """With one latent group there is nothing above to condition on or weight with: the
    top-down and ladder methods would be the plain encoder, so the config is refused."""
    from vaekit.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"inference {method} applies to models with several latent groups .* it is inference amortized"):
        ModelConfig(input_dim=7, latent_dim=3, hidden=(5,), inference=method)


def test_iwae_with_the_fitted_q_converges_to_the_exact_log_px():
    """The exact linear-Gaussian hierarchy with linear top-down q nets, fitted with θ fixed:
    the K-sample estimate rises toward the exact log p(x) with K (the K = 10000 error is about
    0.006 nats here, asserted below 0.05), and the ELBO gap closes from about 123 nats to 0.14
    (q(z2|x) is diagonal, p(z2|x) is not, so it stays > 0)."""
    with torch.random.fork_rng():
        model, marginal = linear_hierarchy(inference="topdown")
        # The default start of two chained linear maps gives log-variances of tens, hence
        # z2 of e^35 and gaps of 1e32 that Adam climbs down from slowly: start small.
        with torch.no_grad():
            for p in model.inference.parameters():
                p.mul_(0.1)
        x = marginal.sample((32,))
        fit_inference(model, x)
    exact = marginal.log_prob(x)
    with torch.no_grad():
        gap = float((exact - elbo(model, x, eps=torch.randn(2000, 32, 5, generator=_gen(9), dtype=F64)).elbo).mean())
        x = x[:8]
        err = {k: float((marginal.log_prob(x) - iwae(model, x, k, q=model.posterior(x), generator=_gen(k))).abs().mean())
               for k in (1, 100, 10000)}  # fmt: skip
    assert 0 < gap < 0.5, gap
    assert err[1] > err[100] > err[10000], err
    assert err[10000] < 0.05, err


def test_tomczak_welling_two_layer_vampprior_through_the_cli(tmp_path, capsys):
    """The hvae-vampprior row's model, small: trains, resumes bit for bit, and saves its
    pseudo-inputs, top-down nets and gated p(z1|z2)."""
    from cli_helpers import assert_resume_equals_straight

    common = ["--data", "digits", "--inference", "topdown", "--decoder-input", "all", "--latent-dim", "6,3",
              "--prior", "vampprior", "--pseudo-inputs", "5", "--net", "gated", "--hidden", "16", "--eval-k", "5",
              "--seed", "1"]  # fmt: skip
    a = assert_resume_equals_straight(tmp_path, common)
    assert a["model.prior.pseudo_inputs"].shape == (5, 64)
    assert any(k.startswith("model.inference.joint") for k in a)
    assert a["model.downward.0.net.0.gate.weight"].shape == (16, 3)


def test_join_branch_through_the_cli(tmp_path):
    """--join branch: trains, resumes bit for bit, and its branch layers are saved and loaded
    (a gated layer per group in p(x|z1, z2), one for z2 in q(z1|x, z2))."""
    from cli_helpers import assert_resume_equals_straight

    common = ["--data", "digits", "--inference", "topdown", "--decoder-input", "all", "--latent-dim", "6,3",
              "--net", "gated", "--hidden", "16,12", "--join", "branch", "--eval-k", "5", "--seed", "2"]  # fmt: skip
    a = assert_resume_equals_straight(tmp_path, common)
    # The decoder's widths are the encoder's reversed, (12, 16): its first layer split per group.
    assert a["model.decoder.branches.0.gate.weight"].shape == (12, 6)
    assert a["model.decoder.branches.1.gate.weight"].shape == (12, 3)
    assert a["model.decoder.trunk.0.gate.weight"].shape == (16, 24)
    assert a["model.inference.joint.0.net.branches.1.gate.weight"].shape == (12, 3)


def test_x_path_layer_through_the_cli(tmp_path):
    """--x-path layer with --join branch, Tomczak & Welling's q(z1|x, z2) whole: trains, resumes
    bit for bit, and its one gated layer of x is saved and loaded."""
    from cli_helpers import assert_resume_equals_straight

    common = ["--data", "digits", "--inference", "topdown", "--decoder-input", "all", "--latent-dim", "6,3",
              "--net", "gated", "--hidden", "16,12", "--join", "branch", "--x-path", "layer", "--eval-k", "5",
              "--seed", "3"]  # fmt: skip
    a = assert_resume_equals_straight(tmp_path, common)
    assert a["model.inference.features.0.gate.weight"].shape == (16, 64)
    assert not any(k.startswith("model.inference.features.0.0") for k in a)
    assert a["model.inference.joint.0.net.trunk.0.gate.weight"].shape == (12, 16 + 12)


@pytest.mark.parametrize(
    "argv, culprits",
    [
        (["--join", "nope"], ["join", "nope"]),
        (["--join", "branch"], ["join branch", "latent_dim"]),
        (["--join", "branch", "--latent-dim", "4,2"], ["join branch", "decoder_input bottom"]),
        (["--join", "branch", "--latent-dim", "4,2", "--inference", "topdown", "--hidden", ""], ["hidden layers"]),
        (["--x-path", "layer", "--latent-dim", "4,2"], ["--x-path", "inference topdown"]),
        (["--x-path", "layer", "--latent-dim", "4,2", "--inference", "topdown", "--hidden", ""], ["--x-path layer", "--hidden layers"]),
        (["--x-path", "wide", "--latent-dim", "4,2", "--inference", "topdown"], ["x-path", "wide"]),
    ],
)
def test_join_bad_uses_are_one_line_usage_errors(capsys, tmp_path, argv, culprits):
    from cli_helpers import assert_train_refused

    assert_train_refused(capsys, tmp_path, argv, culprits)
