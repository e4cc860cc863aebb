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
    # floor + e^(−50 − floor − 1) = floor + 7e-17: σ² = 1e-6 to float64 rounding.
    torch.testing.assert_close(px.variance, torch.full((2, D), 1e-6, dtype=F64), rtol=1e-12, atol=0)
    assert math.isclose(MIN_LOGVAR, math.log(1e-6))
    # Above the floor the learned value is used unchanged.
    with torch.no_grad():
        lik.logvar.fill_(-2.0)
    torch.testing.assert_close(lik(torch.zeros(2, D, dtype=F64)).variance, torch.full((2, D), math.exp(-2.0), dtype=F64))


# Raw log σ² from far below the floor to far above it, the join floor + 1 included.
RAW = [-200.0, -50.0, -20.0, MIN_LOGVAR - 1, MIN_LOGVAR, MIN_LOGVAR + 0.5, MIN_LOGVAR + 1, -10.0, -2.0, 0.0, 3.0]


@pytest.mark.parametrize("variance", ["shared", "feature"])
def test_gaussian_logvar_floor_is_smooth(variance):
    """The floor never stops the gradient (a clamp's is 0 below it): at every raw value the
    derivative of log N(x; μ, σ²) with respect to the raw parameter is the closed form
    ∂ log N/∂ log σ² · ∂ log σ²/∂ raw, with ∂ log σ²/∂ raw = e^(raw − floor − 1) below the join
    floor + 1 and 1 above it, and nonzero; log σ² ≥ floor, and equals raw above the join."""
    lik = build("gaussian", variance=variance)
    g = _gen(2)
    mean, x = torch.randn(4, D, generator=g, dtype=F64), torch.randn(4, D, generator=g, dtype=F64)
    for raw in RAW:
        with torch.no_grad():
            lik.logvar.fill_(raw)
        lik.zero_grad()
        px = lik(mean)
        px.log_prob(x).sum().backward()
        logvar = px.logvar.expand(4, D).detach()
        assert (logvar >= MIN_LOGVAR).all()
        if raw >= MIN_LOGVAR + 1:
            assert torch.equal(logvar, torch.full_like(logvar, raw))  # exactly the stored value
            slope = 1.0
        else:
            torch.testing.assert_close(logvar, torch.full_like(logvar, MIN_LOGVAR + math.exp(raw - MIN_LOGVAR - 1)), **TIGHT)
            slope = math.exp(raw - MIN_LOGVAR - 1)
        # ∂/∂ log σ² of Σ log N(x; μ, σ²) = Σ ½((x − μ)²/σ² − 1), from the Normal density as written.
        d_logvar = 0.5 * ((x - mean) ** 2 / logvar.exp() - 1)  # (4, D)
        expected = (d_logvar.sum() if variance == "shared" else d_logvar.sum(0)) * slope
        torch.testing.assert_close(lik.logvar.grad, expected.reshape(lik.logvar.shape), rtol=1e-10, atol=0)
        assert (lik.logvar.grad != 0).all(), raw
    # Continuous with its first derivative at the join: central float64 finite differences of
    # log σ² just below, at and just above it are all 1 (e^(±h) = 1 ± h: error ≲ h).
    def effective(raw: float) -> float:
        with torch.no_grad():
            lik.logvar.fill_(raw)
            return float(lik(mean).logvar.flatten()[0])

    h, join = 1e-4, MIN_LOGVAR + 1
    for at in (join - 2 * h, join, join + 2 * h):
        assert abs((effective(at + h) - effective(at - h)) / (2 * h) - 1) < 3 * h, at


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


@pytest.mark.parametrize("std", [1.0, 1e-2, 1e-4])
def test_fixed_gaussian_variance_is_fixed_std_squared_even_below_the_learned_floor(std):
    """A fixed σ is the user's, not a learned one: the floor on learned variances leaves it alone."""
    lik = LIKELIHOODS.get("gaussian")(ModelConfig(input_dim=3, latent_dim=2, likelihood="gaussian", variance="fixed", fixed_std=std))
    mean, x = torch.zeros(5, 3, dtype=F64), 1e-4 * torch.randn(5, 3, dtype=F64)
    ref = Independent(Normal(mean, std), 1).log_prob(x)
    torch.testing.assert_close(lik.double()(mean).log_prob(x), ref, rtol=1e-6, atol=1e-6)


def test_a_fixed_std_float32_cannot_hold_is_refused():
    """σ² and 1/σ² must be finite in float32 where the densities bound log σ²
    (distributions.logvar_floor and logvar_ceiling): beyond that the model computed would be
    another one, with σ clamped. The ends themselves are kept exactly."""
    import torch

    from vaekit.distributions import logvar_ceiling, logvar_floor
    from vaekit.errors import ConfigError

    low, high = math.exp(logvar_floor(torch.float32) / 2), math.exp(logvar_ceiling(torch.float32) / 2)
    for std in (low * 1.001, 1.0, high * 0.999):
        config = ModelConfig(input_dim=3, latent_dim=2, likelihood="gaussian", variance="fixed", fixed_std=std)
        lik = LIKELIHOODS.get("gaussian")(config)
        assert float(lik(torch.zeros(1, 3)).logvar) == pytest.approx(2 * math.log(std), rel=1e-6)
    for std in (low / 2, high * 2, 1e20, 1e-30):
        with pytest.raises(ConfigError, match=r"^fixed_std must lie within 8.94e-20 to 3.34e\+09, where float32 holds σ² and 1/σ²; got "):
            ModelConfig(input_dim=3, latent_dim=2, likelihood="gaussian", variance="fixed", fixed_std=std)
    # the range binds only where σ is fixed
    ModelConfig(input_dim=3, latent_dim=2, likelihood="gaussian", variance="shared", fixed_std=1e20)
