"""Importance-weighted evidence on a linear-Gaussian VAE, where log p(x) and p(z|x) are exact."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from vaekit.config import ModelConfig
from vaekit.errors import ConfigError
from vaekit.model import VAEModel
from vaekit.objectives import elbo, iwae, iwae_and_elbo, log_mean_exp, log_weights

F64 = torch.float64
D, LATENT, N = 5, 2, 6


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def linear_gaussian(variance: str, seed: int = 0) -> VAEModel:
    """x = W z + b + noise, z ~ N(0, I), noise ~ N(0, diag σ²), with W = diag(σ) Q S (Q orthonormal
    columns, S diagonal) so that Wᵀ Σx⁻¹ W = S² is diagonal and the exact posterior
    N(C Wᵀ Σx⁻¹ (x − b), C), C = (I + S²)⁻¹, is a diagonal Gaussian the encoder can represent."""
    torch.manual_seed(seed)
    config = ModelConfig(input_dim=D, latent_dim=LATENT, hidden=(), likelihood="gaussian", variance=variance)
    model = VAEModel(config).to(F64)
    g = _gen(seed)
    logvar_x = (
        torch.tensor([-0.4], dtype=F64) if variance == "shared" else torch.linspace(-1.0, 0.5, D, dtype=F64)
    )
    std_x = torch.exp(0.5 * logvar_x).expand(D)
    q_cols, _ = torch.linalg.qr(torch.randn(D, LATENT, generator=g, dtype=F64))
    s = torch.tensor([2.0, 0.7], dtype=F64)
    W = std_x[:, None] * q_cols * s
    b = torch.randn(D, generator=g, dtype=F64)
    C = 1 / (1 + s**2)
    A = C[:, None] * W.T / std_x**2  # (d, D): posterior mean = A (x − b)
    with torch.no_grad():
        model.likelihood.logvar.copy_(logvar_x)
        model.decoder[0].weight.copy_(W)
        model.decoder[0].bias.copy_(b)
        enc = model.inference.encoder.net[0]  # Linear(D, 2d): rows [:d] give μ, rows [d:] log σ²
        enc.weight.zero_()
        enc.weight[:LATENT] = A
        enc.bias[:LATENT] = -A @ b
        enc.bias[LATENT:] = torch.log(C)
    return model


def exact_log_px(model, x):
    lin = model.decoder[0]
    var_x = torch.exp(model.likelihood.logvar).expand(D)
    return MultivariateNormal(lin.bias, covariance_matrix=lin.weight @ lin.weight.T + torch.diag(var_x)).log_prob(x)


def spoil_encoder(model):
    """A deliberately wrong q(z|x): its mean one posterior sd off in every dimension, its
    variance e^0.8 ≈ 2.2 times too wide. A fixed size in posterior units, so the importance
    weights w/p(x) have one law for every x and every draw of the model: their relative
    variance is 1.56 and KL(q || p(z|x)) = 1.43 nats, whatever the data."""
    with torch.no_grad():
        enc = model.inference.encoder.net[0]
        enc.bias[:LATENT] += torch.exp(0.5 * enc.bias[LATENT:])  # the exact posterior sd √C
        enc.bias[LATENT:] += 0.8
    return model


def sample_x(model, n=N, seed=2):
    """Data from the model itself, so the points are typical."""
    with torch.no_grad():
        return model.sample(n, generator=_gen(seed), mean=False)


# --------------------------------------------------------------------------- exact posterior


@pytest.mark.parametrize("variance", ["feature", "shared"])
def test_exact_posterior_makes_every_estimate_exact(variance):
    """With q(z|x) = p(z|x), log w = log p(x, z) − log q(z|x) = log p(x) for every z, so the ELBO
    and every IWAE_K equal log p(x) exactly: a sharp test of decoder, likelihood, prior, encoder,
    KL and log-weights together."""
    model = linear_gaussian(variance)
    x = sample_x(model)
    with torch.no_grad():
        log_px = exact_log_px(model, x)
        # Float64 on values O(10): 1e-9 leaves room for rounding in the Cholesky and sums.
        tol = dict(rtol=1e-9, atol=1e-9)
        lw = log_weights(model, x, 7, generator=_gen(3))
        assert lw.shape == (7, N)
        torch.testing.assert_close(lw, log_px.expand(7, N), **tol)
        # Monte Carlo KL: recon − KL is then the mean of the log-weights, exact per sample.
        terms = elbo(model, x, n_samples=3, analytic_kl=False, generator=_gen(4))
        torch.testing.assert_close(terms.elbo, log_px, **tol)
        # Analytic KL: log p(x|z) − KL varies with z, so the ELBO is exact only in expectation;
        # 4 SE of the recon average (sd of the per-sample log p(x|z) / √S).
        s = 20_000
        terms = elbo(model, x, n_samples=s, analytic_kl=True, generator=_gen(4))
        per_sample = model.decode(model.posterior(x).rsample((s,), generator=_gen(4))).log_prob(x)
        torch.testing.assert_close(terms.recon, per_sample.mean(0), rtol=1e-12, atol=1e-12)
        assert ((terms.elbo - log_px).abs() < 4 * per_sample.std(0) / math.sqrt(s)).all()
        for k in (1, 10, 100):
            torch.testing.assert_close(iwae(model, x, k, generator=_gen(5)), log_px, **tol)


# --------------------------------------------------------------------------- wrong encoder


def test_elbo_below_iwae_and_iwae_rises_with_k():
    model = spoil_encoder(linear_gaussian("feature"))
    x = sample_x(model)
    ks = (1, 10, 100, 1000)
    seeds = range(20)
    with torch.no_grad():
        log_px = exact_log_px(model, x)
        # S = 100 samples per ELBO: the same expectation as S = 1, 100 times less variance.
        el = torch.stack([elbo(model, x, n_samples=100, generator=_gen(100 + s)).elbo for s in seeds])  # (20, n)
        iw = torch.stack([torch.stack([iwae(model, x, k, generator=_gen(1000 * k + s)) for s in seeds]) for k in ks])
    # Averaged over points and seeds, the mean and its SE (sd over the 20 seeds of the
    # per-seed point averages / √20).
    mean = iw.mean((1, 2))
    se = iw.mean(2).std(1) / math.sqrt(len(seeds))
    el_mean, el_se = el.mean(), el.mean(1).std() / math.sqrt(len(seeds))
    # The gap log p(x) − ELBO of this encoder is several nats, ≫ 4 SE.
    assert (log_px.mean() - el_mean) > 0.5
    # ELBO ≤ IWAE_K for K ≥ 10, by more than 4 combined SEs; and per point on average over seeds.
    for j in range(1, len(ks)):
        assert mean[j] - el_mean > 4 * math.hypot(se[j], el_se), (ks[j], mean[j], el_mean)
    # Per point, averaged over seeds: the true gap IWAE_10 − ELBO is 4–20 SE at every point here,
    # so a correct implementation fails this with probability < 1e-4.
    assert (iw[1].mean(0) > el.mean(0)).all()
    # Monotone in K within noise: every step up is > −3 SE, and the whole rise is significant.
    for j in range(len(ks) - 1):
        assert mean[j + 1] - mean[j] > -3 * math.hypot(se[j], se[j + 1]), (ks[j], mean)
    assert mean[-1] - mean[0] > 4 * math.hypot(se[0], se[-1])
    # And everything stays (in expectation) below the exact log p(x).
    assert (mean < log_px.mean() + 4 * se).all()


def _tolerance_from_log_weights(lw: torch.Tensor) -> torch.Tensor:
    """|IWAE_K − log p(x)| ≈ |ŵ/p − 1| by the delta method, whose sd is sd(w̃)/√K with
    w̃ = w / mean(w) the normalised weights: 4 of those (plus the O(1/K) bias sd(w̃)²/2K)."""
    k = lw.shape[0]
    w = torch.exp(lw - log_mean_exp(lw))
    return 4 * w.std(0) / math.sqrt(k) + w.var(0) / (2 * k)


def test_iwae_large_k_matches_exact_log_px():
    model = spoil_encoder(linear_gaussian("shared"))
    x = sample_x(model)
    k = 5000
    with torch.no_grad():
        log_px = exact_log_px(model, x)
        lw = log_weights(model, x, k, generator=_gen(7))
        est = iwae(model, x, k, generator=_gen(7))  # one chunk here: the same draws as lw
    torch.testing.assert_close(est, log_mean_exp(lw), rtol=1e-12, atol=1e-12)
    tol = _tolerance_from_log_weights(lw)
    # The encoder is wrong but not hopeless, so the check has teeth: for this spoil the delta
    # method gives 4·√(1.56/5000) ≈ 0.07, and 0.2 would need a relative variance of 12.5.
    assert (tol < 0.2).all(), tol
    assert ((est - log_px).abs() < tol).all(), (est - log_px, tol)
    # The ELBO (the mean log-weight) is clearly further away than that.
    assert ((log_px - lw.mean(0)) > 2 * tol).all()


# --------------------------------------------------------------------------- log_mean_exp and chunks


def test_log_mean_exp():
    v = torch.randn(7, 3, generator=_gen(8), dtype=F64) * 3
    torch.testing.assert_close(log_mean_exp(v), torch.log(torch.exp(v).mean(0)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(log_mean_exp(v, dim=1), torch.log(torch.exp(v).mean(1)), rtol=1e-12, atol=1e-12)
    big = torch.tensor([[1000.0, -1000.0], [1000.0 + math.log(3), -1000.0 + math.log(3)]], dtype=F64)
    # log((e^a + 3e^a)/2) = a + log 2 for a = ±1000, where exp itself over/underflows.
    expected = torch.tensor([1000.0 + math.log(2), -1000.0 + math.log(2)], dtype=F64)
    out = log_mean_exp(big)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, rtol=1e-14, atol=0)


def _drawn_in_chunks(model, x, q, chunks=(3, 3, 3, 1)) -> torch.Tensor:
    """The log-weights of one generator seeded 9, drawn in ``chunks`` as iwae draws K = 10 for 4
    rows of D = 5 with block = 60 (chunks of 3 samples)."""
    g = _gen(9)
    return torch.cat([log_weights(model, x, c, q=q, generator=g) for c in chunks])


def test_iwae_chunks_combine_exactly():
    """block = 60 elements with n·D = 4·5 = 20 gives chunks of 3 samples: K = 10 is drawn as
    3, 3, 3, 1. The same chunk sizes from an identically seeded generator give the same draws,
    so the running logsumexp must equal log_mean_exp over the concatenated log-weights."""
    model = spoil_encoder(linear_gaussian("feature"))
    x = sample_x(model, n=4)
    with torch.no_grad():
        q = model.posterior(x)
        lw = _drawn_in_chunks(model, x, q)
        chunked = iwae(model, x, 10, q=q, generator=_gen(9), block=60)
        one = iwae(model, x, 10, q=q, generator=_gen(9), block=10**9)
        lw_one = log_weights(model, x, 10, q=q, generator=_gen(9))
    # Only the order of float64 additions differs: 1e-12 on values O(10).
    torch.testing.assert_close(chunked, log_mean_exp(lw), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(one, log_mean_exp(lw_one), rtol=1e-12, atol=1e-12)


def test_iwae_and_elbo_share_their_draws():
    """iwae_and_elbo gives iwae's estimate and the mean of the same log-weights, chunked or not;
    per row the log-mean-exp is at least the mean, and the mean estimates the closed-form
    ELBO, log p(x) − KL(q || p(z|x)) = log p(x) − 1.43 for the spoiled encoder."""
    from vaekit.distributions import RowStreams

    model = spoil_encoder(linear_gaussian("feature"))
    x = sample_x(model, n=4)
    with torch.no_grad():
        q = model.posterior(x)
        lw = _drawn_in_chunks(model, x, q)
        log_px, elbo_hat = iwae_and_elbo(model, x, 10, q=q, generator=_gen(9), block=60)
        torch.testing.assert_close(log_px, iwae(model, x, 10, q=q, generator=_gen(9), block=60), rtol=0, atol=0)
        torch.testing.assert_close(log_px, log_mean_exp(lw), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(elbo_hat, lw.mean(0), rtol=1e-12, atol=1e-12)
        assert (log_px >= elbo_hat).all()
        # Row streams: the chunking does not change the draws, so neither estimate changes.
        small = iwae_and_elbo(model, x, 20000, q=q, generator=RowStreams(x, 0), block=60)
        big = iwae_and_elbo(model, x, 20000, q=q, generator=RowStreams(x, 0), block=10**9)
    for a, b in zip(small, big):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # sd of log w is 2.44 nats here: 20000 draws leave ±0.017, 4 SE 0.07.
    torch.testing.assert_close(big[1], exact_log_px(model, x) - 1.43, rtol=0, atol=0.07)
    with pytest.raises(ConfigError, match="k must be an integer >= 1"):
        iwae_and_elbo(model, x, 0, q=q)


def test_iwae_large_k_is_chunked(monkeypatch):
    model = spoil_encoder(linear_gaussian("feature"))
    x = sample_x(model, n=4)
    k, block = 20_000, 1000  # chunks of 1000 // (4·5) = 50 samples
    seen = []
    decode = model.decode

    def recording_decode(z):
        seen.append(z.shape[0])
        return decode(z)

    monkeypatch.setattr(model, "decode", recording_decode)
    with torch.no_grad():
        est = iwae(model, x, k, generator=_gen(10), block=block)
        lw = log_weights(model, x, k, generator=_gen(11))  # an independent draw, for the spread only
    monkeypatch.undo()
    # Never a (K, n, D) block: every decoder call saw at most 50 samples, and all K were used.
    assert max(seen[:-1]) == 50 and sum(seen[:-1]) == k
    assert ((est - exact_log_px(model, x)).abs() < _tolerance_from_log_weights(lw)).all()


def test_iwae_chunks_count_a_mixture_priors_components(monkeypatch):
    """A 40-component prior forms (chunk, n, 40) float64 terms per sample, wider than D = 5:
    the chunk is sized by 2·40 = 80 elements per row, not by D, so its memory stays bounded."""
    from vaekit.objectives.iwae import sample_width

    torch.manual_seed(0)
    config = ModelConfig(input_dim=D, latent_dim=LATENT, hidden=(8,), likelihood="gaussian", prior="mixture", components=40)
    model = VAEModel(config).to(F64)
    x = torch.randn(4, D, dtype=F64)
    assert sample_width(model, x) == 80
    assert sample_width(linear_gaussian("feature"), x) == D
    seen = []
    decode = model.decode
    monkeypatch.setattr(model, "decode", lambda z: seen.append(z.shape[0]) or decode(z))
    with torch.no_grad():
        iwae(model, x, 100, generator=_gen(3), block=4 * 80 * 10)
    assert max(seen) == 10 and sum(seen) == 100


# --------------------------------------------------------------------------- the iwae objective


def _objective(name, **train):
    from vaekit.config import TrainConfig
    from vaekit.registry import OBJECTIVES

    return OBJECTIVES.get(name)(TrainConfig(objective=name, **train))


def test_iwae_objective_at_k1_has_the_elbo_gradient_on_the_same_noise():
    """K = 1: log w = log p(x|z) + log p(z) − log q(z|x), the one-sample ELBO with a Monte Carlo
    KL. Value and gradient with respect to every parameter equal the ELBO objective's (analytic
    KL off) on the same ε, to float64 round-off."""
    model = spoil_encoder(linear_gaussian("feature"))
    x = sample_x(model)
    eps = torch.randn(1, N, LATENT, generator=_gen(5), dtype=F64)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_iwae, value_iwae = model(_objective("iwae", k=1), x, None, eps)
    loss_elbo, value_elbo = model(_objective("elbo", analytic_kl=False), x, None, eps)
    torch.testing.assert_close(value_iwae, value_elbo, rtol=1e-12, atol=1e-12)
    for g_iwae, g_elbo in zip(torch.autograd.grad(loss_iwae, params), torch.autograd.grad(loss_elbo, params)):
        torch.testing.assert_close(g_iwae, g_elbo, rtol=1e-10, atol=1e-12)


def test_iwae_objective_tightens_with_k_toward_the_exact_log_px():
    """On the linear-Gaussian model with a wrong q, the expected K-sample bound rises with K and
    approaches the exact log p(x) (Burda et al. 2016, Theorem 1). 400 replicate noise draws make
    the Monte Carlo error of each mean (≲ 0.02 nats) far smaller than the steps between K."""
    model = spoil_encoder(linear_gaussian("shared"))
    x = sample_x(model)
    exact = exact_log_px(model, x).mean()
    bounds = []
    for k in (1, 5, 50, 500):
        objective = _objective("iwae", k=k)
        eps = torch.randn(400, k, N, LATENT, generator=_gen(k), dtype=F64)
        with torch.no_grad():
            values = torch.stack([model(objective, x, None, e)[1].mean() for e in eps])
        bounds.append(values.mean())
    assert all(a < b for a, b in zip(bounds, bounds[1:])), bounds
    assert bounds[-1] <= exact + 0.02
    assert exact - bounds[-1] < 0.2 * (exact - bounds[0])


def test_iwae_estimate_refuses_a_point_mass():
    """log w of a point mass is log p(x, ẑ): no estimate of log p(x). Without a proposal the
    estimate takes the method's own proper q for new points (the Gaussian around ẑ)."""
    from vaekit.distributions import DiagonalNormal, PointMass

    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=D, latent_dim=LATENT, hidden=(4,), likelihood="gaussian", inference="autoencoder")).to(F64)
    x = sample_x(model)
    with pytest.raises(ValueError, match="point mass"):
        iwae(model, x, 10, q=PointMass(torch.zeros(N, LATENT, dtype=F64)))
    assert isinstance(model.evaluation_posterior(x), DiagonalNormal)
    torch.testing.assert_close(
        iwae(model, x, 10, generator=_gen(0)), iwae(model, x, 10, q=model.evaluation_posterior(x), generator=_gen(0))
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64, torch.bool])
def test_iwae_and_elbo_take_rows_of_any_dtype_as_iwae_does(dtype):
    """Rows of another dtype are cast to the model's, as elbo and iwae cast them."""
    from vaekit.distributions import RowStreams

    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=6, latent_dim=2, hidden=(5,), likelihood="bernoulli"))
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    with torch.no_grad():
        want = iwae_and_elbo(model, x, 7, generator=RowStreams(x, 3))
        got = iwae_and_elbo(model, x.to(dtype), 7, generator=RowStreams(x, 3))
        assert iwae(model, x.to(dtype), 7, generator=RowStreams(x, 3)).dtype == torch.float32
    for a, b in zip(want, got):
        assert b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_iwae_objective_validates_on_its_own_k_sample_bound():
    """The iwae objective picks its best epoch (and cuts its rate) by the K-sample bound it
    trains: log_px_per_point at that K on one stream, above the K = 1 value on an untrained model."""
    import numpy as np

    from vaekit.config import TrainConfig
    from vaekit.evaluate import log_px_per_point
    from vaekit.registry import OBJECTIVES

    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=6, latent_dim=2, hidden=(8,), likelihood="gaussian")).to(F64)
    x = np.random.default_rng(0).normal(size=(64, 6))
    objective = OBJECTIVES.get("iwae")(TrainConfig(objective="iwae", k=50))
    got = objective.validate(model, x, {}, seed=7)
    ref = float(log_px_per_point(model, x, k=50, seed=7, per_row=False).mean())
    one = float(log_px_per_point(model, x, k=1, seed=7, per_row=False).mean())
    assert got == pytest.approx(ref, rel=0, abs=1e-9)
    assert got > one + 0.1
