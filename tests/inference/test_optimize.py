"""Test-time optimisation of q with θ fixed (vaekit.inference.optimize): it finds the exact
posterior where one is known, refinement never makes a point worse than the encoder's start,
and MAP / VI inference for new points converges."""

from __future__ import annotations

import pytest
import torch

from vaekit.distributions import DiagonalNormal, PointMass
from vaekit.inference.optimize import RowStop, ascend_rows, gaussian_around, optimize_gaussian, optimize_point
from vaekit.objectives import elbo

from inference_helpers import SIGMA

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- exact posterior


def test_optimize_gaussian_finds_the_exact_posterior(linear_gaussian):
    lg = linear_gaussian(n=8)
    zeros = torch.zeros(8, 3, dtype=F64)
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
    # The MAP objective log p(x|z) + log p(z) has no noise, but optimize_point runs Adam at a
    # constant rate, whose steps are ~lr whatever the size of the gradient (m̂/√v̂ is scale-free):
    # once v̂ has forgotten the large early gradients the iterate can circle the mode m at up to
    # ~lr rather than settle. 1500 steps cover |m| ≲ 3 at lr 0.01, and the error then stays
    # below lr = 0.01 (1e-9 to 5e-4 observed on various data). A MAP that lost the prior
    # term (the least-squares fit) lies 0.08–2 from m in some coordinate of every row.
    lg = linear_gaussian(n=8)
    lr = 0.01
    p = optimize_point(lg.model, lg.x, torch.zeros(8, 3, dtype=F64), steps=1500, lr=lr)
    assert isinstance(p, PointMass)
    torch.testing.assert_close(p.z, lg.m, rtol=0, atol=lr)


def test_row_stop_ends_the_ascent_near_the_exact_posterior(linear_gaussian):
    """Checks every 50 steps under fixed noise: each row stops on its third plateau, well
    before the 5000 allowed, at a multiple of 50 steps, within 0.05 nats of KL of the exact
    posterior; a rule that never sees a plateau (tol −∞) takes every step, and one allowed no
    rate division stops each row at its first plateau, no later."""

    zeros = torch.zeros(8, 3, dtype=F64)
    rates = [torch.full((8, 1), 0.05, dtype=F64)] * 2
    lg = linear_gaussian(n=8)

    def run(steps, tol, decays, compact=True):
        stop = RowStop(every=50, tol=tol, decays=decays, samples=64)
        return ascend_rows(lg.model, lg.x, [zeros, zeros], DiagonalNormal, steps, rates, 16, stop=stop, compact=compact)

    (mu, logvar), taken = run(5000, 1e-3, 2)
    assert bool((taken > 0).all() and (taken < 5000).all() and (taken % 50 == 0).all()), taken
    assert float(lg.kl_to_posterior(mu, logvar).max()) < 0.05
    assert run(300, float("-inf"), 2)[1].tolist() == [300] * 8
    assert bool((run(5000, 1e-3, 0)[1] <= taken).all())
    # Frozen in place of taken out (a q that holds its batch's x): the same rows, the same steps.
    (mu_f, logvar_f), taken_f = run(5000, 1e-3, 2, compact=False)
    assert torch.equal(taken_f, taken)
    torch.testing.assert_close(mu_f, mu, rtol=0, atol=1e-12)
    torch.testing.assert_close(logvar_f, logvar, rtol=0, atol=1e-12)


def test_zero_steps_returns_the_start(linear_gaussian):
    lg = linear_gaussian(n=4)
    mu, logvar = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    q = optimize_gaussian(lg.model, lg.x, mu, logvar, steps=0, lr=0.1)
    assert torch.equal(q.mu, mu) and torch.equal(q.logvar, logvar)
    q = gaussian_around(lg.model, lg.x, mu, steps=0, lr=0.1)
    assert torch.equal(q.mu, mu) and torch.allclose(q.logvar, torch.full_like(mu, 1e-2).log())


# --------------------------------------------------------------------------- refinement


def _scores(model, x, q, seed: int = 1, n_samples: int = 64) -> torch.Tensor:
    """Per-point ELBO under fixed draws of their own: seed 1, never the draws (seed 0) with which
    optimize._keep_better chose between start and end, so a gain measured here is not one
    selected for."""
    return elbo(model, x, q=q, n_samples=n_samples, generator=_gen(seed)).elbo


def _spoil(lg, start: str) -> None:
    """The encoder of the exact-posterior model made wrong: the prior N(0, I) for every x, or
    the exact map perturbed (mean weights + 0.3·noise, log σ² + 0.8)."""
    enc = lg.model.inference.encoder.net[0]
    with torch.no_grad():
        if start == "prior":
            enc.weight.zero_()
            enc.bias.zero_()
        else:
            A = lg.S @ lg.W.T / SIGMA**2
            enc.weight.copy_(torch.cat([A, torch.zeros_like(A)]) + 0.3 * torch.randn(6, 6, generator=_gen(1), dtype=F64))
            enc.bias.copy_(torch.cat([-A @ lg.b, torch.diagonal(lg.S).log() + 0.8]))


@pytest.mark.parametrize("start", ["prior", "perturbed"])
@pytest.mark.parametrize("refine_lr", [0.05, 0.5])
def test_refinement_moves_q_toward_the_exact_posterior(linear_gaussian, refine_lr, start):
    """3 refinement steps against the closed form KL(q || p(z|x)) = log p(x) − ELBO(q)."""
    lg = linear_gaussian(n=64, refine_steps=3, refine_lr=refine_lr)
    _spoil(lg, start)
    lg.model.eval()
    with torch.no_grad():
        q0 = lg.model.posterior(lg.x)
        q = lg.model.evaluation_posterior(lg.x)
    kl0 = lg.kl_to_posterior(q0.mu, q0.logvar.expand_as(q0.mu))
    kl = lg.kl_to_posterior(q.mu, q.logvar)
    # On average q moves well toward p(z|x). Observed mean KL, start → refined: prior 11.6 →
    # 9.8 (lr 0.05; 9.7 and 10.0 under other noise), 4.2 (lr 0.5); perturbed 2.8 → 2.1, 1.9.
    assert float(kl.mean()) < 0.9 * float(kl0.mean()), (float(kl0.mean()), float(kl.mean()))
    moved = ~(q.mu == q0.mu).all(-1)
    if refine_lr == 0.05:
        # Small steps: the points that moved are closer to their posterior (observed: all, by
        # ≥ 0.01, with torch 2.13; one misjudged by the 16-draw check with torch 2.4's stream).
        # How many move depends on that check's close calls, whose last bits differ between
        # CPUs (observed 57 to 64 of 64 on two).
        assert int(moved.sum()) >= 52 and int((kl[moved] >= kl0[moved]).sum()) <= 2, (kl - kl0)[moved]
    elif start == "perturbed":
        # lr 0.5 overshoots for many points near their optimum: the check keeps their start
        # (observed 28 of 64). Its 16 draws misjudge a few: the closed form puts 3 of the 36 moved
        # points further from their posterior, so only the average above is a property of q.
        assert 0 < int((~moved).sum()) < len(lg.x)
    else:
        # From the prior, far from every optimum, lr 0.5 steps are improvements (observed 59, 60
        # and 63 of 64 under three draws of the noise).
        assert int(moved.sum()) >= 54


def test_refinement_raises_the_elbo_on_a_trained_model(trained, digits):
    model = trained["amortized"][0]
    x = torch.as_tensor(digits["test"])
    with torch.no_grad():
        start = model.posterior(x)
        gains = {}
        for steps, lr in ((2, 0.5), (50, 0.05)):
            torch.manual_seed(3)
            # What Amortized.refine does with refine_steps = steps, refine_lr = lr.
            refined = optimize_gaussian(model, x, start.mu, start.logvar, steps, lr)
            gains[steps] = _scores(model, x, refined) - _scores(model, x, start)  # (n,)
    se = {s: float(g.std() / len(g) ** 0.5) for s, g in gains.items()}
    # 50 steps help by far more than the noise of these 64-draw differences (observed 0.83-0.86
    # nats, SE 0.08 over draws seeded 1-3); 2 overshooting steps help less (0.09-0.15, SE 0.05),
    # and in no case lower the ELBO on average beyond the noise.
    assert float(gains[50].mean()) > max(0.1, 4 * se[50]), (float(gains[50].mean()), se[50])
    assert float(gains[2].mean()) > -4 * se[2], (float(gains[2].mean()), se[2])


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
        gain = _scores(model, x, a) - _scores(model, x, start)
    assert torch.equal(a.mu, b.mu) and torch.equal(a.logvar, b.logvar)
    assert torch.equal(a.mu, c.mu) and torch.equal(a.logvar, c.logvar)
    # Independent draws, as above: 50 steps, a gain far beyond the noise.
    assert float(gain.mean()) > max(0.1, 4 * float(gain.std()) / 10), float(gain.mean())


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
        # 64 common draws for every step count (differences are not swamped by noise), other
        # than the check's: optimize_point / _gaussian keep the start where it scores higher.
        return float(_scores(model, x, q).mean())


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
def test_test_time_optimisation_converges_to_the_exact_posterior(method, linear_gaussian):
    """The same schedule from z = 0 (map) or the prior (vi) on the exact-posterior model,
    against closed forms: the distance of ẑ to the posterior mode m (map; the MAP of a
    Gaussian posterior is its mean), and KL(q || p(z|x)) (vi)."""
    lg = linear_gaussian(n=100)
    z0 = torch.zeros(100, 3, dtype=F64)
    f = {}
    with torch.no_grad():
        for steps in STEPS:
            if method == "map":
                f[steps] = float((optimize_point(lg.model, lg.x, z0, steps, 0.05).z - lg.m).abs().max())
            else:
                q = optimize_gaussian(lg.model, lg.x, z0, z0, steps, 0.05)
                f[steps] = float(lg.kl_to_posterior(q.mu, q.logvar).mean())
    assert f[0] > f[20] > f[100] > f[200], f
    if method == "map":
        # No noise in the MAP objective: observed max |ẑ − m| 3e-4 after 200 steps, 1e-8 after 400.
        assert f[400] < 1e-6 and f[800] < 1e-6, f
    else:
        # KL 12.3 → 0.07 after 200 steps; after that constant-lr Adam on 1-draw gradients jitters
        # around the optimum (0.07-0.08 nats observed): converged, as on digits, within 2% of what
        # the first 100 steps gained, and close to q* = p(z|x).
        assert abs(f[800] - f[400]) < 0.02 * (f[0] - f[100]) and f[800] < 0.15, f


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


# --------------------------------------------------------------------------- per-row ascent


def test_ascend_rows_is_adam_row_by_row(linear_gaussian):
    """Before its first check (RowStop().every steps) ``ascend_rows`` is torch's Adam on each
    row with that row's rate: every row run alone through torch.optim.Adam on the same noise
    stream lands on the same parameters."""
    from vaekit.distributions import RowStreams

    lg = linear_gaussian(n=5)
    start = [torch.randn(5, 3, generator=_gen(3), dtype=F64), torch.zeros(5, 3, dtype=F64)]
    rates = torch.tensor([[0.01], [0.03], [0.1], [0.3], [1.0]], dtype=F64)
    steps = RowStop().every - 1
    (mu, logvar), taken = ascend_rows(lg.model, lg.x, start, DiagonalNormal, steps, [rates, rates / 10], 2)
    assert taken.tolist() == [steps] * 5
    for i in range(5):
        x = lg.x[i : i + 1]
        params = [p[i : i + 1].clone().requires_grad_(True) for p in start]
        opt = torch.optim.Adam([{"params": params[0], "lr": float(rates[i])}, {"params": params[1], "lr": float(rates[i]) / 10}])
        noise = RowStreams(x, 0, use=RowStreams.FIT)
        for _ in range(steps):
            opt.zero_grad()
            (-elbo(lg.model, x, q=DiagonalNormal(*params), n_samples=2, generator=noise).elbo.sum()).backward()
            opt.step()
        torch.testing.assert_close(mu[i : i + 1], params[0].detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(logvar[i : i + 1], params[1].detach(), rtol=1e-10, atol=1e-12)


def test_ascend_rows_stops_each_row_on_its_own(linear_gaussian):
    """Rows stop at their own plateaus (multiples of the check interval, before the cap), the
    result near the exact posterior; a row's result and step count are the same scored alone
    as among the others."""
    lg = linear_gaussian(n=6)
    logvar = torch.diagonal(lg.S).log().expand(6, 3).clone()
    mu = lg.m.clone()
    mu[1:] += torch.linspace(0.5, 4.0, 5, dtype=F64).unsqueeze(1)  # row 0 starts at the optimum
    rates = [torch.full((6, 1), 0.05, dtype=F64)] * 2
    (mu_all, lv_all), taken = ascend_rows(lg.model, lg.x, [mu, logvar], DiagonalNormal, 5000, rates, 4)
    assert bool((taken % RowStop().every == 0).all()) and int(taken.max()) < 5000, taken
    # Stopping is a row's own decision: the rows, started 0 to 4 units from the optimum, do not
    # stop together, and none before its (decays + 1)-th plateau. Which row stops first is
    # left to the noise: with 4-draw gradients even the row started at the optimum jitters
    # and may see its plateaus later than a row that started away from it.
    assert len(set(taken.tolist())) > 1 and int(taken.min()) >= (RowStop().decays + 1) * RowStop().every, taken
    assert float(lg.kl_to_posterior(mu_all, lv_all).max()) < 0.05
    for rows in ([3], [5, 1], [0, 4, 2]):
        (mu_r, lv_r), taken_r = ascend_rows(lg.model, lg.x[rows], [mu[rows], logvar[rows]], DiagonalNormal, 5000, [r[rows] for r in rates], 4)
        assert torch.equal(taken_r, taken[rows])
        torch.testing.assert_close(mu_r, mu_all[rows], rtol=0, atol=1e-12)
        torch.testing.assert_close(lv_r, lv_all[rows], rtol=0, atol=1e-12)


def test_gaussian_around_a_far_code_reaches_the_posterior(linear_gaussian):
    """An autoencoder's code can lie tens of prior standard deviations out. The proposal grown
    around it first ascends to the posterior mode with a rate that starts at POINT_LR_SCALE of
    the code's RMS, so 100 steps per stage come as close to the exact posterior from 40 units
    out as from its mode (KL under 0.5 nats per row: 1-draw gradients at rate 0.05 jitter
    around the optimum, 0.02-0.22 observed), where constant-rate Adam at 0.05 covers 5 units
    at most and stays hundreds of nats away."""
    lg = linear_gaussian(n=8)
    far = lg.m + 40.0
    for start in (far, lg.m):
        q = gaussian_around(lg.model, lg.x, start, steps=100, lr=0.05)
        assert float(lg.kl_to_posterior(q.mu, q.logvar).max()) < 0.5
    constant = [torch.full((8, 1), 0.05, dtype=F64)] * 2
    (mu, logvar), _ = ascend_rows(lg.model, lg.x, [far, torch.full_like(far, -4.6)], DiagonalNormal, 100, constant, 1, stop=None)
    assert float(lg.kl_to_posterior(mu, logvar).min()) > 100
