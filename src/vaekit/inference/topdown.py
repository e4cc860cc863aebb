"""Top-down amortized inference that reads x at every layer (Tomczak & Welling 2018)."""

from __future__ import annotations

import torch

from ..distributions import DiagonalNormal, Posterior
from ..errors import ConfigError
from ..latents import Conditional, TopDown
from ..nets import NETS, Branches, GaussianHead
from ..registry import Option
from . import INFERENCE, InferenceMethod


@INFERENCE.register(
    "topdown",
    options={
        # Tomczak & Welling's q(z1|x, z2) reads x through one gated layer of its own, not
        # through an encoder as deep as q(z2|x)'s.
        "x_path": Option("trunk", "what x passes through in topdown's q(z_l | z_{l+1}, x): trunk (an encoder of the net family, to hidden[-1] features) or layer (one dense hidden layer of the family, gated under the gated nets, hidden[0] wide, as Tomczak & Welling 2018's code)", choices=("trunk", "layer")),
    },
)
class TopDownInference(InferenceMethod):
    """q(z_L|x) ∏_{l<L} q(z_l | z_{l+1}, x): each group's diagonal Gaussian from a network that
    reads x and the value of the group above, drawn from the top down.

    This is the inference model of the two-layer VAEs of Tomczak & Welling (2018, sec. 4 and
    their code jmtomczak/vae_vampprior, ``HVAE_2level``): q(z_2|x) from the encoder, and
    q(z_1|x, z_2) from x's features h_1(x) (the net family's encoder to ``hidden[-1]`` numbers,
    or with ``x_path="layer"`` one hidden layer of the family, as their code) joined with z_2
    by a dense network of the family (one layer of ``hidden[-1]`` units; with
    ``join="branch"`` z_2 passes a layer of its own before joining, as in their code). With
    it the top group's q is a Gaussian of x alone, so the VampPrior p(z_L) = (1/K) Σ_k q(z_L|u_k)
    is defined for any number of groups. Paired with ``decoder_input="all"`` the generative
    side is theirs too: p(z_2) p(z_1|z_2) p(x|z_1, z_2).

    With one latent group it would be the encoder's Gaussian, ``amortized``'s q: refused, so
    that a run asked for topdown inference is one.
    """

    hierarchy_only = True

    top_from_x = True

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        if config.x_path == "layer" and not config.hidden:
            raise ConfigError("x_path layer needs hidden layers: its layer is hidden[0] wide")

    def __init__(self, config, latents):
        super().__init__(config, latents)
        family = NETS.get(config.encoder_net)
        self.encoder = GaussianHead.of(config, family.encoder(config, 2 * latents[-1].size))  # q(z_L|x)
        width = config.hidden[-1:]  # the joint layer's width: () for a linear encoder
        # h_l(x) and the joint net of q(z_l | z_{l+1}, x), for every group below the top.
        if config.x_path == "layer":
            features = config.hidden[0]
            self.features = torch.nn.ModuleList(family.layer(config, config.input_dim, features) for _ in latents[:-1])
        else:
            features = width[0] if width else 2 * max(g.size for g in latents)
            self.features = torch.nn.ModuleList(family.encoder(config, features) for _ in latents[:-1])
        self.joint = torch.nn.ModuleList(
            GaussianHead.of(config, self._joint(config, family, features, upper.size, width, 2 * lower.size))
            for lower, upper in zip(latents[:-1], latents[1:])
        )

    @staticmethod
    def _joint(config, family, features: int, upper: int, width: tuple[int, ...], out: int) -> torch.nn.Module:
        """The net of q(z_l | z_{l+1}, x) on [h(x), z_{l+1}]: one dense net of the family on both
        side by side, or (``join="branch"``) z_{l+1} first through a layer of its own, as
        Tomczak & Welling's code reads z2 in q(z1|x, z2)."""
        if config.join != "branch":
            return family.dense(config, features + upper, width, out)
        branches = [torch.nn.Identity(), family.layer(config, upper, width[0])]
        return Branches([features, upper], branches, family.dense(config, features + width[0], width, out))

    def top_posterior(self, model, x: torch.Tensor) -> DiagonalNormal:
        return DiagonalNormal(*self.encoder(x))

    @staticmethod
    def _conditional(h: torch.Tensor, joint) -> Conditional:
        """z_{l+1} (..., n, size) → (μ, log σ²) of q(z_l | z_{l+1}, x), x's features h (n, F)
        broadcast over the draws."""
        return lambda parent: joint(torch.cat([h.expand(*parent.shape[:-1], h.shape[-1]), parent], -1))

    def forward(self, model, x: torch.Tensor, idx: torch.Tensor | None = None) -> Posterior:
        top = self.top_posterior(model, x)
        if len(self.latents) == 1:
            return top
        conditionals = [self._conditional(f(x), j) for f, j in zip(self.features, self.joint)]
        return TopDown(top, conditionals, self.latents, tuple(self.joint.parameters()))
