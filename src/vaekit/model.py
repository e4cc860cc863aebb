"""The latent-variable model p(x, z) = p(z) p(x|z; θ) together with its inference model q(z|x; φ)."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution

from .config import ModelConfig
from .inference import INFERENCE
from .likelihoods import LIKELIHOODS
from .nets import MLP
from .priors import PRIORS


class VAEModel(nn.Module):
    """Prior + decoder + likelihood (the generative model, θ) and an inference method (φ).

    ``posterior(x)`` is q(z|x), ``prior()`` is p(z), ``decode(z)`` is p(x|z); the objectives in
    ``vaekit.objectives`` need nothing else, whichever inference method is plugged in.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.prior = PRIORS.get(config.prior)(config)
        self.decoder = MLP(config.latent_dim, config.decoder_widths, config.input_dim, config.activation)
        self.likelihood = LIKELIHOODS.get(config.likelihood)(config)
        self.inference = INFERENCE.get(config.inference)(config)

    def posterior(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> Distribution:
        """q(z|x; φ), shape batch (n,), event (d,); ``idx`` selects per-point parameters."""
        return self.inference(self, x, idx)

    def evaluation_posterior(self, x: torch.Tensor) -> Distribution:
        """A proper density q(z|x) for new x (refined, or optimised, as the method says), for
        the ELBO and the importance-weighted log p(x)."""
        return self.inference.evaluation_posterior(self, x)

    def loss(self, x: torch.Tensor, idx: torch.Tensor | None, beta: float = 1.0, n_samples: int = 1, analytic_kl: bool = True, eps=None):
        """(training loss, per-point ELBO terms) of the inference method's objective."""
        return self.inference.loss(self, x, idx, beta, n_samples, analytic_kl, eps)

    def decode(self, z: torch.Tensor) -> Distribution:
        """p(x|z; θ) for z of shape (..., d)."""
        return self.likelihood(self.decoder(z))

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None = None, beta: float = 1.0, n_samples: int = 1, analytic_kl: bool = True, eps=None):
        """The training step's objective, so that DistributedDataParallel can wrap the model."""
        return self.loss(x, idx, beta, n_samples, analytic_kl, eps)

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, mean: bool = True, z: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x ~ p(x|z) with z ~ p(z) (or the given z); ``mean`` returns E[x|z] instead of a draw."""
        if z is None:
            z = self.prior().sample((n,), generator=generator)
        px = self.decode(z)
        return px.mean if mean else px.sample(generator=generator)

