from __future__ import annotations

import torch

from ..distributions import StandardNormal
from . import PRIORS, Prior


@PRIORS.register("standard_normal")
class StandardNormalPrior(Prior):
    """p(z) = N(0, I), the prior of the notes (and of Kingma & Welling 2014)."""

    def __init__(self, config, size: int):
        super().__init__(config, size)
        # A buffer only to follow the model's device and dtype.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def forward(self, model=None) -> StandardNormal:
        return StandardNormal(self.size, dtype=self._anchor.dtype, device=self._anchor.device)
