"""Evidence per datapoint and averaged: the ELBO with its terms, and the importance-weighted
estimate of log p(x), in nats and bits per dimension.

Evaluation draws its noise from its own seeded generators, so that numbers are repeatable and
evaluating never moves the training random stream. Per-row estimates draw from a stream per
row (``distributions.RowStreams``): a row's value does not depend on the rows beside it.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Callable

import numpy as np
import torch

from .distributions import RowStreams
from .objectives import elbo as elbo_terms
from .objectives import iwae, iwae_and_elbo
from .config import GAP_STEPS, K_MAX, STEPS_MAX, check_positive_int
from .errors import DataError


def numpy_of(t: torch.Tensor) -> np.ndarray:
    """A model's output as numpy holds it, on the CPU: bfloat16, which numpy lacks, as float32."""
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def read_only_tensor(x, dtype: torch.dtype, device) -> torch.Tensor:
    """``torch.as_tensor`` of rows that are only ever read: a read-only array (np.load's
    mmap_mode="r") is wrapped without a copy where dtype and device allow, and torch's warning
    that writing to it would be undefined does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        return torch.as_tensor(x, dtype=dtype, device=device)


def batches(model, x, batch_size: int):
    """Rows of x as tensors on the model's device; a memory-mapped split is read block by block."""
    from .data import MappedRows

    p = next(model.parameters())
    if isinstance(x, MappedRows):
        for block in x.chunks():
            for start in range(0, len(block), batch_size):
                yield torch.as_tensor(block[start : start + batch_size], dtype=p.dtype, device=p.device)
        return
    # A numpy view with negative strides (x[::-1]) is copied: torch cannot wrap it.
    x = read_only_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x, p.dtype, p.device)
    for start in range(0, x.shape[0], batch_size):
        yield x[start : start + batch_size]


def _with_rows(blocks, model, x, idx):
    """(batch, its rows of ``idx``) for each batch of ``blocks``; rows None without ``idx``."""
    if idx is None:
        for xb in blocks:
            yield xb, None
        return
    idx = torch.as_tensor(np.asarray(idx), dtype=torch.long, device=next(model.parameters()).device)
    if idx.shape != (len(x),):
        raise DataError(f"idx must hold one training-set index per row of x ({len(x)}), got shape {tuple(idx.shape)}")
    n = model.config.n_points
    if model.inference.per_point and len(idx) and not (0 <= int(idx.min()) and int(idx.max()) < n):
        raise DataError(f"idx must index the {n} training rows of the per-point table, got values {int(idx.min())}..{int(idx.max())}")
    done = 0
    for xb in blocks:
        yield xb, idx[done : done + xb.shape[0]]
        done += xb.shape[0]


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """The module in eval mode for the block, and back in its previous mode however it ends;
    a VAEModel's prior is built once for the block (``VAEModel.fixed_prior``): evaluation
    trains nothing."""
    was = model.training
    model.eval()
    try:
        with getattr(model, "fixed_prior", contextlib.nullcontext)():
            yield model
    finally:
        model.train(was)


def noise(model, seed: int, per_row: bool = True) -> Callable[[torch.Tensor], torch.Generator | RowStreams]:
    """The noise source of each batch of a pass: per row, a stream seeded by the row and the seed
    (RowStreams: a row's estimate does not depend on the rows beside it), or one seeded stream
    through the whole pass. The second costs nothing per row; the training loop's validation,
    which reports means over fixed rows, takes it."""
    if per_row:
        return lambda xb: RowStreams(xb, seed)
    g = _generator(model, seed)
    return lambda xb: g


def _generator(model, seed: int) -> torch.Generator:
    device = next(model.parameters()).device
    return torch.Generator(device=device).manual_seed(seed)


# Burda et al. (2015), sec. 5.2: a unit is active when Cov_x(E_q[z_u]) exceeds this.
ACTIVE_UNIT_THRESHOLD = 1e-2


class LatentUsage:
    """Posterior collapse made visible: which latent units the model uses, accumulated batch by
    batch over the rows whose q's are ``add``-ed (streaming, so a memory-mapped split costs
    O(D) memory).

    - ``variance``: Var_x(E_q[z_u]) of each latent column u, the spread across rows of the
      posterior means ``q.mean`` (for a bottom-up hierarchy the plug-in means of
      ``BottomUp.mean``), float64 by Chan et al.'s pairwise update (no E[m²] − E[m]²
      cancellation);
    - ``active_units``: the number of units with variance > ACTIVE_UNIT_THRESHOLD (Burda et al.
      2015, sec. 5.2: an inactive unit's posterior does not depend on x, so it carries no
      information about x);
    - ``kl_per_dim``: the mean over rows of each dimension's KL(q || p), closed form, where
      q is one diagonal Gaussian and p the standard normal; None otherwise (a hierarchy, a
      mixture or VampPrior, a point mass: their KL does not split by dimension), and then
      ``kl_per_group`` (always given) is the finest split: each group's mean KL, the group's
      Monte Carlo term of ``VAEModel.kl_per_group`` on one draw from ``generator`` for a
      hierarchy, the closed form (or Monte Carlo) for one group;
    - ``forces``: the KL's mean and variance terms (``objectives.kl.bubble_forces``, the
      notes' bubble forces) averaged over rows, where the KL splits per dimension;
      None otherwise.
    """

    def __init__(self, model, generator: torch.Generator | None = None):
        self.model, self.generator = model, generator
        self.n = 0
        self._mean = self._m2 = self._kl_dim = self._forces = None
        self._kl_groups: dict[str, float] = {}
        self._per_dim = True

    @torch.no_grad()
    def add(self, q) -> None:
        """Account for the rows of one batch, given their q(z|x) (batch (b,), event (D,))."""
        from .objectives.kl import bubble_forces, kl_per_dim

        model = self.model
        m = q.mean.double()  # (b, D)
        b = m.shape[0]
        if b == 0:
            return
        bm = m.mean(0)
        bm2 = ((m - bm) ** 2).sum(0)
        if self.n == 0:
            self._mean, self._m2 = bm, bm2
        else:
            n = self.n + b
            delta = bm - self._mean
            self._mean = self._mean + delta * (b / n)
            self._m2 = self._m2 + bm2 + delta**2 * (self.n * b / n)
        kl_dim = kl_per_dim(q, model.top_prior()) if len(model.latents) == 1 and self._per_dim else None
        if kl_dim is None:
            self._per_dim, self._kl_dim, self._forces = False, None, None
        else:
            kl_dim = kl_dim.double().sum(0)  # (D,)
            self._kl_dim = kl_dim if self._kl_dim is None else self._kl_dim + kl_dim
            forces = torch.stack([f.double().sum() for f in bubble_forces(q, model.top_prior())])
            self._forces = forces if self._forces is None else self._forces + forces
        if len(model.latents) == 1 and kl_dim is not None:
            groups = {model.latents[0].name: kl_dim.sum()}
        else:
            z = q.rsample((1,), generator=self.generator)  # (1, b, D)
            groups = {name: v.double().sum() for name, v in model.kl_per_group(q, z).items()}
        for name, v in groups.items():
            self._kl_groups[name] = self._kl_groups.get(name, 0.0) + float(v)
        self.n += b

    @property
    def variance(self) -> np.ndarray:
        """Var_x(E_q[z_u]) of each latent column, (D,) (population variance over the rows)."""
        return (self._m2 / max(self.n, 1)).cpu().numpy()

    @property
    def active(self) -> np.ndarray:
        """(D,) bool: the active units."""
        return self.variance > ACTIVE_UNIT_THRESHOLD

    @property
    def active_units(self) -> int:
        return int(self.active.sum())

    @property
    def kl_per_dim(self) -> list[float] | None:
        if not self._per_dim or self._kl_dim is None:
            return None
        return (self._kl_dim / self.n).tolist()

    @property
    def forces(self) -> dict[str, float] | None:
        """{"force_mean": ½ Σ μ², "force_variance": ½ Σ (σ² − log σ² − 1)}, each the mean over
        rows, summing to the mean KL; None where the KL does not split per dimension."""
        if not self._per_dim or self._forces is None:
            return None
        mean, variance = (self._forces / self.n).tolist()
        return {"force_mean": mean, "force_variance": variance}

    @property
    def kl_per_group(self) -> dict[str, float]:
        return {name: v / self.n for name, v in self._kl_groups.items()}

    def summary(self) -> dict[str, Any]:
        """The JSON-ready fields: active_units, latent_size, kl_per_dim, kl_per_group."""
        return {
            "active_units": self.active_units,
            "latent_size": int(self.model.latent_size),
            "kl_per_dim": self.kl_per_dim,
            "kl_per_group": self.kl_per_group,
        }


def model_rows(model, x, what: str = "x"):
    """``x`` checked as rows a model reads, in its units: 2-D, ``input_dim`` wide, finite and
    in the likelihood's support (``check_data``); a memory-mapped split, checked as it was
    read, passes as it is. The public estimates below take what ``VAE.model_input`` gives."""
    from .data import MappedRows, check_data

    if isinstance(x, MappedRows):
        return x
    return check_data(x, what=what, min_rows=1, input_dim=model.config.input_dim, likelihood=model.likelihood, dtype=None)


def refuse_overflow(values: np.ndarray, name: str, x, start: int = 0, low_inf: bool = False) -> np.ndarray:
    """``values``, the model's results for the rows ``x[start:start + len(values)]`` (in the
    model's units), refused where some row's are not numbers (NaN, or ±inf; −inf allowed with
    ``low_inf``, a density that underflowed or a point estimate's log σ²): a row far outside
    the training data (3e38 in a float32 model) overflows the networks' arithmetic, and a NaN
    anomaly score or code would pass unnoticed into the user's results."""
    v = np.asarray(values)
    bad = np.isnan(v) | (v == np.inf) | (~low_inf & (v == -np.inf))
    rows = bad.reshape(len(v), -1).any(axis=1) if v.ndim else np.zeros(0, bool)
    if not rows.any():
        return values
    r = start + int(np.flatnonzero(rows)[0])
    raise DataError(
        f"row {r + 1}: the model's {name} is not a number: its arithmetic overflowed on values that reach "
        f"{_largest(x, r):.3g} in the model's units, far outside the data it was trained on; leave such rows out"
    )


def _largest(x, r: int) -> float:
    """max |x[r]|, row r of an array or a memory-mapped split."""
    from .data import MappedRows

    row = x.rows(np.array([r])) if isinstance(x, MappedRows) else np.asarray(x[r : r + 1])
    return float(np.abs(np.asarray(row, dtype=np.float64)).max())


def refuse_elbo_overflow(terms: dict[str, np.ndarray], x) -> None:
    """``refuse_overflow`` for ``elbo_per_point``'s terms. The ELBO may be −inf (a density below
    the float range), but then its KL must be finite: KL(q || p) is finite for every q the
    encoder can give, and +inf only where a code's square overflowed (a row's values near
    1e19 or more in a float32 model, which leave finite but meaningless codes)."""
    refuse_overflow(terms["elbo"], "ELBO", x, low_inf=True)
    refuse_overflow(terms["kl"], "KL", x)


def refuse_log_px_overflow(model, log_px: np.ndarray, x, idx=None) -> np.ndarray:
    """``refuse_overflow`` for a log p(x) estimate of the rows x. A row at −inf is refused too
    where its q's KL is not finite: its codes' squares overflowed (``refuse_elbo_overflow``), so
    the −inf is the arithmetic's, not a density below the float range, and the row is refused
    as ``evaluate`` refuses it (its finite value, −1e39 or so, is no score either)."""
    refuse_overflow(log_px, "log p(x)", x, low_inf=True)
    low = np.flatnonzero(np.isneginf(log_px))
    if low.size:
        from .data import MappedRows

        rows = x.rows(low) if isinstance(x, MappedRows) else np.asarray(x[low])
        kl = np.zeros(len(log_px))
        kl[low] = elbo_per_point(model, rows, idx=None if idx is None else idx[low])["kl"]
        refuse_overflow(kl, "KL", x)
    return log_px


class PerRow:
    """Per-row results of a pass over batches, copied batch by batch into arrays of the final
    length ``n`` (each name's trailing shape and, with ``dtype`` None, dtype taken from its first
    batch; bfloat16, which numpy lacks, as float32). Keeping each batch's result tensor alive
    until one concatenation at the end pins pieces of the C heap between the batches' large
    temporaries, so that glibc can neither reuse nor return them: memory then grows with the
    rows (1.5-6 KB a row measured, hundreds of times the results' own size) on a long pass."""

    def __init__(self, n: int, names: tuple[str, ...], dtype=np.float64):
        self.n, self.names, self.dtype = n, names, dtype
        self.arrays: dict[str, np.ndarray] = {}
        self.done = 0

    def put(self, **values: torch.Tensor) -> None:
        """One batch's values, the same number of rows for every name, after the rows so far."""
        rows = 0
        for name, v in values.items():
            v = numpy_of(v)
            if name not in self.arrays:
                self.arrays[name] = np.empty((self.n, *v.shape[1:]), dtype=self.dtype or v.dtype)
            rows = len(v)
            self.arrays[name][self.done : self.done + rows] = v
        self.done += rows

    def result(self) -> dict[str, np.ndarray]:
        """The arrays, once every row has been put (an empty pass gives empty arrays)."""
        if self.done != self.n:
            raise RuntimeError(f"{self.done} rows put of {self.n}")
        return {name: self.arrays.get(name, np.empty(0, dtype=self.dtype or np.float32)) for name in self.names}


# no_grad rather than inference_mode: methods that optimise q for new points need autograd
# inside (they switch it back on), and inference-mode tensors cannot take part in it.
@torch.no_grad()
def elbo_per_point(
    model, x, n_samples: int = 1, batch_size: int = 1024, seed: int = 0, usage: LatentUsage | None = None, idx=None,
    per_row: bool = True, checked: bool = False,
) -> dict[str, np.ndarray]:
    """ELBO, E_q[log p(x|z)] and KL(q || p) for each row, each (n,) float64. ``usage``, if
    given, is fed each batch's q (the latent units' activity, from the same pass); ``idx``,
    the rows' indices in the training set, scores per-point methods' learned q_i. ``per_row``:
    each row's noise from its own stream (``noise``). ``checked``: x is rows ``model_rows``
    passed already (the training loop's validation tensor, every epoch), not checked again."""
    x = x if checked else model_rows(model, x)
    out = PerRow(len(x), ("elbo", "recon", "kl"))
    draw = noise(model, seed, per_row)
    with eval_mode(model):
        for xb, rows in _with_rows(batches(model, x, batch_size), model, x, idx):
            q = model.evaluation_posterior(xb, rows)
            terms = elbo_terms(model, xb, q=q, n_samples=n_samples, generator=draw(xb))
            out.put(elbo=terms.elbo, recon=terms.recon, kl=terms.kl)
            if usage is not None:
                usage.add(q)
    return out.result()


@torch.no_grad()
def log_px_per_point(
    model, x, k: int = 1000, batch_size: int | None = None, seed: int = 0, progress: Callable[[int], None] | None = None,
    idx=None, per_row: bool = True, checked: bool = False,
) -> np.ndarray:
    """The K-sample importance-weighted estimate of log p(x) for each row, (n,) float64.
    ``progress``, if given, is called with the rows done after each batch; ``idx``, the rows'
    indices in the training set, makes per-point methods' learned q_i the proposals.
    ``per_row``: each row's noise from its own stream (``noise``); ``checked`` as in
    ``elbo_per_point``."""
    x = x if checked else model_rows(model, x)
    draw = noise(model, seed, per_row)
    if batch_size is None:
        # Rows per call: enough that each K-chunk is a large matrix product, few enough that
        # one chunk covers many samples (see objectives.iwae.DEFAULT_BLOCK).
        batch_size = 256 if k >= 64 else 1024
    out = PerRow(len(x), ("log_px",))
    with eval_mode(model):
        for xb, rows in _with_rows(batches(model, x, batch_size), model, x, idx):
            out.put(log_px=iwae(model, xb, k, q=model.evaluation_posterior(xb, rows), generator=draw(xb)))
            if progress is not None:
                progress(out.done)
    return out.result()["log_px"]


def latent_usage(model, seed: int) -> LatentUsage:
    """The accumulator of a pass's active units and per-dimension KL, its draws (for a
    Monte Carlo KL) from a stream of its own, seed + 2, apart from the ELBO's and log p(x)'s."""
    return LatentUsage(model, _generator(model, seed + 2))


def elbo_stage(model, x, seed: int = 0, idx=None) -> tuple[dict[str, np.ndarray], LatentUsage]:
    """``evaluate``'s first, short pass: the per-row ELBO terms and the latent units' use, with
    rows that overflow the model's arithmetic refused (``refuse_elbo_overflow``) before the long
    log p(x) pass. ``train`` runs it before drawing its pictures, whose KL panel such a row
    would turn to NaN, and hands it to ``evaluate`` as ``first``. ``x`` as ``model_rows`` gives
    it (checked once, by the caller)."""
    usage = latent_usage(model, seed)
    terms = elbo_per_point(model, x, seed=seed, usage=usage, idx=idx)
    refuse_elbo_overflow(terms, x)
    return terms, usage


def evaluate(
    model, x, k: int = 1000, seed: int = 0, progress: Callable[[int], None] | None = None, idx=None, first=None,
) -> dict[str, Any]:
    """Averages over the rows of x: elbo, recon, kl, log_likelihood (IWAE, K = k), both in
    nats, and bits_per_dim = −log_likelihood / (D ln 2); and the latent units' use
    (``LatentUsage.summary``: active_units of latent_size, kl_per_dim, kl_per_group).
    ``progress`` is called with the rows done by the log p(x) pass, nearly all of the time;
    ``idx``, the rows' indices in the training set, scores per-point methods' learned q_i;
    ``first``, ``elbo_stage(model, x, seed, idx)`` when it has been run already."""
    k = check_positive_int("k", k, maximum=K_MAX)
    x = model_rows(model, x)
    terms, usage = first if first is not None else elbo_stage(model, x, seed, idx)
    log_px = log_px_per_point(model, x, k=k, seed=seed + 1, progress=progress, idx=idx)
    refuse_overflow(log_px, "log p(x)", x, low_inf=True)
    n, dim = np.shape(x)
    ll = float(log_px.mean())
    return {
        "elbo": float(terms["elbo"].mean()),
        "recon": float(terms["recon"].mean()),
        "kl": float(terms["kl"].mean()),
        "log_likelihood": ll,
        "bits_per_dim": -ll / (dim * math.log(2)),
        "n": int(n),
        "k": int(k),
        **usage.summary(),
    }


# q* of the gaps: at most GAP_STEPS Adam steps (the CLI's --steps) per row on GAP_GRAD_SAMPLES-draw
# ELBO gradients, each row stopped by inference.optimize.RowStop: every GAP_CHECK_EVERY steps its
# ELBO under GAP_SAMPLES fixed draws of its own; a gain under GAP_TOL nats divides its rate by
# 10, and after GAP_LR_DECAYS divisions its next plateau stops it. The approximation gap is only
# as good as this optimisation.
GAP_SAMPLES = 32
GAP_GRAD_SAMPLES = 16
GAP_CHECK_EVERY = 50
GAP_TOL = 1e-3
GAP_LR_DECAYS = 2


def _optimal_q(model, x: torch.Tensor, q, steps: int, lr: float, seed: int, stop):
    """(q*, steps each row took): the best q of q's family for each row with θ fixed, from q,
    by ``inference.optimize.ascend_rows`` under ``stop`` (or after ``steps`` steps). For a
    diagonal Gaussian the family is all of them: argmax over (μ, log σ²) of ELBO(x; N(μ, diag
    σ²)). For a structured q(z|x) = ∏_j q(z_j | Pa(z_j), x) it keeps the structure, each
    group's (μ_j, log σ²_j) moved by free per-row offsets (``Structured.shifted``), from zero
    offsets (q itself)."""
    from .distributions import DiagonalNormal, RowStreams
    from .inference.optimize import ascend_rows

    uses = (RowStreams.OPTIMAL_FIT, RowStreams.OPTIMAL_STOP)
    rate = torch.full((x.shape[0], 1), float(lr), dtype=q.mean.dtype, device=q.mean.device)
    if isinstance(q, DiagonalNormal):
        (mu, logvar), taken = ascend_rows(
            model, x, [q.mu, q.logvar.expand_as(q.mu)], DiagonalNormal, steps, [rate, rate], GAP_GRAD_SAMPLES, seed, stop, uses
        )  # fmt: skip
        return DiagonalNormal(mu, logvar), taken
    zero = torch.zeros_like(q.mean)  # (n, D)
    # q.shifted holds the batch's x: rows that stop are frozen, not taken out.
    offsets, taken = ascend_rows(model, x, [zero, zero.clone()], q.shifted, steps, [rate, rate], GAP_GRAD_SAMPLES, seed, stop, uses, compact=False)
    return q.shifted(*offsets), taken


@torch.no_grad()
def gaps_per_point(
    model, x, k: int = 1000, steps: int = GAP_STEPS, lr: float | None = None, n_samples: int = GAP_SAMPLES,
    batch_size: int = 256, seed: int = 0, tol: float = GAP_TOL, check_every: int = GAP_CHECK_EVERY,
    idx=None,
) -> dict[str, np.ndarray]:
    """The decomposition of Cremer, Li & Duvenaud (2018), "Inference Suboptimality in VAEs":

        log p(x) − ELBO(q) = [log p(x) − ELBO(q*)] + [ELBO(q*) − ELBO(q)]
                              approximation gap       amortization gap

    q is the model's own q(z|x) for new x (the encoder's, refined or not; or the method's
    test-time optimum), q* the best diagonal Gaussian for x with θ fixed, found by Adam from q
    until its ELBO stops improving (``_optimal_q``; ``steps`` at most, each row on its own). For
    several latent groups q* keeps q's structure ∏_j q(z_j | Pa(z_j), x), each group's Gaussian
    moved by free per-row offsets of its (μ_j, log σ²_j): the family
    holds q itself, and for one group it is the diagonal Gaussians again. log p(x) is the
    K-sample importance-weighted estimate with q* as the proposal (the better of the two,
    hence the lower-variance estimate), and ELBO(q*) the mean of the same K log-weights
    (``objectives.iwae_and_elbo``), so that log p(x) − ELBO(q*) is never negative on a row by
    chance; ELBO(q) averages q's K log-weights under the same noise ε (common random numbers:
    z = μ + σ·ε for either q), so the amortization gap is not swamped by Monte Carlo noise; it
    is reported as it comes, never clipped at 0. ``n_samples`` draws decide when q* stops. Besides
    the three per-point arrays, ``steps`` gives the Adam steps q* took for each row. Every row's
    numbers are its own: the same scored alone or in any batch.

    ``idx``, given when x are training rows, holds their indices in the training set: then a
    per-point method's q is the q_i it learned for each row (``evaluation_posterior(x, idx)``),
    so that its amortization gap on training data is that of its table, not of a new fit.

    A linear-Gaussian model (``vaekit.exact``) also gets ``log_px_exact`` and ``elbo_exact``,
    its evidence and q's ELBO in closed form: the yardstick of the estimates beside them.
    """
    from .distributions import DiagonalNormal, RowStreams
    from .inference.optimize import RowStop
    from .latents import Structured

    lr = model.config.local_lr if lr is None else lr
    stop = RowStop(every=check_every, tol=tol, decays=GAP_LR_DECAYS, samples=n_samples)
    exact = linear_gaussian_or_none(model)
    out = PerRow(len(x), ("log_px", "elbo", "elbo_optimal", "steps") + (("log_px_exact", "elbo_exact") if exact else ()))
    with eval_mode(model):
        for xb, rows in _with_rows(batches(model, x, batch_size), model, x, idx):
            q = model.evaluation_posterior(xb, rows)
            if not isinstance(q, (DiagonalNormal, Structured)):
                from .errors import ConfigError

                raise ConfigError(f"gaps compare q with the best q* of its family; this model's q is a {type(q).__name__}")
            q_star, taken = _optimal_q(model, xb, q, steps, lr, seed, stop)
            # Each row's streams of its own (RowStreams): its numbers do not depend on the rows
            # batched with it. The estimates' draws and q*'s gradient and stopping draws (in
            # _optimal_q) are separate streams, so the reported numbers never reuse draws the
            # optimisation saw; q and q* read equal streams (common random numbers).
            log_px, elbo_optimal = iwae_and_elbo(model, xb, k, q=q_star, generator=RowStreams(xb, seed))
            _, elbo = iwae_and_elbo(model, xb, k, q=q, generator=RowStreams(xb, seed))
            closed = {} if exact is None else {"log_px_exact": exact.log_px(xb), "elbo_exact": exact.elbo(q, xb)}
            out.put(elbo=elbo, elbo_optimal=elbo_optimal, log_px=log_px, steps=taken, **closed)
    result = out.result()
    result["steps"] = result["steps"].astype(np.int64)
    return result


def linear_gaussian_or_none(model):
    """The model's closed form (``vaekit.exact.LinearGaussian``) where it has one, else None."""
    from .errors import ConfigError
    from .exact import LinearGaussian

    try:
        return LinearGaussian.of(model)
    except ConfigError:
        return None


def _standard_error(v: np.ndarray) -> float:
    """sd(v)/√n across points (NaN for one point): the error of mean(v) as an estimate of its
    expectation over the data and the Monte Carlo draws."""
    return float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan


def gaps(model, x, k: int = 1000, steps: int = GAP_STEPS, seed: int = 0, **kw) -> dict[str, Any]:
    """Averages of ``gaps_per_point``: log_likelihood, elbo, elbo_optimal, approximation_gap,
    amortization_gap (nats) and the standard errors of the two gaps across points
    (approximation_gap_se, amortization_gap_se), with n, k, steps (the most allowed) and
    steps_taken (the most any row used); for a linear-Gaussian model also exact_log_likelihood,
    exact_elbo and exact_gap, in closed form. ``kw``: gaps_per_point's lr, n_samples,
    batch_size, tol, check_every, idx."""
    k, steps = check_positive_int("k", k, maximum=K_MAX), check_positive_int("steps", steps, maximum=STEPS_MAX)
    x = model_rows(model, x)
    p = gaps_per_point(model, x, k=k, steps=steps, seed=seed, **kw)
    refuse_log_px_overflow(model, p["log_px"], x, idx=kw.get("idx"))
    # A gap is a difference: a −inf left in any of its terms (a density below the float range,
    # which score and evaluate report as −inf) would make it NaN.
    for name, what in (("log_px", "log p(x)"), ("elbo", "ELBO"), ("elbo_optimal", "ELBO of the optimised q")):
        refuse_overflow(p[name], what, x, low_inf=True)
        low = np.flatnonzero(np.isneginf(p[name]))
        if low.size:
            r = int(low[0])
            raise DataError(
                f"row {r + 1}: its {what} is -inf, below the range of the model's floats (its values reach "
                f"{_largest(x, r):.3g} in the model's units), and a gap between -inf terms is not a number; "
                f"leave such rows out ('vaekit score' gives them -inf)"
            )
    ll, e, e_opt = (float(p[name].mean()) for name in ("log_px", "elbo", "elbo_optimal"))
    exact = {}
    if "log_px_exact" in p:
        exact_ll, exact_elbo = float(p["log_px_exact"].mean()), float(p["elbo_exact"].mean())
        exact = {"exact_log_likelihood": exact_ll, "exact_elbo": exact_elbo, "exact_gap": exact_ll - exact_elbo}
    return {
        "log_likelihood": ll,
        "elbo": e,
        "elbo_optimal": e_opt,
        "approximation_gap": ll - e_opt,
        "amortization_gap": e_opt - e,
        "approximation_gap_se": _standard_error(p["log_px"] - p["elbo_optimal"]),
        "amortization_gap_se": _standard_error(p["elbo_optimal"] - p["elbo"]),
        "n": int(len(p["log_px"])),
        "k": int(k),
        "steps": int(steps),
        "steps_taken": int(p["steps"].max()),
        **exact,
        "per_point": p,
    }
