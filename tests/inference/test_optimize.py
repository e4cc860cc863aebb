"""Test-time optimisation of q with θ fixed (vaekit.inference.optimize): it finds the exact
posterior where one is known, refinement never makes a point worse than the encoder's start,
and MAP / VI inference for new points converges."""

from __future__ import annotations

import pytest
import torch

from vaekit.config import ModelConfig
from vaekit.distributions import DiagonalNormal, PointMass
from vaekit.inference.optimize import CHECK_SAMPLES, gaussian_around, optimize_gaussian, optimize_point
from vaekit.model import VAEModel
from vaekit.objectives import elbo

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- exact posterior


def test_optimize_gaussian_finds_the_exact_posterior(linear_gaussian):
    lg = linear_gaussian(n=8)
    zeros = torch.zeros(8, 3, dtype=F64)
    torch.manual_seed(0)  # _ascend draws its reparameterization noise from the global stream
    # Constant-lr Adam does not converge but jitters around the optimum: with gradient noise
    # σ_g (v ≈ σ_g²) it acts as SGD with rate lr/σ_g, whose stationary spread on a quadratic of
    # curvature h is sqrt(lr·σ_g / 2h). Here h = 1/S_jj ∈ [2, 10] for μ with σ_g ≈ sqrt(h/1024),
    # and h = ½ for log σ² with σ_g ≈ 0.7/sqrt(1024): spreads ≈ 0.003 and ≈ 0.01 at lr 0.01 with
    # 1024 samples; 2000 steps cover the distance (|m| ≲ 3, |log S_jj| ≤ 2.3) with room to spare.
    # The largest of 24 entries stays within ~3 spreads; 0.03 is that with a margin (a missed
    # optimum, e.g. a wrong sign in a gradient, is off by O(1)).
    q = optimize_gaussian(lg.model, lg.x, zeros, zeros, steps=2000, lr=0.01, n_samples=1024)
    assert isinstance(q, DiagonalNormal)
    torch.testing.assert_close(q.mu, lg.m, rtol=0, atol=0.03)
    torch.testing.assert_close(q.logvar, torch.diagonal(lg.S).log().expand_as(q.logvar), rtol=0, atol=0.03)
    # And its KL to the exact posterior is (almost) zero: ½·(h·δμ² + ½·δlogvar²) per dim.
    assert float(lg.kl_to_posterior(q.mu, q.logvar).max()) < 0.01


def test_optimize_point_finds_the_exact_posterior_mode(linear_gaussian):
    # The MAP objective log p(x|z) + log p(z) has no noise: Adam's steps shrink with the
    # gradient and reach the mode m of the Gaussian posterior to ~1e-9 in 1500 steps
    # (observed); 1e-6 leaves room for other BLAS summation orders.
    lg = linear_gaussian(n=8)
    p = optimize_point(lg.model, lg.x, torch.zeros(8, 3, dtype=F64), steps=1500, lr=0.01)
    assert isinstance(p, PointMass)
    torch.testing.assert_close(p.z, lg.m, rtol=0, atol=1e-6)


def test_zero_steps_returns_the_start(linear_gaussian):
    lg = linear_gaussian(n=4)
    mu, logvar = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    q = optimize_gaussian(lg.model, lg.x, mu, logvar, steps=0, lr=0.1)
    assert torch.equal(q.mu, mu) and torch.equal(q.logvar, logvar)
    q = gaussian_around(lg.model, lg.x, mu, steps=0, lr=0.1)
    assert torch.equal(q.mu, mu) and torch.allclose(q.logvar, torch.full_like(mu, 1e-2).log())


# --------------------------------------------------------------------------- refinement


def _check_scores(model, x, q) -> torch.Tensor:
    """Per-point ELBO under the noise draws that optimize._keep_better uses (seed 0)."""
    return elbo(model, x, q=q, n_samples=CHECK_SAMPLES, generator=_gen(0)).elbo


def _random_amortized(refine_steps: int, refine_lr: float):
    torch.manual_seed(0)
    config = ModelConfig(
        input_dim=10, latent_dim=3, hidden=(16,), activation="tanh", likelihood="gaussian", variance="shared",
        refine_steps=refine_steps, refine_lr=refine_lr,
    )  # fmt: skip
    model = VAEModel(config).to(F64).eval()
    x = torch.randn(64, 10, generator=_gen(1), dtype=F64)
    return model, x


@pytest.mark.parametrize("refine_lr", [0.05, 0.5])
def test_refinement_never_lowers_an_elbo_on_a_random_model(refine_lr):
    # lr 0.5 with 3 steps overshoots for many points: the check must then return the start.
    model, x = _random_amortized(refine_steps=3, refine_lr=refine_lr)
    torch.manual_seed(2)
    with torch.no_grad():
        start = model.posterior(x)
        refined = model.evaluation_posterior(x)
        before, after = _check_scores(model, x, start), _check_scores(model, x, refined)
    # Exact, not approximate: per point, the kept q is the one that scored higher on these draws.
    assert bool((after >= before).all()), (after - before).min()
    kept = (refined.mu == start.mu).all(-1)
    assert torch.equal(after[kept], before[kept])
    assert bool((after[~kept] >= before[~kept]).all())
    if refine_lr == 0.5:
        assert 0 < int(kept.sum()) < len(x), "expected some points to keep their start"


def test_refinement_never_lowers_an_elbo_on_a_trained_model(trained, digits):
    model = trained["amortized"][0]
    x = torch.as_tensor(digits["test"])
    with torch.no_grad():
        start = model.posterior(x)
        for steps, lr in ((2, 0.5), (50, 0.05)):
            torch.manual_seed(3)
            # What Amortized.refine does with refine_steps = steps, refine_lr = lr.
            refined = optimize_gaussian(model, x, start.mu, start.logvar, steps, lr)
            before, after = _check_scores(model, x, start), _check_scores(model, x, refined)
            assert bool((after >= before).all()), (steps, lr, float((after - before).min()))
    # With enough steps the refinement helps on average, by a margin far beyond the noise of a
    # 16-draw mean over 200 points (per-point ELBO noise ~0.4 nats / 4, over 200 points: 0.01).
    assert float((after - before).mean()) > 0.1


def test_amortized_refine_uses_the_configured_steps(trained, digits):
    """Amortized.refine and evaluation_posterior both go through optimize_gaussian with
    refine_steps / refine_lr, from the encoder's q."""
    import copy

    model = copy.deepcopy(trained["amortized"][0])
    model.config.refine_steps, model.config.refine_lr = 50, 0.05
    model.inference.config = model.config
    x = torch.as_tensor(digits["test"][:100])
    with torch.no_grad():
        start = model.posterior(x)
        torch.manual_seed(4)
        a = model.evaluation_posterior(x)
        torch.manual_seed(4)
        b = model.inference.refine(model, x, start)
        torch.manual_seed(4)
        c = optimize_gaussian(model, x, start.mu, start.logvar, 50, 0.05)
        before, after = _check_scores(model, x, start), _check_scores(model, x, a)
    assert torch.equal(a.mu, b.mu) and torch.equal(a.logvar, b.logvar)
    assert torch.equal(a.mu, c.mu) and torch.equal(a.logvar, c.logvar)
    assert bool((after >= before).all()) and float((after - before).mean()) > 0.1


# --------------------------------------------------------------------------- new points, map and vi

STEPS = (0, 20, 100, 200, 400, 800)


def _objective_after(method, model, x, steps):
    z0 = torch.zeros(x.shape[0], model.config.latent_dim)
    torch.manual_seed(5)
    with torch.no_grad():
        if method == "map":
            # log p(x|z) + log p(z): no Monte Carlo in the MAP objective.
            return float(elbo(model, x, q=optimize_point(model, x, z0, steps, 0.05)).elbo.mean())
        q = optimize_gaussian(model, x, z0, z0, steps, 0.05)
        # 64 common draws for every step count: differences are not swamped by noise.
        return float(elbo(model, x, q=q, n_samples=64, generator=_gen(0)).elbo.mean())


@pytest.mark.parametrize("method", ["map", "vi"])
def test_test_time_optimisation_converges(method, trained, digits):
    model = trained[method][0]
    x = torch.as_tensor(digits["valid"][:100])
    f = {s: _objective_after(method, model, x, s) for s in STEPS}
    assert f[200] > f[20] > f[0], f
    assert f[100] - f[0] > 1.0, f  # ~7 (vi) and ~17 (map) nats per point observed
    # Converged: the last 400 steps change the objective by under 2% of what the first 100 did
    # (observed ~0.3% for vi, ~0% for map).
    assert abs(f[800] - f[400]) < 0.02 * (f[100] - f[0]), f


@pytest.mark.parametrize("method", ["map", "vi"])
def test_new_points_get_their_q_by_optimisation(method, trained, digits):
    """posterior(x) without idx is the test-time optimum from z = 0 (map) or the prior (vi)
    with local_steps / local_lr."""
    model = trained[method][0]
    x = torch.as_tensor(digits["valid"][:50])
    z0 = torch.zeros(50, model.config.latent_dim)
    with torch.no_grad():
        torch.manual_seed(6)
        q = model.posterior(x)
        torch.manual_seed(6)
        if method == "map":
            ref = optimize_point(model, x, z0, model.config.local_steps, model.config.local_lr)
            assert torch.equal(q.z, ref.z)
        else:
            ref = optimize_gaussian(model, x, z0, z0, model.config.local_steps, model.config.local_lr)
            assert torch.equal(q.mu, ref.mu) and torch.equal(q.logvar, ref.logvar)
