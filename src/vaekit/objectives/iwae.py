"""Importance-sampled evidence: log p(x) ≈ log (1/K) Σ_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x)
(Burda, Grosse & Salakhutdinov 2016). It is a lower bound in expectation that rises with K
and tends to log p(x), so the gap log p(x) − ELBO can be measured rather than named; trained
on, it is the importance-weighted autoencoder's objective."""

from __future__ import annotations

import math
import numbers

import torch
from torch.distributions import Distribution

from ..errors import ConfigError
from ..registry import K_MAX, OBJECTIVES, Option
from .base import Objective, in_model_dtype

# Elements of one (k, n, D) block of decoder output: bounds memory for any K. 1M elements
# (4 MB in fp32) keeps each block's elementwise log-likelihood pass in cache: 115 GFLOP/s
# against 104 at 8M for the MNIST decoder on this project's 2-core machine (bench/README.md).
DEFAULT_BLOCK = 1 << 20


def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/K) Σ_k exp(log_w_k), stable for any magnitude."""
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


def log_weights(
    model,
    x: torch.Tensor,
    k: int,
    idx: torch.Tensor | None = None,
    q: Distribution | None = None,
    generator: torch.Generator | None = None,
    eps: torch.Tensor | None = None,
) -> torch.Tensor:
    """log w_k = log p(x|z_k) + log p(z_k) − log q(z_k|x), shape (k, n); ``eps`` (k, n, noise)
    supplies the noise instead of ``generator``."""
    if q is None:
        q = model.posterior(x, idx)
    z = q.reparameterize(eps) if eps is not None else q.rsample((k,), generator=generator)
    return model.log_px_given_z(z, x) + model.log_pz(z) - q.log_prob(z)


def _proposal(model, x: torch.Tensor, q: Distribution | None) -> Distribution:
    """q for the estimate: the model's own q for new x when none is given. A point mass is
    refused: its weights would be log p(x, ẑ), which estimates nothing."""
    if q is None:
        q = model.evaluation_posterior(x)
    from ..distributions import PointMass

    if isinstance(q, PointMass):
        raise ConfigError("a point mass is no importance proposal: log w would be log p(x, ẑ); pass a density q")
    return q


def sample_width(model, x: torch.Tensor) -> int:
    """Elements one importance sample of one row spans at most: the decoder's D outputs, or a
    mixture prior's C component log-densities, formed in float64 (two float32 elements each;
    ``MixtureOfDiagonalNormals.log_prob``). Without the prior's share, 1000 low-dimensional
    rows under a 500-component prior held gigabytes per chunk."""
    prior = getattr(model, "prior", None)
    components = getattr(prior, "components", 1)
    return max(1, x.shape[-1], 2 * components if components > 1 else 0)


def iwae(
    model,
    x: torch.Tensor,
    k: int,
    q: Distribution | None = None,
    generator: torch.Generator | None = None,
    block: int = DEFAULT_BLOCK,
) -> torch.Tensor:
    """The K-sample importance-weighted estimate of log p(x), shape (n,), with proposal ``q``
    (default: the model's q for new x, ``model.evaluation_posterior``).

    The K samples are drawn in chunks and combined by a running logsumexp, so memory is
    O(chunk · n · width) whatever K is (``sample_width``: D, or a mixture prior's components).
    With a ``RowStreams`` generator each row's draws are its own, so the value does not depend
    on the chunking or on the other rows of the batch; a plain ``torch.Generator`` is one
    stream cut by the chunk size, so the same seed gives other (equally valid) draws for
    another ``block`` or another number of rows.
    """
    return iwae_and_elbo(model, x, k, q, generator, block)[0]


def iwae_and_elbo(
    model,
    x: torch.Tensor,
    k: int,
    q: Distribution | None = None,
    generator: torch.Generator | None = None,
    block: int = DEFAULT_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p̂(x), ELBÔ), each (n,): the K-sample estimate of ``iwae`` and the mean of the same
    K log-weights, E_q[log p(x, z) − log q(z|x)] estimated on the draws that estimate log p(x).
    On every row log p̂(x) ≥ ELBÔ (a log-mean-exp is at least the mean), so their difference,
    an estimate of KL(q || p(z|x)), is never negative by chance; and two proposals drawing
    from equal ``RowStreams`` share their noise ε (common random numbers), so the difference
    of their ELBOs is as precise as their difference allows."""
    total, mean = None, None
    for lw in _weight_chunks(model, in_model_dtype(model, x), k, q, generator, block):
        part, part_sum = torch.logsumexp(lw, 0), lw.sum(0, dtype=torch.float64)
        total = part if total is None else torch.logaddexp(total, part)
        mean = part_sum if mean is None else mean + part_sum
    return total - math.log(k), (mean / k).to(total.dtype)


def _weight_chunks(model, x, k, q, generator, block):
    """The K log-weights of ``q`` (default the model's q for new x) in chunks of (chunk, n):
    memory O(chunk · n · width) whatever K is (``sample_width``: D, or a mixture prior's
    components)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ConfigError(f"k must be an integer >= 1, got {k!r}")
    q = _proposal(model, x, q)
    n = x.shape[0]
    chunk = max(1, min(k, block // max(1, n * sample_width(model, x))))
    for start in range(0, k, chunk):
        yield log_weights(model, x, min(chunk, k - start), q=q, generator=generator)


@OBJECTIVES.register(
    "iwae",
    options={"k": Option(5, "importance samples per datapoint of the iwae objective", minimum=1, maximum=K_MAX)},
)
class IwaeObjective(Objective):
    """Loss = −mean log (1/K) Σ_k w_k (Burda et al. 2016, eq. 8): a bound that tightens with K
    toward log p(x); K = 1 is the ELBO with a Monte Carlo KL. Its best epoch is the one with
    the highest K-sample bound on the validation rows."""

    @property
    def samples(self) -> int:
        return self.config.k

    @classmethod
    def check_inference(cls, method: type) -> None:
        if method.point_estimate:
            raise ConfigError(f"objective iwae needs a density q; inference {method.name!r} gives a point estimate")

    def loss(self, model, x, idx, eps, beta=1.0):
        total, value = None, None
        for q in model.training_posteriors(x, idx):
            bound = log_mean_exp(log_weights(model, x, eps.shape[0], q=q, eps=eps), 0)
            part = -bound.mean()
            total = part if total is None else total + part
            value = bound if value is None else value
        return total, value

    def validate(self, model, x, terms, seed):
        from ..evaluate import log_px_per_point

        return float(log_px_per_point(model, x, k=self.config.k, seed=seed, per_row=False, checked=True).mean())
