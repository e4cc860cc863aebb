"""The latent protocol: what a model's latents are, and the structured posterior over them.

A model has one or more latent groups z_1 … z_L (``LatentGroup``: name, size, offset, and the
parent of each in the generative model p(z_L) ∏_l p(z_l | z_{l+1}) p(x | z_1)). A draw of all
groups is one tensor (..., n, D) with D = Σ sizes, the groups side by side in this order, so
that loops, the importance-weighted estimate and the checkpoints handle any structure alike;
``split`` names the columns again.

``BottomUp`` is the structured inference model of the notes,
q(z|x) = ∏_j q(z_j | Pa(z_j), x), with the bottom-up parents of Burda et al. (2015):
q(z_1|x) q(z_2|z_1) … q(z_L|z_{L-1}), each a diagonal Gaussian. ``TopDown`` is the
posterior q(z_L|x) ∏_l q(z_l | z_{l+1}, x), drawn from the top down: from networks that read x
and the group above (Tomczak & Welling 2018), or, as ``LadderPosterior`` (Sønderby et al. 2016), each
group a precision-weighted combination of a bottom-up Gaussian and the generative p(z_l | z_{l+1}).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .distributions import DiagonalNormal, Posterior


@dataclass(frozen=True)
class LatentGroup:
    name: str
    size: int
    offset: int  # first column of this group in a draw of all groups
    parent: str | None  # generative parent: p(z_l | z_{l+1}); None for the top group (the prior)

    @property
    def columns(self) -> slice:
        return slice(self.offset, self.offset + self.size)

    @property
    def noise(self) -> int:
        """Standard-normal values one reparameterized draw of this group needs."""
        return self.size


def latent_groups(sizes: int | Sequence[int]) -> tuple[LatentGroup, ...]:
    """Groups for layer sizes bottom first: ``20`` or ``(20,)`` is one group ``z``; ``(40, 40)``
    is ``z1`` (next to x) and ``z2`` (the top, under the prior)."""
    sizes = (int(sizes),) if isinstance(sizes, int) else tuple(int(s) for s in sizes)
    names = ["z"] if len(sizes) == 1 else [f"z{i + 1}" for i in range(len(sizes))]
    groups, offset = [], 0
    for i, (name, size) in enumerate(zip(names, sizes)):
        parent = names[i + 1] if i + 1 < len(names) else None
        groups.append(LatentGroup(name, size, offset, parent))
        offset += size
    return tuple(groups)


def split(z: torch.Tensor, groups: Sequence[LatentGroup]) -> dict[str, torch.Tensor]:
    """A draw of all groups (..., D) as {name: (..., size)}."""
    return {g.name: z[..., g.columns] for g in groups}


# A conditional q(z_j | z_{j-1}): a network from the parent's value to (μ, log σ²).
Conditional = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _version(t: torch.Tensor) -> int | None:
    """The in-place version counter of ``t``; None for an inference-mode tensor, which has none
    (a draw made under inference mode is then not reused: a change in place would go unseen)."""
    try:
        return t._version
    except RuntimeError:
        return None


def _sources(conditionals: Sequence[Conditional], tensors: Sequence[torch.Tensor] = ()) -> tuple[torch.Tensor, ...]:
    """What the conditionals read besides their parent's value: the parameters of those that
    are modules, and ``tensors`` (those of the others: the networks a closure calls, offsets)."""
    params = [p for c in conditionals if isinstance(c, torch.nn.Module) for p in c.parameters()]
    return tuple(params) + tuple(tensors)


class Structured(Posterior):
    """A q(z|x) = ∏_j q(z_j | Pa(z_j), x) of diagonal Gaussians over the model's groups: what
    every structured posterior shares. A subclass gives ``_layers``, the (q_j, z_j) of each
    group (bottom first) for a given z, a draw from noise, or the plug-in means; the rest
    follows from it."""

    groups: tuple[LatentGroup, ...]
    # The tensors the conditionals read besides the parent's value (``_sources``): a change in
    # place to any of them (an optimizer's step) makes a draw's conditionals stale.
    sources: tuple[torch.Tensor, ...] = ()

    def _layers(self, z: torch.Tensor | None = None, eps: torch.Tensor | None = None):  # pragma: no cover - interface
        raise NotImplementedError

    @staticmethod
    def _value(q: DiagonalNormal, g: LatentGroup, z: torch.Tensor | None, eps: torch.Tensor | None) -> torch.Tensor:
        """Group g's value: its columns of a given z, a reparameterized draw from its slice of
        the noise, or (neither given) q's mean."""
        if z is not None:
            return z[..., g.columns]
        if eps is not None:
            return q.reparameterize(eps[..., g.columns])
        return q.mean

    def reparameterize(self, eps: torch.Tensor) -> torch.Tensor:
        layers = self._layers(eps=eps)
        z = torch.cat([zj for _, zj in layers], -1)
        # The conditionals' Gaussians at this draw, for log q(z) of the same z (the ELBO's Monte
        # Carlo KL, the IWAE weights): without them every conditional network runs a second time
        # on the values it has just produced (7% of the two-layer VampPrior's training step).
        versions = self._versions(z)
        self._drawn = None if versions is None else (z, versions, torch.is_grad_enabled(), layers)
        return z

    def _versions(self, z: torch.Tensor):
        """The versions of z and of the ``sources``, what a change in place moves; None where one
        is unknown (inference mode)."""
        versions = tuple(_version(t) for t in (z, *self.sources))
        return None if None in versions else versions

    def _layers_at(self, z: torch.Tensor):
        """``_layers(z=z)``, taken from the last draw when z is that draw and neither z nor what
        the conditionals read has changed since; a draw made without gradients is not reused
        where they are recorded (no gradient would reach its conditionals)."""
        drawn = getattr(self, "_drawn", None)
        if drawn is not None and drawn[0] is z and (drawn[2] or not torch.is_grad_enabled()) and drawn[1] == self._versions(z):
            return drawn[3]
        return self._layers(z=z)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return sum(q.log_prob(zj) for q, zj in self._layers_at(z))

    def log_prob_groups(self, z: torch.Tensor, groups=None) -> dict[str, torch.Tensor]:
        """log q(z_j | Pa(z_j), x) for each group, by name."""
        return {g.name: q.log_prob(zj) for g, (q, zj) in zip(self.groups, self._layers_at(z))}

    @property
    def mean(self) -> torch.Tensor:
        """The plug-in means: each group's mean given its parent's plug-in mean."""
        return torch.cat([zj for _, zj in self._layers()], -1)

    def params(self) -> dict[str, torch.Tensor]:
        layers = self._layers()
        return {
            "mu": torch.cat([zj for _, zj in layers], -1),
            "logvar": torch.cat([q.logvar.expand_as(zj) for q, zj in layers], -1),
        }


# ``shifted(d_mu, d_logvar)`` of BottomUp and TopDown: the same structure with each group's
# Gaussian moved by per-row offsets, μ_j + δμ_j and log σ²_j + δlog σ²_j (d_mu, d_logvar of
# shape (n, D), each group its columns), the conditionals still reading their parent's value.
# Zero offsets give q itself; for one group the offsets span every diagonal Gaussian.
def _shifted_normal(q: DiagonalNormal, g: LatentGroup, d_mu: torch.Tensor, d_logvar: torch.Tensor) -> DiagonalNormal:
    return DiagonalNormal(q.mu + d_mu[..., g.columns], q.logvar + d_logvar[..., g.columns])


def _shifted_conditional(net: Conditional, g: LatentGroup, d_mu: torch.Tensor, d_logvar: torch.Tensor) -> Conditional:
    def moved(parent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = net(parent)
        return mu + d_mu[..., g.columns], logvar + d_logvar[..., g.columns]

    return moved


class BottomUp(Structured):
    """q(z_1|x) ∏_{j>1} q(z_j | z_{j-1}), diagonal Gaussians (Burda et al. 2015, sec. 4).

    ``first`` is q(z_1|x); ``conditionals[j]`` maps z_{j+1}'s parent draw to its (μ, log σ²).
    A draw takes the groups in order, each reparameterized from its slice of the noise.
    ``mean`` and ``params`` are the plug-in values: each group's mean given its parent's mean.
    """

    def __init__(
        self, first: DiagonalNormal, conditionals: Sequence[Conditional], groups: Sequence[LatentGroup], sources: Sequence[torch.Tensor] = ()
    ):
        self.first, self.conditionals, self.groups = first, list(conditionals), tuple(groups)
        self.sources = _sources(self.conditionals, sources)
        size = sum(g.size for g in self.groups)
        super().__init__(first.batch_shape, torch.Size([size]), validate_args=False)

    def _anchor(self) -> torch.Tensor:
        return self.first.mu

    def shifted(self, d_mu: torch.Tensor, d_logvar: torch.Tensor) -> "BottomUp":
        first = _shifted_normal(self.first, self.groups[0], d_mu, d_logvar)
        moved = [_shifted_conditional(c, g, d_mu, d_logvar) for c, g in zip(self.conditionals, self.groups[1:])]
        return BottomUp(first, moved, self.groups, self.sources + (d_mu, d_logvar))

    def _layers(self, z: torch.Tensor | None = None, eps: torch.Tensor | None = None):
        """(q_j, z_j) for each group: z given (log_prob), drawn from eps, or the plug-in mean."""
        q, out = self.first, []
        for j, g in enumerate(self.groups):
            if j > 0:
                q = DiagonalNormal(*self.conditionals[j - 1](out[-1][1]))
            out.append((q, self._value(q, g, z, eps)))
        return out



def precision_weighted(mu_a: torch.Tensor, logvar_a: torch.Tensor, mu_b: torch.Tensor, logvar_b: torch.Tensor):
    """(μ, log σ²) of N(μ_a, σ_a²) N(μ_b, σ_b²) normalised (Sønderby et al. 2016, eqs. 17-19):
    σ² = 1/(σ_a⁻² + σ_b⁻²), μ = (μ_a σ_a⁻² + μ_b σ_b⁻²) σ².

    In log-variance form, so that no variance is inverted: log σ² = −logaddexp(−log σ_a², −log σ_b²),
    and the weights σ²/σ_a² = sigmoid(log σ_b² − log σ_a²) and σ²/σ_b² = 1 − that stay in [0, 1]
    whatever the scales."""
    logvar = -torch.logaddexp(-logvar_a, -logvar_b)
    w_a = torch.sigmoid(logvar_b - logvar_a)
    return w_a * mu_a + (1 - w_a) * mu_b, logvar


class TopDown(Structured):
    """q(z_L|x) ∏_{l<L} q(z_l | z_{l+1}, x), drawn from the top group down.

    ``top`` is q(z_L|x), a diagonal Gaussian of x alone; ``conditionals[l]`` maps the value of
    group l+1 to the (μ, log σ²) of q(z_l | z_{l+1}, x) (bottom first; each has x bound in).
    A draw goes from the top group down, each group reparameterized from its slice of the
    noise; the columns stay in group order z_1 … z_L. ``mean`` and ``params`` are the plug-in
    values: each group's mean given its parent's plug-in mean.

    Two parametrisations: networks that read x and the group above (``inference topdown``,
    Tomczak & Welling 2018), and the ladder's precision weighting (``LadderPosterior``).
    """

    def __init__(
        self, top: DiagonalNormal, conditionals: Sequence[Conditional], groups: Sequence[LatentGroup], sources: Sequence[torch.Tensor] = ()
    ):
        self.top, self.conditionals, self.groups = top, list(conditionals), tuple(groups)
        self.sources = _sources(self.conditionals, sources)
        if len(self.conditionals) + 1 != len(self.groups):
            raise ValueError(
                f"TopDown needs one conditional per group below the top; got {len(self.conditionals)} for {len(self.groups)} groups"
            )
        size = sum(g.size for g in self.groups)
        super().__init__(top.batch_shape, torch.Size([size]), validate_args=False)

    def _anchor(self) -> torch.Tensor:
        return self.top.mu

    def shifted(self, d_mu: torch.Tensor, d_logvar: torch.Tensor) -> "TopDown":
        """A TopDown (for the ladder too: its precision-weighted conditionals, moved)."""
        top = _shifted_normal(self.top, self.groups[-1], d_mu, d_logvar)
        moved = [_shifted_conditional(c, g, d_mu, d_logvar) for c, g in zip(self.conditionals, self.groups[:-1])]
        return TopDown(top, moved, self.groups, self.sources + (d_mu, d_logvar))

    def _layers(self, z: torch.Tensor | None = None, eps: torch.Tensor | None = None):
        """(q_l, z_l) for each group, bottom first, computed top down: z given (log_prob), drawn
        from eps, or the plug-in mean."""
        out = [None] * len(self.groups)
        q = self.top
        for l in reversed(range(len(self.groups))):
            if l < len(self.groups) - 1:
                q = DiagonalNormal(*self.conditionals[l](out[l + 1][1]))
            out[l] = (q, self._value(q, self.groups[l], z, eps))
        return out


class LadderPosterior(TopDown):
    """The ladder variational posterior (Sønderby et al. 2016, eqs. 17-19), a ``TopDown``.

    ``bottom_up[l]`` is the bottom-up Gaussian N(μ̂_l, σ̂_l²) of group l (bottom first), a
    function of x only; ``downward[l]`` the generative p(z_l | z_{l+1}) (the model's own nets,
    shared). The top group's q is its bottom-up Gaussian; below it,
    q(z_l | z_{l+1}, x) = N(μ̂_l, σ̂_l²) · p(z_l | z_{l+1}) normalised (``precision_weighted``).
    """

    def __init__(self, bottom_up: Sequence[DiagonalNormal], downward: Sequence[Conditional], groups: Sequence[LatentGroup]):
        self.bottom_up, self.downward = list(bottom_up), list(downward)
        if not len(self.bottom_up) == len(groups) == len(self.downward) + 1:
            raise ValueError(
                f"LadderPosterior needs one bottom-up Gaussian per group and one downward net per group below the top; "
                f"got {len(self.bottom_up)}, {len(groups)} groups and {len(self.downward)}"
            )
        conditionals = [self._weighted(q, p) for q, p in zip(self.bottom_up[:-1], self.downward)]
        super().__init__(self.bottom_up[-1], conditionals, groups, _sources(self.downward))

    @staticmethod
    def _weighted(q: DiagonalNormal, p: Conditional) -> Conditional:
        return lambda parent: precision_weighted(q.mu, q.logvar, *p(parent))
