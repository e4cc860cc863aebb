"""Priors p(z): every registered prior's density integrates to 1 (grid quadrature in 1-D and
2-D); the mixture of diagonal Gaussians against torch.distributions' MixtureSameFamily
(density, moments, KL by Monte Carlo and by quadrature, gradients), its sampler against the
mixture's CDF and moments; a mixture-prior model trains, saves and loads; the CLI's option.

References are independent of the code under test: torch.distributions, trapezoidal
quadrature on grids, the normal CDF. Random tests fix their seed and justify the tolerance.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal, kl_divergence

import vaekit
from vaekit.config import ModelConfig
from vaekit.distributions import DiagonalNormal, MixtureOfDiagonalNormals
from vaekit.errors import ConfigError
from vaekit.model import VAEModel
from vaekit.objectives import kl
from vaekit.objectives.elbo import elbo
from vaekit.objectives.iwae import log_weights
from vaekit.priors import PRIORS
from cli_helpers import assert_train_refused, cli as _cli
from prior_helpers import assert_round_trip, default_priors

F64 = torch.float64
# float64 log-densities of a few O(1..10) terms: 1e-10 is far above rounding, far below any wrong term.
TIGHT = dict(rtol=1e-10, atol=1e-10)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _torch_mixture(logits, mu, logvar) -> MixtureSameFamily:
    """The reference p(z): torch's own mixture of Independent Normals."""
    return MixtureSameFamily(Categorical(logits=logits), Independent(Normal(mu, torch.exp(0.5 * logvar)), 1))


def _mixture_params(d: int, c: int = 3, seed: int = 0):
    """Unequal weights (π ≈ 0.1 … 0.7), spread means and variances σ² from e^-1.5 to e^1:
    a mixture that a wrong weight, mean or variance would visibly change."""
    g = _gen(seed)
    logits = torch.linspace(-1.0, 1.0, c, dtype=F64) * 1.5
    mu = 2.0 * torch.randn(c, d, generator=g, dtype=F64)
    logvar = torch.linspace(-1.5, 1.0, c * d, dtype=F64).reshape(c, d)
    return logits, mu, logvar


def _trapezoid_weights(x: torch.Tensor) -> torch.Tensor:
    h = x[1] - x[0]
    w = torch.full_like(x, h)
    w[0] = w[-1] = h / 2
    return w


def _integral(log_prob, lo: torch.Tensor, hi: torch.Tensor, n: int) -> float:
    """∫ exp(log_prob(z)) dz over the box [lo, hi] (1-D or 2-D) by the trapezoidal rule."""
    axes = [torch.linspace(float(a), float(b), n, dtype=F64) for a, b in zip(lo, hi)]
    if len(axes) == 1:
        z = axes[0][:, None]  # (n, 1)
        return float((torch.exp(log_prob(z)) * _trapezoid_weights(axes[0])).sum())
    z = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)  # (n, n, 2)
    w = _trapezoid_weights(axes[0])[:, None] * _trapezoid_weights(axes[1])[None, :]
    return float((torch.exp(log_prob(z)) * w).sum())


# -- every prior: a normalised density -----------------------------------------------------------


def test_registry_names():
    assert {"standard_normal", "mixture"} <= set(PRIORS.names())
    for name in PRIORS.names():
        assert PRIORS.get(name).name == name


@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("name", default_priors())
def test_prior_density_integrates_to_one(name, d):
    """∫ p(z) dz = 1 for every registered prior, as built in a model (default options), 1-D and 2-D.

    The box is mean ± 12 standard deviations of p (tail mass < 1e-30 for Gaussian tails); the
    trapezoidal rule on a Gaussian converges faster than any power of the step (its error is
    ~exp(−2π²σ²/h²)), so 1201 (1-D) or 401 (2-D) points per axis leave an error far below 1e-8.
    """
    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=3, latent_dim=d, hidden=(), prior=name)).to(F64)
    with torch.no_grad():
        p = model.top_prior()
        half = 12.0 * p.variance.max().sqrt()
        total = _integral(p.log_prob, p.mean - half, p.mean + half, 1201 if d == 1 else 401)
    assert total == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("d", [1, 2])
def test_mixture_density_integrates_to_one(d):
    """The same quadrature for a mixture with unequal weights and narrow components
    (σ_min = e^-0.75 ≈ 0.47): the step ≤ 0.05 is under σ_min/9, still far inside the
    trapezoidal rule's spectral regime; the box covers every mean ± 14 σ_max."""
    logits, mu, logvar = _mixture_params(d)
    p = MixtureOfDiagonalNormals(logits, mu, logvar)
    half = 14.0 * torch.exp(0.5 * logvar.max())
    lo, hi = mu.min(0).values - half, mu.max(0).values + half
    n = int(float((hi - lo).max()) / 0.05) + 1 if d == 1 else 801
    total = _integral(p.log_prob, lo, hi, n)
    assert total == pytest.approx(1.0, abs=1e-8)


# -- the mixture against torch.distributions -----------------------------------------------------


@pytest.mark.parametrize("d, c", [(1, 1), (1, 4), (3, 5)])
def test_mixture_log_prob_matches_torch(d, c):
    logits, mu, logvar = _mixture_params(d, c, seed=c)
    p = MixtureOfDiagonalNormals(logits, mu, logvar)
    ref = _torch_mixture(logits, mu, logvar)
    g = _gen(10 + c)
    # Points near the modes, (S, n, d), and far in the tails where a naive Σ exp underflows.
    z = 3.0 * torch.randn(7, 6, d, generator=g, dtype=F64)
    far = torch.full((2, d), 40.0, dtype=F64) * torch.tensor([[1.0], [-1.0]], dtype=F64)
    assert p.batch_shape == () and p.event_shape == (d,)
    assert p.log_prob(z).shape == (7, 6)
    torch.testing.assert_close(p.log_prob(z), ref.log_prob(z), **TIGHT)
    torch.testing.assert_close(p.log_prob(far), ref.log_prob(far), rtol=1e-10, atol=0)
    assert torch.isfinite(p.log_prob(far)).all()
    torch.testing.assert_close(p.mean, ref.mean, **TIGHT)
    torch.testing.assert_close(p.variance, ref.variance, **TIGHT)


def test_mixture_with_batch_shape_matches_torch():
    """One mixture per point (logits (n, C), means (n, C, d)): batch_shape (n,)."""
    g = _gen(3)
    logits, mu, logvar = (torch.randn(*s, generator=g, dtype=F64) for s in [(4, 3), (4, 3, 2), (4, 3, 2)])
    p = MixtureOfDiagonalNormals(logits, mu, logvar)
    ref = _torch_mixture(logits, mu, logvar)
    z = torch.randn(5, 4, 2, generator=g, dtype=F64)
    assert p.batch_shape == (4,) and p.event_shape == (2,)
    torch.testing.assert_close(p.log_prob(z), ref.log_prob(z), **TIGHT)
    torch.testing.assert_close(p.mean, ref.mean, **TIGHT)
    torch.testing.assert_close(p.variance, ref.variance, **TIGHT)
    assert p.sample((6,), generator=_gen(0)).shape == (6, 4, 2)


def test_mixture_log_prob_keeps_float32_precision_for_narrow_distant_components():
    """Components with |μ|/σ ≈ 10^4 (μ ≈ ±10, σ ≈ 10^-3) and float32 points a few σ from them:
    each term of the expanded quadratic form is ~10^8 per coordinate, so an expansion carried
    out in float32 would lose every digit; the float32 result must agree with torch's float64
    mixture to float32's own resolution (the log-densities are ~ +40)."""
    g = _gen(5)
    c, d = 6, 8
    mu = 10.0 * torch.sign(torch.randn(c, d, generator=g, dtype=F64)) + torch.randn(c, d, generator=g, dtype=F64)
    logvar = math.log(1e-6) + 0.5 * torch.randn(c, d, generator=g, dtype=F64)
    logits = torch.randn(c, generator=g, dtype=F64)
    which = torch.randint(c, (50,), generator=g)
    z = mu[which] + 1e-3 * torch.randn(50, d, generator=g, dtype=F64)
    p32 = MixtureOfDiagonalNormals(logits.float(), mu.float(), logvar.float())
    got = p32.log_prob(z.float())
    # The reference sees exactly the float32 inputs, in float64.
    want = _torch_mixture(logits.float().double(), mu.float().double(), logvar.float().double()).log_prob(z.float().double())
    assert got.dtype == torch.float32 and want.min() > 20.0
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=0)


@pytest.mark.parametrize(
    "z_dtype, param_dtype, want",
    [(torch.float32, torch.float32, torch.float32), (F64, F64, F64), (torch.float32, F64, F64), (torch.bfloat16, torch.bfloat16, torch.float32)],
)
def test_mixture_log_prob_dtype(z_dtype, param_dtype, want):
    """The log-density comes back in the wider of the point's and the parameters' dtypes, never
    narrower than float32 (a bfloat16 log-density of ~-50 would be off by a quarter of a nat)."""
    logits, mu, logvar = (t.to(param_dtype) for t in _mixture_params(3, 4))
    z = torch.randn(5, 3, generator=_gen(0)).to(z_dtype)
    got = MixtureOfDiagonalNormals(logits, mu, logvar).log_prob(z)
    assert got.dtype == want and got.shape == (5,)
    ref = _torch_mixture(logits.double(), mu.double(), logvar.double()).log_prob(z.double())
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_mixture_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"logits \(3,\), mu \(4, 2\)"):
        MixtureOfDiagonalNormals(torch.zeros(3), torch.zeros(4, 2), torch.zeros(4, 2))


def test_mixture_log_prob_gradcheck():
    """Gradients of log p(z) in logits, means, log-variances and z against float64 finite differences."""
    logits, mu, logvar = (t.clone().requires_grad_() for t in _mixture_params(2, 3, seed=1))
    z = torch.randn(4, 2, generator=_gen(2), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda l, m, v, z: MixtureOfDiagonalNormals(l, m, v).log_prob(z), (logits, mu, logvar, z))


# -- sampling ------------------------------------------------------------------------------------


def _mixture_cdf_1d(x: torch.Tensor, logits, mu, logvar, i: int) -> torch.Tensor:
    """Marginal CDF of coordinate i: Σ_c π_c Φ((x − μ_ci)/σ_ci) (a diagonal mixture's
    marginal is the 1-D mixture with the same weights)."""
    pi = torch.softmax(logits, -1)
    return (pi * Normal(mu[:, i], torch.exp(0.5 * logvar[:, i])).cdf(x[:, None])).sum(-1)


def test_mixture_sample_moments_and_marginals():
    """N = 200,000 seeded draws of a 3-component 2-D mixture.

    Moments: each coordinate's sample mean within 5 standard errors sqrt(Var/N) of E[z]
    (torch's mixture mean), and its sample variance within 5 standard errors
    sqrt((m4 − Var²)/N) of Var[z] (m4, the fourth central moment, estimated from the draws).
    Marginals: the Kolmogorov–Smirnov distance to the exact CDF under 1.95/√N, the 0.1% level
    of the KS distribution: a sampler with a wrong weight (say π swapped between two
    components) moves that distance to ~0.1, 200 times the bound.
    """
    logits, mu, logvar = _mixture_params(2, 3, seed=4)
    p, ref = MixtureOfDiagonalNormals(logits, mu, logvar), _torch_mixture(logits, mu, logvar)
    n = 200_000
    z = p.sample((n,), generator=_gen(7))
    assert z.shape == (n, 2) and z.dtype == F64 and not z.requires_grad
    mean, var = ref.mean, ref.variance
    m4 = ((z - z.mean(0)) ** 4).mean(0)
    assert ((z.mean(0) - mean).abs() < 5 * (var / n).sqrt()).all(), (z.mean(0), mean)
    assert ((z.var(0) - var).abs() < 5 * ((m4 - var**2) / n).sqrt()).all(), (z.var(0), var)
    for i in range(2):
        x = z[:, i].sort().values
        cdf = _mixture_cdf_1d(x, logits, mu, logvar, i)
        steps = torch.arange(1, n + 1, dtype=F64) / n
        ks = torch.maximum(steps - cdf, cdf - (steps - 1.0 / n)).max()
        assert ks < 1.95 / math.sqrt(n), ks


def test_mixture_sample_is_seeded():
    p = MixtureOfDiagonalNormals(*_mixture_params(2, 3))
    a, b = p.sample((50,), generator=_gen(1)), p.sample((50,), generator=_gen(1))
    assert torch.equal(a, b)
    assert not torch.equal(a, p.sample((50,), generator=_gen(2)))
    assert p.sample((5, 3), generator=_gen(1)).shape == (5, 3, 2)


# -- the KL: no closed form, so Monte Carlo ------------------------------------------------------


def _q(n: int = 4, d: int = 2, seed: int = 20) -> DiagonalNormal:
    g = _gen(seed)
    return DiagonalNormal(torch.randn(n, d, generator=g, dtype=F64), 0.5 * torch.randn(n, d, generator=g, dtype=F64))


def test_no_closed_form_kl_so_the_given_samples_are_used():
    q, (logits, mu, logvar) = _q(), _mixture_params(2)
    p = MixtureOfDiagonalNormals(logits, mu, logvar)
    with pytest.raises(NotImplementedError):
        kl_divergence(q, p)
    z = q.sample((1000,), generator=_gen(1))  # (S, n, d)
    # The reference estimator on the same draws: torch's densities of q and p.
    q_ref = Independent(Normal(q.mu, q.std), 1)
    expected = (q_ref.log_prob(z) - _torch_mixture(logits, mu, logvar).log_prob(z)).mean(0)
    torch.testing.assert_close(kl(q, p, z, analytic=True), expected, **TIGHT)
    torch.testing.assert_close(kl(q, p, z, analytic=False), expected, **TIGHT)
    with pytest.raises(ValueError, match="samples"):
        kl(q, p)


def test_mixture_mc_kl_matches_independent_estimates():
    """KL(q || p) by vaekit's MC on 200,000 draws of q against (a) torch's MC on 200,000 other
    draws (torch's sampler and densities) and (b) trapezoidal quadrature of ∫ q log(q/p) on a
    2-D grid (error far below the MC error, see the normalisation tests). Each estimate's
    standard error is sd(log q − log p)/√S, measured; the bounds are 5 standard errors."""
    q, (logits, mu, logvar) = _q(), _mixture_params(2)
    p, p_ref = MixtureOfDiagonalNormals(logits, mu, logvar), _torch_mixture(logits, mu, logvar)
    s = 200_000
    z = q.sample((s,), generator=_gen(11))
    diff = q.log_prob(z) - p.log_prob(z)  # (S, n)
    ours, se = kl(q, p, z), diff.std(0) / math.sqrt(s)
    torch.manual_seed(12)  # torch's sampler draws from the global generator
    q_ref = Independent(Normal(q.mu, q.std), 1)
    z_ref = q_ref.sample((s,))
    diff_ref = q_ref.log_prob(z_ref) - p_ref.log_prob(z_ref)
    theirs, se_ref = diff_ref.mean(0), diff_ref.std(0) / math.sqrt(s)
    assert (ours > 0).all()
    assert ((ours - theirs).abs() < 5 * (se**2 + se_ref**2).sqrt()).all(), (ours, theirs)
    for i in range(q.batch_shape[0]):
        qi = Independent(Normal(q.mu[i], q.std[i]), 1)
        half = 12.0 * q.std[i]
        axes = [torch.linspace(float(q.mu[i, j] - half[j]), float(q.mu[i, j] + half[j]), 601, dtype=F64) for j in range(2)]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
        w = _trapezoid_weights(axes[0])[:, None] * _trapezoid_weights(axes[1])[None, :]
        log_q = qi.log_prob(grid)
        exact = float((torch.exp(log_q) * (log_q - p_ref.log_prob(grid)) * w).sum())
        assert abs(float(ours[i]) - exact) < 5 * float(se[i]), (i, float(ours[i]), exact)


# -- inside the model ----------------------------------------------------------------------------


def _mixture_model(components: int = 3, latent_dim: int = 2) -> VAEModel:
    torch.manual_seed(0)
    cfg = ModelConfig(input_dim=6, latent_dim=latent_dim, hidden=(8,), likelihood="gaussian", prior="mixture", components=components)
    return VAEModel(cfg).to(F64)


def _reference_prior(model) -> MixtureSameFamily:
    prior = model.prior
    return _torch_mixture(prior.logits.detach(), prior.mu.detach(), prior.logvar.detach())


def test_mixture_prior_parameters_and_init():
    model = _mixture_model(components=5, latent_dim=3)
    prior = model.prior
    assert {n for n, _ in prior.named_parameters()} == {"logits", "mu", "logvar"}
    assert prior.logits.shape == (5,) and prior.mu.shape == (5, 3) and prior.logvar.shape == (5, 3)
    # Uniform weights and unit variances at the start; means spread, so the components differ.
    assert torch.equal(prior.logits, torch.zeros(5, dtype=F64)) and torch.equal(prior.logvar, torch.zeros(5, 3, dtype=F64))
    assert torch.cdist(prior.mu, prior.mu)[~torch.eye(5, dtype=torch.bool)].min() > 0.1


def test_model_log_pz_and_kl_use_the_mixture():
    """log p(z) of the model and its KL (Monte Carlo, analytic_kl or not) against torch's mixture."""
    model = _mixture_model()
    with torch.no_grad():  # a non-trivial prior, not the init
        model.prior.logits.copy_(torch.tensor([1.0, -0.5, 0.2], dtype=F64))
        model.prior.logvar.copy_(torch.linspace(-1.0, 0.5, 6, dtype=F64).reshape(3, 2))
    ref = _reference_prior(model)
    x = torch.randn(5, 6, generator=_gen(0), dtype=F64)
    with torch.no_grad():
        q = model.posterior(x)
        z = q.sample((64,), generator=_gen(1))  # (S, n, d)
        torch.testing.assert_close(model.log_pz(z), ref.log_prob(z), **TIGHT)
        expected = (Independent(Normal(q.mu, q.std), 1).log_prob(z) - ref.log_prob(z)).mean(0)
        for analytic in (True, False):
            torch.testing.assert_close(model.kl(q, z, analytic=analytic), expected, **TIGHT)
        draws = model.sample_z(10, generator=_gen(2))
    assert draws.shape == (10, 2)


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_gradients_reach_the_prior_parameters(objective):
    """d(−ELBO)/d(prior) = −mean_n mean_s ∇ log p(z_sn) (neither log p(x|z) nor log q depends
    on the prior), and likewise for the IWAE bound with the normalised weights; both checked
    against autograd through torch's mixture at the same draws z."""
    model = _mixture_model()
    x = torch.randn(5, 6, generator=_gen(0), dtype=F64)
    eps = torch.randn(4, 5, model.noise_size, generator=_gen(1), dtype=F64)  # (S, n, noise)
    if objective == "elbo":
        loss = -elbo(model, x, eps=eps).elbo.mean()  # analytic_kl=True: falls back to MC
    else:
        loss = -torch.logsumexp(log_weights(model, x, 4, eps=eps), 0).mean()
    params = [model.prior.logits, model.prior.mu, model.prior.logvar]
    grads = torch.autograd.grad(loss, params)

    with torch.no_grad():
        q = model.posterior(x)
        z = q.reparameterize(eps)
        lw = log_weights(model, x, 4, eps=eps)
    ref_params = [p.detach().clone().requires_grad_() for p in params]
    log_p = _torch_mixture(*ref_params).log_prob(z)  # (S, n)
    weights = torch.full_like(lw, 1 / lw.shape[0]) if objective == "elbo" else torch.softmax(lw, 0)
    expected = torch.autograd.grad(-(weights * log_p).sum(0).mean(), ref_params)
    for name, got, want in zip(["logits", "mu", "logvar"], grads, expected):
        assert got.abs().max() > 1e-6, name  # the reference itself is not zero
        torch.testing.assert_close(got, want, **TIGHT, msg=name)


# -- training, persistence, CLI ------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    x = (load_digits().data / 16.0).astype(np.float32)
    return x[np.random.default_rng(0).permutation(len(x))]


def test_mixture_vae_trains_saves_and_loads(digits, tmp_path):
    est = vaekit.VAE(prior="mixture", components=3, latent_dim=2, hidden=(32,), epochs=3, lr=3e-3, seed=0)
    torch.manual_seed(0)
    init = VAEModel(ModelConfig(input_dim=64, latent_dim=2, hidden=(32,), likelihood="continuous_bernoulli", prior="mixture", components=3))
    est.fit(digits[:1000])
    prior = est.model_.prior
    assert est.config_.model.prior == "mixture" and est.config_.model.components == 3
    assert prior.mu.shape == (3, 2)
    # Training moved every prior parameter, and the validation ELBO rose.
    for name in ("logits", "mu", "logvar"):
        assert not torch.equal(getattr(prior, name).detach(), getattr(init.prior, name).detach()), name
    history = [h["valid_elbo"] for h in est.history_]
    assert len(history) == 3 and all(map(math.isfinite, history)) and history[-1] > history[0]

    loaded = assert_round_trip(est, tmp_path / "m", ("logits", "mu", "logvar"), digits[1000:1050])
    assert loaded.config_.model.components == 3


def test_components_of_another_prior_is_refused():
    with pytest.raises(ConfigError, match="components applies to prior mixture only"):
        ModelConfig(input_dim=4, prior="standard_normal", components=3)
    with pytest.raises(ConfigError, match="components must be an integer >= 1, got 0"):
        ModelConfig(input_dim=4, prior="mixture", components=0)
    assert ModelConfig(input_dim=4, prior="mixture").components == 10




def test_cli_trains_a_mixture_prior(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = _cli(capsys, "train", "--data", "digits", "--prior", "mixture", "--components", "4", "--epochs", "2", "--eval-k", "5", "--out", out)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["prior"] == "mixture" and config["model"]["components"] == 4
    assert vaekit.load(out).model_.prior.logits.shape == (4,)


@pytest.mark.parametrize(
    "argv, culprits",
    [
        (["--prior", "mixture", "--components", "0"], ["--components", "must be an integer >= 1", "0"]),
        (["--prior", "standard_normal", "--components", "3"], ["--components applies to prior mixture only", "standard_normal"]),
    ],
)
def test_cli_bad_components(argv, culprits, tmp_path, capsys):
    assert_train_refused(capsys, tmp_path, argv, culprits)


def test_a_batched_mixture_draws_each_point_from_its_own_weights():
    """Batch shape (3,): each point's weights favour another component (π ≈ 1 on it), the
    components far apart (means 0, 100, 200, σ = 1). Every draw of point b lies near the mean
    of b's own component, and the draws' means match torch's MixtureSameFamily (an independent
    sampler) to a few standard errors."""
    B, C, d, S = 3, 3, 2, 2000
    logits = torch.full((B, C), -30.0, dtype=F64)
    logits[torch.arange(B), torch.tensor([2, 0, 1])] = 30.0
    mu = (100.0 * torch.arange(C, dtype=F64))[None, :, None].expand(B, C, d).clone()
    logvar = torch.zeros(B, C, d, dtype=F64)
    z = MixtureOfDiagonalNormals(logits, mu, logvar).sample((S,), generator=torch.Generator().manual_seed(0))
    assert z.shape == (S, B, d)
    own = torch.tensor([200.0, 0.0, 100.0], dtype=F64)
    assert ((z - own[None, :, None]).abs() < 8).all()
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits),
        torch.distributions.Independent(torch.distributions.Normal(mu, torch.exp(0.5 * logvar)), 1),
    )
    torch.manual_seed(1)
    want = ref.sample((S,))
    torch.testing.assert_close(z.mean(0), want.mean(0), rtol=0, atol=5 * (2 / S) ** 0.5)
