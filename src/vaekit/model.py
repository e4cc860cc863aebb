"""The latent-variable model p(x, z) = p(z) p(x|z; θ) together with its inference model q(z|x; φ)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.distributions import Distribution

from .distributions import DiagonalNormal, Posterior, draw
from .latents import latent_groups, split
from .nets import NETS, Branches, GaussianHead, he_init
from .objectives.kl import kl as kl_divergence
from .registry import INFERENCE, LIKELIHOODS, PRIORS
from .scaling import Scaling


class VAEModel(nn.Module):
    """Prior + decoder + likelihood (the generative model, θ) and an inference method (φ).

    The latents are ``latents`` (groups z_1 … z_L, bottom first; one group ``z`` by default):
    p(z_L) ∏_l p(z_l | z_{l+1}) p(x | z_1) (or p(x | z_1, …, z_L)), the prior on the top group and a Gaussian
    p(z_l | z_{l+1}) from a small network below it. A draw of all groups is one tensor
    (..., n, ``latent_size``) in group order. ``posterior(x)`` is q(z|x), ``log_pz(z)`` is
    log p(z), ``decode(z)`` is p(x|z); the objectives need nothing else, whichever inference
    method is plugged in.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.latents = latent_groups(config.latent_dim)
        self.latent_size = sum(g.size for g in self.latents)
        self.prior = PRIORS.get(config.prior)(config, self.latents[-1].size)
        self._fixed_prior: Distribution | None = None  # set inside fixed_prior() only
        # p(z_l | z_{l+1}) for every group below the top: a dense net of the downward family
        # (the decoder's unless --downward says otherwise) with the encoder's widths.
        family = NETS.get(config.downward_net)
        self.downward = nn.ModuleList(
            GaussianHead.of(config, family.dense(config, upper.size, config.hidden, 2 * lower.size))
            for lower, upper in zip(self.latents[:-1], self.latents[1:])
        )
        # p(x|z_1), or p(x|z_1, …, z_L) when the decoder reads every group (Tomczak & Welling 2018).
        self.decoder_reads_all = config.decoder_input == "all" or len(self.latents) == 1
        decoder = NETS.get(config.decoder_net)
        if config.join == "branch" and self.decoder_reads_all:
            # The first hidden layer split per group, z_l → width, then the rest of the decoder
            # on the joined (..., L·width): as deep as the concat decoder.
            first, *rest = config.decoder_widths
            self.decoder = Branches(
                [g.size for g in self.latents],
                [decoder.layer(config, g.size, first) for g in self.latents],
                decoder.decoder(config, len(self.latents) * first, tuple(rest)),
            )
        else:
            self.decoder = decoder.decoder(config, self.latent_size if self.decoder_reads_all else self.latents[0].size)
        self.likelihood = LIKELIHOODS.get(config.likelihood)(config)
        # The model sees x' = (x − shift)/scale (vaekit.scaling); its densities are of x, which
        # adds log |∂x'/∂x| = −Σ_j log scale_j to every log p(x|z) (0 without an input map). A
        # probability mass (Bernoulli) is the same for x and x': the map only relabels the values.
        scaling = Scaling.of(config)
        discrete = self.likelihood.discrete
        self.log_det = 0.0 if scaling is None or discrete else scaling.log_det(config.input_dim)
        self.inference = INFERENCE.get(config.inference)(config, self.latents)
        if config.init == "he":
            he_init(self)

    @property
    def noise_size(self) -> int:
        """Standard-normal values one reparameterized draw of all groups needs, per point."""
        return sum(g.noise for g in self.latents)

    # -- the generative model p(z) p(x|z) ---------------------------------------------------
    def top_prior(self) -> Distribution:
        """p(z_L), the prior of the top group; it may read the model (pseudo-inputs). Inside
        ``fixed_prior()``, the one built on entering the block."""
        return self._fixed_prior if self._fixed_prior is not None else self.prior(self)

    @contextlib.contextmanager
    def fixed_prior(self):
        """Build p(z_L) once, without gradient, for every use inside the block. A prior that
        reads the model costs a pass of the encoder each time it is built (the VampPrior's K
        pseudo-inputs), and the importance-weighted estimate asks for it once per chunk of
        samples; evaluation changes no parameter, so once is enough. A nested block keeps the
        outer one's prior."""
        if self._fixed_prior is not None:
            yield self._fixed_prior
            return
        # Outside inference mode: a q fitted inside the block differentiates through this prior.
        with torch.inference_mode(False), torch.no_grad():
            self._fixed_prior = self.prior(self)
        try:
            yield self._fixed_prior
        finally:
            self._fixed_prior = None

    def log_pz(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) = log p(z_L) + Σ_l log p(z_l | z_{l+1}) for a draw of all groups (..., D)."""
        # sum() adds in the dict's order, top first, as the terms were always added.
        return sum(self.log_pz_groups(z).values())

    def log_pz_groups(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """{name: log p(z_j | z_{j+1})} for a draw of all groups (..., D), the top group's
        (log p(z_L), the prior) first."""
        groups = split(z, self.latents)
        out = {self.latents[-1].name: self.top_prior().log_prob(groups[self.latents[-1].name])}
        for lower, upper, net in zip(self.latents[:-1], self.latents[1:], self.downward):
            out[lower.name] = DiagonalNormal(*net(groups[upper.name])).log_prob(groups[lower.name])
        return out

    def kl(self, q: Distribution, z: torch.Tensor, analytic: bool = True) -> torch.Tensor:
        """KL(q(z|x) || p(z)) per point: the closed form for one group where one is registered,
        else the Monte Carlo mean of log q(z) − log p(z) over the draws z (S, n, D); the sum of
        ``kl_per_group``."""
        if len(self.latents) == 1:
            # The training step's path: no dict, one call (kl_per_group's one-group case).
            return kl_divergence(q, self.top_prior(), z, analytic=analytic)
        return sum(self.kl_per_group(q, z, analytic).values())

    def kl_per_group(self, q: Distribution, z: torch.Tensor, analytic: bool = True) -> dict[str, torch.Tensor]:
        """{name: (n,)}, each latent group's share of KL(q(z|x) || p(z)), summing to ``kl``.
        One group: its KL, closed form where registered, else Monte Carlo. Several: the Monte
        Carlo mean over the draws z (S, n, D) of log q(z_j | ·) − log p(z_j | ·), the group's
        term of the chain rule log q(z|x) − log p(z) = Σ_j [log q(z_j|·) − log p(z_j|·)]
        (with bottom-up q and top-down p these condition on different groups, so a term is
        not itself a KL, but its expectation is the group's contribution to the total)."""
        if len(self.latents) == 1:
            return {self.latents[0].name: kl_divergence(q, self.top_prior(), z, analytic=analytic)}
        log_q, log_p = q.log_prob_groups(z, self.latents), self.log_pz_groups(z)
        return {g.name: (log_q[g.name] - log_p[g.name]).mean(0) for g in self.latents}

    def decode(self, z: torch.Tensor) -> Distribution:
        """p(x|z; θ) for a draw of all groups z of shape (..., D); it reads z_1, or every group
        with ``decoder_input="all"``."""
        return self.likelihood(self.decoder(z if self.decoder_reads_all else z[..., self.latents[0].columns]))

    def log_px_given_z(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z) of the user's values x for rows x' = (x − shift)/scale in the model's units:
        log p'(x'|z) − Σ_j log scale_j (the change of variables; none for a probability mass,
        which the map only relabels); z (..., n, D), x' (n, D_x)."""
        log_p = self.decode(z).log_prob(x)
        return log_p if self.log_det == 0.0 else log_p + self.log_det

    def sample_z(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ p(z), ancestrally from the top group down, (n, D)."""
        from .config import check_positive_int

        check_positive_int("n", n, minimum=0)
        z_top = draw(self.top_prior(), (n,), generator)
        parts = [z_top]
        for net in reversed(self.downward):
            parts.insert(0, DiagonalNormal(*net(parts[0])).sample(generator=generator))
        return torch.cat(parts, -1)

    # -- the inference model q(z|x) -------------------------------------------------------------
    def use_objective(self, objective) -> None:
        """Fit the point estimates of new rows with the β of ``objective`` (``Objective.kl_weight``),
        the objective the model is (or was) trained with: ẑ = argmax_z log p(x|z) + β log p(z)."""
        self.inference.kl_weight = objective.kl_weight

    def posterior(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> Posterior:
        """q(z|x; φ), shape batch (n,), event (D,); ``idx`` selects per-point parameters."""
        if torch.is_inference_mode_enabled():  # per-point methods fit q for new rows by gradients
            return _outside_inference_mode(self.posterior, x, idx)
        return self.inference(self, x, idx)

    def training_posteriors(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> list[Posterior]:
        """The q's a training step learns from (the encoder's, and a refined one if asked)."""
        if torch.is_inference_mode_enabled():  # a refined q is fitted by gradients
            return _outside_inference_mode(self.training_posteriors, x, idx)
        return self.inference.training_posteriors(self, x, idx)

    def evaluation_posterior(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> Posterior:
        """A proper density q(z|x) for new x (refined, or optimised, as the method says), for
        the ELBO and the importance-weighted log p(x); ``idx``, the rows' indices in the
        training set, gives per-point methods' learned q_i of training rows instead."""
        if torch.is_inference_mode_enabled():
            return _outside_inference_mode(self.evaluation_posterior, x, idx)
        return self.inference.evaluation_posterior(self, x, idx)

    def representation(self, x: torch.Tensor) -> Posterior:
        """The q(z|x) whose mean is x's latent code (encode, transform, reconstruct, the
        pictures): a point-estimate method's own δ(z − ẑ), the autoencoder's ẑ = e(x) or MAP's
        argmax, not the Gaussian proposal its log p(x) is estimated with (centred elsewhere:
        the ELBO-optimal mean); for the other methods, their evaluation q."""
        if torch.is_inference_mode_enabled():
            return _outside_inference_mode(self.representation, x)
        if self.inference.point_estimate:
            return self.inference(self, x)
        return self.evaluation_posterior(x)

    def forward(self, objective, x: torch.Tensor, idx: torch.Tensor | None, eps: torch.Tensor, beta: float = 1.0):
        """(loss, per-point value) of ``objective`` on a batch: the training step's forward,
        here so that DistributedDataParallel can wrap the model."""
        return objective.loss(self, x, idx, eps, beta)

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, mean: bool = True, z: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x ~ p(x|z) with z ~ p(z) (or the given z); ``mean`` returns E[x|z] instead of a draw."""
        if z is None:
            z = self.sample_z(n, generator)
        px = self.decode(z)
        return px.mean if mean else draw(px, generator=generator)


def _outside_inference_mode(method, x: torch.Tensor, idx: torch.Tensor | None = None):
    """``method(x, idx)`` in no_grad instead of the caller's inference mode, on copies of the rows.

    Inference mode switches autograd off for good (``enable_grad`` cannot undo it), and the
    methods that fit q for new rows need it; tensors made in inference mode cannot be saved
    for a backward pass, so the rows are copied out of it."""
    with torch.inference_mode(False), torch.no_grad():
        return method(x.clone(), *(() if idx is None else (idx.clone(),)))


def build_model(config, train=None) -> VAEModel:
    """``VAEModel(config)`` with its initial weights drawn in float32 whatever default dtype the
    caller set (torch.set_default_dtype): the same seed starts the same run, and training then
    moves it to the run's dtype. ``train``, the run's TrainConfig, names the objective it trains
    (``VAEModel.use_objective``); training sets it again from its own config."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        model = VAEModel(config)
    finally:
        torch.set_default_dtype(old)
    if train is not None:
        from .registry import OBJECTIVES

        name = model.inference.default_objective if train.objective == "auto" else train.objective
        model.use_objective(OBJECTIVES.get(name)(train))
    return model
