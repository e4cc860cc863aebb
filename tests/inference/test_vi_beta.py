"""Fits of q by optimisation under an objective that weighs the KL by β (``--beta``): per-point
VI's local steps of training and its fits of new rows, and the amortized encoder's refinement,
maximise ELBO_β = E_q[log p(x|z)] − β KL(q || p(z)), the objective the table's q_i and the
encoder are fitted on.

A linear Gaussian decoder x = W z + b + σ ε gives the optimum in closed form: for a diagonal
q = N(μ, diag s), E_q[log p(x|z)] = log p(x|μ) − Σ_j s_j (WᵀW)_jj / 2σ², so ELBO_β is maximised
by the ridge code μ = (WᵀW + β σ² I)⁻¹ Wᵀ(x − b) and the variances s_j = β / ((WᵀW)_jj/σ² + β)
(β = 1: the best diagonal Gaussian of the ELBO, whose mean is the posterior mean)."""

from __future__ import annotations

import pytest
import torch

from inference_helpers import F64, LATENT, SIGMA, mixed_linear, ridge_code
from vaekit.config import TrainConfig
from vaekit.inference.optimize import optimize_gaussian
from vaekit.train import make_objective

N = 8
# Adam at a constant rate of 0.01 on reparameterized gradients settles within about 0.05 of the
# optimum (observed 0.02-0.05 for μ, 0.03-0.11 for log s); the optima for β and for β = 1 lie
# 0.5 (μ) and 0.6 (log s) apart.
STEPS, LR = 2000, 0.01


def _log_s(lg, beta: float) -> torch.Tensor:
    a = torch.diagonal(lg.W.T @ lg.W) / SIGMA**2
    return torch.log(beta / (a + beta)).expand(N, LATENT)


@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_optimize_gaussian_maximises_the_elbo_weighted_by_beta(beta):
    lg = mixed_linear(N, "vi")
    assert float((ridge_code(lg, beta) - ridge_code(lg, 1.0)).abs().max()) > 0.4
    assert float((_log_s(lg, beta) - _log_s(lg, 1.0)).abs().max()) > 0.4
    z = torch.zeros(N, LATENT, dtype=F64)
    q = optimize_gaussian(lg.model, lg.x, z, z, STEPS, LR, n_samples=16, beta=beta)
    torch.testing.assert_close(q.mu, ridge_code(lg, beta), rtol=0, atol=0.1)
    torch.testing.assert_close(q.logvar, _log_s(lg, beta), rtol=0, atol=0.2)


def _nearer(q_mu, q_logvar, lg, beta: float, rows=slice(None)) -> None:
    """The rows' q lie nearer ELBO_β's optimum than the ELBO's (β = 1), in μ and in log s: on
    average at most half as far (the two optima of a row can lie closer than the optimiser's
    jitter, so not row by row)."""
    pairs = ((q_mu, ridge_code(lg, beta), ridge_code(lg, 1.0)), (q_logvar, _log_s(lg, beta), _log_s(lg, 1.0)))
    for got, want, other in pairs:
        near, far = (got - want[rows]).norm(dim=1), (got - other[rows]).norm(dim=1)
        assert float(near.mean()) < 0.5 * float(far.mean()), (near, far)


def _trained_on_elbo_beta(beta: float, inference: str, **kw):
    """The mixed linear model with ``inference``, set up by training's ``make_objective`` for
    ELBO_β: its inference method's fits then weigh the KL by β."""
    lg = mixed_linear(N, inference, **kw)
    make_objective(lg.model, TrainConfig(objective="elbo", beta=beta))
    assert lg.model.inference.kl_weight == beta
    return lg


@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_new_rows_and_the_local_step_fit_the_training_objective(beta):
    """Training (``make_objective``) sets the β that VI's fits use: a new row's q (validation,
    encode, evaluation) and the table rows after the local step both land at ELBO_β's optimum."""
    lg = _trained_on_elbo_beta(beta, "vi", local_steps=STEPS, local_steps_per_batch=STEPS)
    with torch.no_grad():
        q = lg.model.posterior(lg.x)
    _nearer(q.mu, q.logvar, lg, beta)
    idx = torch.tensor([5, 0, 3, 7, 1, 6, 2, 4])  # the table's rows, in a batch's order
    table = lg.model.inference
    table.local_update(lg.model, lg.x[idx], idx, seed=0)
    _nearer(table.mu[idx].detach(), table.logvar[idx].detach(), lg, beta, rows=idx)


@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_refinement_ascends_the_training_objective(beta):
    """The encoder's q refined (``--refine-steps``, at evaluation and in training) lands at
    ELBO_β's optimum, from an encoder that starts far from both optima."""
    lg = _trained_on_elbo_beta(beta, "amortized", refine_steps=STEPS, refine_lr=LR)
    with torch.no_grad():
        q = lg.model.evaluation_posterior(lg.x)
    _nearer(q.mu, q.logvar, lg, beta)


@pytest.mark.parametrize(
    "inference, extra",
    [("vi", {"local_steps_per_batch": 1}), ("map", {"local_steps_per_batch": 1}), ("amortized", {"refine_steps": 1, "refine_in_training": True})],
)
def test_fits_inside_a_step_follow_the_warm_up(monkeypatch, inference, extra):
    """Under KL warm-up the shared step trains ELBO_{β·min(1, e/N)} at epoch e; the local steps
    and the q refined in training, inside the same step, fit that objective too, and new rows
    afterwards are fitted with the full β."""
    import numpy as np

    import vaekit
    from vaekit.inference import optimize

    seen = []
    for name in ("optimize_gaussian", "optimize_point"):
        original = getattr(optimize, name)

        def spy(*args, _original=original, **kwargs):
            seen.append(kwargs["beta"])
            return _original(*args, **kwargs)

        monkeypatch.setattr(optimize, name, spy)
    x = np.random.default_rng(0).normal(size=(40, 3))
    vae = vaekit.VAE(latent_dim=2, hidden=(4,), epochs=3, batch_size=40, valid_fraction=0.25, beta=2.0, warmup=4, inference=inference, **extra)
    epochs = []
    from vaekit import train

    step_epoch = train._Step.epoch

    def counted(self, n, beta, epoch, *args):
        seen.clear()
        out = step_epoch(self, n, beta, epoch, *args)
        epochs.append(sorted(set(seen)))
        return out

    monkeypatch.setattr(train._Step, "epoch", counted)
    vae.fit(x)
    assert epochs == [[0.5], [1.0], [1.5]]  # 2·e/4, in the steps of epoch e
    assert vae.model_.inference.kl_weight == 2.0
