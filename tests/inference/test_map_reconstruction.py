"""MAP under objective reconstruction, the notes' decoder-only estimation without a prior:
max over θ and every z_i of Σ_i log p(x_i|z_i). New rows get their code by the objective the
model was trained with (no log p(z) term), wherever a code is fitted (validation, encode,
transform, the local step), while log p(x) stays the evidence of the model p(z) p(x|z).

A linear Gaussian decoder x = W z + b + σ ε gives every answer in closed form: the maximiser
of log p(x|z) alone is the least-squares code (WᵀW)⁻¹ Wᵀ(x − b); with β log p(z), p(z) = N(0, I),
it is the ridge code (WᵀW + β σ² I)⁻¹ Wᵀ(x − b), β = 1 the posterior mode."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vaekit
from inference_helpers import F64, LATENT, LinearGaussian, mixed_linear, ridge_code
from vaekit.cli import main
from vaekit.config import TrainConfig
from vaekit.evaluate import evaluate
from vaekit.inference.optimize import optimize_point
from vaekit.model import build_model
from vaekit.objectives import iwae
from vaekit.train import make_objective

N = 8
# Adam reaches these noiseless quadratic optima to ~1e-8 in 1500 steps at 0.01 (observed); 1e-6
# leaves room for other summation orders, and the closed forms differ by far more.
STEPS, LR, TOL = 1500, 0.01, 1e-6
def test_the_closed_forms_tell_the_objectives_apart():
    lg = mixed_linear(N)
    assert float((ridge_code(lg, 0.0) - ridge_code(lg, 1.0)).abs().max()) > 0.1
    torch.testing.assert_close(ridge_code(lg, 1.0), lg.m, rtol=0, atol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_optimize_point_maximises_log_px_given_z_plus_beta_log_pz(beta):
    lg = mixed_linear(N)
    p = optimize_point(lg.model, lg.x, torch.zeros(N, LATENT, dtype=F64), STEPS, LR, beta=beta)
    torch.testing.assert_close(p.z, ridge_code(lg, beta), rtol=0, atol=TOL)


@pytest.mark.parametrize("objective, beta", [("reconstruction", 0.0), ("elbo", 1.0)])
def test_new_rows_get_the_training_objectivesridge_code(objective, beta):
    """The training path (``make_objective``, what ``fit`` calls) and the loading path
    (``build_model`` with the run's TrainConfig, what ``load_run`` calls) both give new rows
    argmax log p(x|z) + β log p(z): least squares under reconstruction, the mode under the ELBO;
    encode, transform and reconstruct read that code (``representation``)."""
    trained = mixed_linear(N, local_steps=STEPS)
    make_objective(trained.model, TrainConfig(objective=objective))
    loaded = build_model(trained.model.config, TrainConfig(objective=objective)).to(F64)
    loaded.load_state_dict(trained.model.state_dict())
    for model in (trained.model, loaded):
        assert model.inference.kl_weight == beta
        torch.testing.assert_close(model.posterior(trained.x).z, ridge_code(trained, beta), rtol=0, atol=TOL)
        torch.testing.assert_close(model.representation(trained.x).mean, ridge_code(trained, beta), rtol=0, atol=TOL)


@pytest.mark.parametrize("shrink", [1.0, 0.1])
def test_new_rows_reach_far_least_squares_codes_at_the_default_steps(shrink):
    """Without a prior the codes can lie far out: W / 10 puts the least-squares codes at RMS
    12.8. A new row starts at 0 and the default 100 steps at 0.05 move a coordinate about 5
    units; the ascent's first rate is scaled to the training codes' RMS (the table's), so it
    ends within 1e-6 nats of the optimum (measured 1e-8; from 0 at a constant 0.05: 14.7 short)."""
    lg = mixed_linear(N, local_lr=0.05, local_steps=100)
    lg.W = lg.W * shrink
    with torch.no_grad():
        lg.model.decoder[0].weight.copy_(lg.W)
        make_objective(lg.model, TrainConfig(objective="reconstruction"))
        target = ridge_code(lg, 0.0)
        lg.model.inference.z.copy_(target)  # the training rows' codes, as training leaves them
        z = lg.model.posterior(lg.x).z
        log_px_given = lambda c: lg.model.log_px_given_z(c, lg.x)  # noqa: E731
        assert float((log_px_given(target) - log_px_given(z)).max()) < 1e-6
        assert torch.equal(lg.model.posterior(lg.x).z, z)  # a function of the row and θ


def test_the_elbos_beta_weighs_the_prior_term_of_new_rows():
    lg = mixed_linear(N, local_steps=STEPS)
    make_objective(lg.model, TrainConfig(objective="elbo", beta=0.5))
    torch.testing.assert_close(lg.model.posterior(lg.x).z, ridge_code(lg, 0.5), rtol=0, atol=TOL)


def test_the_local_step_fits_the_table_rows_without_the_prior():
    """--local-steps-per-batch, stochastic VI's local step in training, moves a batch's z_i
    toward the objective's own optimum: least squares under reconstruction."""
    lg = mixed_linear(N, local_steps_per_batch=STEPS)
    make_objective(lg.model, TrainConfig(objective="reconstruction"))
    idx = torch.tensor([5, 0, 3])
    lg.model.inference.local_update(lg.model, lg.x[idx], idx, seed=0)
    torch.testing.assert_close(lg.model.inference.z[idx].detach(), ridge_code(lg, 0.0)[idx], rtol=0, atol=TOL)


def test_log_px_is_the_evidence_of_the_model_whatever_theridge_code():
    """Under reconstruction ẑ is the least-squares code, but the importance proposal is still
    grown around the posterior mode of p(z) p(x|z) (``gaussian_around`` ascends from ẑ), so
    log p(x) estimates that model's evidence: here the exact Gaussian marginal. (W with
    orthogonal columns: the exact posterior is diagonal, so the proposal can match it.)"""
    lg = LinearGaussian(n=N, inference="map", n_points=N, local_steps=100, local_lr=0.05)
    make_objective(lg.model, TrainConfig(objective="reconstruction"))
    assert float((ridge_code(lg, 0.0) - lg.m).abs().max()) > 0.1  # the code is not the mode
    q = lg.model.evaluation_posterior(lg.x)
    # Within 0.5 nats of KL of the exact posterior per row, the bound of
    # test_optimize.test_gaussian_around_a_far_code_reaches_the_posterior (1-draw gradients
    # jitter around the optimum).
    assert float(lg.kl_to_posterior(q.mu, q.logvar).max()) < 0.5
    # With such a proposal K = 2000 samples land within 0.03 nats of the exact value (observed).
    log_px = iwae(lg.model, lg.x, 2000, q=q, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(log_px, lg.log_px(), rtol=0, atol=0.1)


# --------------------------------------------------------------------------- the command line

TRAIN = ["--data", "digits", "--hidden", "32", "--latent-dim", "4", "--epochs", "2", "--eval-k", "5", "--local-steps", "10"]


def _cli(capsys, *argv) -> dict:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_train_encode_and_evaluate_a_map_without_prior(tmp_path, capsys):
    """`vaekit train --inference map --objective reconstruction`, then encode and evaluate:
    the run validates on log p(x|ẑ) with ẑ fitted without the prior, encode writes that ẑ,
    and evaluate reports the evidence of p(z) p(x|z), finite, and the same as in Python."""
    run = tmp_path / "run"
    _cli(capsys, "train", "--out", run, "--inference", "map", "--objective", "reconstruction", *TRAIN, "--json")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["objective"] for r in records] == ["reconstruction"] * 2
    assert all(np.isfinite(r["valid_score"]) for r in records)

    est = vaekit.load(run)
    model = est.model_
    assert model.inference.kl_weight == 0.0
    encoded = tmp_path / "z.npz"
    report = _cli(capsys, "encode", run, "--data", "digits", "--split", "test", "--out", encoded, "--json")
    z = np.load(encoded)
    assert z["mu"].shape == (report["n"], 4) and np.isneginf(z["logvar"]).all()
    # The code is argmax log p(x|z) with θ fixed, from 0, as the model fits new rows.
    x = torch.as_tensor(est.model_input(_test_rows(run)), dtype=torch.float32)
    with torch.no_grad():
        mine = optimize_point(model, x, torch.zeros(len(x), 4), 10, model.config.local_lr, beta=0.0).z
        with_prior = optimize_point(model, x, torch.zeros(len(x), 4), 10, model.config.local_lr, beta=1.0).z
    np.testing.assert_allclose(z["mu"], mine.numpy(), rtol=0, atol=1e-5)
    assert np.abs(z["mu"] - with_prior.numpy()).max() > 1e-3

    result = _cli(capsys, "evaluate", run, "--k", "5", "--json")
    for name in ("elbo", "recon", "kl", "log_likelihood", "bits_per_dim"):
        assert np.isfinite(result[name]), name
    assert result["elbo"] == pytest.approx(result["recon"] - result["kl"])
    same = evaluate(model, x.numpy(), k=5, seed=0)
    assert same["log_likelihood"] == pytest.approx(result["log_likelihood"], abs=1e-9)


def _test_rows(run) -> np.ndarray:
    """The run's test split, as `vaekit encode RUN` (split test) reads it."""
    from vaekit.data import load_dataset

    return np.asarray(load_dataset(vaekit.load(run).config_.data).split("test"))
