"""Inference methods: how q(z|x) is obtained. The prior, decoder and likelihood are shared;
only this part differs between the notes' autoencoder, MAP estimation of every latent,
per-datapoint VI and the amortized encoder (with optional refinement).

Each is an ``nn.Module`` registered in ``INFERENCE``. ``forward(model, x, idx)`` returns
q(z|x) for a batch, over all of the model's latent groups, and nothing else: the objective
(``vaekit.objectives``) turns it into a loss. ``idx`` are the rows' indices in the training
set, which methods that keep one set of parameters per datapoint (``per_point``) use during
training. For new data those methods find q by optimisation with θ fixed
(``vaekit.inference.optimize``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..distributions import Posterior
from ..errors import ConfigError
from ..registry import INFERENCE

__all__ = ["INFERENCE", "InferenceMethod"]


class InferenceMethod(nn.Module):
    name: str
    # False when q for a new x must be found by optimisation (there is no DNN_enc).
    has_encoder: bool = True
    # True when the method owns free parameters for every training row (indexed by idx).
    per_point: bool = False
    # True when q is a point mass, so that ELBO and IWAE need another proposal (see below).
    point_estimate: bool = False
    # The objective it trains when the run does not name one.
    default_objective: str = "elbo"
    # True when q(z_L|x) of the top group is a diagonal Gaussian of x alone, with several
    # groups too, so that a prior may be built from it (the VampPrior).
    top_from_x: bool = False
    # True for methods that differ from the plain encoder only over several latent groups
    # (topdown, ladder): with one group they would be ``amortized`` under another name.
    hierarchy_only: bool = False

    def __init__(self, config, latents):
        super().__init__()
        self.config = config
        self.latents = latents
        self.size = sum(g.size for g in latents)  # columns of a draw of all groups
        # β of the objective the model trains (``Objective.kl_weight``, set by
        # ``VAEModel.use_objective``): a point estimate fitted by optimisation maximises
        # log p(x|z) + β log p(z) with it, so that new rows get the training rows' objective
        # (0 under objective reconstruction). The config of the model alone does not hold it.
        self.kl_weight = 1.0

    @classmethod
    def check_config(cls, config) -> None:
        """Raise ConfigError if the method cannot serve this model config."""
        if cls.per_point and config.n_points < 1:
            raise ConfigError(f"inference {cls.name!r} keeps one latent per training row; n_points must be >= 1")
        if cls.hierarchy_only and config.layers == 1:
            raise ConfigError(
                f"inference {cls.name} applies to models with several latent groups (latent_dim 40,40) only; "
                f"with one, {config.latent_words}, it is inference amortized"
            )

    def forward(self, model, x: torch.Tensor, idx: torch.Tensor | None = None) -> Posterior:  # pragma: no cover
        raise NotImplementedError

    def training_posteriors(self, model, x: torch.Tensor, idx: torch.Tensor | None) -> list[Posterior]:
        """The q's a training step learns from: its own q, by default."""
        return [self(model, x, idx)]

    def top_posterior(self, model, x: torch.Tensor) -> Posterior:
        """q(z_L|x) of the top group alone: with one group, q itself; with several, methods
        that set ``top_from_x`` give it without drawing the groups below."""
        if len(self.latents) > 1:
            raise ConfigError(f"inference {self.name!r} has no q(z_L|x) of x alone for a hierarchy")
        return self(model, x)

    def local_parameters(self) -> list[nn.Parameter]:
        """Per-point tables, trained with sparse updates (only the rows of the batch move)."""
        return []

    def local_update(self, model, x: torch.Tensor, idx: torch.Tensor, seed: int) -> None:
        """Stochastic variational inference's local step (Hoffman et al. 2013, alg. 1): before
        the shared step on a batch, move the batch's per-point parameters toward their optimum
        for the current θ, by ``local_steps_per_batch`` Adam steps at ``local_lr`` (θ fixed;
        ``seed`` names the noise stream). Nothing for methods without per-point parameters."""

    def evaluation_posterior(self, model, x: torch.Tensor, idx: torch.Tensor | None = None) -> Posterior:
        """A proper density q(z|x) for the ELBO and the importance-weighted log p(x) of new x,
        or, with ``idx`` (the rows' indices in the training set), of training rows as the
        method learned them: a per-point method's own q_i rather than a new fit.

        Point-estimate methods have none of their own, so they get the ELBO-optimal Gaussian
        around the posterior mode found from their point estimate (θ fixed;
        ``optimize.gaussian_around``): an honest proposal for the same decoder.
        """
        q = self(model, x, idx if self.per_point else None)
        if self.point_estimate:
            from .optimize import gaussian_around

            q = gaussian_around(model, x, q.mean, self.config.local_steps, self.config.local_lr)
        return q
