"""Posterior collapse made visible (vaekit.evaluate.LatentUsage): active units (Burda et al.
2015, sec. 5.2) on a linear encoder built by hand so that each unit's Var_x(E_q[z_u]) is known
exactly, the per-dimension KL against torch.distributions, and the fields in metrics.jsonl,
evaluate() and kl_per_dim.png."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from vaekit.distributions import RowStreams
from vaekit.config import ModelConfig, TrainConfig
from vaekit.evaluate import LatentUsage, elbo_per_point, evaluate
from vaekit.model import VAEModel
from vaekit.train import fit

F64 = torch.float64
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def standardised_rows(n=50, d=3, seed=0) -> np.ndarray:
    """Columns with mean 0 and population variance exactly 1 (up to rounding)."""
    x = np.random.default_rng(seed).normal(size=(n, d))
    x = x - x.mean(0)
    return x / x.std(0)


def encoder_linear(model) -> torch.nn.Linear:
    return next(m for m in model.inference.encoder.modules() if isinstance(m, torch.nn.Linear))


def linear_model(weights: np.ndarray) -> VAEModel:
    """hidden=(): μ = W x + b, log σ² = V x + c, with row u of ``weights`` as W_u; on
    standardised rows and one non-zero weight per row, Var_x(μ_u) = W_u²."""
    torch.manual_seed(0)
    d = weights.shape[0]
    model = VAEModel(ModelConfig(input_dim=3, latent_dim=d, hidden=(), likelihood="gaussian")).to(F64)
    lin = encoder_linear(model)
    with torch.no_grad():
        lin.weight[:d] = torch.as_tensor(weights)  # the μ half
        lin.bias[:d] = torch.linspace(-1, 1, d)  # constant offsets do not make a unit active
    return model


def test_active_units_of_a_hand_built_encoder():
    """Units 0-5 read x₀ with weights 0, 0.05, 0.09, 0.11, 0.2, 1 (Var μ_u = w², threshold
    1e-2: 0.0081 and below inactive, 0.0121 and above active); unit 6 reads nothing: 3 active."""
    w = np.zeros((7, 3))
    w[:6, 0] = [0.0, 0.05, 0.09, 0.11, 0.2, 1.0]
    model, x = linear_model(w), standardised_rows()
    usage = LatentUsage(model)
    elbo_per_point(model, x, batch_size=7, usage=usage)  # 8 batches: the pooled variance
    assert usage.n == 50
    np.testing.assert_allclose(usage.variance, np.r_[w[:6, 0] ** 2, 0.0], rtol=1e-9, atol=1e-12)
    assert usage.active.tolist() == [False, False, False, True, True, True, False]
    assert usage.active_units == 3


def test_variance_against_numpy_on_correlated_rows():
    """Any rows, any weights: the pooled variance is numpy's of the means computed by hand."""
    g = np.random.default_rng(1)
    w = g.normal(size=(4, 3)) * np.array([[1.0], [0.01], [0.3], [0.0]])
    x = g.normal(size=(37, 3)) @ g.normal(size=(3, 3)) + 5.0
    model = linear_model(w)
    usage = LatentUsage(model)
    elbo_per_point(model, x, batch_size=5, usage=usage)
    mu = x @ w.T + encoder_linear(model).bias[:4].detach().numpy()
    np.testing.assert_allclose(usage.variance, mu.var(0), rtol=1e-9, atol=1e-12)
    assert usage.active_units == int((mu.var(0) > 1e-2).sum())


def test_kl_per_dim_against_torch_distributions():
    torch.manual_seed(3)
    model = VAEModel(ModelConfig(input_dim=3, latent_dim=5, hidden=(8,), likelihood="gaussian")).to(F64)
    x = standardised_rows(40)
    usage = LatentUsage(model)
    terms = elbo_per_point(model, x, batch_size=16, usage=usage)
    with torch.no_grad():
        q = model.posterior(torch.as_tensor(x))
        ref = kl_divergence(Normal(q.mu, torch.exp(0.5 * q.logvar)), Normal(0.0, 1.0)).mean(0)  # (5,)
    np.testing.assert_allclose(usage.kl_per_dim, ref.numpy(), rtol=1e-10, atol=1e-12)
    # The dimensions' KLs sum to the total KL of the ELBO's terms.
    assert sum(usage.kl_per_dim) == pytest.approx(float(terms["kl"].mean()), rel=1e-10)
    assert usage.kl_per_group == {"z": pytest.approx(float(terms["kl"].mean()), rel=1e-10)}


def test_hierarchy_reports_groups_not_dimensions():
    torch.manual_seed(4)
    model = VAEModel(ModelConfig(input_dim=3, latent_dim=(3, 2), hidden=(8,), likelihood="gaussian")).to(F64)
    x = standardised_rows(30)
    usage = LatentUsage(model, torch.Generator().manual_seed(0))
    elbo_per_point(model, x, usage=usage)
    assert usage.kl_per_dim is None
    assert list(usage.kl_per_group) == ["z1", "z2"]
    assert usage.variance.shape == (5,)
    # The group terms on one draw per row sum to a Monte Carlo estimate of the KL: compared
    # with a 4000-draw estimate of the total.
    with torch.no_grad():
        q = model.posterior(torch.as_tensor(x))
        z = q.rsample((4000,), generator=torch.Generator().manual_seed(1))
        total = float((q.log_prob(z) - model.log_pz(z)).mean())
    # 30 rows x 1 draw: the estimate's sd is about sd(log q − log p)/√30 (< 0.5 nat here).
    assert sum(usage.kl_per_group.values()) == pytest.approx(total, abs=1.0)


def test_metrics_evaluate_and_picture(tmp_path):
    from sklearn.datasets import load_digits

    from vaekit.runs import write_pictures

    x = (load_digits().data / 16.0)[:400]
    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=64, latent_dim=6, hidden=(16,), likelihood="continuous_bernoulli", image_shape=(8, 8)))
    history = fit(model, x[:300], x[300:], TrainConfig(epochs=2, batch_size=64))
    for r in history:
        assert isinstance(r["active_units"], int) and 0 <= r["active_units"] <= 6
        assert len(r["kl_per_dim"]) == 6
        assert sum(r["kl_per_dim"]) == pytest.approx(r["valid_kl"], rel=1e-5)
        json.dumps(r)
    result = evaluate(model, x[300:], k=2)
    assert result["latent_size"] == 6 and isinstance(result["active_units"], int)
    assert sum(result["kl_per_dim"]) == pytest.approx(result["kl"], rel=1e-5)

    class Data:
        def split(self, name):
            return x[300:]

        def split_labels(self, name):
            return None

    written = write_pictures(model, Data(), history, tmp_path)
    path = tmp_path / "kl_per_dim.png"
    assert path in written and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000


def test_metrics_jsonl_and_cli(tmp_path, capsys):
    from cli_helpers import cli

    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--out", run, "--epochs", "2", "--latent-dim", "3", "--hidden", "16", "--eval-k", "2")
    assert code == 0, err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(isinstance(r["active_units"], int) and len(r["kl_per_dim"]) == 3 for r in records)
    assert (run / "kl_per_dim.png").read_bytes()[:8] == PNG_MAGIC
    code, out, _ = cli(capsys, "evaluate", run, "--json", "--k", "2")
    r = json.loads(out)
    assert code == 0 and r["latent_size"] == 3 and len(r["kl_per_dim"]) == 3
    code, out, _ = cli(capsys, "evaluate", run, "--k", "2")
    assert code == 0 and f"active units {r['active_units']}/3" in out


def test_plot_checks_shapes(tmp_path):
    from vaekit.errors import DataError
    from vaekit.plots import kl_per_dim_plot

    with pytest.raises(DataError, match="kl_per_dim must have shape"):
        kl_per_dim_plot(np.ones(3), tmp_path / "a.png", kl_per_dim=np.ones(4))
    path = kl_per_dim_plot(np.array([0.0, 1.0]), tmp_path / "b.png", kl_per_group={"z1": 1.0, "z2": 0.1})
    assert path.read_bytes()[:8] == PNG_MAGIC


# ---- the second note's three bubble forces ----------------------------------------------------


def test_the_three_forces_sum_to_the_loss_on_one_batch():
    """−recon + ½Σμ² + ½Σ(σ² − log σ² − 1), as the validation pass computes them, equal the
    training loss recon + β·KL with β = 1 (objectives.elbo.loss) of the same batch, the same q
    and the same noise, to float64 rounding; and the two KL forces equal the closed-form KL."""
    from vaekit.objectives import elbo as elbo_terms
    from vaekit.objectives import loss

    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=3, latent_dim=2, hidden=(8,), likelihood="gaussian")).to(F64)
    x = torch.as_tensor(standardised_rows(n=40), dtype=F64)
    usage = LatentUsage(model)
    terms = elbo_per_point(model, x, seed=7, usage=usage)  # one batch of 40 rows
    forces = usage.forces
    assert set(forces) == {"force_mean", "force_variance"}
    force_recon = -terms["recon"].mean()
    with torch.no_grad():
        q = model.evaluation_posterior(x)
        same = elbo_terms(model, x, q=q, generator=RowStreams(x, 7))
        batch_loss = float(loss(same, beta=1.0))
        closed_form_kl = float(model.kl(q, None).mean())
    assert force_recon + forces["force_mean"] + forces["force_variance"] == pytest.approx(batch_loss, rel=1e-12, abs=1e-12)
    assert forces["force_mean"] + forces["force_variance"] == pytest.approx(closed_form_kl, rel=1e-12, abs=1e-12)
    assert forces["force_mean"] > 0 and forces["force_variance"] > 0


def test_no_forces_where_the_kl_does_not_split():
    """A mixture prior: the KL has no mean and variance terms, so LatentUsage gives None."""
    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=3, latent_dim=2, hidden=(8,), likelihood="gaussian", prior="mixture")).to(F64)
    usage = LatentUsage(model, torch.Generator().manual_seed(0))
    elbo_per_point(model, standardised_rows(n=10), usage=usage)
    assert usage.forces is None
    # and the training records leave the force fields out
    x = standardised_rows(n=30).astype(np.float32)
    history = fit(model.float(), x[:20], x[20:], TrainConfig(epochs=1, batch_size=10))
    assert not [k for k in history[0] if k.startswith("force_")]


def test_metrics_log_the_forces_of_the_validation_rows():
    """Each epoch's record (a metrics.jsonl line) carries force_recon = −valid_recon and force_mean +
    force_variance = valid_kl (float32 model: to float32 rounding)."""
    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=3, latent_dim=2, hidden=(8,), likelihood="gaussian"))
    x = standardised_rows(n=60).astype(np.float32)
    lines = fit(model, x[:40], x[40:], TrainConfig(epochs=2, batch_size=20))
    assert len(lines) == 2
    for r in lines:
        assert r["force_recon"] == -r["valid_recon"]
        assert r["force_mean"] + r["force_variance"] == pytest.approx(r["valid_kl"], rel=1e-5)
        assert r["force_recon"] + r["force_mean"] + r["force_variance"] == pytest.approx(-r["valid_elbo"], rel=1e-5)


def test_hierarchy_kl_per_group_is_the_mean_over_rows_of_each_groups_term():
    """Two groups: LatentUsage.kl_per_group is the mean over rows of model.kl_per_group(q, z) on
    the one draw z its generator makes."""
    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=4, latent_dim=(3, 2), hidden=(8,), likelihood="gaussian")).to(F64)
    x = torch.randn(40, 4, dtype=F64)
    with torch.no_grad():
        q = model.posterior(x)
        usage = LatentUsage(model, torch.Generator().manual_seed(5))
        usage.add(q)
        z = q.rsample((1,), generator=torch.Generator().manual_seed(5))
        ref = {k: float(v.double().mean()) for k, v in model.kl_per_group(q, z).items()}
    assert usage.kl_per_group.keys() == ref.keys()
    for k in ref:
        assert usage.kl_per_group[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-12)
