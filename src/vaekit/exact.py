"""The linear-Gaussian VAE in closed form: every term of the notes' identity

    log p(x) = ELBO(q) + KL(q(z|x) ‖ p(z|x))

exact, each from a formula of its own, so the identity can be checked rather than believed.

A model with one latent group, the standard normal prior, an affine decoder (``hidden=()``)
and the Gaussian likelihood is p(z) = N(0, I), p(x|z) = N(Wz + b, D), D = diag σ²: factor
analysis, probabilistic PCA when σ² is shared (Tipping & Bishop 1999). Its evidence and its
posterior are Gaussian (Bishop 2006, §2.3.3 and §12.2):

    p(x) = N(x; b, WWᵀ + D),    p(z|x) = N(z; Σ WᵀD⁻¹(x − b), Σ),    Σ = (I + WᵀD⁻¹W)⁻¹.

Rows x are in the model's units (what ``VAEModel`` reads); the densities are of the user's
values, as ``VAEModel.log_px_given_z`` gives them (the scaling's log-determinant added).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.distributions import MultivariateNormal

from .errors import ConfigError

LOG_2PI = math.log(2 * math.pi)


class LinearGaussian:
    """p(z) = N(0, I), p(x|z) = N(Wz + b, diag σ²) with W (D, d), b (D,), σ² (D,), held in
    float64 on the CPU, where rows and q's moments are brought from any device (the results are
    CPU tensors); ``log_det`` is added to every log-density of x (a change of variables)."""

    def __init__(self, W: torch.Tensor, b: torch.Tensor, var: torch.Tensor, log_det: float = 0.0):
        self.W, self.b, self.var = W.double(), b.double(), var.double().expand(b.shape)
        self.log_det = float(log_det)
        d = self.W.shape[1]
        # The posterior's precision I + WᵀD⁻¹W, shared by every row.
        self.precision = torch.eye(d, dtype=torch.float64) + self.W.T @ (self.W / self.var[:, None])
        self.covariance = torch.cholesky_inverse(torch.linalg.cholesky(self.precision))

    @classmethod
    def of(cls, model) -> "LinearGaussian":
        """Read W, b and σ² off a ``VAEModel``: b = E[x|z=0], W's columns E[x|z=e_i] − b. The
        decoder must be one linear layer, and is then checked to be that affine map at random
        points; any other model is refused with a ``ConfigError`` that says why."""
        config = model.config
        if len(model.latents) != 1:
            raise ConfigError(f"the closed form needs one latent group; this model has {len(model.latents)}")
        if config.prior != "standard_normal":
            raise ConfigError(f"the closed form needs the standard_normal prior; this model's is {config.prior}")
        if config.likelihood != "gaussian":
            raise ConfigError(f"the closed form needs the gaussian likelihood; this model's is {config.likelihood}")
        # One linear layer, not a network that happens to be nearly affine where it is probed
        # (a tanh layer with small weights passes the numeric check below in float32).
        layers = [m for m in model.decoder.modules() if next(m.children(), None) is None]
        if len(layers) != 1 or not isinstance(layers[0], torch.nn.Linear):
            raise ConfigError(
                f"the closed form needs an affine decoder, one linear layer (hidden=()); this model's decoder has {len(layers)} layers"
            )
        d = model.latent_size
        param = next(model.parameters())
        with torch.no_grad():
            probe = torch.randn(4, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
            z = torch.cat([torch.zeros(1, d, dtype=torch.float64), torch.eye(d, dtype=torch.float64), probe])
            p = model.decode(z.to(param.device, param.dtype))
            mean = p.mean.reshape(len(z), -1).double().cpu()
            var = p.variance.reshape(len(z), -1).double().cpu()
        b, W = mean[0], (mean[1 : d + 1] - mean[0]).T
        want = probe @ W.T + b
        # float32 products carry relative errors near 1e-7 of the values summed; an activation
        # between two layers (hidden != ()) is off by far more.
        tol = (1e-10 if param.dtype == torch.float64 else 1e-4) * (1.0 + float(mean.abs().max()) * (1 + d))
        if not torch.allclose(mean[d + 1 :], want, rtol=0, atol=tol):
            raise ConfigError("the closed form needs an affine decoder (hidden=()); this model's decoder is not affine")
        return cls(W, b, var[0], model.log_det)

    def marginal(self) -> MultivariateNormal:
        """p(x) = N(b, WWᵀ + D), in the model's units."""
        return MultivariateNormal(self.b, covariance_matrix=self.W @ self.W.T + torch.diag(self.var))

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) per row (n,), exactly."""
        return self.marginal().log_prob(_cpu64(x)) + self.log_det

    def posterior(self, x: torch.Tensor) -> MultivariateNormal:
        """p(z|x) = N(Σ WᵀD⁻¹(x − b), Σ), a batch of n full-covariance Gaussians."""
        mean = ((_cpu64(x) - self.b) / self.var) @ self.W @ self.covariance
        return MultivariateNormal(mean, covariance_matrix=self.covariance.expand(mean.shape[0], -1, -1))

    def elbo(self, q, x: torch.Tensor) -> torch.Tensor:
        """ELBO(q) = E_q[log p(x|z)] − KL(q ‖ p(z)) per row, in closed form for a diagonal
        q = N(m, diag s): E_q[(x − Wz − b)_j²] = (x − Wm − b)_j² + Σ_i W_ji² s_i."""
        m, s = _moments(q)
        r = _cpu64(x) - self.b - m @ self.W.T
        expected_log_px = -0.5 * (
            (LOG_2PI + torch.log(self.var)).sum() + (r * r / self.var).sum(-1) + s @ (self.W**2 / self.var[:, None]).sum(0)
        )
        kl_prior = 0.5 * (s + m * m - 1.0 - torch.log(s)).sum(-1)
        return expected_log_px - kl_prior + self.log_det

    def gap(self, q, x: torch.Tensor) -> torch.Tensor:
        """KL(q ‖ p(z|x)) per row for a diagonal q = N(m, diag s), the Gaussian KL
        ½[tr(P S) + (μ − m)ᵀP(μ − m) − d − log|P| − log|S|] with P = Σ⁻¹ the posterior's
        precision: log p(x) − ELBO(q), the bound's whole gap."""
        m, s = _moments(q)
        delta = self.posterior(x).mean - m
        logdet_p = 2.0 * torch.log(torch.diagonal(torch.linalg.cholesky(self.precision))).sum()
        return 0.5 * (
            s @ torch.diagonal(self.precision) + ((delta @ self.precision) * delta).sum(-1) - m.shape[-1] - logdet_p - torch.log(s).sum(-1)
        )


def _moments(q) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, variance) of a diagonal Gaussian q, in float64. A point mass (variance 0) has
    ELBO −∞ and an infinite gap: no density, no entropy."""
    try:
        mean, variance = q.mean, q.variance
    except (AttributeError, NotImplementedError):
        raise ConfigError(f"the closed form needs a diagonal Gaussian q(z|x); this one is a {type(q).__name__}") from None
    return _cpu64(mean), _cpu64(variance).expand_as(mean)


def _cpu64(t: torch.Tensor) -> torch.Tensor:
    """t (a tensor, or an array) in float64 on the CPU, beside the closed form's own arrays."""
    return t.to("cpu", torch.float64) if isinstance(t, torch.Tensor) else torch.as_tensor(np.asarray(t), dtype=torch.float64)
