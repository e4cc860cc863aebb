"""Top-down inference: the ladder variational autoencoder (Sønderby et al. 2016)."""

from __future__ import annotations

import torch

from ..distributions import DiagonalNormal, Posterior
from ..latents import LadderPosterior
from ..nets import MLP, NETS, GaussianHead
from . import INFERENCE, InferenceMethod


@INFERENCE.register("ladder")
class Ladder(InferenceMethod):
    """Ladder VI (Sønderby et al. 2016, sec. 2.2): a deterministic bottom-up pass, then q drawn top down.

    Bottom up: d_1 = f_1(x) is the encoder (the net family's, as ``amortized`` builds it), and
    d_l = f_l(d_{l-1}) a small MLP (widths ``hidden``) for each group above; each d_l is read as
    the bottom-up Gaussian (μ̂_l, log σ̂_l²) of group l. Top down: q(z_L|x) = N(μ̂_L, σ̂_L²) and,
    for l = L−1 … 1, q(z_l | z_{l+1}, x) the precision-weighted product of N(μ̂_l, σ̂_l²) with
    the generative p(z_l | z_{l+1}) (eqs. 17-19, ``vaekit.latents.LadderPosterior``). The generative
    nets p(z_l | z_{l+1}) are the model's ``downward`` nets themselves, read at call time: the
    prior and the posterior share them, and they learn from both sides of the ELBO.

    With one latent group it would be the encoder's Gaussian, ``amortized``'s q: refused, so
    that a run asked for ladder inference is one.
    """

    hierarchy_only = True

    def __init__(self, config, latents):
        super().__init__(config, latents)
        self.encoder = GaussianHead.of(config, NETS.get(config.encoder_net).encoder(config, 2 * latents[0].size))  # d_1
        # f_l: d_{l-1} (μ̂, log σ̂² of the group below) → d_l, for the groups above the first.
        self.ladder = torch.nn.ModuleList(
            GaussianHead.of(config, MLP(2 * lower.size, config.hidden, 2 * upper.size, config.activation))
            for lower, upper in zip(latents[:-1], latents[1:])
        )

    # q(z_L|x) is the top group's bottom-up Gaussian, a function of x alone.
    top_from_x = True

    def top_posterior(self, model, x: torch.Tensor) -> DiagonalNormal:
        d = self.encoder(x)
        for f in self.ladder:
            d = f(torch.cat(d, -1))
        return DiagonalNormal(*d)

    def forward(self, model, x: torch.Tensor, idx: torch.Tensor | None = None) -> Posterior:
        d = self.encoder(x)  # (μ̂_1, log σ̂_1²), each (n, size_1)
        if not len(self.ladder):
            return DiagonalNormal(*d)
        bottom_up = [DiagonalNormal(*d)]
        for f in self.ladder:
            d = f(torch.cat(d, -1))  # (μ̂_l, log σ̂_l²), each (n, size_l)
            bottom_up.append(DiagonalNormal(*d))
        return LadderPosterior(bottom_up, list(model.downward), self.latents)
