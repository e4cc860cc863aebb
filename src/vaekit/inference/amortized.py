from __future__ import annotations

import torch

from ..distributions import DiagonalNormal, Posterior
from ..errors import ConfigError
from ..latents import BottomUp, latent_groups
from ..nets import MLP, NETS, GaussianHead
from ..registry import STEPS_MAX, Option
from . import INFERENCE, InferenceMethod


@INFERENCE.register(
    "amortized",
    options={
        "refine_steps": Option(0, "gradient steps on each point's ELBO from the encoder's q at evaluation (semi-amortized VI)", minimum=0, maximum=STEPS_MAX),
        "refine_lr": Option(0.05, "learning rate of the refinement steps", minimum=0.0, exclusive=True),
        "refine_in_training": Option(False, "also refine during training (the decoder learns from the refined q)"),
    },
)
class Amortized(InferenceMethod):
    """Amortized VI: (μ, log σ²) = DNN_enc(x; φ), q(z|x) = N(μ, diag σ²) (notes; Kingma & Welling 2014).

    One network serves every datapoint, so a new x gets its q in one forward pass. With more
    than one latent group, q is the notes' structured q(z|x) = ∏_j q(z_j | Pa(z_j), x), bottom
    up: q(z_1|x) from the encoder, q(z_j|z_{j-1}) from a small network each (Burda et al. 2015).

    With ``refine_steps`` > 0 the encoder's q is the start of gradient steps on each point's
    ELBO (θ fixed) at evaluation (semi-amortized VI, Kim et al. 2018); with
    ``refine_in_training`` the decoder also learns from the refined q while the encoder learns
    from its own ELBO (the stop-gradient variant of Krishnan et al. 2018, which needs no
    Hessian-vector products). The loss is the sum of the two terms (each keeps its full
    gradient), so the logged train_loss is about twice the ELBO's. Under an objective that weighs
    the KL by β (``kl_weight``) the steps ascend that ELBO_β, the objective the encoder learns.
    """

    def __init__(self, config, latents):
        super().__init__(config, latents)
        first = latents[0].size
        self.encoder = GaussianHead.of(config, NETS.get(config.encoder_net).encoder(config, 2 * first))
        # q(z_j | z_{j-1}) for the groups above the first.
        self.upward = torch.nn.ModuleList(
            GaussianHead.of(config, MLP(lower.size, config.hidden, 2 * upper.size, config.activation))
            for lower, upper in zip(latents[:-1], latents[1:])
        )

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        if config.refine_in_training and not config.refine_steps:
            raise ConfigError("refine_in_training needs refine_steps > 0: with 0 steps there is nothing to refine")
        if config.refine_steps and len(latent_groups(config.latent_dim)) > 1:
            raise ConfigError("refine_steps needs a single latent layer: it refines one diagonal Gaussian")

    def forward(self, model, x: torch.Tensor, idx: torch.Tensor | None = None) -> Posterior:
        q = DiagonalNormal(*self.encoder(x))
        if len(self.upward):
            return BottomUp(q, list(self.upward), self.latents)
        return q

    def refine(self, model, x: torch.Tensor, q: DiagonalNormal) -> DiagonalNormal:
        from .optimize import optimize_gaussian

        return optimize_gaussian(model, x, q.mu, q.logvar, self.config.refine_steps, self.config.refine_lr, beta=self.kl_weight)

    def training_posteriors(self, model, x, idx):
        q = self(model, x, idx)
        if self.config.refine_steps and self.config.refine_in_training:
            return [q, self.refine(model, x, q)]
        return [q]

    def evaluation_posterior(self, model, x: torch.Tensor, idx: torch.Tensor | None = None) -> Posterior:
        q = self(model, x)  # the encoder's q is the same for training rows and new ones
        return self.refine(model, x, q) if self.config.refine_steps else q
