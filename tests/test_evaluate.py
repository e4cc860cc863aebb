"""vaekit.evaluate: ELBO terms and the importance-weighted log p(x), checked against
torch.distributions and against a linear Gaussian model whose q is the exact posterior, so
that log p(x), E_q[log p(x|z)] and KL are known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import ContinuousBernoulli, Independent, Normal, kl_divergence

from hierarchy_helpers import set_exact_linear_gaussian
from vaekit.distributions import RowStreams
from vaekit.config import ModelConfig, TrainConfig
from vaekit.evaluate import elbo_per_point, evaluate, log_px_per_point
from vaekit.model import VAEModel
from vaekit.train import fit

KEYS = {"elbo", "recon", "kl", "log_likelihood", "bits_per_dim", "n", "k"}
# The latent units' use (LatentUsage.summary), tested in test_latent_usage.py.
USAGE_KEYS = {"active_units", "latent_size", "kl_per_dim", "kl_per_group"}


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    x = (load_digits().data / 16.0).astype(np.float32)
    return x[np.random.default_rng(0).permutation(len(x))]


def digits_model(seed: int = 0, dtype=torch.float32) -> VAEModel:
    torch.manual_seed(seed)
    model = VAEModel(ModelConfig(input_dim=64, latent_dim=4, hidden=(32,), likelihood="continuous_bernoulli"))
    return model.to(dtype)


@pytest.fixture(scope="module")
def trained(digits) -> VAEModel:
    model = digits_model(0)
    fit(model, digits[:1200], digits[1200:1400], TrainConfig(epochs=5, batch_size=64, lr=3e-3))
    return model


# ---- an exact reference: linear Gaussian model with the exact posterior as q ------------------


def exact_linear_gaussian(D: int = 6, d: int = 3, sigma2: float = 0.2, seed: int = 0):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I) with orthogonal columns of W, and an encoder set
    to the exact posterior N(Σ Wᵀ(x − b)/σ², Σ), Σ = (I + WᵀW/σ²)⁻¹ (diagonal because WᵀW is).
    Then log p(x,z) − log q(z|x) = log p(x) for every z: IWAE is exact for any K."""
    rng = np.random.default_rng(seed)
    q_, _ = np.linalg.qr(rng.normal(size=(D, d)))
    w = q_ * np.array([2.0, 1.0, 0.5])[:d]  # orthogonal columns, different lengths
    b = rng.normal(size=D)
    post_var = 1.0 / (1.0 + (w**2).sum(0) / sigma2)  # diag Σ, for the references below
    m = (post_var[:, None] * w.T) / sigma2  # μ = M (x − b)
    model = VAEModel(ModelConfig(input_dim=D, latent_dim=d, hidden=(), likelihood="gaussian", variance="shared"))
    model = model.double()
    set_exact_linear_gaussian(model, w, b, sigma2)
    x = rng.normal(size=(500, d)) @ w.T + b + math.sqrt(sigma2) * rng.normal(size=(500, D))
    cov = w @ w.T + sigma2 * np.eye(D)
    r = x - b
    log_px = -0.5 * (D * math.log(2 * math.pi) + np.linalg.slogdet(cov)[1] + np.einsum("ij,ij->i", r @ np.linalg.inv(cov), r))
    mu = r @ m.T
    kl = 0.5 * (post_var.sum() - np.log(post_var).sum() - d + (mu**2).sum(1))
    resid = x - mu @ w.T - b
    recon = -0.5 * D * math.log(2 * math.pi * sigma2) - ((resid**2).sum(1) + (w**2 * post_var).sum()) / (2 * sigma2)
    return model, x, log_px, recon, kl


def test_exact_model_log_likelihood_and_terms():
    model, x, log_px, recon, kl = exact_linear_gaussian()
    # The reference is self-consistent: log p(x) = E_q[log p(x|z)] − KL when q is exact.
    np.testing.assert_allclose(recon - kl, log_px, rtol=0, atol=1e-10)
    # IWAE is exact for every K and every seed (all weights are equal), to float64 rounding.
    for k, seed in ((1, 0), (7, 1), (100, 2)):
        np.testing.assert_allclose(log_px_per_point(model, x, k=k, seed=seed), log_px, rtol=0, atol=1e-9)
    terms = elbo_per_point(model, x, seed=0)
    np.testing.assert_allclose(terms["kl"], kl, rtol=1e-12, atol=1e-12)  # closed form, no noise
    # One-sample recon is noisy around the closed form; with 400 samples per point each mean
    # has sd = sd_1/20, and over 500 points the mean error has sd ≈ sd_1/√200000.
    many = elbo_per_point(model, x, n_samples=400, seed=1)
    err = many["recon"] - recon
    one = terms["recon"] - recon
    assert abs(err.mean()) < 5 * one.std() / math.sqrt(400 * len(x))
    assert np.abs(err).max() < 6 * one.std() / 20
    result = evaluate(model, x, k=5, seed=3)
    assert result["log_likelihood"] == pytest.approx(log_px.mean(), abs=1e-9)
    assert result["bits_per_dim"] == pytest.approx(-log_px.mean() / (6 * math.log(2)), abs=1e-9)
    assert result["kl"] == pytest.approx(kl.mean(), abs=1e-12)
    assert result["n"] == 500 and result["k"] == 5


# ---- against torch.distributions ---------------------------------------------------------------


def test_elbo_terms_match_torch_distributions(digits):
    model = digits_model(3)
    x = torch.as_tensor(digits[:300])
    terms = elbo_per_point(model, x, seed=5)
    with torch.no_grad():
        mu, logvar = model.posterior(x).mu, model.posterior(x).logvar
        std = torch.exp(0.5 * logvar)
        # elbo_per_point draws each row's ε from its own stream, RowStreams(x, seed).
        eps = RowStreams(x, 5).randn(1, mu.shape[-1], mu.dtype)
        z = mu + eps * std
        recon = Independent(ContinuousBernoulli(logits=model.decoder(z)), 1).log_prob(x).mean(0)
        kl = kl_divergence(Independent(Normal(mu, std), 1), Independent(Normal(torch.zeros_like(mu), 1.0), 1))
    # float32 sums over 64 pixels of values ~1, and torch's own Taylor cut-off near λ = ½:
    # agreement to 1e-3 nats on values of tens of nats.
    np.testing.assert_allclose(terms["recon"], recon.double().numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(terms["kl"], kl.double().numpy(), rtol=1e-5, atol=1e-5)


# ---- relations ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_evaluate_keys_and_relations(digits, dtype, tol):
    model = digits_model(0, dtype)
    x = digits[:200]
    result = evaluate(model, x, k=20, seed=0)
    assert set(result) == KEYS | USAGE_KEYS
    assert result["n"] == 200 and result["k"] == 20
    assert all(isinstance(result[k], float) for k in KEYS - {"n", "k"})
    # elbo = recon − kl per point, computed in the model's dtype (float32: |elbo| ~ 10, so
    # rounding ~1e-6 per point); averages inherit it.
    assert result["elbo"] == pytest.approx(result["recon"] - result["kl"], abs=tol)
    terms = elbo_per_point(model, x, seed=0)
    np.testing.assert_allclose(terms["elbo"], terms["recon"] - terms["kl"], rtol=0, atol=tol * 10)
    assert result["elbo"] == pytest.approx(float(terms["elbo"].mean()), abs=1e-12)
    assert result["bits_per_dim"] == pytest.approx(-result["log_likelihood"] / (64 * math.log(2)), rel=1e-12)
    # evaluate uses seed + 1 for the IWAE stream.
    ll = log_px_per_point(model, x, k=20, seed=1)
    assert result["log_likelihood"] == pytest.approx(float(ll.mean()), abs=1e-12)
    # A torch tensor gives the same numbers as the array.
    assert evaluate(model, torch.as_tensor(x), k=20, seed=0) == result


def test_evaluate_is_deterministic_per_seed(trained, digits):
    x = digits[1400:1600]
    a = evaluate(trained, x, k=30, seed=0)
    assert evaluate(trained, x, k=30, seed=0) == a
    b = evaluate(trained, x, k=30, seed=1)
    assert b["elbo"] != a["elbo"] and b["log_likelihood"] != a["log_likelihood"]
    assert b["kl"] == pytest.approx(a["kl"], rel=1e-6)  # the closed-form KL has no noise
    # ... and the difference is noise-sized: within a few nats/√n of each other.
    assert abs(b["log_likelihood"] - a["log_likelihood"]) < 1.0


@pytest.mark.parametrize("which", ["random", "trained"])
def test_log_likelihood_is_at_least_the_elbo(digits, trained, which):
    model = trained if which == "trained" else digits_model(1)
    x = digits[1400:1700]
    result = evaluate(model, x, k=200, seed=0)
    assert result["log_likelihood"] > result["elbo"]
    # IWAE rises with K on average (Burda et al. 2016): K=1 (whose mean is the ELBO) < K=10 < K=200.
    means = [log_px_per_point(model, x, k=k, seed=4).mean() for k in (1, 10)]
    assert means[0] < means[1] < result["log_likelihood"]
    # K=1 estimates the ELBO itself: means agree within 5 standard errors of the difference.
    one = log_px_per_point(model, x, k=1, seed=4)
    elbo = elbo_per_point(model, x, seed=9)["elbo"]
    assert abs(one.mean() - elbo.mean()) < 5 * math.sqrt(one.var() / len(x) + elbo.var() / len(x))


def test_log_px_reports_its_progress_without_changing_the_numbers(trained, digits):
    x = digits[1400:1600]
    done = []
    with_progress = log_px_per_point(trained, x, k=8, batch_size=64, seed=0, progress=done.append)
    assert done == [64, 128, 192, 200]
    np.testing.assert_array_equal(with_progress, log_px_per_point(trained, x, k=8, batch_size=64, seed=0))


def test_log_px_batching(trained, digits):
    x = digits[1400:1600]  # 200 rows
    whole = log_px_per_point(trained, x, k=64, seed=0)
    # The same seed and batching: the same numbers, bit for bit.
    np.testing.assert_array_equal(log_px_per_point(trained, x, k=64, batch_size=7, seed=0),
                                  log_px_per_point(trained, x, k=64, batch_size=7, seed=0))  # fmt: skip
    # One batch either way (the default is 256 rows for K >= 64): identical.
    np.testing.assert_array_equal(log_px_per_point(trained, x, k=64, batch_size=200, seed=0), whole)
    # Each row draws from its own stream: batches of 7, a row alone, or the rows reversed give
    # its number again, up to float32 rounding of products over another number of rows.
    small = log_px_per_point(trained, x, k=64, batch_size=7, seed=0)
    np.testing.assert_allclose(small, whole, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(log_px_per_point(trained, x[5:6], k=64, seed=0), whole[5:6], rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(log_px_per_point(trained, x[::-1], k=64, seed=0)[::-1], whole, rtol=1e-6, atol=1e-5)
    # Another seed is an independent estimate of the same numbers: per-row differences have
    # mean 0 (within 5 standard errors) and are a fraction of a nat at K = 64. The estimate is
    # the log of a mean of heavy-tailed weights, so the largest of 200 differences is set by a
    # rare large weight, not by the SE (1.3–2.2 nats seen, 4–6 sd): the bulk is bounded, by
    # the 90% quantile of |d| (0.40–0.58 seen; its sampling error is a few hundredths), and
    # the extreme against the typical size, median |d| (0.16–0.22; max/median 8–12 seen).
    d = log_px_per_point(trained, x, k=64, seed=1) - whole
    assert np.abs(d).max() > 1e-3
    assert abs(d.mean()) < 5 * d.std() / math.sqrt(len(d))
    assert np.quantile(np.abs(d), 0.9) < 1.0, np.quantile(np.abs(d), 0.9)
    assert np.abs(d).max() < 20 * np.median(np.abs(d)), (np.abs(d).max(), np.median(np.abs(d)))


def test_evaluation_keeps_training_flag_and_global_rng(trained, digits):
    x = digits[:50]
    for flag in (True, False):
        trained.train(flag)
        state = torch.get_rng_state()
        elbo_per_point(trained, x, seed=0)
        assert trained.training is flag
        assert all(m.training is flag for m in trained.modules())
        log_px_per_point(trained, x, k=5, seed=0)
        evaluate(trained, x, k=5)
        assert trained.training is flag
        # Evaluation draws from its own generator: the training stream does not move.
        assert torch.equal(torch.get_rng_state(), state)
    trained.eval()


def test_eval_mode_restores_the_mode_however_the_block_ends():
    import torch

    from vaekit.evaluate import eval_mode

    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    for start in (True, False):
        m.train(start)
        with pytest.raises(RuntimeError, match="inside"):
            with eval_mode(m):
                assert not m.training and not m[1].training
                raise RuntimeError("inside")
        assert m.training is start and m[1].training is start


def test_one_stream_for_a_pass_when_rows_need_none_of_their_own(trained, digits):
    """per_row=False (the training loop's validation means) draws one seeded stream through the
    pass: one batch reads it as randn((S, n, D)) from Generator(seed), so the per-row values
    then depend on the batching, as they never do with per-row streams."""
    from vaekit.objectives import elbo as elbo_terms

    x = torch.as_tensor(digits[:300])
    one = elbo_per_point(trained, x, seed=4, per_row=False)
    with torch.no_grad():
        q = trained.evaluation_posterior(x)
        reference = elbo_terms(trained, x, q=q, generator=torch.Generator().manual_seed(4)).elbo
    np.testing.assert_allclose(one["elbo"], reference.double().numpy(), rtol=1e-6, atol=1e-5)
    batched = elbo_per_point(trained, x, seed=4, per_row=False, batch_size=7)["elbo"]
    assert np.abs(batched - one["elbo"]).max() > 1e-3
    assert abs(batched.mean() - one["elbo"].mean()) < 1.0  # the same estimate, other draws


def test_per_row_results_fill_arrays_of_the_final_length():
    """PerRow: batches land in order in arrays allocated once (float64 by default; with dtype
    None each name's own dtype, bfloat16 as float32, 2-D values keep their columns); a pass
    that put fewer rows than announced is an error, not a short array."""
    from vaekit.evaluate import PerRow

    out = PerRow(5, ("a", "b"))
    out.put(a=torch.tensor([1.0, 2.0]), b=torch.tensor([3, 4]))
    out.put(a=torch.tensor([5.0, 6.0, 7.0], requires_grad=True), b=torch.tensor([8, 9, 10]))
    got = out.result()
    assert got["a"].dtype == got["b"].dtype == np.float64 and out.done == 5
    np.testing.assert_array_equal(got["a"], [1, 2, 5, 6, 7])
    np.testing.assert_array_equal(got["b"], [3, 4, 8, 9, 10])
    wide = PerRow(3, ("mu",), dtype=None)
    wide.put(mu=torch.arange(6, dtype=torch.bfloat16).reshape(3, 2))
    assert wide.result()["mu"].dtype == np.float32 and wide.result()["mu"].shape == (3, 2)
    short = PerRow(4, ("a",))
    short.put(a=torch.zeros(3))
    with pytest.raises(RuntimeError, match="3 rows put of 4"):
        short.result()


def test_the_public_estimates_check_their_rows_and_counts():
    """evaluate, gaps, elbo and iwae take rows in the model's units: the wrong width, 1-D rows,
    values outside the likelihood's support, a meta tensor, k or n_samples below 1 are one
    vaekit error each, never torch's shape error or a NaN."""
    from vaekit import bubbles
    from vaekit.errors import ConfigError, DataError
    from vaekit.evaluate import gaps
    from vaekit.objectives import elbo, iwae

    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=16, latent_dim=2, hidden=(16,), likelihood="bernoulli"))
    x = torch.bernoulli(torch.full((8, 16), 0.3))
    for call, error, says in (
        (lambda: evaluate(model, x[:, :5], k=10), DataError, r"^x has 5 features per row, but the model was trained on 16$"),
        (lambda: gaps(model, x[:, :5], k=10, steps=5), DataError, r"^x has 5 features per row"),
        (lambda: gaps(model, x[0], k=10, steps=5), DataError, r"^x: expected a 2-D array"),
        (lambda: evaluate(model, torch.rand(4, 16), k=10), DataError, r"^x has values outside the support of the bernoulli likelihood"),
        (lambda: evaluate(model, torch.empty(4, 16, device="meta"), k=10), DataError, r"^x is a meta tensor: it holds no values$"),
        (lambda: evaluate(model, x, k=0), ConfigError, r"^k must be an integer >= 1, got 0$"),
        (lambda: gaps(model, x, k=10, steps=0), ConfigError, r"^steps must be an integer >= 1, got 0$"),
        (lambda: iwae(model, x, 0), ConfigError, r"^k must be an integer >= 1, got 0$"),
        (lambda: elbo(model, x, n_samples=0), ConfigError, r"^n_samples must be an integer >= 1, got 0$"),
        (lambda: elbo_per_point(model, x[:, :5]), DataError, r"^x has 5 features per row"),
        (lambda: elbo_per_point(model, torch.rand(4, 16)), DataError, r"^x has values outside the support of the bernoulli likelihood"),
        (lambda: log_px_per_point(model, torch.full((2, 16), torch.nan), k=3), DataError, r"^x contains NaN \(first at row 1, column 1\)"),
        (lambda: bubbles.posterior_parameters(model, torch.zeros(3, 5)), DataError, r"^x has 5 features per row"),
    ):  # fmt: skip
        with pytest.raises(error, match=says):
            call()
    assert iwae(model, x, np.int64(3)).shape == (8,)  # numpy's integers are integers
    assert math.isfinite(evaluate(model, x.numpy(), k=10)["log_likelihood"])


def test_a_model_moved_to_bfloat16_is_scored_from_float32_rows(trained, digits):
    """Each row's noise stream is named by the row's values, read in float32 where the model's
    rows are bfloat16 (numpy has no bfloat16): the estimates run, and come close to float32's."""
    import copy

    half = copy.deepcopy(trained).to(torch.bfloat16)
    rows = digits[1400:1432]
    log_px = log_px_per_point(half, rows, k=20)
    assert log_px.shape == (32,) and np.isfinite(log_px).all()
    np.testing.assert_allclose(log_px.mean(), log_px_per_point(trained, rows, k=20).mean(), rtol=0.05)
    assert np.isfinite(elbo_per_point(half, rows)["elbo"]).all()


def test_the_library_s_lower_parts_raise_vaekit_errors():
    """Misuse of the parts below the estimator is a ConfigError or DataError (both ValueErrors)
    naming the culprit, never an AttributeError or torch's own message."""
    from vaekit.config import RunConfig
    from vaekit.errors import ConfigError, DataError
    from vaekit.exact import LinearGaussian
    from vaekit.objectives import iwae
    from vaekit.distributions import PointMass

    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=6, latent_dim=2, hidden=(8,), likelihood="bernoulli"))
    vi = VAEModel(ModelConfig(input_dim=6, latent_dim=2, hidden=(8,), likelihood="bernoulli", inference="vi", n_points=4))
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    for call, error, says in (
        (lambda: RunConfig(model="x"), ConfigError, r"^RunConfig.model must be a ModelConfig, got str$"),
        (lambda: model.sample(-1), ConfigError, r"^n must be an integer >= 0, got -1$"),
        (lambda: evaluate(vi, x, k=3, idx=np.arange(4, 8)), DataError, r"^idx must index the 4 training rows"),
        (lambda: iwae(model, x, 3, q=PointMass(torch.zeros(4, 2))), ConfigError, r"^a point mass is no importance proposal"),
    ):  # fmt: skip
        with pytest.raises(error, match=says):
            call()
    assert model.sample(0).shape == (0, 6)
    # the closed forms take arrays as well as tensors
    fa = VAEModel(ModelConfig(input_dim=3, latent_dim=2, hidden=(), likelihood="gaussian", variance="feature")).double()
    exact = LinearGaussian.of(fa)
    rows = np.random.default_rng(0).standard_normal((5, 3))
    q = exact.posterior(torch.as_tensor(rows))
    np.testing.assert_allclose(exact.gap(q, rows), exact.gap(q, torch.as_tensor(rows)))


def test_the_equations_take_rows_of_any_dtype():
    """elbo and iwae read rows in the model's dtype, as evaluate does: a float64 model given
    float32 or integer pixels gives what it gives the same rows in float64."""
    from vaekit.objectives import elbo, iwae

    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=6, latent_dim=2, hidden=(8,), likelihood="bernoulli")).double()
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    want_elbo = elbo(model, x.double(), generator=torch.Generator().manual_seed(1)).elbo
    want_iwae = iwae(model, x.double(), 5, generator=torch.Generator().manual_seed(1))
    for rows in (x, x.long(), x.bool()):
        assert torch.equal(elbo(model, rows, generator=torch.Generator().manual_seed(1)).elbo, want_elbo)
        assert torch.equal(iwae(model, rows, 5, generator=torch.Generator().manual_seed(1)), want_iwae)


def test_a_density_below_the_float_range_is_minus_inf_and_gaps_refuse_it():
    """A row whose log-density lies below float32's range (a value at 3e19 under a Gaussian of
    σ = 1: log p ≈ −4.5e38) but whose code is finite (the encoder ignores that feature here) is
    scored −inf, the float that estimate rounds to, by log_px_per_point and evaluate; gaps,
    whose differences of −inf terms are not numbers, refuse it in one line naming the row."""
    from vaekit.errors import DataError
    from vaekit.evaluate import gaps

    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=3, latent_dim=2, hidden=(4,), likelihood="gaussian", variance="fixed"))
    with torch.no_grad():
        model.inference.encoder.net[0].weight[:, 2] = 0.0
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    x[1, 2] = 3e19
    log_px = log_px_per_point(model, x, k=5)
    assert np.isneginf(log_px[1]) and np.isfinite(np.delete(log_px, 1)).all()
    assert np.isfinite(elbo_per_point(model, x)["kl"]).all()
    assert evaluate(model, x, k=5)["log_likelihood"] == -math.inf
    with pytest.raises(DataError, match=r"^row 2: its log p\(x\) is -inf, below the range of the model's floats \(its values reach 3e\+19 "):
        gaps(model, x, k=5, steps=2)
    assert np.isfinite(gaps(model, np.delete(x, 1, axis=0), k=5, steps=2)["approximation_gap"])
