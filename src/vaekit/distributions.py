"""The densities of the notes, one implementation each, in torch.distributions' vocabulary.

Every class here is a ``torch.distributions.Distribution`` with one event dimension, so that
``log_prob`` returns one number per datapoint and closed-form KLs go through
``torch.distributions.kl.register_kl`` (see ``vaekit.objectives.kl``). They are written out
rather than composed from ``Independent(Normal(...), 1)`` because they sit in the training
step: no argument validation, no broadcasting of parameters, and the log-variance (the
encoder's output) is kept as the parameter instead of being turned into a scale and back.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import math

import torch
import torch.nn.functional as F
from torch.distributions import Distribution, constraints

LOG_2PI = math.log(2 * math.pi)


def draw(dist: Distribution, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
    """``dist.sample(sample_shape)`` from ``generator``, for any Distribution: vaekit's own take
    the generator; torch.distributions' sample from torch's global stream, so a user's prior
    or likelihood built from them is drawn with that stream seeded from ``generator`` (and the
    global state restored), to give the same values for the same generator state."""
    if generator is None:
        return dist.sample(sample_shape)
    if _takes_generator(type(dist)):
        return dist.sample(sample_shape, generator=generator)
    seed = int(torch.randint(0, 2**63 - 1, (), generator=generator, device=generator.device))
    device = generator.device
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return dist.sample(sample_shape)
    # Only the generator's own device is seeded (torch.manual_seed would seed every device,
    # beyond what fork_rng restores).
    backend = getattr(torch, device.type)
    index = device.index if device.index is not None else backend.current_device()
    with torch.random.fork_rng(devices=[index], device_type=device.type):
        if device.type == "cuda":
            torch.cuda.default_generators[index].manual_seed(seed)
        else:
            backend.manual_seed(seed)
        return dist.sample(sample_shape)


@functools.cache
def _takes_generator(cls: type) -> bool:
    return "generator" in inspect.signature(cls.sample).parameters


def _event_batch(*tensors: torch.Tensor) -> tuple[torch.Size, torch.Size]:
    shape = tensors[0].shape
    for t in tensors[1:]:
        # torch.broadcast_shapes is slow Python (~40 µs a step here); most shapes agree already.
        if t.shape != shape:
            shape = torch.broadcast_shapes(shape, t.shape)
    return shape[:-1], shape[-1:]


class RowStreams:
    """Standard-normal noise with a stream of its own for each row of ``x``, seeded by the seed
    and the row's bytes: what a row draws depends on its own values and the seed alone, not on
    the rows beside it, their order, or how they are batched, streamed or split among
    processes. A row's Monte Carlo estimates (its importance-weighted log p(x), its ELBO, the
    per-point q that gradient steps find for new data) are then the same whether it is
    scored alone or among others, as scikit-learn expects of a per-row method.

    Pass it where a ``torch.Generator`` goes in ``Posterior.rsample``. Each stream is read in
    pages of ``PAGE`` draws, so how a caller splits its samples into chunks (the IWAE estimate
    chunks K by the batch's size) does not change the values either. ``use`` names separate
    streams of one seed, for draws that must not share noise (an optimisation, its check, and
    the estimates made with its result)."""

    PAGE = 64
    # The streams of one seed: estimates of the evidence, the draws that fit a per-point q for
    # new rows, the check of that fit, and the fixed draws that decide when a row's fit stops;
    # for the gaps, the draws that fit and stop the optimal q*. Disjoint, so an estimate never
    # reuses the draws a q was fitted on (that would favour the fitted q).
    ESTIMATE, CHECK, FIT, STOP, OPTIMAL_FIT, OPTIMAL_STOP = range(6)

    def __init__(self, x: torch.Tensor, seed: int, use: int = ESTIMATE):
        # + 0.0 turns −0.0 into 0.0: equal rows seed equal streams.
        rows = x.detach().reshape(x.shape[0], -1).cpu()
        rows = (rows.float() if rows.dtype == torch.bfloat16 else rows).numpy() + 0.0  # numpy has no bfloat16
        key = int(seed).to_bytes(8, "little") + int(use).to_bytes(8, "little")
        self.device = x.device
        self._streams = [
            torch.Generator(device=x.device).manual_seed(
                int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8, key=key).digest(), "little") >> 1
            )
            for row in rows
        ]
        self._unread: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def take(self, rows: torch.Tensor) -> "RowStreams":
        """The streams of the given rows (indices into this object's rows), where each left off:
        the same generators, so what the kept rows draw next is what they would have drawn."""
        kept = object.__new__(RowStreams)
        kept.device = self.device
        index = rows.tolist()
        kept._streams = [self._streams[i] for i in index]
        kept._unread = {key: page[rows.to(page.device)] for key, page in self._unread.items()}
        return kept

    def randn(self, samples: int, size: int, dtype: torch.dtype) -> torch.Tensor:
        """(samples, n, size) standard-normal draws: the next ``samples`` of each row's stream."""
        n = len(self._streams)
        pages = [self._unread.get((size, dtype), torch.empty(n, 0, size, dtype=dtype, device=self.device))]
        have = pages[0].shape[1]
        while have < samples:
            page = [torch.randn(self.PAGE, size, dtype=dtype, device=self.device, generator=g) for g in self._streams]
            pages.append(torch.stack(page) if page else pages[0].new_empty(0, self.PAGE, size))
            have += self.PAGE
        unread = torch.cat(pages, 1) if len(pages) > 1 else pages[0]
        self._unread[(size, dtype)] = unread[:, samples:]
        return unread[:, :samples].transpose(0, 1)


class Posterior(Distribution):
    """q(z|x) in the latent protocol: one draw is ``reparameterize(eps)`` of standard-normal
    noise with ``noise_size`` values per point, so that the training loop can draw the noise
    of a whole batch itself (data-parallel ranks share it) without knowing the latents.

    ``rsample`` is that draw with fresh noise; ``params()`` the named arrays that ``encode``
    writes (columns in the model's latent order).
    """

    has_rsample = True

    @property
    def noise_size(self) -> int:
        return self.event_shape[-1]

    def _anchor(self) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def reparameterize(self, eps: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def rsample(self, sample_shape=torch.Size(), generator: torch.Generator | RowStreams | None = None) -> torch.Tensor:
        ref = self._anchor()
        if isinstance(generator, RowStreams):
            return self.reparameterize(self._row_noise(torch.Size(sample_shape), generator, ref.dtype))
        shape = torch.Size(sample_shape) + self.batch_shape + (self.noise_size,)
        return self.reparameterize(torch.randn(shape, dtype=ref.dtype, device=ref.device, generator=generator))

    def _row_noise(self, sample_shape: torch.Size, streams: RowStreams, dtype: torch.dtype) -> torch.Tensor:
        if len(sample_shape) > 1 or self.batch_shape != (len(streams),):
            raise ValueError(
                f"row streams draw (samples, rows, D) for {len(streams)} rows; got sample shape "
                f"{tuple(sample_shape)} and batch shape {tuple(self.batch_shape)}"
            )
        eps = streams.randn(sample_shape[0] if sample_shape else 1, self.noise_size, dtype)
        return eps if sample_shape else eps[0]

    def sample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)

    def params(self) -> dict[str, torch.Tensor]:
        """Named (n, D) arrays describing q for each point: ``mu`` and ``logvar``, the log of
        its variance (−inf where q has none: a point mass)."""
        return {"mu": self.mean, "logvar": torch.log(self.variance)}

    def log_prob_groups(self, z: torch.Tensor, groups) -> dict[str, torch.Tensor]:
        """log q(z_j | ·) of each latent group (``groups``: the model's ``LatentGroup``s), which
        sum to ``log_prob(z)``; for the per-group KL (free bits). Only a q that factorises over
        the groups can say."""
        raise NotImplementedError(f"{type(self).__name__} does not split log q(z|x) by latent group")


class DiagonalNormal(Posterior):
    """N(z; μ, diag σ²) parameterized by (μ, log σ²), the encoder's output (notes, eq. of DNN_enc).

    ``rsample`` is the reparameterization trick z = μ + ε·σ, ε ~ N(0, I) (notes, eq. 1;
    Kingma & Welling 2014), so gradients reach μ and log σ².
    """

    arg_constraints = {"mu": constraints.real_vector, "logvar": constraints.real_vector}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor):
        # An encoder far outside its training range (an outlier row) can output log σ² ≈ −1e4:
        # 1/σ² overflows and (z − μ)²/σ² at z = μ is 0·∞ = NaN. Floored where 1/σ² is finite,
        # such a q is a point mass in all but name, and log q(z) is finite. Or log σ² ≈ 150:
        # σ² and z overflow and (z − μ)²/σ² is ∞/∞. Capped where σ² (and z², the KL's sums)
        # stay finite, the outlier's log p(x) is finite and very low, as it should be. Not
        # while a loss is differentiated: there a variance that explodes is training diverging,
        # which must end in the NaN check that names its likely cause.
        training = torch.is_grad_enabled() and logvar.requires_grad
        ceiling = None if training else logvar_ceiling(logvar.dtype)
        self.mu, self.logvar = mu, logvar.clamp(min=logvar_floor(logvar.dtype), max=ceiling)
        batch_shape, event_shape = _event_batch(mu, logvar)
        super().__init__(batch_shape, event_shape, validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        return self.mu.expand(self.batch_shape + self.event_shape)

    @property
    def mode(self) -> torch.Tensor:
        return self.mean

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def stddev(self) -> torch.Tensor:
        return self.std.expand(self.batch_shape + self.event_shape)

    @property
    def variance(self) -> torch.Tensor:
        return torch.exp(self.logvar).expand(self.batch_shape + self.event_shape)

    def _anchor(self) -> torch.Tensor:
        return self.mu

    def reparameterize(self, eps: torch.Tensor) -> torch.Tensor:
        """z = μ + ε·σ for given standard-normal noise ε of shape sample_shape + (n, d)."""
        return self.mu + eps * self.std

    def params(self) -> dict[str, torch.Tensor]:
        return {"mu": self.mean, "logvar": self.logvar.expand(self.batch_shape + self.event_shape)}

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * ((z - self.mu) ** 2 * torch.exp(-self.logvar) + self.logvar + LOG_2PI).sum(-1)

    def log_prob_groups(self, z: torch.Tensor, groups) -> dict[str, torch.Tensor]:
        # Independent dimensions: each group's density is the one of its columns.
        mu, logvar = self.mu.expand(self.batch_shape + self.event_shape), self.logvar.expand(self.batch_shape + self.event_shape)
        return {g.name: DiagonalNormal(mu[..., g.columns], logvar[..., g.columns]).log_prob(z[..., g.columns]) for g in groups}

    def entropy(self) -> torch.Tensor:
        h = 0.5 * (self.logvar + 1.0 + LOG_2PI)
        return h.expand(self.batch_shape + self.event_shape).sum(-1)


def logvar_ceiling(dtype: torch.dtype) -> float:
    """The largest log σ² whose σ² stays below the square root of dtype's largest value / e
    (43.9 in float32 and bfloat16, 354.4 in float64): sums of σ² and of z² = (μ + σε)² over
    the latent dimensions, and a decoder's products of z, stay finite."""
    return (math.log(torch.finfo(dtype).max) - 1.0) / 2


def logvar_floor(dtype: torch.dtype) -> float:
    """The smallest log σ² whose 1/σ² = exp(−log σ²) stays below dtype's largest value / e
    (−87.7 in float32 and bfloat16, −708.8 in float64)."""
    return 1.0 - math.log(torch.finfo(dtype).max)


class StandardNormal(Distribution):
    """The prior p(z) = N(0, I) over a ``dim``-dimensional latent space."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, dim: int, dtype: torch.dtype = torch.float32, device=None):
        self.dim, self.dtype, self.device = dim, dtype, device
        super().__init__(torch.Size(), torch.Size([dim]), validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        return torch.zeros(self.dim, dtype=self.dtype, device=self.device)

    @property
    def mode(self) -> torch.Tensor:
        return self.mean

    @property
    def variance(self) -> torch.Tensor:
        return torch.ones(self.dim, dtype=self.dtype, device=self.device)

    def rsample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        return torch.randn(shape, dtype=self.dtype, device=self.device, generator=generator)

    def sample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z**2 + LOG_2PI).sum(-1)

    def entropy(self) -> torch.Tensor:
        return torch.tensor(0.5 * self.dim * (1.0 + LOG_2PI), dtype=self.dtype, device=self.device)


class MixtureOfDiagonalNormals(Distribution):
    """p(z) = Σ_c π_c N(z; μ_c, diag σ_c²), π = softmax(logits): a mixture of C diagonal
    Gaussians (the learnable prior of Tomczak & Welling 2018, and of Dilokthanakul et al. 2016).

    Parameters ``logits`` (..., C), ``mu`` and ``logvar`` (..., C, d); batch shape ``...``,
    event shape (d,). ``log_prob`` is exact: log Σ_c exp(log π_c + log N(z; μ_c, σ_c²)) by
    logsumexp, each component's density the diagonal Gaussian of ``DiagonalNormal`` (written
    out as matrix products over the components, see ``log_prob``). No reparameterized sample
    (the component index is discrete) and no closed-form KL against a Gaussian q: the ELBO
    falls back to the Monte Carlo KL of ``vaekit.objectives.kl``.
    """

    arg_constraints = {"logits": constraints.real_vector, "mu": constraints.real_vector, "logvar": constraints.real_vector}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, logits: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor):
        if mu.dim() < 2 or mu.shape != logvar.shape or logits.shape != mu.shape[:-1]:
            raise ValueError(
                "MixtureOfDiagonalNormals expects logits (..., C), mu and logvar (..., C, d); "
                f"got logits {tuple(logits.shape)}, mu {tuple(mu.shape)}, logvar {tuple(logvar.shape)}"
            )
        self.logits, self.mu, self.logvar = logits, mu, logvar
        super().__init__(mu.shape[:-2], mu.shape[-1:], validate_args=False)

    @property
    def components(self) -> int:
        return self.logits.shape[-1]

    @property
    def mean(self) -> torch.Tensor:
        """E[z] = Σ_c π_c μ_c."""
        pi = torch.softmax(self.logits, -1).unsqueeze(-1)  # (..., C, 1)
        return (pi * self.mu).sum(-2)

    @property
    def variance(self) -> torch.Tensor:
        """Var[z_i] = Σ_c π_c (σ_ci² + μ_ci²) − E[z_i]² (law of total variance)."""
        pi = torch.softmax(self.logits, -1).unsqueeze(-1)  # (..., C, 1)
        second = (pi * (torch.exp(self.logvar) + self.mu**2)).sum(-2)
        return second - self.mean**2

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log Σ_c π_c N(z; μ_c, σ_c²), each component's log-density from its quadratic form
        Σ_i (z_i − μ_ci)²/σ_ci² = z²·λ_c − 2 z·(λμ)_c + (λμ²)_c, λ = 1/σ², as one matrix
        product instead of a (..., C, d) tensor of differences (ten times slower for the
        VampPrior's 500 components). The terms cancel where |μ|/σ is large, so they are formed
        in float64, where that cancellation is far below float32's resolution; the result is in
        the parameters' dtype, at least float32."""
        out = torch.promote_types(torch.promote_types(z.dtype, self.mu.dtype), torch.float32)
        z, mu, logvar = z.double(), self.mu.double(), self.logvar.double()
        lam = torch.exp(-logvar)
        lam_mu = lam * mu
        # log π_c + log N(z; μ_c, σ_c²) = z²·(−½λ_c) + z·(λμ)_c + b_c, with
        # b_c = log π_c − ½ (Σ_i λμ² + log σ² + log 2π): one product of [z², z, 1] with the
        # components' [−½λ, λμ, b], so that no (…, C) tensor is formed but the product's.
        b = torch.log_softmax(self.logits.double(), -1) - 0.5 * ((lam_mu * mu + logvar).sum(-1) + mu.shape[-1] * LOG_2PI)
        weights = torch.cat([-0.5 * lam, lam_mu, b.unsqueeze(-1)], -1)  # (..., C, 2d + 1)
        features = torch.cat([z * z, z, torch.ones_like(z[..., :1])], -1)  # (..., 2d + 1)
        if self.mu.dim() == 2:  # one mixture for every point: a plain (…, 2d + 1) x (2d + 1, C) product
            log_joint = features @ weights.T
        else:  # a mixture per point: batched (…, 1, 2d + 1) x (…, 2d + 1, C) products
            log_joint = (features.unsqueeze(-2) @ weights.mT).squeeze(-2)
        return torch.logsumexp(log_joint, -1).to(out)

    def sample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral draw: c ~ Categorical(π), then z = μ_c + ε·σ_c, ε ~ N(0, I)."""
        sample_shape = torch.Size(sample_shape)
        s, c, d = sample_shape.numel(), self.components, self.event_shape[0]
        with torch.no_grad():
            probs = torch.softmax(self.logits, -1).expand(self.batch_shape + (c,)).reshape(-1, c)  # (B, C)
            idx = torch.multinomial(probs, s, replacement=True, generator=generator)  # (B, S)
            idx = idx.T.reshape(sample_shape + self.batch_shape)  # sample_shape + batch_shape
            mu = self.mu.expand(sample_shape + self.mu.shape)
            logvar = self.logvar.expand(sample_shape + self.logvar.shape)
            gather = idx[..., None, None].expand(idx.shape + (1, d))
            mu_c = mu.gather(-2, gather).squeeze(-2)  # sample_shape + batch_shape + (d,)
            std_c = torch.exp(0.5 * logvar.gather(-2, gather).squeeze(-2))
            eps = torch.randn(mu_c.shape, dtype=mu_c.dtype, device=mu_c.device, generator=generator)
            return mu_c + eps * std_c


class PointMass(Posterior):
    """δ(z − ẑ): the "posterior" of the notes' autoencoder and of MAP estimation.

    ``log_prob`` is 0 at ẑ (the density with respect to counting measure on {ẑ}); with the KL
    of ``vaekit.objectives.kl`` taken as −log p(ẑ) (the cross-entropy, its entropy term
    dropped), the ELBO of a point mass is log p(x|ẑ) + log p(ẑ): the MAP objective.
    """

    arg_constraints = {"z": constraints.real_vector}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, z: torch.Tensor):
        self.z = z
        super().__init__(z.shape[:-1], z.shape[-1:], validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        return self.z

    @property
    def mode(self) -> torch.Tensor:
        return self.z

    @property
    def variance(self) -> torch.Tensor:
        return torch.zeros_like(self.z)

    def _anchor(self) -> torch.Tensor:
        return self.z

    def reparameterize(self, eps: torch.Tensor) -> torch.Tensor:
        """ẑ, whatever the noise: a point mass has none to carry."""
        return self.z.expand(eps.shape[:-1] + self.z.shape[-1:])

    def rsample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
        # No noise to draw: the generator's stream is left where it was.
        return self.z.expand(self._extended_shape(sample_shape))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)

    def log_prob_groups(self, z: torch.Tensor, groups) -> dict[str, torch.Tensor]:
        return {g.name: self.log_prob(z) for g in groups}


class BernoulliLogits(Distribution):
    """∏_d Bernoulli(x_d; σ(l_d)) for binary data, on logits l so that log p never sees log(0)."""

    arg_constraints = {"logits": constraints.real}
    support = constraints.independent(constraints.boolean, 1)

    def __init__(self, logits: torch.Tensor):
        self.logits = logits
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    @property
    def mode(self) -> torch.Tensor:
        return (self.logits > 0).to(self.logits.dtype)

    def sample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
        p = self.mean.expand(self._extended_shape(sample_shape))
        with torch.no_grad():
            return torch.bernoulli(p, generator=generator)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Σ_d x_d·l_d − softplus(l_d). For binary x that is Σ_d log σ(±l_d) = −Σ_d softplus((1 − 2x_d)·l_d):
        one pass, and exact for confident logits, where x·l − softplus(l) would cancel. In
        the dtype of l and x together, at least float32: bfloat16 or float16 logits (autocast's)
        are summed over the pixels in float32, as autocast keeps BCE in float32."""
        logits = self.logits
        dtype = torch.promote_types(logits.dtype, x.dtype) if x.is_floating_point() else logits.dtype
        dtype = torch.promote_types(dtype, torch.float32)
        logits = logits.to(dtype)
        # Several samples of z per row (importance weighting, K-sample evaluation) pay for the
        # binary check many times over. Compiled code fuses the general form anyway, and a
        # data-dependent branch would break its graph.
        several = logits.numel() > x.numel() and not (x.requires_grad or torch.compiler.is_compiling())
        if several and _all_binary(x):
            sign = 1 - 2 * x.to(dtype)
            if torch.is_grad_enabled() and logits.requires_grad:
                # torch.func (vmap, grad, hessian) refuses the Function: autograd's graph below.
                with contextlib.suppress(RuntimeError):
                    return _BinaryBernoulliLogProb.apply(logits, sign)
            return _softplus(sign * logits).sum(-1).neg()
        x = x.to(dtype)
        logits, x = (logits, x) if x.shape == logits.shape else torch.broadcast_tensors(logits, x)
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def _all_binary(x: torch.Tensor) -> bool:
    try:
        return bool(((x == 0) | (x == 1)).all())
    except RuntimeError:  # torch.func.vmap refuses data-dependent branches: take the general form
        return False


def _softplus(t: torch.Tensor) -> torch.Tensor:
    """log(1 + e^t). torch's default threshold returns t itself above t = 20, an error of
    e^−20 ≈ 2e-9 that float64 sees; exp(t) does not overflow float32 below t = 88."""
    return F.softplus(t, threshold=50.0)


class _BinaryBernoulliLogProb(torch.autograd.Function):
    """−Σ_d softplus(t_d), t = s·l, for the signs s = 1 − 2x of binary x, with its gradient
    ∂/∂l = −s·σ(t) from the saved t. Autograd's graph of the same expression makes the
    importance-weighted training step (K = 50, 784 pixels, bf16 autocast), where this
    likelihood is the largest elementwise cost, about 15% slower (1.14-1.16x in the step's time). The old-style forward (with
    ``ctx``) can save t; torch.func transforms refuse such a Function, and the caller falls back
    to autograd's graph there."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        t = sign * logits
        ctx.save_for_backward(logits, sign, t)
        ctx.save_for_forward(sign, t)
        return _softplus(t).sum(-1).neg()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, sign, t = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiable ops on the inputs, for second derivatives
            g = -sign * torch.sigmoid(sign * logits) * grad.unsqueeze(-1)
        else:  # the last product out of place: with batched gradients grad is the larger
            g = torch.sigmoid(t).mul_(-sign) * grad.unsqueeze(-1)
        return (g if g.shape == logits.shape else g.sum_to_size(logits.shape)), None

    @staticmethod
    def jvp(ctx, d_logits: torch.Tensor, _d_sign) -> torch.Tensor:
        sign, t = ctx.saved_tensors
        return -(sign * torch.sigmoid(t) * d_logits).sum(-1)


def _cb_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """log C(λ) of the continuous Bernoulli (Loaiza-Ganem & Cunningham 2019, eq. 7).

    With λ = σ(l), C(λ) = 2 atanh(1 − 2λ)/(1 − 2λ) simplifies to l / tanh(l/2), which is even
    in l and tends to 2 at l = 0; near 0 its Taylor series 2(1 + l²/12) avoids 0/0.
    """
    small = logits.abs() < 1e-2
    safe = torch.where(small, torch.ones_like(logits), logits).abs()
    exact = torch.log(safe) - torch.log(torch.tanh(0.5 * safe))
    taylor = math.log(2.0) + torch.log1p(logits**2 / 12.0)
    return torch.where(small, taylor, exact)


class ContinuousBernoulliLogits(Distribution):
    """∏_d CB(x_d; σ(l_d)): the normalised density on [0, 1] for grey-level data
    (Loaiza-Ganem & Cunningham 2019), so its log p(x) is a true log-density, unlike the
    Bernoulli log-mass misapplied to values strictly between 0 and 1."""

    arg_constraints = {"logits": constraints.real}
    support = constraints.independent(constraints.unit_interval, 1)

    def __init__(self, logits: torch.Tensor):
        self.logits = logits
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        """E[x] = λ/(2λ − 1) + 1/(2 atanh(1 − 2λ)), which in logits is −1/expm1(−l) − 1/l,
        with the Taylor value ½ + l/12 − l³/720 near l = 0. Written in logits because σ(l) saturates
        in float32 for |l| > 16 and the λ form then loses the tail."""
        l = self.logits
        small = l.abs() < 1e-2
        safe = torch.where(small, torch.ones_like(l), l)
        return torch.where(small, 0.5 + l / 12.0 - l**3 / 720.0, -1.0 / torch.expm1(-safe) - 1.0 / safe)

    @property
    def mode(self) -> torch.Tensor:
        return (self.logits > 0).to(self.logits.dtype)

    def sample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
        """Inverse CDF, F⁻¹(u) = log(1 + u·expm1(l)) / l, rearranged per sign of l so that no
        exp overflows: l > 0: 1 + log(u + (1 − u)e^{−l})/l; l < 0: log(1 − u + u·e^{l})/l; l ≈ 0: u."""
        shape = self._extended_shape(sample_shape)
        l = self.logits.expand(shape)
        u = torch.rand(shape, dtype=l.dtype, device=l.device, generator=generator)
        with torch.no_grad():
            small = l.abs() < 1e-4
            safe = torch.where(small, torch.ones_like(l), l)
            pos = 1.0 + torch.log(u + (1 - u) * torch.exp(-safe.clamp(min=0))) / safe
            neg = torch.log((1 - u) + u * torch.exp(safe.clamp(max=0))) / safe
            x = torch.where(safe > 0, pos, neg)
            return torch.where(small, u, x).clamp(0.0, 1.0)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        logits, x = (self.logits, x) if x.shape == self.logits.shape else torch.broadcast_tensors(self.logits, x)
        bern = -F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        return (bern + _cb_log_norm(logits)).sum(-1)
