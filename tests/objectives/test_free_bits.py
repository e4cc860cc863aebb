"""Free bits (Kingma et al. 2016, eq. 15) and the per-group KL it needs.

The per-group KL is checked against log-densities written out with torch.distributions (one
group: its closed form against ``kl_divergence``; two groups: the chain-rule terms of the
bottom-up q and the top-down p, rebuilt from the model's networks). The free-bits loss's
gradient is checked against a reference loss written by hand and differentiated by
torch.autograd, in float64."""

from __future__ import annotations

import json

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from vaekit.config import ModelConfig, TrainConfig
from vaekit.model import VAEModel
from vaekit.registry import OBJECTIVES
from cli_helpers import cli

F64 = torch.float64


def model_of(latent_dim, seed=0):
    torch.manual_seed(seed)
    config = ModelConfig(input_dim=5, latent_dim=latent_dim, hidden=(6,), activation="tanh", likelihood="gaussian")
    return VAEModel(config).to(F64)


def rows(n=8, seed=1):
    return torch.randn(n, 5, generator=torch.Generator().manual_seed(seed), dtype=F64)


def normal(mu, logvar):
    return Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)


def standard(like):
    return Independent(Normal(torch.zeros_like(like), torch.ones_like(like)), 1)


def two_group_terms(model, x, eps):
    """(z1, z2, {group: log q − log p per draw (S, n)}, recon (n,)) for latent_dim (3, 2),
    by hand: q(z1|x) q(z2|z1) from the encoder and the upward net, p(z2) = N(0, I) and
    p(z1|z2) from the downward net, each density a torch.distributions Normal."""
    mu1, lv1 = model.inference.encoder(x)
    z1 = mu1 + eps[..., :3] * torch.exp(0.5 * lv1)
    mu2, lv2 = model.inference.upward[0](z1)
    z2 = mu2 + eps[..., 3:] * torch.exp(0.5 * lv2)
    pmu1, plv1 = model.downward[0](z2)
    terms = {
        "z1": normal(mu1, lv1).log_prob(z1) - normal(pmu1, plv1).log_prob(z1),
        "z2": normal(mu2, lv2).log_prob(z2) - standard(z2).log_prob(z2),
    }
    # The decoder reads z1; its likelihood is not what is tested here.
    recon = model.likelihood(model.decoder(z1)).log_prob(x).mean(0)
    return torch.cat([z1, z2], -1), terms, recon


# ------------------------------------------------------------------------ the per-group KL


def test_one_group_closed_form_and_monte_carlo():
    model, x = model_of(4), rows()
    q = model.posterior(x)
    z = q.rsample((3,), generator=torch.Generator().manual_seed(2))
    ref_q = normal(q.mu, q.logvar)
    closed = model.kl_per_group(q, z)
    assert list(closed) == ["z"]
    torch.testing.assert_close(closed["z"], kl_divergence(ref_q, standard(q.mu)), rtol=1e-12, atol=1e-12)
    mc = model.kl_per_group(q, z, analytic=False)
    torch.testing.assert_close(mc["z"], (ref_q.log_prob(z) - standard(z).log_prob(z)).mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.kl(q, z), closed["z"], rtol=0, atol=0)


def test_two_groups_terms_and_their_sum():
    model, x = model_of((3, 2)), rows()
    eps = torch.randn(4, 8, 5, generator=torch.Generator().manual_seed(3), dtype=F64)
    q = model.posterior(x)
    z = q.reparameterize(eps)
    z_ref, terms, _ = two_group_terms(model, x, eps)
    torch.testing.assert_close(z, z_ref, rtol=1e-12, atol=1e-12)
    per_group = model.kl_per_group(q, z)
    assert list(per_group) == ["z1", "z2"]
    for name in ("z1", "z2"):
        torch.testing.assert_close(per_group[name], terms[name].mean(0), rtol=1e-10, atol=1e-10)
    # The groups' terms add up to the Monte Carlo KL of the whole q against the whole p.
    total = (terms["z1"] + terms["z2"]).mean(0)
    torch.testing.assert_close(model.kl(q, z), total, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model.kl(q, z), (q.log_prob(z) - model.log_pz(z)).mean(0), rtol=1e-10, atol=1e-10)


def test_factorised_q_over_two_groups_splits_by_columns():
    """A DiagonalNormal over all columns (the vi method's q of a hierarchy): each group's
    log q is its columns' Normal."""
    from vaekit.distributions import DiagonalNormal

    model = model_of((3, 2))
    g = torch.Generator().manual_seed(4)
    q = DiagonalNormal(torch.randn(8, 5, generator=g, dtype=F64), torch.randn(8, 5, generator=g, dtype=F64))
    z = q.rsample((2,), generator=g)
    log_q = q.log_prob_groups(z, model.latents)
    torch.testing.assert_close(log_q["z1"], normal(q.mu[:, :3], q.logvar[:, :3]).log_prob(z[..., :3]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(log_q["z2"], normal(q.mu[:, 3:], q.logvar[:, 3:]).log_prob(z[..., 3:]), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------ free bits


def objective(free_bits, beta=1.0):
    return OBJECTIVES.get("elbo")(TrainConfig(free_bits=free_bits, beta=beta))


def grads(model, loss):
    params = [p for p in model.parameters()]
    return [g if g is not None else torch.zeros_like(p) for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True))]


def assert_same_grads(a, b):
    for ga, gb in zip(a, b):
        torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_free_bits_gradient_per_group(beta):
    """λ between the two groups' batch-mean KLs: the group above keeps the ELBO's gradient,
    the group below adds the constant λ and so no gradient; the reference is the hand-written
    loss −mean(recon) + β·(mean KL_above + λ)."""
    model, x = model_of((3, 2)), rows()
    with torch.no_grad():  # a q(z1|x) far from the prior: the groups' KLs differ clearly
        for p in model.inference.encoder.parameters():
            p.mul_(3.0)
    eps = torch.randn(1, 8, 5, generator=torch.Generator().manual_seed(5), dtype=F64)
    _, terms, recon = two_group_terms(model, x, eps)
    means = {name: float(t.detach().mean()) for name, t in terms.items()}
    low, high = sorted(means, key=means.get)
    assert means[high] - means[low] > 0.1  # a λ strictly between them exists
    lam = 0.5 * (means[low] + means[high])

    loss, value = objective(lam, beta).loss(model, x, None, eps, beta)
    _, terms, recon = two_group_terms(model, x, eps)
    reference = -recon.mean() + beta * (terms[high].mean(0).mean() + lam)
    torch.testing.assert_close(loss, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(value, recon - (terms["z1"] + terms["z2"]).mean(0), rtol=1e-10, atol=1e-10)
    assert_same_grads(grads(model, loss), grads(model, reference))

    # The same as the plain β-ELBO's gradient less the low group's KL term's.
    plain, _ = objective(0.0, beta).loss(model, x, None, eps, beta)
    _, terms, _ = two_group_terms(model, x, eps)
    low_term = beta * terms[low].mean(0).mean()
    loss, _ = objective(lam, beta).loss(model, x, None, eps, beta)
    assert_same_grads(grads(model, loss), [a - b for a, b in zip(grads(model, plain), grads(model, low_term))])


def test_free_bits_below_every_group_is_the_elbo_and_above_leaves_recon():
    model, x = model_of(4), rows()
    eps = torch.randn(1, 8, 4, generator=torch.Generator().manual_seed(6), dtype=F64)
    q = model.posterior(x)
    kl = kl_divergence(normal(q.mu, q.logvar), standard(q.mu))
    recon = model.likelihood(model.decoder(q.mu + eps * torch.exp(0.5 * q.logvar))).log_prob(x).mean(0)
    elbo_loss = -(recon - kl).mean()
    # λ below the batch-mean KL: the plain ELBO, value and gradient.
    loss, _ = objective(0.5 * float(kl.detach().mean())).loss(model, x, None, eps)
    torch.testing.assert_close(loss, elbo_loss, rtol=1e-12, atol=1e-12)
    assert_same_grads(grads(model, loss), grads(model, elbo_loss))
    # λ above it: −mean(recon) + λ; the KL gives no gradient (the encoder's log σ² only
    # reaches the loss through the reconstruction's draws).
    lam = 2.0 * float(kl.detach().mean())
    loss, _ = objective(lam).loss(model, x, None, eps)
    torch.testing.assert_close(loss, -recon.mean() + lam, rtol=1e-12, atol=1e-12)
    assert_same_grads(grads(model, loss), grads(model, -recon.mean()))


def test_free_bits_option_is_checked():
    from vaekit.errors import ConfigError

    with pytest.raises(ConfigError, match="free_bits must be >= 0, got -0.5"):
        TrainConfig(free_bits=-0.5)


# ------------------------------------------------------------------------ CLI


def test_cli_free_bits_trains(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = cli(capsys, "train", "--out", out, "--epochs", "2", "--latent-dim", "3", "--hidden", "16",
                            "--eval-k", "2", "--free-bits", "0.5", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["train"]["free_bits"] == 0.5
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    # The training loss is −recon + Σ max(λ, KL) ≥ −recon + KL = −ELBO per batch, so its mean
    # over the epoch's batches is at least the epoch's mean −ELBO (train_elbo averages rows,
    # the loss batches: equal weights here, 1258 rows = 9 full batches + one of 106 rows,
    # so a slack of a few nats for the smaller last batch).
    for r in records:
        assert r["train_loss"] >= -r["train_elbo"] - 3.0


def test_cli_negative_free_bits_exits_2(tmp_path, capsys):
    code, out, err = cli(capsys, "train", "--out", tmp_path / "run", "--epochs", "1", "--free-bits", "-1")
    assert code == 2 and out == "" and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vaekit: error: ") and "--free-bits" in lines[0], err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
