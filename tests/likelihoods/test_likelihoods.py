"""Every registered likelihood, built from a ModelConfig through the registry."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, ContinuousBernoulli, Independent, Normal

from vaekit.config import ModelConfig
from vaekit.errors import DataError
from vaekit.likelihoods import LIKELIHOODS, choose
from vaekit.likelihoods.gaussian import MIN_LOGVAR

F64 = torch.float64
D = 5
# float64 densities of 5 terms of size O(10): 1e-10 is far above rounding, far below any wrong term.
TIGHT = dict(rtol=1e-10, atol=1e-10)


def build(name: str, **kw):
    config = ModelConfig(input_dim=D, latent_dim=2, hidden=(), likelihood=name, **kw)
    return LIKELIHOODS.get(name)(config).to(F64)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_registry_names():
    assert {"bernoulli", "continuous_bernoulli", "gaussian"} <= set(LIKELIHOODS.names())
    for name in LIKELIHOODS.names():
        assert LIKELIHOODS.get(name).name == name


@pytest.mark.parametrize("variance", ["fixed", "shared", "feature"])
def test_gaussian_log_prob_matches_torch(variance):
    lik = build("gaussian", variance=variance, fixed_std=0.5)
    if variance != "fixed":
        with torch.no_grad():  # a non-trivial learned σ² (one value, or one per feature)
            lik.logvar.copy_(torch.linspace(-1.0, 0.8, lik.logvar.numel(), dtype=F64))
    g = _gen(0)
    mean = torch.randn(3, 4, D, generator=g, dtype=F64)  # (S, n, D) decoder output
    x = torch.randn(4, D, generator=g, dtype=F64)
    std = torch.exp(0.5 * lik.logvar).expand(D)
    if variance == "fixed":
        # The buffer is made in float32 (the default dtype) before the module is cast to float64,
        # so log σ² = 2 log 0.5 carries float32 rounding: relative error ≤ ~1e-7.
        torch.testing.assert_close(std, torch.full((D,), 0.5, dtype=F64), rtol=1e-7, atol=0)
    ref = Independent(Normal(mean, std), 1)
    px = lik(mean)
    assert px.log_prob(x).shape == (3, 4)
    torch.testing.assert_close(px.log_prob(x), ref.log_prob(x), **TIGHT)
    torch.testing.assert_close(px.mean, mean, **TIGHT)


@pytest.mark.parametrize("variance, n_learned", [("fixed", 0), ("shared", 1), ("feature", D)])
def test_gaussian_parameter_count(variance, n_learned):
    lik = build("gaussian", variance=variance, fixed_std=0.5)
    assert sum(p.numel() for p in lik.parameters()) == n_learned
    if variance == "fixed":
        assert "logvar" in dict(lik.named_buffers())
        assert "logvar" in lik.state_dict()  # saved with the model even though it is not learned


@pytest.mark.parametrize("variance", ["shared", "feature"])
def test_gaussian_learned_logvar_floor(variance):
    lik = build("gaussian", variance=variance)
    with torch.no_grad():
        lik.logvar.fill_(-50.0)  # far below the floor log(1e-6) ≈ −13.8
    px = lik(torch.zeros(2, D, dtype=F64))
    torch.testing.assert_close(px.variance, torch.full((2, D), 1e-6, dtype=F64), rtol=1e-12, atol=0)
    assert math.isclose(MIN_LOGVAR, math.log(1e-6))
    # Above the floor the learned value is used unchanged.
    with torch.no_grad():
        lik.logvar.fill_(-2.0)
    torch.testing.assert_close(lik(torch.zeros(2, D, dtype=F64)).variance, torch.full((2, D), math.exp(-2.0), dtype=F64))


def test_bernoulli_and_continuous_bernoulli_match_torch():
    g = _gen(1)
    logits = 2 * torch.randn(4, D, generator=g, dtype=F64)
    xb = torch.bernoulli(torch.full((4, D), 0.5, dtype=F64), generator=g)
    xc = torch.rand(4, D, generator=g, dtype=F64)
    torch.testing.assert_close(
        build("bernoulli")(logits).log_prob(xb), Independent(Bernoulli(logits=logits), 1).log_prob(xb), **TIGHT
    )
    torch.testing.assert_close(
        build("continuous_bernoulli")(logits).log_prob(xc),
        Independent(ContinuousBernoulli(logits=logits), 1).log_prob(xc),
        **TIGHT,
    )


@pytest.mark.parametrize(
    "name, bad",
    [("bernoulli", 0.5), ("bernoulli", -1.0), ("bernoulli", 2.0), ("continuous_bernoulli", 1.2), ("continuous_bernoulli", -0.1)],
)
def test_check_rejects_out_of_support(name, bad):
    x = np.array([[0.0, 1.0, bad], [1.0, 0.0, 0.0]])
    lik = build(name)
    with pytest.raises(DataError, match=name) as info:
        lik.check(x, what="train.npy")
    msg = str(info.value)
    assert "train.npy" in msg and f"{bad:g}" in msg


@pytest.mark.parametrize(
    "name, good",
    [
        ("bernoulli", [[0.0, 1.0], [1.0, 1.0]]),
        ("continuous_bernoulli", [[0.0, 1.0], [0.5, 0.999]]),
        ("gaussian", [[-1e6, 3.2], [0.5, 1e6]]),
    ],
)
def test_check_accepts_support(name, good):
    build(name).check(np.array(good))


def test_choose():
    assert choose(np.array([[0, 1], [1, 0]], dtype=np.float32)) == "bernoulli"
    assert choose(np.array([[0.0, 1.0], [0.5, 0.2]])) == "continuous_bernoulli"
    assert choose(np.array([[0.0, 1.0], [1.0, 1.2]])) == "gaussian"
    assert choose(np.array([[-0.1, 0.5]])) == "gaussian"
    assert choose(np.array([[0, 0], [0, 0]])) == "bernoulli"
    for x in ([[0, 1]], [[0.5, 1.0]], [[3.0, -2.0]]):
        name = choose(np.array(x))
        build(name).check(np.array(x))  # the chosen likelihood accepts the data it was chosen for
