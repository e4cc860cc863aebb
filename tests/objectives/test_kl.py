"""Closed-form KLs against torch's own, and against seeded Monte Carlo; the MC fallback."""

import math

import pytest
import torch
from torch.distributions import Distribution, Independent, Normal, constraints, kl_divergence

from vaekit.distributions import DiagonalNormal, PointMass, StandardNormal
from vaekit.objectives import kl
from vaekit.objectives.kl import bubble_forces, kl_per_dim

F64 = torch.float64
# float64 sums of a few O(1..10) terms: 1e-10 is far above rounding and far below any wrong term.
TIGHT = dict(rtol=1e-10, atol=1e-10)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _torch_normal(mu, logvar):
    return Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)


def _params(seed, n=4, d=3):
    g = _gen(seed)
    return torch.randn(n, d, generator=g, dtype=F64), torch.randn(n, d, generator=g, dtype=F64)


def test_kl_diagonal_standard_matches_torch():
    mu, logvar = _params(0)
    q = DiagonalNormal(mu, logvar)
    ref = kl_divergence(_torch_normal(mu, logvar), _torch_normal(torch.zeros_like(mu), torch.zeros_like(logvar)))
    torch.testing.assert_close(kl_divergence(q, StandardNormal(3, dtype=F64)), ref, **TIGHT)
    torch.testing.assert_close(kl(q, StandardNormal(3, dtype=F64)), ref, **TIGHT)
    # KL(p || p) = 0.
    zero = kl(DiagonalNormal(torch.zeros(2, 3, dtype=F64), torch.zeros(2, 3, dtype=F64)), StandardNormal(3, dtype=F64))
    torch.testing.assert_close(zero, torch.zeros(2, dtype=F64), rtol=0, atol=1e-15)


def test_kl_diagonal_diagonal_matches_torch():
    mu_q, lv_q = _params(1)
    mu_p, lv_p = _params(2)
    ref = kl_divergence(_torch_normal(mu_q, lv_q), _torch_normal(mu_p, lv_p))
    got = kl_divergence(DiagonalNormal(mu_q, lv_q), DiagonalNormal(mu_p, lv_p))
    assert got.shape == (4,)
    torch.testing.assert_close(got, ref, **TIGHT)
    torch.testing.assert_close(kl(DiagonalNormal(mu_q, lv_q), DiagonalNormal(mu_p, lv_p)), ref, **TIGHT)


@pytest.mark.parametrize("pair", ["standard", "diagonal"])
def test_kl_closed_form_matches_monte_carlo(pair):
    mu_q, lv_q = _params(3)
    q = DiagonalNormal(mu_q, lv_q)
    p = StandardNormal(3, dtype=F64) if pair == "standard" else DiagonalNormal(*_params(4))
    s = 200_000
    z = q.sample((s,), generator=_gen(5))  # (S, n, d)
    diff = q.log_prob(z) - p.log_prob(z)  # (S, n), mean is the MC KL
    mc = kl(q, p, z, analytic=False)
    torch.testing.assert_close(mc, diff.mean(0), **TIGHT)
    # The closed form must lie within 4 standard errors (sd of the per-sample terms / √S) of the
    # MC estimate: for a correct formula each of the 4 points fails with probability ~6e-5.
    se = diff.std(0) / math.sqrt(s)
    assert ((mc - kl(q, p)).abs() < 4 * se).all(), ((mc - kl(q, p)) / se)


class _PlainNormal(Distribution):
    """A N(0, I) that no KL is registered for (deliberately not a DiagonalNormal subclass)."""

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, dim):
        super().__init__(torch.Size(), torch.Size([dim]), validate_args=False)

    def log_prob(self, z):
        return -0.5 * (z**2 + math.log(2 * math.pi)).sum(-1)


def test_kl_falls_back_to_monte_carlo_when_unregistered():
    mu, logvar = _params(6)
    q, p = DiagonalNormal(mu, logvar), _PlainNormal(3)
    with pytest.raises(NotImplementedError):
        kl_divergence(q, p)  # so the call below really goes through the fallback
    z = q.rsample((1000,), generator=_gen(7))
    expected = (q.log_prob(z) - p.log_prob(z)).mean(0)
    torch.testing.assert_close(kl(q, p, z), expected, **TIGHT)
    torch.testing.assert_close(kl(q, p, z, analytic=False), expected, **TIGHT)
    with pytest.raises(ValueError):
        kl(q, p)  # no closed form and no samples


def test_kl_monte_carlo_is_differentiable():
    mu, logvar = _params(8)
    mu.requires_grad_(True)
    q = DiagonalNormal(mu, logvar)
    z = q.rsample((4,), generator=_gen(9))
    (g,) = torch.autograd.grad(kl(q, StandardNormal(3, dtype=F64), z, analytic=False).sum(), mu)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_bubble_forces_are_the_two_parts_of_the_closed_form_kl():
    """The second note's mean force ½ Σ μ² and variance force ½ Σ (σ² − log σ² − 1) add up to
    KL(N(μ, σ²) ‖ N(0, I)), each computed by hand on known numbers."""
    mu = torch.tensor([[0.0, 0.0], [1.0, -2.0], [0.5, 3.0]], dtype=F64)
    logvar = torch.tensor([[0.0, 0.0], [0.0, math.log(4.0)], [-1.0, 2.0]], dtype=F64)
    q, p = DiagonalNormal(mu, logvar), StandardNormal(2, dtype=F64)
    mean, variance = bubble_forces(q, p)
    torch.testing.assert_close(mean, torch.tensor([0.0, 2.5, 4.625], dtype=F64), **TIGHT)
    # σ² = 4: ½ (4 − log 4 − 1); log σ² = −1 and 2: ½ (e⁻¹ + 1 − 1) + ½ (e² − 2 − 1)
    expected = [0.0, 0.5 * (3.0 - math.log(4.0)), 0.5 * math.exp(-1.0) + 0.5 * (math.exp(2.0) - 3.0)]
    torch.testing.assert_close(variance, torch.tensor(expected, dtype=F64), **TIGHT)
    torch.testing.assert_close(mean + variance, kl(q, p), **TIGHT)
    # a unit bubble at the origin feels neither force
    assert float(mean[0]) == 0.0 and float(variance[0]) == 0.0


def test_bubble_forces_sum_to_the_kl_on_random_posteriors():
    mu, logvar = _params(5, n=64, d=7)
    q, p = DiagonalNormal(mu, logvar), StandardNormal(7, dtype=F64)
    mean, variance = bubble_forces(q, p)
    assert mean.shape == variance.shape == (64,)
    assert bool((mean >= 0).all() and (variance >= 0).all())  # x − log x − 1 ≥ 0
    torch.testing.assert_close(mean + variance, kl(q, p), **TIGHT)
    torch.testing.assert_close(mean + variance, kl_per_dim(q, p).sum(-1), **TIGHT)


def test_bubble_forces_only_where_the_kl_splits_so():
    mu, logvar = _params(6)
    q = DiagonalNormal(mu, logvar)
    assert bubble_forces(q, DiagonalNormal(mu, logvar)) is None
    assert bubble_forces(PointMass(mu), StandardNormal(3, dtype=F64)) is None
