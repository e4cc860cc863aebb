"""vaekit.distributions against torch.distributions, explicit float64 formulas and seeded sampling."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, ContinuousBernoulli, Independent, Normal

from vaekit.distributions import BernoulliLogits, ContinuousBernoulliLogits, DiagonalNormal, StandardNormal, draw

F64 = torch.float64
# float64 has ~1e-16 relative precision; the densities below are sums of O(10) terms of size
# O(10), so agreement to 1e-10 leaves many orders of magnitude of room yet catches any wrong term.
TIGHT = dict(rtol=1e-10, atol=1e-10)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _torch_normal(mu, logvar):
    return Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)


# --------------------------------------------------------------------------- DiagonalNormal


@pytest.mark.parametrize("logvar_shape", [(4, 3), (3,)], ids=["full", "broadcast"])
def test_diagonal_normal_matches_torch(logvar_shape):
    g = _gen(0)
    mu = torch.randn(4, 3, generator=g, dtype=F64)
    logvar = torch.randn(logvar_shape, generator=g, dtype=F64)
    z = 3 * torch.randn(4, 3, generator=g, dtype=F64)
    q, ref = DiagonalNormal(mu, logvar), _torch_normal(mu, logvar.expand(4, 3))

    assert q.batch_shape == (4,) and q.event_shape == (3,)
    torch.testing.assert_close(q.log_prob(z), ref.log_prob(z), **TIGHT)
    torch.testing.assert_close(q.entropy(), ref.entropy(), **TIGHT)
    torch.testing.assert_close(q.mean, ref.mean, **TIGHT)
    torch.testing.assert_close(q.stddev, ref.stddev, **TIGHT)
    torch.testing.assert_close(q.variance, ref.variance, **TIGHT)
    assert q.log_prob(z).shape == (4,)
    # log_prob also broadcasts over leading sample dims: (S, n, D) -> (S, n).
    zs = torch.randn(5, 4, 3, generator=g, dtype=F64)
    torch.testing.assert_close(q.log_prob(zs), ref.log_prob(zs), **TIGHT)


@pytest.mark.parametrize("sample_shape", [(), (7,), (2, 5)])
def test_diagonal_normal_rsample_shape(sample_shape):
    q = DiagonalNormal(torch.zeros(4, 3, dtype=F64), torch.zeros(3, dtype=F64))
    z = q.rsample(torch.Size(sample_shape), generator=_gen(0))
    assert z.shape == torch.Size(sample_shape) + (4, 3)
    assert z.dtype == F64


def test_diagonal_normal_rsample_is_reparameterized():
    """z = μ + ε·σ: ∂z/∂μ = I and ∂z/∂logvar = diag(ε·σ/2), with ε drawn from the same generator."""
    g = _gen(1)
    mu = torch.randn(2, 3, generator=g, dtype=F64)
    logvar = torch.randn(2, 3, generator=g, dtype=F64)

    def draw(mu, logvar):
        return DiagonalNormal(mu, logvar).rsample(generator=_gen(123))

    jac_mu, jac_lv = torch.autograd.functional.jacobian(draw, (mu, logvar))
    eps = torch.randn(2, 3, generator=_gen(123), dtype=F64)
    expected_lv = torch.diag((eps * torch.exp(0.5 * logvar) / 2).flatten())
    torch.testing.assert_close(jac_mu.reshape(6, 6), torch.eye(6, dtype=F64), **TIGHT)
    torch.testing.assert_close(jac_lv.reshape(6, 6), expected_lv, **TIGHT)
    # And the sample itself is μ + ε·σ with that ε.
    torch.testing.assert_close(draw(mu, logvar), mu + eps * torch.exp(0.5 * logvar), **TIGHT)
    assert DiagonalNormal(mu, logvar).has_rsample


def test_diagonal_normal_sample_moments():
    mu = torch.tensor([-1.0, 0.5, 2.0], dtype=F64)
    logvar = torch.tensor([-2.0, 0.0, 1.5], dtype=F64)
    n = 200_000
    z = DiagonalNormal(mu, logvar).sample((n,), generator=_gen(2))
    var = torch.exp(logvar)
    # Standard errors of the sample mean (σ/√n) and of the sample variance (σ²·√(2/(n−1)) for a
    # normal); 4 SE bounds each of the 6 checks with failure probability ~6e-5 under a correct sampler.
    assert ((z.mean(0) - mu).abs() < 4 * var.sqrt() / math.sqrt(n)).all()
    assert ((z.var(0) - var).abs() < 4 * var * math.sqrt(2 / (n - 1))).all()


def test_diagonal_normal_generator_reproducible():
    q = DiagonalNormal(torch.zeros(3, 2, dtype=F64), torch.zeros(3, 2, dtype=F64))
    a = q.rsample((4,), generator=_gen(7))
    b = q.rsample((4,), generator=_gen(7))
    c = q.rsample((4,), generator=_gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(q.sample((4,), generator=_gen(7)), a)


# --------------------------------------------------------------------------- StandardNormal


def test_standard_normal_matches_torch():
    p = StandardNormal(3, dtype=F64)
    ref = Independent(Normal(torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)), 1)
    z = 2 * torch.randn(5, 4, 3, generator=_gen(3), dtype=F64)
    torch.testing.assert_close(p.log_prob(z), ref.log_prob(z), **TIGHT)
    torch.testing.assert_close(p.entropy(), ref.entropy(), **TIGHT)
    torch.testing.assert_close(p.mean, ref.mean, **TIGHT)
    torch.testing.assert_close(p.variance, ref.variance, **TIGHT)
    s = p.sample((6, 2), generator=_gen(0))
    assert s.shape == (6, 2, 3) and s.dtype == F64
    assert torch.equal(s, p.sample((6, 2), generator=_gen(0)))


# --------------------------------------------------------------------------- BernoulliLogits


def test_bernoulli_logits_matches_torch_and_formula():
    g = _gen(4)
    logits = 3 * torch.randn(6, 5, generator=g, dtype=F64)
    x = torch.bernoulli(torch.full((6, 5), 0.5, dtype=F64), generator=g)
    b = BernoulliLogits(logits)
    ref = Independent(Bernoulli(logits=logits), 1)
    torch.testing.assert_close(b.log_prob(x), ref.log_prob(x), **TIGHT)
    p = torch.sigmoid(logits)
    explicit = (x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(-1)
    torch.testing.assert_close(b.log_prob(x), explicit, **TIGHT)
    torch.testing.assert_close(b.mean, p, **TIGHT)
    # x of shape (n, D) broadcasts against logits of shape (S, n, D).
    many = BernoulliLogits(logits.expand(3, 6, 5))
    torch.testing.assert_close(many.log_prob(x), ref.log_prob(x).expand(3, 6), **TIGHT)


def _log_sigmoid_reference(l: float) -> float:
    """log σ(l), written so that neither branch overflows or loses the tiny term."""
    return -math.log1p(math.exp(-l)) if l >= 0 else l - math.log1p(math.exp(l))


def test_bernoulli_logits_extreme_logits():
    logits = torch.tensor([[50.0, -50.0, 50.0, -50.0, 0.0]], dtype=F64)
    x = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0]], dtype=F64)
    # Naively, σ(50) rounds to 1 in float64 and log(1 − σ(50)) = −inf.
    naive = (x * torch.log(torch.sigmoid(logits)) + (1 - x) * torch.log(1 - torch.sigmoid(logits))).sum(-1)
    assert not torch.isfinite(naive).all()
    lp = BernoulliLogits(logits).log_prob(x)
    assert torch.isfinite(lp).all()
    # log p(x) = Σ x log σ(l) + (1 − x) log σ(−l).
    ref = sum(
        _log_sigmoid_reference(l) if xi == 1 else _log_sigmoid_reference(-l)
        for l, xi in zip(logits[0].tolist(), x[0].tolist())
    )
    # ref ≈ −100 − 2·log1p(e^-50) − log 2: relative float64 precision.
    torch.testing.assert_close(lp, torch.tensor([ref], dtype=F64), rtol=1e-12, atol=0)
    torch.testing.assert_close(lp, Independent(Bernoulli(logits=logits), 1).log_prob(x), rtol=1e-12, atol=0)


def _several_samples(seed: int, k: int = 7, n: int = 6, d: int = 5):
    """Logits (k, n, d), K samples per row, and binary x (n, d): the log_prob path for several
    samples of z per row, which computes −Σ softplus((1 − 2x)·l) in a function of its own."""
    g = _gen(seed)
    logits = 8 * torch.randn(k, n, d, generator=g, dtype=F64)
    x = torch.bernoulli(torch.full((n, d), 0.5, dtype=F64), generator=g)
    return logits, x


def _reference(logits, x):
    # Without argument checks: their data-dependent test is refused under vmap by older torch.
    return Independent(Bernoulli(logits=logits, validate_args=False), 1).log_prob(x)


def test_bernoulli_several_samples_value_and_gradients():
    logits, x = _several_samples(5)
    logits.requires_grad_()
    f = lambda l: BernoulliLogits(l).log_prob(x)  # noqa: E731
    torch.testing.assert_close(f(logits), _reference(logits, x), **TIGHT)
    assert type(f(logits).grad_fn).__name__ == "_BinaryBernoulliLogProbBackward"  # the hand-written gradient
    (g,) = torch.autograd.grad(f(logits).sum(), logits)
    (g_ref,) = torch.autograd.grad(_reference(logits, x).sum(), logits)
    torch.testing.assert_close(g, g_ref, **TIGHT)
    # ∂ log p/∂l = x − σ(l), and second derivatives (create_graph) by finite differences.
    torch.testing.assert_close(g, (x - torch.sigmoid(logits)).detach(), **TIGHT)
    assert torch.autograd.gradcheck(f, (logits,))
    assert torch.autograd.gradgradcheck(f, (logits,))


def test_bernoulli_several_samples_forward_mode_and_vmap():
    logits, x = _several_samples(6)
    v = torch.randn(logits.shape, generator=_gen(7), dtype=F64)
    out, tangent = torch.func.jvp(lambda l: BernoulliLogits(l).log_prob(x), (logits,), (v,))
    ref, ref_tangent = torch.func.jvp(lambda l: _reference(l, x), (logits,), (v,))
    torch.testing.assert_close(out, ref, **TIGHT)
    torch.testing.assert_close(tangent, ref_tangent, **TIGHT)
    # Per-row gradients under vmap: each row's K samples against its own x.
    per_row = torch.func.vmap(torch.func.grad(lambda l, xi: BernoulliLogits(l).log_prob(xi).sum()), in_dims=(1, 0))
    torch.testing.assert_close(per_row(logits, x), (x - torch.sigmoid(logits)).transpose(0, 1), **TIGHT)
    # A batch of K-sample logits against one x, second derivatives, and batched gradients.
    f = lambda l: BernoulliLogits(l).log_prob(x).sum()  # noqa: E731
    ref = lambda l: _reference(l, x).sum()  # noqa: E731
    batch = torch.stack([logits, -logits])
    torch.testing.assert_close(torch.func.vmap(torch.func.grad(f))(batch), torch.func.vmap(torch.func.grad(ref))(batch), **TIGHT)
    torch.testing.assert_close(torch.func.hessian(f)(logits[:2]), torch.func.hessian(ref)(logits[:2]), **TIGHT)
    l = logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda l: BernoulliLogits(l).log_prob(x), (l,), check_batched_grad=True, check_forward_ad=True)


def test_bernoulli_several_samples_custom_derivatives_match_the_closed_form():
    """The hand-written Function's own derivatives, on the path that takes it (logits that
    require grad, several samples of binary x): forward mode (dual tensors, its jvp), the
    gradient with create_graph (its differentiable branch) and the second derivative through
    it, against ∂/∂l log p = x − σ(l) and ∂²/∂l² = −σ(l)(1 − σ(l))."""
    import torch.autograd.forward_ad as fwAD

    logits, x = _several_samples(6)
    v = torch.randn(logits.shape, generator=_gen(8), dtype=F64)
    sigma = torch.sigmoid(logits)
    with fwAD.dual_level():
        dual = fwAD.make_dual(logits.clone().requires_grad_(), v)
        tangent = fwAD.unpack_dual(BernoulliLogits(dual).log_prob(x)).tangent
    torch.testing.assert_close(tangent, ((x - sigma) * v).sum(-1), **TIGHT)
    l = logits.clone().requires_grad_()
    (g,) = torch.autograd.grad(BernoulliLogits(l).log_prob(x).sum(), l, create_graph=True)
    torch.testing.assert_close(g, (x - sigma).expand_as(g), **TIGHT)
    (h,) = torch.autograd.grad((g * v).sum(), l)
    torch.testing.assert_close(h, -sigma * (1 - sigma) * v, **TIGHT)


def test_bernoulli_several_samples_extremes_and_fallbacks():
    # Confident logits: log p is the tiny log σ(l), not 0 from x·l − softplus(l) cancelling,
    # and softplus's own threshold (t itself above 20) does not cut the e^−t term.
    logits = torch.tensor([[[30.0, -30.0, 25.0]], [[-60.0, 60.0, 0.0]]], dtype=F64)
    x = torch.tensor([[1.0, 0.0, 1.0]], dtype=F64)
    expected = torch.tensor(
        [[sum(_log_sigmoid_reference(v) for v in (30.0, 30.0, 25.0))], [_log_sigmoid_reference(-60.0) * 2 + math.log(0.5)]],
        dtype=F64,
    )
    torch.testing.assert_close(BernoulliLogits(logits).log_prob(x), expected, rtol=1e-14, atol=0)
    assert BernoulliLogits(logits).log_prob(x)[0, 0] < 0
    # Values that are not 0 or 1 take the general x·l − softplus(l); NaN stays NaN.
    soft = torch.tensor([[0.25, 0.5, 1.0]], dtype=F64)
    ref = (soft * logits - torch.nn.functional.softplus(logits)).sum(-1)
    torch.testing.assert_close(BernoulliLogits(logits).log_prob(soft), ref, **TIGHT)
    assert torch.isnan(BernoulliLogits(logits).log_prob(torch.tensor([[float("nan"), 0.0, 1.0]], dtype=F64))).all()
    # Integer and boolean x are values 0 and 1 (1 − 2x must not wrap around in uint8).
    for cast in (torch.uint8, torch.bool, torch.int64):
        torch.testing.assert_close(BernoulliLogits(logits).log_prob(x.to(cast)), expected, rtol=1e-14, atol=0)
    # The result's dtype is that of l and x together, at least float32.
    assert BernoulliLogits(logits.float()).log_prob(x).dtype == F64
    assert BernoulliLogits(logits.float()).log_prob(x.float()).dtype == torch.float32
    assert BernoulliLogits(logits.bfloat16()).log_prob(x.float()).dtype == torch.float32
    # x that itself needs a gradient: ∂ log p/∂x = l.
    xg = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(BernoulliLogits(logits).log_prob(xg).sum(), xg)
    torch.testing.assert_close(gx, logits.sum(0), **TIGHT)


def test_bernoulli_several_samples_under_bf16_autocast():
    """A float32 log-likelihood of bf16 logits (as autocast keeps BCE in float32), whose gradient
    reaches the bf16 logits' source."""
    logits, x = _several_samples(8)
    h = logits.float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = torch.nn.functional.linear(h, torch.eye(h.shape[-1]))
        assert low.dtype == torch.bfloat16
        lp = BernoulliLogits(low).log_prob(x.float())
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, _reference(low.detach().double(), x).float(), rtol=1e-5, atol=1e-4)
    lp.sum().backward()
    expected = (x - torch.sigmoid(low.detach().double())).float()
    torch.testing.assert_close(h.grad, expected, rtol=0, atol=2e-2)  # one bf16 rounding of the gradient


def test_bernoulli_several_samples_compiled():
    logits, x = _several_samples(9)
    logits = logits.float().requires_grad_()
    compiled = torch.compile(lambda l: BernoulliLogits(l).log_prob(x.float()).sum(), fullgraph=True)
    value = compiled(logits)
    (g,) = torch.autograd.grad(value, logits)
    torch.testing.assert_close(value, _reference(logits, x.float()).sum(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(g, x.float() - torch.sigmoid(logits.detach()), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- ContinuousBernoulliLogits

# Random logits plus the Taylor branch (|l| < 1e-2), exactly 0, and moderate magnitudes.
CB_LOGITS = torch.cat(
    [
        2 * torch.randn(12, generator=_gen(5), dtype=F64),
        torch.tensor([0.0, 1e-3, -1e-3, 5e-3, -9.9e-3, 1e-2, -1.01e-2, 10.0, -10.0, -30.0], dtype=F64),
    ]
)


def _cb_log_norm_reference(l: float) -> float:
    """log C(λ) = log[2 atanh(1 − 2λ)/(1 − 2λ)], λ = σ(l), in 50-digit arithmetic (C(1/2) = 2)."""
    mp = pytest.importorskip("mpmath")
    with mp.workdps(50):
        if l == 0:
            return math.log(2.0)
        lam = 1 / (1 + mp.exp(-mp.mpf(l)))
        return float(mp.log(2 * mp.atanh(1 - 2 * lam) / (1 - 2 * lam)))


def _cb_mean_reference(l: torch.Tensor) -> torch.Tensor:
    """E[x] = λ/(2λ − 1) + 1/(2 atanh(1 − 2λ)) = 1/(1 − e^{−l}) − 1/l, in float64 (|l| ≥ 1 here)."""
    l = l.double()
    return -1 / torch.expm1(-l) - 1 / l


def test_continuous_bernoulli_matches_torch():
    logits = CB_LOGITS.reshape(-1, 1).expand(-1, 3)  # batch of 22 points, event dim 3
    x = torch.rand(logits.shape, generator=_gen(6), dtype=F64)
    x[:, 0] = 0.0  # the endpoints are in the support
    x[:, 1] = 1.0
    cb = ContinuousBernoulliLogits(logits)
    ref = Independent(ContinuousBernoulli(logits=logits), 1)
    # Both sides are float64. vaekit's Taylor branch 2(1 + l²/12) drops the −l⁴/720 term of
    # l/tanh(l/2), an error ≤ (1e-2)⁴/720 ≈ 1.4e-11 per dimension, so 3 dims < 1e-10; torch's own
    # branches are accurate to ~1e-13 for these logits. Values are O(1..100): rtol 1e-10 holds too.
    torch.testing.assert_close(cb.log_prob(x), ref.log_prob(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(cb.mean, ref.mean, rtol=1e-10, atol=1e-10)
    assert torch.isfinite(cb.log_prob(x)).all()


@pytest.mark.parametrize("l", [0.0, 1e-3, -5e-3, -9.9e-3, 0.3, -3.0, 30.0, -30.0])
def test_continuous_bernoulli_log_norm_high_precision(l):
    """At l = +30 torch itself is off by 3e-5 (log1p(−σ(30)) cancels), so ±30 and the Taylor
    branch are checked against a 50-digit evaluation of the paper's formula instead."""
    x = torch.tensor([[0.0, 0.25, 1.0]], dtype=F64)
    logits = torch.full((1, 3), l, dtype=F64)
    lp = ContinuousBernoulliLogits(logits).log_prob(x)
    # Σ_d [x_d log σ(l) + (1 − x_d) log σ(−l)] + 3 log C: the Bernoulli part from the stable form.
    bern = sum(xi * _log_sigmoid_reference(l) + (1 - xi) * _log_sigmoid_reference(-l) for xi in x[0].tolist())
    ref = bern + 3 * _cb_log_norm_reference(l)
    # Taylor truncation ≤ 3 · l⁴/720 ≤ 1.3e-11 (see above); elsewhere float64 rounding of O(100).
    assert abs(lp.item() - ref) < 1e-10 * max(1.0, abs(ref))


@pytest.mark.parametrize("l", [0.0, 1e-3, -5e-3, 0.7, -3.0, 10.0, -30.0, 30.0])
def test_continuous_bernoulli_density_integrates_to_one(l):
    grid = torch.linspace(0, 1, 200_001, dtype=F64).unsqueeze(-1)  # (G, 1): G points, event dim 1
    cb = ContinuousBernoulliLogits(torch.full(grid.shape, l, dtype=F64))
    dens = torch.exp(cb.log_prob(grid))
    # Trapezoid error ≤ h²/12 · max|f''| ≈ (5e-6)²/12 · |l|³ ≈ 6e-8 for |l| = 30: tol 1e-4 is loose
    # for the rule yet fails for any wrong normaliser (log C off by 1e-4).
    assert abs(torch.trapezoid(dens, grid[:, 0]).item() - 1.0) < 1e-4


def test_continuous_bernoulli_grad_finite_at_zero():
    logits = torch.zeros(1, 4, dtype=F64, requires_grad=True)
    x = torch.tensor([[0.0, 0.3, 0.7, 1.0]], dtype=F64)
    (g,) = torch.autograd.grad(ContinuousBernoulliLogits(logits).log_prob(x).sum(), logits)
    assert torch.isfinite(g).all()
    # d/dl [x·l − softplus(l) + log C(l)] at l = 0 is x − 1/2 + 0 (log C is even in l).
    torch.testing.assert_close(g, x - 0.5, rtol=0, atol=1e-12)


def test_continuous_bernoulli_samples():
    logits = torch.tensor([-3.0, -0.5, 0.0, 1e-3, 2.0, 10.0], dtype=F64)
    cb = ContinuousBernoulliLogits(logits)
    n = 200_000
    s = cb.sample((n,), generator=_gen(9))
    assert s.shape == (n, 6)
    assert ((s >= 0) & (s <= 1)).all()
    # 4 standard errors (sample sd/√n) per coordinate; the sampler clamps u to [1e-6, 1 − 1e-6],
    # a bias below 1e-6, far under the SE (≥ ~2e-4 here).
    se = s.std(0) / math.sqrt(n)
    assert ((s.mean(0) - cb.mean).abs() < 4 * se).all()
    assert torch.equal(s, cb.sample((n,), generator=_gen(9)))


def test_continuous_bernoulli_float32_large_logits_mean_and_samples():
    logits = torch.tensor([-30.0, -20.0, 20.0, 30.0])  # float32, the training default
    cb = ContinuousBernoulliLogits(logits)
    exact = _cb_mean_reference(logits)
    # float32 resolution near 1 is 6e-8; 1e-5 allows a few hundred ulps of rounding.
    torch.testing.assert_close(cb.mean.double(), exact, rtol=0, atol=1e-5)
    n = 200_000
    s = cb.sample((n,), generator=_gen(10)).double()
    # 4 SE of the sample mean, as above.
    assert ((s.mean(0) - exact).abs() < 4 * s.std(0) / math.sqrt(n)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_diagonal_normal_of_an_exploding_variance_has_a_finite_density(dtype):
    """log σ² ≈ 150 or more (an outlier's encoder): σ² and z would overflow and (z − μ)²/σ² be ∞/∞.
    Capped where σ² stays finite: its draws, their log q and log N(z; 0, I) over the latent
    dimensions, and the closed-form KL are finite."""
    import vaekit.objectives.kl  # noqa: F401  (registers the closed forms)
    from vaekit.distributions import logvar_ceiling

    mu = torch.zeros(1, 8, dtype=dtype)
    q = DiagonalNormal(mu, torch.full((1, 8), 1000.0, dtype=dtype))
    assert float(q.logvar.max()) == pytest.approx(logvar_ceiling(dtype), abs=0.5)
    z = q.rsample((4,), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(z).all() and torch.isfinite(q.log_prob(z)).all()
    assert torch.isfinite(Normal(torch.zeros((), dtype=dtype), 1.0).log_prob(z).sum(-1)).all()
    assert torch.isfinite(torch.distributions.kl_divergence(q, DiagonalNormal(mu, torch.zeros_like(mu)))).all()
    # While a loss is differentiated an exploding variance is divergence, left for the NaN check.
    wild = torch.full((1, 8), 1000.0, dtype=dtype, requires_grad=True)
    assert float(DiagonalNormal(mu, wild).logvar.detach().max()) == 1000.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_diagonal_normal_of_a_vanishing_variance_has_a_finite_density(dtype):
    """An encoder far outside its training range can output log σ² ≈ −1e4: 1/σ² overflows and
    (z − μ)²/σ² at z = μ would be 0·∞. log σ² is floored where 1/σ² stays finite, so log q at
    q's own draws (and at μ) is finite and large; in-range log σ² is untouched (torch's Normal)."""
    from vaekit.distributions import logvar_floor

    mu = torch.tensor([[0.3, -2.0]], dtype=dtype)
    q = DiagonalNormal(mu, torch.tensor([[-1e4, -3.0]], dtype=dtype))
    assert float(q.logvar[0, 0]) == pytest.approx(logvar_floor(dtype), abs=0.5) and float(q.logvar[0, 1]) == -3.0
    assert torch.isfinite(torch.exp(-q.logvar)).all()
    # The peak log q(μ) = −log 2π − ½ Σ log σ² is ≈ 43.5 at the float32 floor (bfloat16 the
    # same, rounded to 43.25; float64 354). A draw lies ½|ε|² below it, and |ε|² over two
    # dimensions exceeds 27 with probability e^−13.5: 30 holds for any draws, 42 at μ.
    peak = -math.log(2 * math.pi) - 0.5 * q.logvar.double().sum(-1)
    torch.testing.assert_close(q.log_prob(mu).double(), peak, rtol=torch.finfo(dtype).eps * 4, atol=0)
    for z, low in ((q.rsample((4,), generator=torch.Generator().manual_seed(0)), 30), (mu, 42)):
        lp = q.log_prob(z)
        assert torch.isfinite(lp).all() and (lp.float() > low).all(), lp
    ok = DiagonalNormal(mu.double(), torch.tensor([[-20.0, 3.0]], dtype=torch.float64))
    z = torch.tensor([[0.31, 1.0]], dtype=torch.float64)
    expected = Normal(mu.double(), torch.exp(0.5 * torch.tensor([[-20.0, 3.0]], dtype=torch.float64))).log_prob(z).sum(-1)
    torch.testing.assert_close(ok.log_prob(z), expected, rtol=1e-12, atol=0)


def test_draw_takes_a_generator_for_torch_distributions_too(monkeypatch):
    """A user's prior or likelihood may be any torch Distribution, whose sample() takes no
    generator: draw() seeds the global stream from the generator and restores it."""
    dist = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    # Only the generator's own device is seeded: not every device, as torch.manual_seed would.
    for name in ("manual_seed", "cuda.manual_seed_all", "cuda.manual_seed"):
        owner = torch.cuda if name.startswith("cuda.") else torch
        monkeypatch.setattr(owner, name.split(".")[-1], lambda *a: pytest.fail(f"{name} seeds other devices"))
    a = draw(dist, (4,), torch.Generator().manual_seed(7))
    b = draw(dist, (4,), torch.Generator().manual_seed(7))
    c = draw(dist, (4,), torch.Generator().manual_seed(8))
    assert a.shape == (4, 3) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)
    assert draw(dist, (2,)).shape == (2, 3)
    # vaekit's own distributions take the generator itself: the same draw as sample(generator=).
    own = DiagonalNormal(torch.zeros(3), torch.zeros(3))
    torch.testing.assert_close(draw(own, (4,), torch.Generator().manual_seed(7)), own.sample((4,), generator=torch.Generator().manual_seed(7)))


def test_a_model_with_a_torch_distribution_prior_and_likelihood_samples():
    from vaekit import ModelConfig, VAEModel
    from vaekit.likelihoods import Likelihood
    from vaekit.priors import Prior

    class LaplacePrior(Prior):
        def forward(self, model=None):
            return Independent(torch.distributions.Laplace(torch.zeros(self.size), torch.ones(self.size)), 1)

    class TorchBernoulli(Likelihood):
        def forward(self, out):
            return Independent(Bernoulli(logits=out), 1)

    config = ModelConfig(input_dim=5, latent_dim=2, hidden=(4,), likelihood="bernoulli")
    model = VAEModel(config)
    model.prior, model.likelihood = LaplacePrior(config, 2), TorchBernoulli(config)
    x = model.sample(6, generator=torch.Generator().manual_seed(1), mean=False)
    assert x.shape == (6, 5) and set(x.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(x, model.sample(6, generator=torch.Generator().manual_seed(1), mean=False))
