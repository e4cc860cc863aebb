"""vaekit.exact: the linear-Gaussian model's evidence, posterior, ELBO and gap in closed form,
each held against an independent reference (torch.distributions, the Monte Carlo objectives,
a model set to its exact posterior)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from vaekit.config import ModelConfig
from vaekit.errors import ConfigError
from vaekit.exact import LinearGaussian
from vaekit.model import VAEModel
from vaekit.objectives import elbo, iwae

from cli_helpers import cli
from hierarchy_helpers import set_exact_linear_gaussian

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _factor_analysis(seed=0, variance="feature", dtype=F64, **kw):
    """A one-layer linear-Gaussian model with random weights, per-feature σ² and an encoder
    moved off its initial values, so that q is some diagonal Gaussian, not a special one."""
    torch.manual_seed(seed)
    model = VAEModel(ModelConfig(input_dim=6, latent_dim=3, hidden=(), likelihood="gaussian", variance=variance, **kw)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=_gen(seed + 1), dtype=F64).to(dtype))
    x = torch.randn(7, 6, generator=_gen(seed + 2), dtype=F64).to(dtype)
    return model, x


def _weights(model):
    """W, b, σ² read straight from the modules, not through decode()."""
    (dec,) = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)]
    var = torch.exp(model.likelihood.logvar.detach().double()).expand(dec.bias.shape)
    return dec.weight.detach().double(), dec.bias.detach().double(), var


def test_log_px_and_posterior_match_the_joint_gaussian():
    """x and z are jointly Gaussian: [z; x] ~ N([0; b], [[I, Wᵀ], [W, WWᵀ + D]]). The marginal
    of x and the conditional of z given x, by the textbook partitioned-Gaussian formulas (a
    Schur complement, not the precision form the module uses), must be what it returns."""
    model, x = _factor_analysis()
    W, b, var = _weights(model)
    exact = LinearGaussian.of(model)
    C = W @ W.T + torch.diag(var)
    torch.testing.assert_close(exact.log_px(x), MultivariateNormal(b, C).log_prob(x), rtol=1e-12, atol=1e-12)
    gain = W.T @ torch.linalg.inv(C)  # Cov(z, x) Cov(x)⁻¹
    post = exact.posterior(x)
    torch.testing.assert_close(post.mean, (x - b) @ gain.T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(post.covariance_matrix[0], torch.eye(3, dtype=F64) - gain @ W, rtol=1e-10, atol=1e-12)


def _mean_field_optimum(exact, x):
    """argmin over diagonal Gaussians of KL(q ‖ p(z|x)): the posterior's mean, and variances
    1/P_ii, the inverse of the precision's diagonal (Bishop 2006, §10.1.2)."""
    from vaekit.distributions import DiagonalNormal

    mu = exact.posterior(x).mean
    return DiagonalNormal(mu, -torch.log(torch.diagonal(exact.precision)).expand_as(mu))


@pytest.mark.parametrize("variance", ["shared", "feature", "fixed"])
def test_the_identity_holds_with_three_independent_closed_forms(variance):
    """log p(x) = ELBO(q) + KL(q ‖ p(z|x)) (note 001), for the model's own q, the best diagonal
    q and one far from both: the marginal's density, the expected log-likelihood minus the prior
    KL, and the Gaussian-to-Gaussian KL are three separate formulas, so rounding is all they may
    miss. The best diagonal q's gap is ½(Σ log P_ii − log|P|), which no other q goes below."""
    from vaekit.distributions import DiagonalNormal

    model, x = _factor_analysis(variance=variance)
    exact = LinearGaussian.of(model)
    q = model.posterior(x)
    best = _mean_field_optimum(exact, x)
    far = DiagonalNormal(q.mu + 2.0, q.logvar - 1.5)
    with torch.no_grad():
        for qq in (q, best, far):
            torch.testing.assert_close(exact.elbo(qq, x) + exact.gap(qq, x), exact.log_px(x), rtol=1e-12, atol=1e-10)
        P = exact.precision
        floor = 0.5 * (torch.log(torch.diagonal(P)).sum() - torch.logdet(P))
        torch.testing.assert_close(exact.gap(best, x), floor.expand(7), rtol=1e-10, atol=1e-12)
        assert floor > 1e-3  # W's columns are not orthogonal: even the best diagonal q misses
        assert (exact.gap(q, x) > floor).all() and (exact.gap(far, x) > floor).all()


def test_gap_is_torchs_kl_to_the_exact_posterior():
    model, x = _factor_analysis()
    exact = LinearGaussian.of(model)
    q = model.posterior(x)
    with torch.no_grad():
        ref = kl_divergence(MultivariateNormal(q.mean.double(), torch.diag_embed(q.variance.double())), exact.posterior(x))
        torch.testing.assert_close(exact.gap(q, x), ref, rtol=1e-10, atol=1e-12)
        assert (ref > 0.05).all()  # a q that is not the posterior: a gap to measure


def test_elbo_is_the_limit_of_the_monte_carlo_elbo_and_iwae_of_log_px():
    """vaekit's training objective and its evidence estimate, both by sampling, agree with the
    closed forms to within their Monte Carlo error (4 standard errors of the sample mean)."""
    model, x = _factor_analysis()
    exact = LinearGaussian.of(model)
    q = model.posterior(x)
    with torch.no_grad():
        eps = torch.randn(40000, 7, 3, generator=_gen(5), dtype=F64)
        z = q.reparameterize(eps)
        per_draw = model.log_px_given_z(z, x) - (q.log_prob(z) - model.log_pz(z))
        se = per_draw.std(0) / math.sqrt(len(eps))
        mc = elbo(model, x, eps=eps).elbo
        assert ((mc - exact.elbo(q, x)).abs() < 4 * se).all(), (mc - exact.elbo(q, x), se)
        best = _mean_field_optimum(exact, x)
        est = iwae(model, x, 20000, q=best, generator=_gen(6))
    # With the best diagonal proposal the gap is a fraction of a nat (see above); K = 20000
    # leaves a bias of order gap/K and noise below 0.01 nats.
    torch.testing.assert_close(est, exact.log_px(x), rtol=0, atol=0.02)


def test_a_q_at_the_exact_posterior_closes_the_gap():
    """With orthogonal columns of W the posterior is diagonal; an encoder set to it has ELBO =
    log p(x) and a zero gap, row by row."""
    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=5, latent_dim=2, hidden=(), likelihood="gaussian", variance="shared")).double()
    w, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(5, 2)))
    w = w * np.array([2.0, 0.7])
    set_exact_linear_gaussian(model, w, np.arange(5.0), 0.3)
    x = torch.randn(6, 5, generator=_gen(1), dtype=F64)
    exact = LinearGaussian.of(model)
    with torch.no_grad():
        q = model.posterior(x)
        torch.testing.assert_close(exact.gap(q, x), torch.zeros(6, dtype=F64), rtol=0, atol=1e-10)
        torch.testing.assert_close(exact.elbo(q, x), exact.log_px(x), rtol=1e-12, atol=1e-10)


def test_float32_model_is_read_in_float64():
    model, x = _factor_analysis(dtype=torch.float32)
    ref, _ = _factor_analysis(dtype=F64)
    ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    torch.testing.assert_close(LinearGaussian.of(model).log_px(x), LinearGaussian.of(ref).log_px(x.double()), rtol=1e-6, atol=1e-6)


def test_a_point_mass_q_has_an_infinite_gap():
    from vaekit.distributions import PointMass

    model, x = _factor_analysis()
    exact = LinearGaussian.of(model)
    q = PointMass(torch.zeros(7, 3, dtype=F64))
    assert torch.isinf(exact.gap(q, x)).all() and (exact.elbo(q, x) == -math.inf).all()


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"latent_dim": (3, 2)}, "one latent group"),
        ({"prior": "vampprior", "pseudo_inputs": 4}, "standard_normal prior"),
        ({"likelihood": "bernoulli"}, "gaussian likelihood"),
        ({"hidden": (8,)}, "affine decoder"),
    ],
)
def test_other_models_are_refused_with_the_reason(kw, message):
    config = {"input_dim": 6, "latent_dim": 3, "hidden": (), "likelihood": "gaussian", **kw}
    model = VAEModel(ModelConfig(**config))
    with pytest.raises(ConfigError, match=message):
        LinearGaussian.of(model)


def test_a_nearly_affine_decoder_is_refused():
    """A tanh layer with weights small enough that its decoder is affine to float32's precision
    at the probed points is still not the linear-Gaussian model: refused by its layers."""
    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=30, latent_dim=10, hidden=(16,), activation="tanh", likelihood="gaussian"))
    first, last = model.decoder[0], model.decoder[-1]
    with torch.no_grad():
        first.weight.mul_(1e-2)
        last.weight.mul_(1e2)
    with pytest.raises(ConfigError, match="one linear layer .* has 3 layers"):
        LinearGaussian.of(model)


def _ok(capsys, *argv) -> str:
    code, out, err = cli(capsys, *argv)
    assert code == 0, err
    return out


def test_gaps_prints_the_exact_numbers_of_a_linear_gaussian_run(tmp_path, capsys):
    """`vaekit gaps` on a factor-analysis run: its importance-weighted log p(x) agrees with the
    closed form, and the exact gap is the two estimated gaps' sum up to their Monte Carlo error.
    A model that is not linear-Gaussian gets no exact keys."""
    run = tmp_path / "fa"
    _ok(capsys, "train", "--data", "digits", "--hidden", "", "--likelihood", "gaussian", "--latent-dim", "4", "--epochs", "2",
        "--eval-k", "5", "--out", run)  # fmt: skip
    out = json.loads(_ok(capsys, "gaps", run, "--k", "500", "--steps", "200", "--json"))
    assert abs(out["log_likelihood"] - out["exact_log_likelihood"]) < 0.05
    assert out["exact_gap"] == pytest.approx(out["exact_log_likelihood"] - out["exact_elbo"])
    estimated = out["approximation_gap"] + out["amortization_gap"]
    assert abs(out["exact_gap"] - estimated) < 0.05 + 4 * (out["approximation_gap_se"] + out["amortization_gap_se"])
    text = _ok(capsys, "gaps", run, "--k", "50", "--steps", "20")
    assert "exact, the model being linear-Gaussian: log p(x)" in text
    deep = tmp_path / "deep"
    _ok(capsys, "train", "--data", "digits", "--hidden", "8", "--likelihood", "gaussian", "--latent-dim", "4", "--epochs", "1",
        "--eval-k", "5", "--out", deep)  # fmt: skip
    assert "exact_log_likelihood" not in json.loads(_ok(capsys, "gaps", deep, "--k", "20", "--steps", "10", "--json"))
