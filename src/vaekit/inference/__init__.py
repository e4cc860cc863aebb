"""Inference methods: how q(z|x) is obtained. The prior, decoder and likelihood are shared;
only this part differs between the notes' autoencoder, MAP estimation of every latent,
per-datapoint VI and the amortized encoder (with optional refinement).

Each is an ``nn.Module`` registered in ``INFERENCE``. ``forward(model, x, idx)`` returns
q(z|x) for a batch; ``idx`` are the rows' indices in the training set, which methods that
keep one set of parameters per datapoint (``per_point``) use during training. For new data
those methods find q by optimisation with θ fixed (``vaekit.inference.optimize``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution

from ..config import ModelConfig
from ..registry import INFERENCE


class InferenceMethod(nn.Module):
    name: str
    # False when q for a new x must be found by optimisation (there is no DNN_enc).
    has_encoder: bool = True
    # True when the method owns free parameters for every training row (indexed by idx).
    per_point: bool = False
    # True when q is a point mass, so that ELBO and IWAE need another proposal (see below).
    point_estimate: bool = False
    # False when the training objective is not the ELBO (the autoencoder): then the best
    # epoch is chosen by that objective on the validation set, not by the ELBO.
    trains_elbo: bool = True

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

    def forward(self, model, x: torch.Tensor, idx: torch.Tensor | None = None) -> Distribution:  # pragma: no cover
        raise NotImplementedError

    def loss(self, model, x: torch.Tensor, idx: torch.Tensor | None, beta: float, n_samples: int, analytic_kl: bool, eps=None):
        """(training loss, per-point ELBO terms) for a batch: −mean(recon − β·KL) by default.
        ``eps`` (S, n, d), when given, is the noise of the reparameterization."""
        from ..objectives import elbo, loss

        terms = elbo(model, x, idx, n_samples=n_samples, analytic_kl=analytic_kl, eps=eps)
        return loss(terms, beta), terms

    def local_parameters(self) -> list[nn.Parameter]:
        """Per-point tables, trained with sparse updates (only the rows of the batch move)."""
        return []

    def evaluation_posterior(self, model, x: torch.Tensor) -> Distribution:
        """A proper density q(z|x) for the ELBO and the importance-weighted log p(x) of new x.

        Point-estimate methods have none of their own, so they get the ELBO-optimal Gaussian
        started at their point estimate (θ fixed): an honest proposal for the same decoder.
        """
        q = self(model, x)
        if self.point_estimate:
            from .optimize import gaussian_around

            q = gaussian_around(model, x, q.mean, self.config.local_steps, self.config.local_lr)
        return q



