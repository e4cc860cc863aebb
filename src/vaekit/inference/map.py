from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distributions import PointMass
from . import INFERENCE, InferenceMethod


@INFERENCE.register("map")
class MAP(InferenceMethod):
    """Decoder only, MAP estimation of every latent (notes, third lecture): each training point
    owns a free z_i, fitted jointly with θ to maximise Σ_i log p(x_i|z_i) + log p(z_i).

    A new x gets its ẑ by the same maximisation with θ fixed. The notes warn that this
    overfits (the decoder and the z_i can explain the training set without regard to the rest
    of the latent space); the benchmark measures it as held-out against training log p(x).
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
        return optimize_point(model, x, z0, self.config.local_steps, self.config.local_lr)
