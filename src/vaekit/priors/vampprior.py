from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from ..distributions import DiagonalNormal, MixtureOfDiagonalNormals
from ..errors import ConfigError, VaekitWarning, count
from ..registry import INFERENCE, Option
from . import PRIORS, Prior

# The random starts, as in versions of the paper's code (jmtomczak/vae_vampprior): a pixel of
# u_k = clamp(w_k) starts at N(0.05, 0.01²) for data in [0, 1] (here as a fraction of the data's
# range); the logit w_k of u_k = sigmoid(w_k) at N(−0.05, 0.01²), a grey of ≈ 0.49.
RANDOM_MEAN, RANDOM_STD = {"clamp": 0.05, "sigmoid": -0.05}, 0.01
# A data start under the sigmoid map takes the logit of rows kept this far inside (0, 1): binary
# pixels start at σ(±6.9), not at infinite logits.
LOGIT_MARGIN = 1e-3


@PRIORS.register(
    "vampprior",
    options={
        "pseudo_inputs": Option(500, "number K of learned pseudo-inputs of the vampprior", minimum=1),
        "pseudo_init": Option("random", "start of the vampprior's pseudo-inputs: random (the paper's) or data (K training rows)", choices=("random", "data")),
        "pseudo_map": Option("clamp", "how the vampprior's parameters w_k give pseudo-inputs in the data range [lo, hi]: "
                             "clamp (u = clamp(w, lo, hi)) or sigmoid (u = lo + (hi - lo)·sigmoid(w))", choices=("clamp", "sigmoid")),
    },
)
class VampPrior(Prior):
    """p(z) = (1/K) Σ_k q(z | u_k): the uniform mixture of the encoder's posteriors at K learned
    pseudo-inputs u_k (Tomczak & Welling 2018, "VAE with a VampPrior", eq. 9).

    The parameters ``pseudo_inputs`` w (K, D) are trained with θ and φ; gradients of log p(z)
    reach them and the encoder. The encoder sees u_k = map(w_k) (:meth:`inputs`) inside the
    data's range, ``data_range`` = [lo, hi] = [min, max] over the training rows (a buffer, [0, 1]
    until a run sets it, saved with the weights). ``pseudo_map`` chooses the map, each a version
    of the paper's code, where for data in [0, 1] u_k = hardtanh(w_k, 0, 1) or sigmoid(w_k):
    "clamp" keeps w in data space (a coordinate pushed out of the range stops receiving
    gradient there); "sigmoid" takes w as logits, u = lo + (hi − lo)·σ(w), whose gradient never
    vanishes.

    Start (``pseudo_init``): "random" is the paper's, drawn from torch's global generator like
    the networks' weights: under clamp N(0.05, 0.01²) per feature in units of the data's range
    (lo + (hi − lo)·N(0.05, 0.01²)), under sigmoid logits N(−0.05, 0.01²). "data" starts u at K
    training rows chosen at random without replacement (when the training set has fewer than K
    rows: every row, and the rest drawn again, with a warning: copies stay copies); under sigmoid at their logits, the rows kept 1e-3 of the range
    inside it.

    It needs an amortized Gaussian q(z_L|x) of the top group: one latent group, or a hierarchy
    whose inference draws the top group from x alone (``topdown``, Tomczak & Welling's
    two-layer VampPrior model, or ``ladder``). Under the bottom-up posterior q(z_L | u_k) is not
    one Gaussian, and vi/map have no encoder at all (``check_config`` refuses both). No closed-form KL: the ELBO falls back to Monte Carlo,
    while log p(z) (IWAE, log p(x)) is the exact log-sum-exp over the K components.
    """

    def __init__(self, config, size: int):
        super().__init__(config, size)
        self.init, self.map = config.pseudo_init, config.pseudo_map
        k, d = config.pseudo_inputs, config.input_dim
        self.components = k
        self.pseudo_inputs = nn.Parameter(RANDOM_MEAN[self.map] + RANDOM_STD * torch.randn(k, d))  # (K, D)
        self.register_buffer("data_range", torch.tensor([0.0, 1.0]))  # [lo, hi] of the data

    @classmethod
    def check_config(cls, config) -> None:
        method = INFERENCE.get(config.inference)
        if not method.has_encoder or method.point_estimate:
            raise ConfigError(
                f"prior vampprior needs an encoder with a Gaussian q(z|x); inference {config.inference!r} has none "
                "(use inference amortized)"
            )
        layers = config.layers
        if layers > 1 and not method.top_from_x:
            raise ConfigError(
                f"prior vampprior on latent_dim {config.latent_dim!r} ({layers} layers) needs q(z_L|x) of x alone; "
                f"inference {config.inference!r} "
                "draws the top layer from the ones below (use inference topdown or ladder)"
            )

    @torch.no_grad()
    def init_from_data(self, x_train, rng: np.random.Generator) -> None:
        """Read the training rows at the start of a fresh run: their range, and for
        ``pseudo_init="data"`` K of them as the pseudo-inputs (rows drawn by ``rng``)."""
        n = len(x_train)
        lo, hi = np.inf, -np.inf
        # In blocks, so that a memory-mapped training set is streamed, never loaded whole.
        for start in range(0, n, 65536):
            block = np.asarray(x_train[start : start + 65536])
            lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
        old_lo, old_hi = (float(v) for v in self.data_range)
        self.data_range.copy_(torch.tensor([lo, hi]))
        k = self.pseudo_inputs.shape[0]
        if self.init == "data":
            rows = rng.choice(n, size=min(k, n), replace=False)
            if k > n:
                # Two equal pseudo-inputs get equal gradients: the copies never part.
                warnings.warn(
                    f"pseudo_init data: {k} pseudo-inputs from {count(n, 'training row')}: {k - n} start as copies of "
                    f"other rows and stay copies; ask for at most {n} pseudo-inputs, or pseudo_init random",
                    VaekitWarning,
                    stacklevel=2,
                )
                rows = np.concatenate([rows, rng.choice(n, size=k - n, replace=True)])
            rows = np.sort(rows)
            w = torch.as_tensor(np.asarray(x_train[rows]), dtype=torch.float64)
            if self.map == "sigmoid":
                unit = (w - lo) / (hi - lo) if hi > lo else torch.full_like(w, 0.5)
                w = torch.logit(unit.clamp(LOGIT_MARGIN, 1 - LOGIT_MARGIN))
        elif self.map == "clamp":
            # The random start, moved from the default range [old_lo, old_hi] to the data's.
            scale = (hi - lo) / (old_hi - old_lo) if old_hi > old_lo else 0.0
            w = lo + scale * (self.pseudo_inputs - old_lo)
        else:
            return  # logits are the same fractions of any range
        self.pseudo_inputs.copy_(w.to(self.pseudo_inputs))

    def inputs(self) -> torch.Tensor:
        """The pseudo-inputs u (K, D) in data space, as the encoder sees them."""
        lo, hi = self.data_range
        if self.map == "sigmoid":
            return lo + (hi - lo) * torch.sigmoid(self.pseudo_inputs)
        return torch.clamp(self.pseudo_inputs, lo, hi)  # the paper's hardtanh

    def forward(self, model=None) -> MixtureOfDiagonalNormals:
        if model is None:
            raise ValueError("the vampprior is built from the model's encoder; call it as prior(model)")
        q = model.inference.top_posterior(model, self.inputs())
        if not isinstance(q, DiagonalNormal):
            raise ValueError(f"the vampprior needs a diagonal Gaussian q(z|u); inference gives {type(q).__name__}")
        mu, logvar = q.mu, q.logvar.expand_as(q.mu)  # (K, d) each
        logits = torch.zeros(mu.shape[0], dtype=mu.dtype, device=mu.device)  # (K,), uniform weights 1/K
        return MixtureOfDiagonalNormals(logits, mu, logvar)
