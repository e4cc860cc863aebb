from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distributions import DiagonalNormal
from . import INFERENCE, InferenceMethod


@INFERENCE.register("vi")
class VI(InferenceMethod):
    """Decoder only, non-amortized variational inference: every training point owns free
    variational parameters (μ_i, log σ_i²), q_i = N(μ_i, diag σ_i²), fitted with θ on the ELBO
    (Hoffman et al. 2013's local variational parameters, trained by stochastic gradients).

    A new x gets its q by maximising its ELBO with θ fixed, from the prior N(0, I).
    """

    has_encoder = False
    per_point = True

    def __init__(self, config, latents):
        super().__init__(config, latents)
        self.mu = nn.Parameter(0.01 * torch.randn(config.n_points, self.size))
        self.logvar = nn.Parameter(torch.zeros(config.n_points, self.size))

    def local_parameters(self) -> list[nn.Parameter]:
        return [self.mu, self.logvar]

    def forward(self, model, x: torch.Tensor, idx: torch.Tensor | None = None) -> DiagonalNormal:
        if idx is not None:
            return DiagonalNormal(F.embedding(idx, self.mu, sparse=True), F.embedding(idx, self.logvar, sparse=True))
        from .optimize import optimize_gaussian

        zeros = torch.zeros(x.shape[0], self.size, dtype=x.dtype, device=x.device)
        return optimize_gaussian(model, x, zeros, zeros, self.config.local_steps, self.config.local_lr)
