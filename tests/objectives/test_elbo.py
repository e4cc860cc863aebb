"""The ELBO: its terms, its reparameterized gradients (vs finite differences), its bound on an
exact-likelihood model, and the Monte Carlo averaging over samples and over the KL."""

import math

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal
from torch.func import functional_call

from vaekit.config import ModelConfig
from vaekit.distributions import DiagonalNormal
from vaekit.model import VAEModel
from vaekit.objectives import Elbo, elbo, loss

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def tiny_model(likelihood="gaussian", seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("hidden", (4,))
    # tanh, not relu: finite differences need a smooth objective (no kinks near the parameters).
    config = ModelConfig(input_dim=3, latent_dim=2, activation="tanh", likelihood=likelihood, **kw)
    model = VAEModel(config).to(F64)
    if likelihood == "gaussian" and config.variance != "fixed":
        with torch.no_grad():
            model.likelihood.logvar.copy_(torch.linspace(-0.5, 0.3, model.likelihood.logvar.numel()))
    return model


def data(likelihood, n=5, seed=1):
    g = _gen(seed)
    if likelihood == "bernoulli":
        return torch.bernoulli(torch.full((n, 3), 0.5, dtype=F64), generator=g)
    if likelihood == "continuous_bernoulli":
        return torch.rand(n, 3, generator=g, dtype=F64)
    return torch.randn(n, 3, generator=g, dtype=F64)


# --------------------------------------------------------------------------- (a) terms and loss


def test_terms_shape_and_identity():
    model, x = tiny_model(), data("gaussian")
    terms = elbo(model, x, n_samples=3, generator=_gen(0))
    assert isinstance(terms, Elbo)
    for t in terms:
        assert t.shape == (5,) and t.dtype == F64
    assert torch.equal(terms.elbo, terms.recon - terms.kl)
    # The analytic KL of the amortized q against N(0, I), independently.
    mu, logvar = model.inference.encoder(x)
    torch.testing.assert_close(terms.kl, 0.5 * (logvar.exp() - logvar - 1 + mu**2).sum(-1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("beta", [1.0, 0.0, 0.3, 2.5])
def test_loss_is_negative_beta_elbo(beta):
    terms = elbo(tiny_model(), data("gaussian"), generator=_gen(0))
    expected = -(terms.recon - beta * terms.kl).mean()
    torch.testing.assert_close(loss(terms, beta), expected, rtol=1e-14, atol=1e-14)
    if beta == 1.0:
        torch.testing.assert_close(loss(terms), -terms.elbo.mean(), rtol=0, atol=0)


def test_q_override_is_used():
    model, x = tiny_model(), data("gaussian")
    q = DiagonalNormal(torch.zeros(5, 2, dtype=F64), torch.zeros(5, 2, dtype=F64))
    terms = elbo(model, x, q=q, generator=_gen(0))
    torch.testing.assert_close(terms.kl, torch.zeros(5, dtype=F64), rtol=0, atol=1e-15)  # q = p(z)
    z = torch.randn(1, 5, 2, generator=_gen(0), dtype=F64)
    torch.testing.assert_close(terms.recon, model.decode(z).log_prob(x).mean(0), rtol=1e-14, atol=1e-14)


# --------------------------------------------------------------------------- (b) gradients


class _Objective(nn.Module):
    """Σ_n ELBO(x_n) with a fixed ε: the generator is re-seeded on every call, so the objective is
    a deterministic, smooth function of the parameters that finite differences can check."""

    def __init__(self, model, x, analytic_kl):
        super().__init__()
        self.model, self.x, self.analytic_kl = model, x, analytic_kl

    def forward(self):
        return elbo(self.model, self.x, n_samples=2, analytic_kl=self.analytic_kl, generator=_gen(42)).elbo.sum()


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli", "continuous_bernoulli"])
@pytest.mark.parametrize("analytic_kl", [True, False])
def test_reparameterized_gradient_matches_finite_differences(likelihood, analytic_kl):
    kw = {"variance": "feature"} if likelihood == "gaussian" else {}
    model = tiny_model(likelihood, **kw)
    objective = _Objective(model, data(likelihood), analytic_kl)
    names = [name for name, _ in objective.named_parameters()]
    shapes = [p.shape for _, p in objective.named_parameters()]
    flat0 = torch.cat([p.detach().flatten() for _, p in objective.named_parameters()])
    assert any(n.startswith("model.inference") for n in names) and any(n.startswith("model.decoder") for n in names)

    def f(flat):
        params, i = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = flat[i : i + shape.numel()].view(shape)
            i += shape.numel()
        return functional_call(objective, params, ())

    # gradcheck compares autograd with central differences (eps 1e-6) in float64; its default
    # tolerances (atol 1e-5, rtol 1e-3) sit well above the O(eps²) truncation error of the
    # differences on an O(10) objective and well below any missing or wrong gradient term.
    assert torch.autograd.gradcheck(f, (flat0.clone().requires_grad_(True),))


# --------------------------------------------------------------------------- (c) lower bound


def linear_gaussian(seed=0, d_in=4, d_lat=2):
    """hidden=(): decoder x = W z + b, so p(x) = N(b, W Wᵀ + diag σ²) exactly."""
    torch.manual_seed(seed)
    config = ModelConfig(input_dim=d_in, latent_dim=d_lat, hidden=(), likelihood="gaussian", variance="feature")
    model = VAEModel(config).to(F64)
    with torch.no_grad():
        model.likelihood.logvar.copy_(torch.linspace(-1.0, 0.0, d_in))
    return model


def exact_log_px(model, x):
    lin = model.decoder[0]
    W, b = lin.weight, lin.bias  # (D, d), (D,)
    cov = W @ W.T + torch.diag(torch.exp(model.likelihood.logvar))
    return MultivariateNormal(b, covariance_matrix=cov).log_prob(x)


def exact_elbo(model, x):
    """Closed form for the linear-Gaussian model: E_q log N(x; Wz + b, Σx) =
    log N(x; Wμ + b, Σx) − ½ Σ_i (W diag(s²) Wᵀ)_ii / σ_i², minus the Gaussian KL."""
    q = model.posterior(x)
    lin = model.decoder[0]
    var_x = torch.exp(model.likelihood.logvar)
    resid = x - (q.mu @ lin.weight.T + lin.bias)
    log_n = -0.5 * (resid**2 / var_x + torch.log(var_x) + math.log(2 * math.pi)).sum(-1)
    trace = ((lin.weight**2 / var_x[:, None]) @ torch.exp(q.logvar).T).sum(0)  # (n,)
    kl = 0.5 * (torch.exp(q.logvar) - q.logvar - 1 + q.mu**2).sum(-1)
    return log_n - 0.5 * trace - kl


def test_elbo_is_lower_bound_on_exact_log_px():
    model = linear_gaussian()
    x = torch.randn(6, 4, generator=_gen(3), dtype=F64) * 2
    with torch.no_grad():
        log_px = exact_log_px(model, x)
        ref = exact_elbo(model, x)
        s = 4000
        per_sample = model.decode(model.posterior(x).rsample((s,), generator=_gen(4))).log_prob(x)  # (S, n)
        terms = elbo(model, x, n_samples=s, generator=_gen(4))
    # Same generator, same draws: the ELBO's recon is the mean of these per-sample terms.
    torch.testing.assert_close(terms.recon, per_sample.mean(0), rtol=1e-12, atol=1e-12)
    # The MC ELBO agrees with the closed form within 4 SE (sd of the per-sample terms / √S).
    se = per_sample.std(0) / math.sqrt(s)
    assert ((terms.elbo - ref).abs() < 4 * se).all()
    # The bound: exact, then for the estimate (the gap at a random encoder is ≫ 4 SE here).
    assert (ref < log_px).all()
    assert (terms.elbo + 4 * se < log_px).all(), (log_px - terms.elbo, se)


# --------------------------------------------------------------------------- (d) n_samples


def test_recon_averages_over_samples():
    model, x = tiny_model(), data("gaussian", n=3)
    s = 5
    terms = elbo(model, x, n_samples=s, generator=_gen(11))
    z = model.posterior(x).rsample((s,), generator=_gen(11))
    torch.testing.assert_close(terms.recon, model.decode(z).log_prob(x).mean(0), rtol=1e-12, atol=1e-12)


def test_recon_estimator_variance_shrinks_like_one_over_s():
    model, x = tiny_model(), data("gaussian", n=3)
    reps = 400
    with torch.no_grad():
        r1 = torch.stack([elbo(model, x, n_samples=1, generator=_gen(i)).recon for i in range(reps)])
        r16 = torch.stack([elbo(model, x, n_samples=16, generator=_gen(10_000 + i)).recon for i in range(reps)])
    ratio = r1.var(0) / r16.var(0)  # ≈ 16 per datapoint
    # Each variance from 400 draws has relative SE ≈ √(2/399) ≈ 0.07 (more with heavier tails),
    # so the log of the ratio has SE ≈ 0.1–0.15; [16/2, 16·2] is ≥ 4.5 SE on either side.
    assert ((ratio > 8) & (ratio < 32)).all(), ratio


# --------------------------------------------------------------------------- (e) MC KL


def test_monte_carlo_kl_elbo_agrees_with_analytic_in_expectation():
    model, x = tiny_model(), data("gaussian", n=4)
    reps = 2000
    with torch.no_grad():
        mc = torch.stack([elbo(model, x, analytic_kl=False, generator=_gen(i)).elbo for i in range(reps)])
        an = torch.stack([elbo(model, x, analytic_kl=True, generator=_gen(i)).elbo for i in range(reps)])
    # Same seed, same z: recon cancels and the difference is KL_mc − KL, mean zero.
    diff = mc - an
    se = diff.std(0) / math.sqrt(reps)
    assert (diff.mean(0).abs() < 4 * se).all(), diff.mean(0) / se
    assert (diff.std(0) > 0).all()  # the MC KL really is random
