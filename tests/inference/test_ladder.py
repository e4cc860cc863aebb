"""Ladder inference (Sønderby et al. 2016): the top-down q against densities written with
torch.distributions and the precision-weighting formula by hand, the ELBO against a direct
Monte Carlo, a linear-Gaussian hierarchy whose log p(x) is exact, the shared downward nets'
gradients, and the CLI (train, resume bit for bit, encode)."""

from __future__ import annotations


import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal

from vaekit.config import ModelConfig
from vaekit.distributions import DiagonalNormal
from vaekit.latents import LadderPosterior, precision_weighted
from vaekit.model import VAEModel
from vaekit.objectives import elbo, iwae

from hierarchy_helpers import fit_inference, linear_hierarchy, top_down_reference

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _ladder(sizes, seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"input_dim": 7, "hidden": (5,), "activation": "tanh", **kw}
    model = VAEModel(ModelConfig(latent_dim=sizes, inference="ladder", **kw)).to(F64)
    x = torch.bernoulli(torch.full((4, 7), 0.4, dtype=F64), generator=_gen(1))
    return model, x


def _bottom_up(model, x):
    """[(μ̂_l, log σ̂_l²)] bottom first, the nets called directly."""
    d = model.inference.encoder(x)
    out = [d]
    for f in model.inference.ladder:
        d = f(torch.cat(d, -1))
        out.append(d)
    return out


def _conditional(model, x, l, parent):
    """q(z_l | z_{l+1} = parent, x) as a torch.distributions Normal, by hand: the bottom-up
    Gaussian for the top group (parent None), else σ_q² = 1/(σ̂⁻² + σ_p⁻²),
    μ_q = (μ̂ σ̂⁻² + μ_p σ_p⁻²) σ_q² (Sønderby et al. eqs. 17-19) in plain variances."""
    mu_hat, logvar_hat = _bottom_up(model, x)[l]
    var_hat = torch.exp(logvar_hat)
    if parent is None:
        mu, var = mu_hat, var_hat
    else:
        mu_p, logvar_p = model.downward[l](parent)
        var_p = torch.exp(logvar_p)
        var = 1.0 / (1.0 / var_hat + 1.0 / var_p)
        mu = (mu_hat / var_hat + mu_p / var_p) * var
    return Independent(Normal(mu, var.sqrt()), 1)


def _reference(model, x, eps):
    return top_down_reference(model, x, eps, _conditional)


@pytest.mark.parametrize("sizes", [(3, 2), (3, 2, 2)])
def test_draw_and_log_q_equal_the_hand_written_top_down_reference(sizes):
    model, x = _ladder(sizes)
    q = model.posterior(x)
    assert isinstance(q, LadderPosterior) and q.noise_size == model.noise_size == sum(sizes)
    eps = torch.randn(3, 4, sum(sizes), generator=_gen(2), dtype=F64)
    z_ref, qs, zs = _reference(model, x, eps)
    z = q.reparameterize(eps)
    torch.testing.assert_close(z, z_ref, rtol=1e-12, atol=1e-12)
    log_q_ref = sum(ql.log_prob(zl) for ql, zl in zip(qs, zs))
    torch.testing.assert_close(q.log_prob(z), log_q_ref, rtol=1e-12, atol=1e-12)
    by_group = q.log_prob_groups(z, model.latents)
    assert list(by_group) == [g.name for g in model.latents]
    for g, ql, zl in zip(model.latents, qs, zs):
        torch.testing.assert_close(by_group[g.name], ql.log_prob(zl), rtol=1e-12, atol=1e-12)

    # At a z that q did not draw: each conditional reads the given parent.
    z_any = torch.randn(2, 4, sum(sizes), generator=_gen(3), dtype=F64)
    ref_any = 0
    for l, g in enumerate(model.latents):
        parent = z_any[..., model.latents[l + 1].columns] if l + 1 < len(sizes) else None
        ref_any = ref_any + _conditional(model, x, l, parent).log_prob(z_any[..., g.columns])
    torch.testing.assert_close(q.log_prob(z_any), ref_any, rtol=1e-12, atol=1e-12)

    # Plug-in values: the top group's bottom-up mean, each group below given its parent's.
    _, qs0, zs0 = _reference(model, x, torch.zeros(4, sum(sizes), dtype=F64))
    params = q.params()
    torch.testing.assert_close(params["mu"], torch.cat(zs0, -1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(q.mean, params["mu"], rtol=0, atol=0)
    torch.testing.assert_close(params["logvar"], torch.cat([ql.variance.log() for ql in qs0], -1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("analytic_kl", [True, False])
def test_elbo_is_the_direct_monte_carlo_of_log_p_minus_log_q(analytic_kl):
    model, x = _ladder((3, 2))
    eps = torch.randn(6, 4, 5, generator=_gen(4), dtype=F64)
    z, qs, (z1, z2) = _reference(model, x, eps)
    mu_p, logvar_p = model.downward[0](z2)
    log_p = (
        Independent(Bernoulli(logits=model.decoder(z1)), 1).log_prob(x)
        + Independent(Normal(mu_p, torch.exp(0.5 * logvar_p)), 1).log_prob(z1)
        + Independent(Normal(torch.zeros_like(z2), torch.ones_like(z2)), 1).log_prob(z2)
    )
    ref = (log_p - qs[0].log_prob(z1) - qs[1].log_prob(z2)).mean(0)
    torch.testing.assert_close(elbo(model, x, eps=eps, analytic_kl=analytic_kl).elbo, ref, rtol=1e-12, atol=1e-12)


def test_precision_weighting_is_stable_at_extreme_scales():
    """float32 log-variances of ±80 (variances e^±80, whose reciprocals overflow float32 when
    squared): the log-variance form stays finite and equals the float64 formula."""
    lv = torch.tensor([-80.0, -80.0, 0.0, 80.0, 80.0, 3.0])
    lv_p = torch.tensor([80.0, -80.0, 0.0, -80.0, 80.0, -2.0])
    mu, mu_p = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), torch.tensor([-1.0, -2.0, -3.0, -4.0, -5.0, -6.0])
    m, v = precision_weighted(mu, lv, mu_p, lv_p)
    assert torch.isfinite(m).all() and torch.isfinite(v).all()
    a, b = torch.exp(-lv.double()), torch.exp(-lv_p.double())  # precisions, in range in float64
    var = 1 / (a + b)
    torch.testing.assert_close(v.double(), var.log(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(m.double(), (mu.double() * a + mu_p.double() * b) * var, rtol=1e-6, atol=1e-6)


def test_gradients_reach_the_shared_downward_nets_from_the_q_side():
    """log q(z|x) at a fixed z, and the draw itself, depend on p(z_1|z_2)'s net: its gradients
    are non-zero and match float64 finite differences (gradcheck)."""
    model, x = _ladder((3, 2))
    eps = torch.randn(2, 4, 5, generator=_gen(6), dtype=F64)
    z = model.posterior(x).reparameterize(eps).detach()
    model.zero_grad()
    model.posterior(x).log_prob(z).sum().backward()
    grads = [p.grad for p in model.downward.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    model.zero_grad()
    model.posterior(x).reparameterize(eps)[..., :3].sum().backward()  # z_1 moves with p(z_1|z_2)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.downward.parameters())

    # gradcheck of log q as a function of the downward nets' parameters, called functionally.
    nets = list(model.downward)
    names = [[n for n, _ in net.named_parameters()] for net in nets]
    start = tuple(p.detach().clone().requires_grad_() for p in model.downward.parameters())
    bottom_up = [DiagonalNormal(d.mu.detach(), d.logvar.detach()) for d in model.posterior(x).bottom_up]

    def log_q(*params):
        it = iter(params)
        downward = []
        for net, keys in zip(nets, names):
            state = {k: next(it) for k in keys}
            downward.append(lambda h, net=net, state=state: torch.func.functional_call(net, state, (h,)))
        return LadderPosterior(bottom_up, downward, model.latents).log_prob(z)

    assert torch.autograd.gradcheck(log_q, start)


# ----------------------------------------------------------------- the linear-Gaussian hierarchy


def _linear_hierarchy(seed=0):
    """The exact linear-Gaussian hierarchy of tests/hierarchy_helpers.py, with the ladder q."""
    return linear_hierarchy(seed, inference="ladder")


@pytest.fixture(scope="module")
def fitted_linear():
    """The linear hierarchy with only its inference nets fitted (Adam, 800 steps of the
    8-sample ELBO on 32 points, lr 0.1 then 0.01 for the last 200 to let the noisy steps
    settle); the generative nets, downward included, are held fixed."""
    with torch.random.fork_rng():
        model, marginal = _linear_hierarchy()
        x = marginal.sample((32,))
        eps_eval = torch.randn(2000, 32, 5, generator=_gen(7), dtype=F64)
        with torch.no_grad():
            before = elbo(model, x, eps=eps_eval).elbo
        fit_inference(model, x)
        with torch.no_grad():
            after = elbo(model, x, eps=eps_eval).elbo
    return model, marginal, x, before, after


def test_fitting_the_ladder_q_closes_most_of_the_elbo_gap(fitted_linear):
    """log p(x) − ELBO = KL(q || p(z|x)) ≥ 0 shrinks as the inference nets alone learn. The
    ELBOs use 2000 common draws. The ladder q cannot be exact (its q(z1|z2,x) is diagonal,
    p(z1|z2,x) is not), so the gap stays > 0."""
    import math

    from vaekit.objectives import log_weights

    model, marginal, x, before, after = fitted_linear
    exact = marginal.log_prob(x)
    gap_before, gap_after = float((exact - before).mean()), float((exact - after).mean())
    # How far 800 steps get depends on the hierarchy drawn: from starting gaps of 40–1200 nats,
    # data sets tried ended 0.1–8 nats from log p(x), always within 3% of where they started
    # (mostly within 0.6%). An absolute bound would test that draw; the share of the gap left
    # is what the fit itself controls; nets that did not learn would keep all of it.
    assert gap_after < 0.05 * gap_before, (gap_before, gap_after)
    # > 0 by more than Monte Carlo error: 4 SE of the mean over the points of the 2000-draw ELBO.
    with torch.no_grad():
        lw = log_weights(model, x, 0, eps=torch.randn(2000, 32, 5, generator=_gen(7), dtype=F64))
    torch.testing.assert_close(lw.mean(0), after, rtol=1e-12, atol=1e-12)  # the draws of `after`
    se = float(lw.mean(1).std() / math.sqrt(lw.shape[0]))
    assert gap_after > 4 * se, (gap_after, se)


def test_iwae_with_the_ladder_q_converges_to_the_exact_log_px(fitted_linear):
    """The K-sample estimate with the fitted ladder q rises toward the exact log p(x) with K.
    How close K = 10000 gets depends on the hierarchy drawn (the tails of the weights p/q):
    over data sets tried it left 2–10% of the K = 1 gap (0.008–0.85 nats), so the bound is
    on that share, not on nats."""
    model, marginal, x, _, _ = fitted_linear
    x = x[:8]
    exact = marginal.log_prob(x)
    with torch.no_grad():
        est = {k: iwae(model, x, k, q=model.posterior(x), generator=_gen(k)) for k in (1, 100, 10000)}
    err = {k: float((exact - v).abs().mean()) for k, v in est.items()}
    assert err[1] > err[100] > err[10000], err
    assert err[10000] < 0.15 * err[1], err


# --------------------------------------------------------------------------------------- CLI


def test_ladder_run_through_the_cli(tmp_path, capsys):
    from cli_helpers import assert_encodes_every_group, assert_resume_equals_straight

    common = ["--data", "digits", "--inference", "ladder", "--latent-dim", "6,3", "--hidden", "32", "--eval-k", "5", "--seed", "1"]
    a = assert_resume_equals_straight(tmp_path, common)
    assert any("inference.ladder" in k for k in a)
    assert_encodes_every_group(capsys, tmp_path / "straight", tmp_path / "z.npz", {"z1": 6, "z2": 3})
