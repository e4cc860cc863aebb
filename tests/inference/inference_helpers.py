"""Helpers of the inference tests (imported by conftest.py and the test modules; the name is
unique under tests/ because test directories are not packages)."""

from __future__ import annotations

import torch

from vaekit.config import ModelConfig, TrainConfig
from vaekit.model import VAEModel

F64 = torch.float64
N_TRAIN, N_VALID, N_TEST = 1000, 200, 200
DIGITS_DIM = 64
# The small digits models: big enough to learn in a few epochs, small enough to train in < 1 s.
DIGITS_MODEL = dict(input_dim=DIGITS_DIM, latent_dim=4, hidden=(32,), likelihood="continuous_bernoulli")
# lr 3e-3: with the default 1e-3, per-point tables (one SparseAdam step per row per epoch)
# barely leave their start in a few epochs.
DIGITS_TRAIN = TrainConfig(epochs=5, lr=3e-3, batch_size=64, seed=0)


def digits_model(inference: str, seed: int = 0, **kw) -> VAEModel:
    torch.manual_seed(seed)
    n_points = N_TRAIN if inference in ("map", "vi") else 0
    return VAEModel(ModelConfig(**DIGITS_MODEL, inference=inference, n_points=n_points, **kw))


# ---- the exact-posterior model --------------------------------------------------------------

D, LATENT, SIGMA = 6, 3, 0.5
# Column norms of W: posterior variances 1/(1 + s²/σ²) = 0.5, 0.2, 0.1, distinct and not tiny.
SCALES = (0.5, 1.0, 1.5)


class LinearGaussian:
    """x = W z + b + σ ε with orthogonal columns of W, so that the exact posterior
    N(m, S), S = (I + WᵀW/σ²)⁻¹, m = S Wᵀ (x − b)/σ², has a diagonal S that a diagonal
    Gaussian q can match exactly; the marginal is N(b, WWᵀ + σ²I)."""

    def __init__(self, n: int = 200, seed: int = 0, **model_kw):
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(D, LATENT, generator=g, dtype=F64))
        self.W = q * torch.tensor(SCALES, dtype=F64)
        self.b = 0.3 * torch.randn(D, generator=g, dtype=F64)
        z = torch.randn(n, LATENT, generator=g, dtype=F64)
        self.x = z @ self.W.T + self.b + SIGMA * torch.randn(n, D, generator=g, dtype=F64)
        torch.manual_seed(seed)
        config = ModelConfig(
            input_dim=D, latent_dim=LATENT, hidden=(), likelihood="gaussian", variance="fixed", fixed_std=SIGMA,
            **model_kw,
        )  # fmt: skip
        self.model = VAEModel(config).to(F64)
        with torch.no_grad():
            self.model.decoder[0].weight.copy_(self.W)
            self.model.decoder[0].bias.copy_(self.b)
        eye = torch.eye(LATENT, dtype=F64)
        self.S = torch.linalg.inv(eye + self.W.T @ self.W / SIGMA**2)
        self.m = (self.x - self.b) @ self.W @ self.S / SIGMA**2

    def log_px(self) -> torch.Tensor:
        from torch.distributions import MultivariateNormal

        cov = self.W @ self.W.T + SIGMA**2 * torch.eye(D, dtype=F64)
        return MultivariateNormal(self.b, cov).log_prob(self.x)

    def kl_to_posterior(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(N(μ, diag e^logvar) || N(m, S)) per row, in closed form (S is diagonal)."""
        s = torch.diagonal(self.S)
        var = logvar.exp()
        return 0.5 * (torch.log(s) - logvar + (var + (mu - self.m) ** 2) / s - 1).sum(-1)


# Columns of W mixed so that they are not orthogonal (least squares is not coordinatewise);
# singular values 1.68, 0.96, 0.47: well enough conditioned for Adam to settle.
MIX = ((1.0, 0.6, 0.0), (0.0, 1.0, -0.6), (0.0, 0.0, 1.0))


def mixed_linear(n: int, inference: str = "map", local_lr: float = 0.01, **model_kw) -> LinearGaussian:
    """``LinearGaussian`` of n rows with a per-point ``inference`` (a table of n rows) and W's
    columns mixed (MIX), its exact posterior N(m, S) recomputed: S is no longer diagonal."""
    lg = LinearGaussian(n=n, inference=inference, n_points=n, local_lr=local_lr, **model_kw)
    lg.W = lg.W @ torch.tensor(MIX, dtype=F64)
    with torch.no_grad():
        lg.model.decoder[0].weight.copy_(lg.W)
    lg.S = torch.linalg.inv(torch.eye(LATENT, dtype=F64) + lg.W.T @ lg.W / SIGMA**2)
    lg.m = (lg.x - lg.b) @ lg.W @ lg.S / SIGMA**2
    return lg


def ridge_code(lg: LinearGaussian, beta: float) -> torch.Tensor:
    """argmax_z log p(x|z) + β log p(z): (WᵀW + β σ² I)⁻¹ Wᵀ(x − b) for every row (β = 1: the
    posterior mean m; β = 0: least squares)."""
    a = lg.W.T @ lg.W + beta * SIGMA**2 * torch.eye(LATENT, dtype=F64)
    return torch.linalg.solve(a, lg.W.T @ (lg.x - lg.b).T).T


def loss_of(model, x, idx, beta: float = 1.0, eps=None, **train):
    """(loss, per-point value) of a training step's objective, as train.fit computes it; the
    noise ε (S, n, noise) is drawn from the global stream when not given, as the loop draws it."""
    from vaekit.config import TrainConfig
    from vaekit.train import make_objective

    objective = make_objective(model, TrainConfig(**train))
    if eps is None:
        eps = torch.randn(objective.samples, x.shape[0], model.noise_size, dtype=x.dtype)
    return model(objective, x, idx, eps, beta)
