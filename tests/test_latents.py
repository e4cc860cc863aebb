"""The latent protocol: a two-layer hierarchy q(z1|x) q(z2|z1), p(z2) p(z1|z2) p(x|z1), checked
against log-densities written out with torch.distributions, against a linear-Gaussian
hierarchy whose marginal likelihood is exact, and through the unchanged loop and CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal

from vaekit.config import ModelConfig, TrainConfig
from vaekit.latents import latent_groups, split
from vaekit.model import VAEModel
from vaekit.objectives import elbo, iwae

from hierarchy_helpers import linear_hierarchy

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_latent_groups_name_size_offset_parent():
    (z,) = latent_groups(20)
    assert (z.name, z.size, z.offset, z.parent) == ("z", 20, 0, None)
    z1, z2, z3 = latent_groups((4, 3, 2))
    assert [(g.name, g.size, g.offset, g.parent) for g in (z1, z2, z3)] == [
        ("z1", 4, 0, "z2"), ("z2", 3, 4, "z3"), ("z3", 2, 7, None)
    ]  # fmt: skip
    parts = split(torch.arange(9.0).expand(2, 9), (z1, z2, z3))
    assert [p.shape for p in parts.values()] == [(2, 4), (2, 3), (2, 2)]
    assert parts["z3"][0].tolist() == [7.0, 8.0]


def _two_layer(seed=0):
    torch.manual_seed(seed)
    model = VAEModel(ModelConfig(input_dim=7, latent_dim=(3, 2), hidden=(5,), activation="tanh")).to(F64)
    x = torch.bernoulli(torch.full((4, 7), 0.4, dtype=F64), generator=_gen(1))
    return model, x


def _reference_log_w(model, x, eps):
    """log p(x|z1) + log p(z1|z2) + log p(z2) − log q(z1|x) − log q(z2|z1), every density from
    torch.distributions, the networks called directly."""

    def normal(head, inp):
        mu, logvar = head(inp)
        return Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)

    q1 = normal(model.inference.encoder, x)
    z1 = q1.mean + eps[..., :3] * q1.stddev
    q2 = normal(model.inference.upward[0], z1)
    z2 = q2.mean + eps[..., 3:] * q2.stddev
    p2 = Independent(Normal(torch.zeros_like(z2), torch.ones_like(z2)), 1)
    p1 = normal(model.downward[0], z2)
    px = Independent(Bernoulli(logits=model.decoder(z1)), 1)
    return px.log_prob(x) + p1.log_prob(z1) + p2.log_prob(z2) - q1.log_prob(z1) - q2.log_prob(z2)


@pytest.mark.parametrize("analytic_kl", [True, False])
def test_two_layer_elbo_is_the_direct_monte_carlo_of_log_p_minus_log_q(analytic_kl):
    model, x = _two_layer()
    eps = torch.randn(6, 4, 5, generator=_gen(2), dtype=F64)
    ref = _reference_log_w(model, x, eps).mean(0)
    torch.testing.assert_close(elbo(model, x, eps=eps, analytic_kl=analytic_kl).elbo, ref, rtol=1e-12, atol=1e-12)


def test_two_layer_posterior_log_prob_and_params():
    model, x = _two_layer()
    q = model.posterior(x)
    eps = torch.randn(3, 4, 5, generator=_gen(4), dtype=F64)
    z = q.reparameterize(eps)
    assert z.shape == (3, 4, 5) and q.noise_size == model.noise_size == 5
    mu1, logvar1 = model.inference.encoder(x)
    mu2, logvar2 = model.inference.upward[0](z[..., :3])
    ref = Independent(Normal(mu1, torch.exp(0.5 * logvar1)), 1).log_prob(z[..., :3]) + Independent(
        Normal(mu2, torch.exp(0.5 * logvar2)), 1
    ).log_prob(z[..., 3:])
    torch.testing.assert_close(q.log_prob(z), ref, rtol=1e-12, atol=1e-12)
    params = q.params()
    torch.testing.assert_close(params["mu"][:, :3], mu1)
    torch.testing.assert_close(params["mu"][:, 3:], model.inference.upward[0](mu1)[0])  # plug-in mean


@pytest.mark.parametrize("inference", ["amortized", "topdown", "ladder"])
def test_log_q_of_a_fresh_draw_is_that_of_the_same_values(inference):
    """log q(z) of the draw q has just made reuses the draw's conditionals: the densities, per
    group too, and their gradients with respect to every parameter are those of a copy of the
    same values, and a change in place to the draw, or a draw under inference mode, is read
    afresh."""
    model, marginal = linear_hierarchy(0, inference=inference)
    x = marginal.sample((4,))
    q = model.posterior(x)
    z = q.reparameterize(torch.randn(3, 4, 5, generator=_gen(9), dtype=F64))
    params = [p for p in model.parameters() if p.requires_grad]

    def value_and_grads(z_at):
        lp = q.log_prob(z_at)
        return lp, torch.autograd.grad(lp.sum(), params, retain_graph=True, allow_unused=True)

    (lp, grads), (lp_ref, grads_ref) = value_and_grads(z), value_and_grads(z.clone())
    torch.testing.assert_close(lp, lp_ref, rtol=1e-12, atol=1e-12)
    for g, g_ref in zip(grads, grads_ref):
        assert (g is None) == (g_ref is None)
        if g is not None:
            torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
    groups, groups_ref = q.log_prob_groups(z), q.log_prob_groups(z.clone())
    for name in groups_ref:
        torch.testing.assert_close(groups[name], groups_ref[name], rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        z.add_(0.5)
    moved = q.log_prob(z)
    torch.testing.assert_close(moved, q.log_prob(z.clone()), rtol=1e-12, atol=1e-12)
    assert (moved - lp).abs().min() > 1e-3  # the edit was seen, not the stale draw
    with torch.inference_mode():
        q = model.posterior(x)
        z = q.reparameterize(torch.randn(3, 4, 5, generator=_gen(9), dtype=F64))
        z.add_(0.5)
        torch.testing.assert_close(q.log_prob(z), q.log_prob(z.clone()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("inference", ["amortized", "topdown", "ladder"])
def test_log_q_of_a_draw_made_without_gradients_has_the_gradients_of_fresh_values(inference):
    """A draw made under no_grad (``sample``) holds conditionals without a graph: log q(z) taken
    later with gradients on must reach every conditional network's parameters, as it does for a
    copy of the same values."""
    model, marginal = linear_hierarchy(0, inference=inference)
    x = marginal.sample((4,))
    q = model.posterior(x)
    z = q.sample((3,))
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(z_at):
        return torch.autograd.grad(q.log_prob(z_at).sum(), params, retain_graph=True, allow_unused=True)

    for g, g_ref in zip(grads(z), grads(z.clone())):
        assert (g is None) == (g_ref is None)
        if g is not None:
            torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("inference", ["amortized", "topdown", "ladder"])
def test_log_q_of_a_draw_after_an_optimizer_step_reads_the_new_parameters(inference):
    """A step that changes the networks in place between a draw and its log q(z) makes the
    draw's conditionals stale: log q(z), per group too, is that of the parameters as they are
    now, as for a copy of the same values."""
    model, marginal = linear_hierarchy(0, inference=inference)
    x = marginal.sample((4,))
    q = model.posterior(x)
    z = q.rsample((3,), generator=_gen(3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    (-q.log_prob(z).sum()).backward(retain_graph=True)
    opt.step()
    with torch.no_grad():
        now, fresh = q.log_prob(z), q.log_prob(z.clone())
        groups, groups_ref = q.log_prob_groups(z), q.log_prob_groups(z.clone())
    torch.testing.assert_close(now, fresh, rtol=1e-12, atol=1e-12)
    for name in groups_ref:
        torch.testing.assert_close(groups[name], groups_ref[name], rtol=1e-12, atol=1e-12)


def _linear_hierarchy(seed=0):
    return linear_hierarchy(seed)


def _good_proposal(model):
    """Set q(z1|x) q(z2|z1) to the exact conditionals' means with variances 1.5 times the
    diagonals of their covariances: a diagonal proposal a little wider than p(z|x), as the
    importance-weighted estimate wants."""
    W, b = model.decoder[0].weight, model.decoder[0].bias
    down = model.downward[0].net[0]
    A, c, var1 = down.weight[:3], down.bias[:3], torch.exp(down.bias[3:])
    sigma2 = float(torch.exp(model.likelihood.logvar))
    prec1 = torch.linalg.inv(A @ A.T + torch.diag(var1))
    C = torch.linalg.inv(prec1 + W.T @ W / sigma2)  # Cov(z1 | x)
    S2 = torch.linalg.inv(torch.eye(2, dtype=F64) + A.T @ torch.diag(1 / var1) @ A)  # Cov(z2 | z1)
    with torch.no_grad():
        enc, up = model.inference.encoder.net[0], model.inference.upward[0].net[0]
        enc.weight.zero_(), up.weight.zero_()
        enc.weight[:3] = C @ W.T / sigma2  # E[z1|x] = C (Wᵀ(x − b)/σ² + Σ1⁻¹ c)
        enc.bias[:3] = C @ (prec1 @ c - W.T @ b / sigma2)
        enc.bias[3:] = torch.log(1.5 * torch.diagonal(C))
        up.weight[:2] = S2 @ A.T / var1  # E[z2|z1] = S2 Aᵀ (z1 − c)/σ1²
        up.bias[:2] = -S2 @ A.T @ (c / var1)
        up.bias[2:] = torch.log(1.5 * torch.diagonal(S2))
    return model


def test_two_layer_iwae_converges_to_the_exact_marginal_likelihood():
    """The K-sample estimate with a bottom-up diagonal q rises with K toward the exact log p(x)
    of the linear-Gaussian hierarchy (q cannot match its correlated posterior, so K = 1 is
    visibly below). Seeded; the K = 20000 error is below 0.02 nats here."""
    model, marginal = _linear_hierarchy()
    _good_proposal(model)
    x = marginal.sample((5,))
    exact = marginal.log_prob(x)
    with torch.no_grad():
        est = {k: iwae(model, x, k, q=model.posterior(x), generator=_gen(k)) for k in (1, 100, 20000)}
    err = {k: float((exact - v).abs().mean()) for k, v in est.items()}
    assert err[1] > err[100] > err[20000], err
    assert err[20000] < 0.05, err


@pytest.mark.parametrize("inference", ["amortized", "topdown", "ladder"])
def test_shifted_structured_posterior_moves_each_groups_gaussian(inference):
    """q.shifted(δμ, δlog σ²): zero offsets give q's draws and densities; otherwise each group's
    log q(z_j | Pa(z_j), x) is torch's Normal at its own conditional's (μ_j + δμ_j,
    log σ²_j + δlog σ²_j), the conditional read at the parent's value in z."""
    from vaekit.latents import TopDown

    model, marginal = linear_hierarchy(0, inference=inference)
    with torch.no_grad():
        for p in model.inference.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=_gen(5), dtype=F64))
        x = marginal.sample((4,))
        q = model.posterior(x)
        eps = torch.randn(3, 4, 5, generator=_gen(6), dtype=F64)
        zero = torch.zeros(4, 5, dtype=F64)
        torch.testing.assert_close(q.shifted(zero, zero).reparameterize(eps), q.reparameterize(eps), rtol=0, atol=0)
        d_mu, d_logvar = torch.randn(4, 5, generator=_gen(7), dtype=F64), 0.3 * torch.randn(4, 5, generator=_gen(8), dtype=F64)
        moved = q.shifted(d_mu, d_logvar)
        z = moved.reparameterize(eps)
        got = moved.log_prob_groups(z)
        z1, z2 = z[..., :3], z[..., 3:]
        # Each group's unshifted conditional, from q itself at the same parent values.
        if isinstance(q, TopDown):
            mu2, lv2 = q.top.mu, q.top.logvar
            mu1, lv1 = q.conditionals[0](z2)
        else:
            mu1, lv1 = q.first.mu, q.first.logvar
            mu2, lv2 = q.conditionals[0](z1)
        for name, zj, mu, lv, cols in (("z1", z1, mu1, lv1, slice(0, 3)), ("z2", z2, mu2, lv2, slice(3, 5))):
            ref = Independent(Normal(mu + d_mu[:, cols], torch.exp(0.5 * (lv + d_logvar[:, cols]))), 1).log_prob(zj)
            torch.testing.assert_close(got[name], ref, rtol=1e-12, atol=1e-12)
        # The draw itself: each group is its shifted mean plus ε times its shifted σ.
        torch.testing.assert_close(z2, (mu2 + d_mu[:, 3:]) + eps[..., 3:] * torch.exp(0.5 * (lv2 + d_logvar[:, 3:])), rtol=1e-12, atol=1e-12)


def test_gaps_of_the_linear_hierarchy_bracket_its_exact_likelihood(monkeypatch):
    """Against the exact log p(x) of the linear-Gaussian hierarchy, with top-down inference nets
    fitted to the rows for a while (a good q, not the best): the IWAE estimate of gaps (q* as
    proposal) is close to log p(x) per row; the approximation gap log p(x) − ELBO(q*) is ≥ 0
    and the amortization gap ELBO(q*) − ELBO(q) too, each up to the Monte Carlo error of the
    32-draw ELBOs; and the reported ELBOs are unbiased estimates of ELBO(q*) and ELBO(q)."""
    import math

    import vaekit.evaluate as evaluate
    from hierarchy_helpers import fit_inference

    from vaekit.distributions import RowStreams
    from vaekit.evaluate import GAP_SAMPLES, gaps_per_point
    from vaekit.objectives import log_mean_exp, log_weights

    # q and q* as gaps_per_point found them, to measure the spread of its estimates.
    found = {}
    optimal_q = evaluate._optimal_q

    def spy(model, x, q, *args):
        found["q"] = q
        found["q_star"], taken = optimal_q(model, x, q, *args)
        return found["q_star"], taken

    monkeypatch.setattr(evaluate, "_optimal_q", spy)
    model, marginal = linear_hierarchy(2, inference="topdown")
    x = marginal.sample((8,))
    fit_inference(model, x, steps=100)
    exact = marginal.log_prob(x)
    k = 20000
    p = {name: torch.from_numpy(v) for name, v in gaps_per_point(model, x, k=k, steps=1500, seed=0).items()}
    with torch.no_grad():
        # The IWAE estimate's own draws (its ESTIMATE streams), and q's log-weights at the same
        # noise (common random numbers, as gaps_per_point compares the ELBOs).
        eps = RowStreams(x, 0, use=RowStreams.ESTIMATE).randn(k, model.noise_size, x.dtype)
        lw_star = log_weights(model, x, k, q=found["q_star"], eps=eps)
        lw_q = log_weights(model, x, k, q=found["q"], eps=eps)
    torch.testing.assert_close(log_mean_exp(lw_star), p["log_px"], rtol=1e-12, atol=1e-12)

    # IWAE. Above log p(x) only by noise: the delta method's 4 SE of the mean weight (+ the
    # O(1/K) bias), from the estimate's own weights, so a rare large weight that lifts the
    # estimate also widens its bound. Below it the SE is no bound: q* is narrower than p(z|x)
    # (an ELBO optimum), the weights are heavy-tailed and the estimate falls short by missing
    # large weights its sample never drew (up to 7 SE seen, 0.23 nats where the gap is 1).
    # log_mean_exp ≥ mean log w always, so the error is ≥ −(log p(x) − ELBO(q*)); with K = 20000
    # it must close at least half of that gap (the worst seen left a quarter). An estimate that
    # were the ELBO (K = 1), or misweighted, fails one side or the other.
    w = torch.exp(lw_star - log_mean_exp(lw_star))
    above = 4 * w.std(0) / math.sqrt(k) + w.var(0) / (2 * k)
    approximation = exact - lw_star.mean(0)  # ELBO(q*) to ±0.01: sd(log w) ≈ 0.6–1.1, K draws
    err = p["log_px"] - exact
    assert (err < above).all() and (err > -approximation / 2).all(), (err, above, approximation)

    # The gaps. Each reported ELBO is a mean over GAP_SAMPLES draws, so its SE is
    # sd(log w)/√GAP_SAMPLES (that of the difference for the amortization gap): the reported
    # values agree with the K-draw ones within 4 SE, and the K-draw gaps are ≥ 0 within 4 of
    # their own (K-draw) SE, as log p(x) ≥ ELBO and an ascent started from q require.
    diff = lw_star - lw_q
    se_star, se_diff = (v.std(0) / math.sqrt(GAP_SAMPLES) for v in (lw_star, diff))
    assert ((p["elbo_optimal"] - lw_star.mean(0)).abs() < 4 * se_star).all(), (p["elbo_optimal"], lw_star.mean(0), se_star)
    assert ((p["elbo_optimal"] - p["elbo"] - diff.mean(0)).abs() < 4 * se_diff).all(), (p, diff.mean(0), se_diff)
    assert (exact - p["elbo_optimal"] > -4 * se_star).all(), exact - p["elbo_optimal"]
    assert (approximation > -4 * lw_star.std(0) / math.sqrt(k)).all(), approximation
    assert (diff.mean(0) > -4 * diff.std(0) / math.sqrt(k)).all(), diff.mean(0)
    # 100 fitting steps leave the encoder short of q*: its mean amortization gap was 0.1–3 nats
    # for every data set tried (known to ±0.02 here), so a gaps_per_point that did not move
    # q at all would fail.
    assert diff.mean() > 0.05, diff.mean(0)


def test_two_layer_samples_follow_the_generative_hierarchy():
    """Ancestral samples of the linear hierarchy have the exact marginal's mean and covariance."""
    model, marginal = _linear_hierarchy()
    with torch.no_grad():
        x = model.sample(40000, generator=_gen(3), mean=False)
    # 40000 draws: each mean is within 4.5 standard errors (sd/200), and the covariance, scaled
    # to correlations, within 0.03 (its standard error is about 0.005).
    sd = marginal.covariance_matrix.diagonal().sqrt()
    assert ((x.mean(0) - marginal.mean).abs() / (sd / 200)).max() < 4.5
    assert ((torch.cov(x.T) - marginal.covariance_matrix) / sd.outer(sd)).abs().max() < 0.03


# --------------------------------------------------------------------------- through loop and CLI


@pytest.mark.parametrize("inference", ["amortized", "vi", "map", "autoencoder"])
def test_two_layer_model_trains_with_every_inference_method(inference, digits_small):
    from vaekit.train import fit

    x_train, x_valid = digits_small
    torch.manual_seed(0)
    n_points = len(x_train) if inference in ("vi", "map") else 0
    model = VAEModel(ModelConfig(input_dim=64, latent_dim=(4, 2), hidden=(32,), likelihood="continuous_bernoulli",
                                 inference=inference, n_points=n_points))  # fmt: skip
    history = fit(model, x_train, x_valid, TrainConfig(epochs=3, lr=3e-3, batch_size=64))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(np.isfinite(r["valid_elbo"]) for r in history)


@pytest.fixture(scope="module")
def digits_small():
    from sklearn.datasets import load_digits

    x = (load_digits().data / 16.0).astype(np.float32)
    return x[:600], x[600:700]


def test_two_layer_run_through_the_cli(tmp_path, capsys):
    from cli_helpers import assert_encodes_every_group, assert_resume_equals_straight
    from vaekit.cli import main

    common = ["--data", "digits", "--latent-dim", "6,3", "--hidden", "32", "--eval-k", "5", "--seed", "1"]
    assert_resume_equals_straight(tmp_path, common)
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert config["model"]["latent_dim"] == [6, 3]
    run = str(tmp_path / "straight")
    assert_encodes_every_group(capsys, run, tmp_path / "z.npz", {"z1": 6, "z2": 3})
    assert main(["encode", run, "--data", "digits", "--out", str(tmp_path / "z.csv")]) == 0
    header = (tmp_path / "z.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["mu_z1_0", "mu_z1_1"] and header[-1] == "logvar_z2_2" and len(header) == 18
    capsys.readouterr()
    assert main(["evaluate", run, "--k", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["log_likelihood"] >= result["elbo"] - 0.5  # IWAE sits above the ELBO (up to MC noise)
    assert main(["sample", run, "-n", "8", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (8, 64)
    assert main(["sample", run, "-n", "8", "--source", "aggregate", "--out", str(tmp_path / "a.npy")]) == 0
    assert main(["reconstruct", run, "--data", "digits", "--out", str(tmp_path / "r.png")]) == 0


def test_refinement_of_a_hierarchy_is_refused(tmp_path, capsys):
    from vaekit.cli import main

    code = main(["train", "--data", "digits", "--latent-dim", "4,2", "--refine-steps", "3", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "--refine-steps needs a single latent layer: it refines one diagonal Gaussian" in err and len(err.strip().splitlines()) == 1


def test_gaps_of_a_hierarchy(tmp_path, capsys):
    """vaekit gaps on two groups, for each structured q: q* keeps q's structure with free
    per-row offsets of each group's (μ, log σ²), so ELBO(q*) ≥ ELBO(q) and log p(x) ≥ ELBO(q*)
    up to their standard errors."""
    from vaekit.cli import main

    for inference in ("amortized", "topdown", "ladder"):
        run = str(tmp_path / inference)
        argv = ["train", "--data", "digits", "--latent-dim", "4,2", "--hidden", "16", "--epochs", "2", "--eval-k", "2", "--inference", inference]
        assert main([*argv, "--out", run, "--quiet"]) == 0
        capsys.readouterr()
        assert main(["gaps", run, "--k", "50", "--steps", "100", "--json"]) == 0
        g = json.loads(capsys.readouterr().out)
        assert g["n"] == 359 and 0 < g["steps_taken"] <= 100
        assert g["amortization_gap"] > -3 * g["amortization_gap_se"], g
        assert g["approximation_gap"] > -3 * g["approximation_gap_se"], g
        assert g["elbo_optimal"] > g["elbo"] + 0.05, g  # the offsets buy something after 2 epochs


@pytest.mark.parametrize("sizes", [(3, 2, 2), (2, 2, 2)])
def test_bottom_up_three_groups_each_conditional_reads_the_group_below(sizes):
    """q(z1|x) q(z2|z1) q(z3|z2) for L = 3 (with two groups "the group below" and "the first
    group" coincide): the draw and log q against a reference written from the nets' own outputs
    and torch.distributions.Normal."""
    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=5, latent_dim=sizes, hidden=(8,), inference="amortized")).to(F64)
    x = torch.rand(4, 5, dtype=F64)
    eps = torch.randn(3, 4, sum(sizes), generator=torch.Generator().manual_seed(1), dtype=F64)
    q = model.posterior(x)
    z = q.reparameterize(eps)
    inference = model.inference
    mu, logvar = inference.encoder(x)
    ref_z, ref_log_q, parent = [], 0.0, None
    for j, group in enumerate(model.latents):
        if j > 0:
            mu, logvar = inference.upward[j - 1](parent)
        z_j = mu + torch.exp(0.5 * logvar) * eps[..., group.columns]
        ref_log_q = ref_log_q + Independent(Normal(mu, torch.exp(0.5 * logvar)), 1).log_prob(z_j)
        ref_z.append(z_j)
        parent = z_j
    torch.testing.assert_close(z, torch.cat(ref_z, -1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(q.log_prob(torch.cat(ref_z, -1).clone()), ref_log_q, rtol=1e-10, atol=1e-10)


def test_sample_z_three_groups_each_downward_net_reads_its_parent():
    """Ancestral sampling p(z3) p(z2|z3) p(z1|z2) for L = 3: downward[l] reads group l + 1 of the
    draw it returns (equal sizes, so that a net applied to the wrong group would not fail on
    its shape)."""
    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=5, latent_dim=(2, 2, 2), hidden=(8,), inference="topdown")).to(F64)
    seen = {}
    for l, net in enumerate(model.downward):
        net.register_forward_hook(lambda m, inp, out, l=l: seen.__setitem__(l, inp[0].detach().clone()))
    z = model.sample_z(6, generator=torch.Generator().manual_seed(0))
    groups = split(z, model.latents)
    torch.testing.assert_close(seen[0], groups["z2"], rtol=0, atol=0)
    torch.testing.assert_close(seen[1], groups["z3"], rtol=0, atol=0)


def test_log_pz_three_groups_each_conditional_reads_its_parent():
    """log p(z) = log p(z3) + log p(z2|z3) + log p(z1|z2) for L = 3, against the chain rule
    written from the nets' own outputs and torch.distributions.Normal (equal sizes, so that a
    conditional applied to the wrong group would not fail on its shape)."""
    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=5, latent_dim=(2, 2, 2), hidden=(8,), inference="topdown")).to(F64)
    z = torch.randn(3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    g = split(z, model.latents)
    want = Independent(Normal(torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64)), 1).log_prob(g["z3"])
    for lower, upper, net in (("z2", "z3", model.downward[1]), ("z1", "z2", model.downward[0])):
        mu, logvar = net(g[upper])
        want = want + Independent(Normal(mu, torch.exp(0.5 * logvar)), 1).log_prob(g[lower])
    torch.testing.assert_close(model.log_pz(z), want, rtol=1e-12, atol=1e-12)
