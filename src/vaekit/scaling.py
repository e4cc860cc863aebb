"""The map from the user's values to the values a model sees, stored with the model.

A model reads x' = (x − shift) / scale, per feature, where the config holds ``input_shift``
and ``input_scale`` (config.json): a named dataset's own scaling (digits: pixels / 16) or,
for the Gaussian likelihood, standardisation by the training split's mean and standard
deviation (``standardize``). Every input is mapped on its way in, samples and
reconstructions are mapped back, x = shift + scale · x', and every log-density is of the
user's values, by the change of variables

    log p(x) = log p'((x − shift) / scale) − Σ_j log scale_j,

(for a density; a probability mass, the Bernoulli's, is unchanged by the one-to-one map) so that two models of the same values are compared in the same units whatever their scaling.
No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError, DataError

# Values mapped per block by ``Scaling.to_model``.
MAP_BLOCK = 1 << 18


@dataclass(frozen=True)
class Scaling:
    """x' = (x − shift) / scale per feature; ``shift`` and ``scale`` are float64 (D,) or (1,)
    (one value for every feature)."""

    shift: np.ndarray
    scale: np.ndarray

    @classmethod
    def of(cls, model_config: Any) -> "Scaling | None":
        """The input map a ModelConfig stores, or None (the identity) when it stores none."""
        if getattr(model_config, "input_scale", None) is None:
            return None
        shift = model_config.input_shift if model_config.input_shift is not None else (0.0,)
        return cls(np.asarray(shift, dtype=np.float64), np.asarray(model_config.input_scale, dtype=np.float64))

    @classmethod
    def uniform(cls, shift: float, scale: float) -> "Scaling":
        """One (shift, scale) for every feature (a named dataset's)."""
        return cls(np.array([shift], dtype=np.float64), np.array([scale], dtype=np.float64))

    @classmethod
    def standardizing(cls, x: Any) -> "Scaling":
        """Per-feature mean and standard deviation (population, float64) of the rows of x, an
        array or ``MappedRows`` read block by block. A feature constant in x keeps scale 1
        (it is centred only), as scikit-learn's StandardScaler does: its spread is unknown,
        and dividing by a floor would add −log(floor) nats per such feature to every density.
        So does a feature whose spread is float64's rounding of a constant (``constant``)."""
        from .data.checks import constant

        mean, m2, n = _moments(x)
        var = m2 / max(n, 1)
        flat, std = constant(mean, var, n), np.sqrt(var)
        # A spread below about 1e-154 squares to below float64's smallest normal number, so its
        # variance reads 0 and the feature would pass for a constant. Such features, where they
        # lie near 0 (elsewhere float64 cannot tell them from a constant anyway), are measured
        # again at an exact power-of-two scale.
        tiny = flat & (var < np.finfo(np.float64).tiny) & (np.abs(mean) < TINY_MEAN)
        if tiny.any():
            columns = np.flatnonzero(tiny)
            mean_s, m2_s, _ = _moments(x, columns, TINY_SCALE)
            var_s = m2_s / max(n, 1)
            flat[columns] = constant(mean_s, var_s, n)
            std[columns] = np.sqrt(var_s) / TINY_SCALE
        return cls(mean, np.where(flat, 1.0, std))

    def to_model(self, x: np.ndarray, dtype: Any = np.float32, what: str | None = None) -> np.ndarray:
        """(x − shift) / scale as ``dtype`` (the model's), the arithmetic in float64: 1e5 ± 1e-3
        given in float64 keeps its digits, which a float32 cast before the map would round away.
        DataError where a value lands beyond ``dtype``'s range (1e28 for a model of data at
        1e-12 scale): the model would read an infinity nobody wrote."""
        x = np.asarray(x)
        out = np.empty(x.shape, dtype=dtype)
        top = np.finfo(dtype).max
        # Row blocks keep the float64 temporaries to a few MB whatever the size of x (a whole-array
        # map held about four copies of a float32 input at once).
        rows = max(1, MAP_BLOCK // max(1, int(np.prod(x.shape[1:], dtype=np.int64))))
        for start in range(0, max(len(x), 1), rows):
            block = x[start : start + rows]
            mapped = (block.astype(np.float64) - self.shift) / self.scale
            beyond = np.abs(mapped) > top
            if beyond.any():
                r, c = np.unravel_index(int(np.argmax(beyond)), mapped.shape)
                raise DataError(
                    f"{what + ': ' if what else ''}a value of column {c + 1} ({block[r, c]:g}) lies at {mapped[r, c]:.3g} in the model's units "
                    f"({self.describe()}), beyond {np.dtype(dtype).name}'s range; it is far outside the data the model was trained on"
                )
            out[start : start + rows] = mapped
        return out

    def to_user(self, x: np.ndarray) -> np.ndarray:
        """shift + scale · x, in x's dtype, or in float64 where float32 would round the result
        by more than ``RESOLUTION`` of a feature's scale (1e5 ± 1e-3 data: the rule by which
        ``check_resolution`` refuses such values unmapped)."""
        x = np.asarray(x)
        out = self.shift + self.scale * x.astype(np.float64)
        return out if x.dtype.itemsize < 8 and self.float32_rounds() else out.astype(x.dtype)

    def float32_rounds(self) -> bool:
        """Whether float32 rounds some feature's values in the user's units by more than
        ``RESOLUTION`` of its scale, where nearly all of them lie (shift ± 4 scale)."""
        from .data.checks import RESOLUTION

        top = np.abs(self.shift) + 4 * self.scale
        if np.any(top > np.finfo(np.float32).max):  # float32 cannot hold them at all
            return True
        return bool(np.any(np.spacing(top.astype(np.float32)) / 2 > RESOLUTION * self.scale))

    def log_det(self, dim: int) -> float:
        """log |det ∂x'/∂x| = −Σ_j log scale_j over ``dim`` features: what a log-density of x'
        gains to become one of x."""
        return -float(np.broadcast_to(np.log(self.scale), (dim,)).sum())

    def user_value(self, value: float, column: int) -> float:
        """The user's value of the model's ``value`` in feature ``column`` (0-based)."""
        # Each of shift and scale has one entry for every feature, or one for all.
        shift = self.shift[column if self.shift.shape[0] > 1 else 0]
        scale = self.scale[column if self.scale.shape[0] > 1 else 0]
        return float(shift + scale * value)

    def describe(self) -> str:
        """'x / 16', '(x - 1.5) / 2' for one value of every feature; '(x - mean) / std per feature' else."""
        if self.scale.shape[0] == 1 and self.shift.shape[0] == 1:
            s, m = float(self.scale[0]), float(self.shift[0])
            return f"x / {s:g}" if m == 0 else f"(x - {m:g}) / {s:g}"
        return "(x - mean) / std per feature"


# Features that vary by less than about 1e-154 around less than TINY_MEAN are measured at TINY_SCALE
# = 2^600 (about 4e180; a power of two scales exactly), where their values stay below 1e150.
TINY_SCALE = 2.0**600
TINY_MEAN = 1e150 / TINY_SCALE


def _moments(x: Any, columns: np.ndarray | None = None, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, int]:
    """(mean, Σ (x − mean)², n) per column (of ``columns`` only, with the values times
    ``scale``) in float64, block by block (Chan et al.'s pairwise update: no E[x²] − E[x]²
    cancellation, which an offset of 1e3 would make catastrophic)."""
    from .data import MappedRows

    blocks = x.exact().chunks() if isinstance(x, MappedRows) else (np.asarray(x),)
    mean = m2 = None
    n = 0
    for block in blocks:
        b = np.asarray(block, dtype=np.float64)
        if columns is not None:
            b = b[:, columns] * scale
        if b.shape[0] == 0:
            continue
        bm = b.mean(0)
        bm2 = ((b - bm) ** 2).sum(0)
        if mean is None:
            mean, m2, n = bm, bm2, b.shape[0]
            continue
        total = n + b.shape[0]
        delta = bm - mean
        mean = mean + delta * (b.shape[0] / total)
        m2 = m2 + bm2 + delta**2 * (n * b.shape[0] / total)
        n = total
    return mean, m2, n


def choose_standardize(x_seen: Any, likelihood: str, standardize: str) -> str:
    """``on`` or ``off`` for the rows ``x_seen`` (the user's values, through a named dataset's
    scaling if there is one; an array, ``MappedRows`` or a tuple of them, a data set's splits):
    ``auto`` standardises when the likelihood is Gaussian and those values are not all in [0, 1]. ConfigError for ``on`` with another likelihood,
    whose support standardised values would leave."""
    from .data import summarize

    if standardize not in ("auto", "on", "off"):
        raise ConfigError(f"standardize must be one of auto, on, off, got {standardize!r}")
    if standardize == "auto":
        values = summarize(x_seen)
        standardize = "on" if likelihood == "gaussian" and not (values.min >= 0 and values.max <= 1) else "off"
    if standardize == "on" and likelihood != "gaussian":
        raise ConfigError(
            f"standardize must be off with the {likelihood} likelihood, whose support standardised values leave; "
            "standardisation is for the gaussian likelihood"
        )
    return standardize


def apply(scaling: "Scaling | None", x: Any, dtype: Any = np.float32, what: str = "data", rows: Any = None, resolve: bool = True) -> Any:
    """x (checked by ``check_data``) in the model's units and ``dtype``: an array mapped now,
    ``MappedRows`` mapped as their blocks are read. With no map, a float32 cast of float64
    values is checked for range and, with ``resolve``, rounding (``narrow``; ``what`` names x,
    ``rows`` its rows' numbers for the messages, as ``check_data``'s)."""
    from .data import MappedRows
    from .data.checks import narrow

    if isinstance(x, MappedRows):
        if scaling is None:  # as they are (perhaps mapped already), read as dtype
            return x if x.dtype == np.dtype(dtype) else MappedRows(x.array, x.index, x.scaling, dtype)
        return x.mapped(scaling, dtype)
    if scaling is None:
        return narrow(np.asarray(x), dtype, what, rows, resolve=resolve)
    return scaling.to_model(x, dtype, what)


def config_fields(scaling: "Scaling | None") -> dict[str, Any]:
    """The ModelConfig fields that store ``scaling``: input_shift and input_scale, or None."""
    if scaling is None:
        return {"input_shift": None, "input_scale": None}
    return {"input_shift": tuple(float(v) for v in scaling.shift), "input_scale": tuple(float(v) for v in scaling.scale)}


def model_rows(model_config: Any, x: Any, named: tuple[float, float] | None = None, dtype: Any = np.float32, what: str = "data", rows: Any = None, resolve: bool = True) -> Any:
    """Rows of the user's values as the model of ``model_config`` sees them: through its input
    map, or, for a model without one, through a named dataset's scaling ``named`` (shift,
    scale; a model written before models stored their map saw named datasets scaled by the
    loader). ``dtype``, ``what``, ``rows`` and ``resolve`` as ``apply``'s. Rows of another width than the model's
    are refused first: a per-feature map would not broadcast over them."""
    width = np.shape(x)[1] if len(np.shape(x)) == 2 else None
    if width is not None and width != model_config.input_dim:
        from .data.checks import wrong_width

        raise wrong_width(what, width, model_config.input_dim)
    scaling = Scaling.of(model_config)
    if scaling is None and named is not None:
        scaling = Scaling.uniform(*named)
    return apply(scaling, x, dtype, what, rows, resolve)


def named_values(dataset: Any) -> Any:
    """A Dataset whose splits hold the values its models see (its named scaling applied, e.g.
    digits / 16) and which has no scaling left, for code that trains models without a map."""
    import dataclasses

    if dataset.scaling is None:
        return dataset
    scaling = Scaling.uniform(*dataset.scaling)
    return dataclasses.replace(
        dataset, scaling=None, **{s: apply(scaling, getattr(dataset, s), what=f"{dataset.name} ({s} split)") for s in ("train", "valid", "test")}
    )
