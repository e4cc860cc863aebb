from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distributions import DiagonalNormal
from ..registry import STEPS_MAX, Option
from . import INFERENCE, InferenceMethod


@INFERENCE.register(
    "vi",
    options={
        "point_lr": Option(0.2, "Adam (SparseAdam) learning rate of the per-point parameters, which step once per epoch (θ's is --lr)", minimum=0.0, exclusive=True),
        "local_steps_per_batch": Option(0, "Adam steps (at --local-lr, θ fixed) on each batch's per-point parameters before the shared step (stochastic VI's local step; 0: one joint step)", minimum=0, maximum=STEPS_MAX),
    },
)
class VI(InferenceMethod):
    """Decoder only, non-amortized variational inference: every training point owns free
    variational parameters (μ_i, log σ_i²), q_i = N(μ_i, diag σ_i²), fitted with θ on the ELBO
    (Hoffman et al. 2013's local variational parameters, trained by stochastic gradients, at
    ``point_lr``: a row steps once per epoch).
    With ``local_steps_per_batch`` K > 0 each batch's (μ_i, log σ_i²) first take K steps of
    their own with θ fixed (``local_update``), so that the shared step sees a q near the
    optimum for the current decoder, as Hoffman et al.'s stochastic VI does.

    A new x gets its q by maximising its ELBO with θ fixed, from the prior N(0, I). Under an
    objective that weighs the KL by β (``kl_weight``: ``--beta``, 0 under objective
    reconstruction) the local steps and the fits of new rows maximise that ELBO_β, the
    objective the training rows' q_i were fitted on; the ELBO and log p(x) reported for
    them are the model's own (β = 1), as for an encoder trained on ELBO_β.
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
        return optimize_gaussian(model, x, zeros, zeros, self.config.local_steps, self.config.local_lr, beta=self.kl_weight)

    @torch.no_grad()
    def local_update(self, model, x: torch.Tensor, idx: torch.Tensor, seed: int) -> None:
        steps = self.config.local_steps_per_batch
        if not steps:
            return
        from .optimize import optimize_gaussian

        q = optimize_gaussian(model, x, self.mu[idx], self.logvar[idx], steps, self.config.local_lr, seed=seed, beta=self.kl_weight)
        self.mu.index_copy_(0, idx, q.mu.to(self.mu.dtype))
        self.logvar.index_copy_(0, idx, q.logvar.to(self.logvar.dtype))
