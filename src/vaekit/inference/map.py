from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distributions import PointMass
from ..registry import STEPS_MAX, Option
from . import INFERENCE, InferenceMethod


@INFERENCE.register(
    "map",
    options={
        "point_lr": Option(0.2, "Adam (SparseAdam) learning rate of the per-point parameters, which step once per epoch (θ's is --lr)", minimum=0.0, exclusive=True),
        "local_steps_per_batch": Option(0, "Adam steps (at --local-lr, θ fixed) on each batch's per-point parameters before the shared step (stochastic VI's local step; 0: one joint step)", minimum=0, maximum=STEPS_MAX),
    },
)
class MAP(InferenceMethod):
    """Decoder only, MAP estimation of every latent (the notes' road, its second step): each
    training point owns a free z_i, fitted jointly with θ to maximise Σ_i log p(x_i|z_i) +
    log p(z_i) (the table at ``point_lr``: a row steps once per epoch). Under objective
    reconstruction the prior term is left out, max Σ_i log p(x_i|z_i) over θ and every z_i:
    the notes' decoder-only estimation without a prior. In general the objective's β weighs
    it, Σ_i log p(x_i|z_i) + β log p(z_i) (``kl_weight``).

    A new x gets its ẑ by the same maximisation with θ fixed, the training objective's β
    included (validation, encode, transform, reconstructions): ẑ = argmax_z log p(x|z) +
    β log p(z). Its log p(x) and ELBO are those of the model p(z) p(x|z), estimated with the
    Gaussian proposal around p(z|x)'s mode (``evaluation_posterior``), reached from ẑ; with
    β = 0 that p(z) is the prior training left out, so the numbers measure how well the
    decoder and the prior fit together, as the notes' warning asks.

    The notes warn that this overfits (the decoder and the z_i can explain the training set
    without regard to the rest of the latent space); the benchmark measures it as held-out
    against training log p(x). With ``local_steps_per_batch`` K > 0 each batch's z_i first
    take K steps with θ fixed (``local_update``), as in stochastic VI's local step (Hoffman
    et al. 2013).
    """

    has_encoder = False
    per_point = True
    point_estimate = True

    def __init__(self, config, latents):
        super().__init__(config, latents)
        # Small random starts break the symmetry between points.
        self.z = nn.Parameter(0.01 * torch.randn(config.n_points, self.size))

    def local_parameters(self) -> list[nn.Parameter]:
        return [self.z]

    def forward(self, model, x: torch.Tensor, idx: torch.Tensor | None = None) -> PointMass:
        if idx is not None:
            return PointMass(F.embedding(idx, self.z, sparse=True))
        from .optimize import optimize_point

        z0 = torch.zeros(x.shape[0], self.size, dtype=x.dtype, device=x.device)
        # The training rows' codes say how far a new row's may lie: RMS near 1 under a prior,
        # often several units without one (objective reconstruction).
        reach = float(self.z.detach().pow(2).mean().sqrt())
        return optimize_point(model, x, z0, self.config.local_steps, self.config.local_lr, beta=self.kl_weight, reach=reach)

    @torch.no_grad()
    def local_update(self, model, x: torch.Tensor, idx: torch.Tensor, seed: int) -> None:
        steps = self.config.local_steps_per_batch
        if not steps:
            return
        from .optimize import optimize_point

        q = optimize_point(model, x, self.z[idx], steps, self.config.local_lr, seed=seed, beta=self.kl_weight)
        self.z.index_copy_(0, idx, q.mean.to(self.z.dtype))
