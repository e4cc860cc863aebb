"""The one input check shared by the Python API and the CLI (scikit-learn's ``check_array``
habit): every message says what was expected and what was found, and names the culprit."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import DataError, VaekitWarning, count
from . import containers
from .containers import MappedRows, kept_dtype, wide


def wrong_width(what: str, width: int, input_dim: int) -> DataError:
    """The error of rows of another width than the model's."""
    return DataError(f"{what} has {width} feature{'' if width == 1 else 's'} per row, but the model was trained on {input_dim}")


def check_data(
    x: Any,
    *,
    what: str = "data",
    min_rows: int = 1,
    input_dim: int | None = None,
    likelihood: Any = None,
    scaling: Any = None,
    rows: np.ndarray | None = None,
    dtype: Any = np.float32,
    resolve: bool = True,
) -> np.ndarray:
    """Validate ``x`` and return it as a C-contiguous ``(n, D)`` array of ``dtype`` (a view
    when it already is one, else a copy).

    ``dtype=None`` keeps the precision of values that a model's input map has yet to see:
    float64 for float64 data and integers wider than 16 bits, float32 for the rest (which it
    holds exactly). The map is computed in float64 (``vaekit.scaling``), so 1e5 ± 1e-3,
    standardised first and cast after, reaches a float32 model with all its digits.

    Checks, in order: numeric dtype; 2-D; at least ``min_rows`` rows; at least one column;
    all values finite; ``D == input_dim`` when given; ``likelihood.check(x, what, scaling)``
    (the likelihood's support; ``scaling``, the model's input map that made x, for the
    message) when a likelihood is given. ``rows``: the 1-based number in its file of each row
    of x, for the messages (default 1, 2, ...). Accepts lists, numpy arrays and torch
    tensors. Raises ``DataError`` naming ``what``, the expected and the found. A
    ``MappedRows`` is checked block by block and returned as it is (never read whole).
    """
    if isinstance(x, MappedRows):
        return _check_mapped(x, what, min_rows, input_dim, likelihood, scaling, dtype, resolve)
    x = _as_numpy(x, what)
    if x.dtype.kind == "c":
        raise DataError(f"{what}: Complex data not supported (dtype {x.dtype}); expected real numbers")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{what} has dtype {x.dtype}; expected numbers (bool, int or float)")
    if x.ndim != 2:
        raise DataError(f"{what}: {not_2d(x)}")
    _check_rows(what, x.shape, min_rows)
    if x.shape[1] < 1:
        raise DataError(f"{what} has 0 feature(s) (shape={x.shape}) while a minimum of 1 is required.")
    if x.dtype.kind == "f":
        check_finite(x, what, rows)
    if x.dtype.kind == "f" and x.dtype.itemsize > 4:
        # The input map computes in float64, and its variance squares the values: beyond
        # VALUE_MAX the sums overflow to an infinity nobody wrote. (A float32 model's own
        # limit, float32's range, is checked where its values are cast: ``narrow``, or the
        # map's output in ``Scaling.to_model``; standardised, 1e50 ± 1e49 fits.)
        check_range(x, VALUE_MAX, f"{what} has values beyond ±{VALUE_MAX:g}, where float64 arithmetic overflows", "rescale the feature first", rows)
    if x.dtype.kind in "iu" and x.dtype.itemsize > 4:
        # Integers beyond 2^53 lose their last digits in float64, the widest the model and its
        # input map compute in: 2^63 + 0..999 would become one value without a word.
        exact = np.int64(2**53)
        bad = (x > np.uint64(exact)) if x.dtype.kind == "u" else ((x > exact) | (x < -exact))
        if bad.any():
            r, c = np.unravel_index(int(np.flatnonzero(bad)[0]), x.shape)
            raise DataError(
                f"{what} has integers beyond ±2^53, which float64 rounds (first at {row_name(r, rows)}, column {c + 1}: "
                f"{x[r, c]}); subtract an offset, e.g. the column's smallest value, first"
            )
    if input_dim is not None and x.shape[1] != input_dim:
        raise wrong_width(what, x.shape[1], input_dim)
    out = narrow(x, kept_dtype(x.dtype) if dtype is None else np.dtype(dtype), what, rows, resolve=resolve)
    if likelihood is not None:
        likelihood.check(out, what, scaling, rows=rows)
    return out


def narrow(x: np.ndarray, dtype: Any, what: str, rows: Any = None, resolution: "Resolution | None" = None, resolve: bool = True) -> np.ndarray:
    """``x`` (numbers, finite) as a C-contiguous array of ``dtype``; a float32 cast of wider
    values first passes the range check (float32 would read an infinity nobody wrote) and,
    with ``resolve``, ``check_resolution``, or, for a block of a split, adds to the split's
    ``resolution``. (Rows a trained model reads are not judged by their own spread: that of
    the rows beside them would decide whether a row is refused.)"""
    dtype = np.dtype(dtype)
    if dtype.itemsize < 8 and x.dtype.kind == "f" and x.dtype.itemsize > 4:
        top = np.finfo(np.float32).max
        check_range(x, top, f"{what} has values too large for a float32 model", "standardise the feature or use a float64 model (--dtype float64)", rows)
    out = np.ascontiguousarray(x, dtype=dtype)
    if resolve and dtype.itemsize < 8 and wide(x.dtype):
        if resolution is None:
            check_resolution(x, out, what)
        else:
            resolution.add(x, out)
    return out


# The largest magnitude of a float64 value read: its square, summed over rows for the input
# map's variance, stays finite.
VALUE_MAX = 1e150


def check_range(x: np.ndarray, top: float, problem: str, advice: str, rows: Any = None) -> None:
    """DataError ``problem (first at row r, column c: value); expected |x| < top: advice``
    where some value of the 2-D ``x`` exceeds ``top`` in magnitude."""
    bad = np.abs(x) > top
    if bad.any():
        r, c = np.unravel_index(int(np.flatnonzero(bad)[0]), x.shape)
        raise DataError(f"{problem} (first at {row_name(r, rows)}, column {c + 1}: {x[r, c]:g}); expected |x| < {top:g}: {advice}")


# A feature whose float32 rounding error exceeds this share of its spread is refused.
RESOLUTION = 0.01


def constant(mean: np.ndarray, var: np.ndarray, n: int) -> np.ndarray:
    """Per feature, whether a variance is float64's rounding of a constant's: 0.1 + 0.2 beside
    0.3 varies by 3e-17, which is no spread to standardise by or to resolve (scikit-learn's
    bound for StandardScaler: var <= n·eps·var + (n·eps·mean)²)."""
    eps = np.finfo(np.float64).eps
    return var <= n * eps * var + (n * eps * np.asarray(mean)) ** 2


def check_resolution(x: np.ndarray, x32: np.ndarray, what: str) -> None:
    """float32 keeps 24 bits: a feature of float64 (or large integers) that varies little
    around a large value, 1e5 ± 1e-3 say, would reach a float32 model without an input map
    rounded to nearly one value. Refused when some feature's largest rounding
    error is more than ``RESOLUTION`` of its standard deviation; read block by block."""
    resolution = Resolution()
    resolution.add(x, x32)
    resolution.check(what)


class Resolution:
    """``check_resolution`` of a whole split, its blocks ``add``-ed one by one (a streamed
    split): the spread is the split's, not a block's, whose few rows may hardly vary."""

    def __init__(self):
        self.n = 0
        self.shift = self.err = self.s1 = self.s2 = None

    def add(self, x: np.ndarray, x32: np.ndarray) -> None:
        n, d = x.shape
        if n == 0:
            return
        if self.shift is None:
            self.shift = x[0].astype(np.float64)  # sums about one row: no E[x²] − E[x]² cancellation at 1e5
            self.err, self.s1, self.s2 = np.zeros(d), np.zeros(d), np.zeros(d)
        step = max(1, (1 << 20) // d)
        for start in range(0, n, step):
            b = x[start : start + step].astype(np.float64)
            self.err = np.maximum(self.err, np.abs(b - x32[start : start + step]).max(axis=0))
            b -= self.shift
            self.s1 += b.sum(axis=0)
            self.s2 += (b * b).sum(axis=0)
        self.n += n

    def check(self, what: str) -> None:
        n = self.n
        if n < 2:
            return
        var = np.maximum(self.s2 / n - (self.s1 / n) ** 2, 0.0)
        std = np.sqrt(var)
        mean = self.shift + self.s1 / n
        bad = np.flatnonzero(~constant(mean, var, n) & (self.err > RESOLUTION * std))
        if bad.size:
            j = int(bad[0])
            raise DataError(
                f"{what}: column {j + 1} varies by {std[j]:.3g} (standard deviation) around {mean[j]:.7g}, "
                f"finer than float32 holds at that size (rounding by up to {self.err[j]:.3g}); subtract an offset, e.g. its mean, or standardise it, first"
            )


def _check_rows(what: str, shape: tuple, min_rows: int) -> None:
    if shape[0] < min_rows:
        raise DataError(f"{what} has {count(shape[0], 'row')} (shape={shape}); at least {min_rows} {'is' if min_rows == 1 else 'are'} needed")


def _check_mapped(x: MappedRows, what: str, min_rows: int, input_dim: int | None, likelihood: Any, scaling: Any, dtype: Any, resolve: bool = True) -> MappedRows:
    """The checks of ``check_data`` on a memory-mapped split, ``CHUNK_ROWS`` file rows at a
    time, on the values as stored (before float32 and the model's input map, which would turn
    1e300 into an infinity nobody wrote); a message names the row by its number in the file."""
    _check_rows(what, x.shape, min_rows)
    if x.array.dtype.kind not in "biuf":
        raise DataError(f"{what} has dtype {x.array.dtype}; expected numbers (bool, int or float)")
    if x.shape[1] < 1:
        raise DataError(f"{what} has 0 feature(s) (shape={x.shape}) while a minimum of 1 is required.")
    if input_dim is not None and x.shape[1] != input_dim:
        raise wrong_width(what, x.shape[1], input_dim)
    size = containers.CHUNK_ROWS
    # Rows read through an input map keep their precision until it (see check_data), and so
    # do rows whose map is yet to come (dtype None); others are read as x.dtype, and whether
    # it resolves them is judged on the whole split's spread.
    keep = dtype is None or x.scaling is not None
    resolution = Resolution() if resolve and not keep else None
    for start in range(0, len(x), size):
        file_rows = np.sort(x.index[start : start + size])  # ascending: the page cache's order
        raw = np.asarray(x.array[file_rows])
        values = check_data(raw, what=what, rows=file_rows + 1, dtype=None)
        if not keep:
            values = narrow(values, x.dtype, what, file_rows + 1, resolution, resolve)
        if likelihood is not None:
            likelihood.check(values if x.scaling is None else x.scaling.to_model(values, x.dtype), what, scaling, rows=file_rows + 1)
    if resolution is not None:
        resolution.check(what)
    return x


def _as_numpy(x: Any, what: str) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "toarray") and not hasattr(x, "__array__"):
        raise DataError(f"{what} is a sparse matrix; expected a dense array (pass x.toarray())")
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        # A torch tensor: leave the graph and the device without importing torch here.
        if getattr(x, "is_meta", False):
            raise DataError(f"{what} is a meta tensor: it holds no values")
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            x = x.float()
    try:
        return np.asarray(x)
    except (ValueError, TypeError, RuntimeError) as e:
        raise DataError(
            f"{what} could not be converted to an array ({e}); expected a 2-D table of numbers"
        ) from None


def not_2d(x: np.ndarray) -> str:
    if x.ndim == 0:
        return "expected a 2-D array (rows = datapoints), got a scalar"
    if x.ndim == 1:
        return (
            f"expected a 2-D array (rows = datapoints), got 1-D array of shape {x.shape}; "
            "Reshape your data with x.reshape(-1, 1) for one feature or x.reshape(1, -1) for one datapoint"
        )
    return (
        f"expected a 2-D array (rows = datapoints), got {x.ndim}-D array of shape {x.shape}; "
        "flatten with x.reshape(len(x), -1)"
    )


def row_name(r: int, rows: Any = None) -> str:
    """How a message names row ``r`` (0-based) of a block: "row r+1", or by its 1-based number
    in the file, ``rows[r]``, when the block holds rows of a file not in their file order."""
    return f"row {r + 1}" if rows is None else f"row {int(rows[r])}"


def check_finite(x: np.ndarray, what: str, rows: Any = None) -> None:
    finite = np.isfinite(x)
    if finite.all():
        return
    r, c = np.unravel_index(int(np.flatnonzero(~finite)[0]), x.shape)
    kind = "NaN" if np.isnan(x[r, c]) else "infinity"
    raise DataError(f"{what} contains {kind} (first at {row_name(r, rows)}, column {c + 1}); expected finite numbers")


# Channel counts of the pictures people keep: grey, RGB, RGBA.
CHANNELS = (1, 3, 4)


def warn_channels_last(what: str, shape) -> None:
    """4-D images are read as (n, C, H, W), PyTorch's layout. An array whose last axis looks
    like the channels (1, 3 or 4 of them, fewer than the pixels of either side) and whose second
    does not is most likely (n, H, W, C), numpy's and
    TensorFlow's, and would train as H channels of W x C images: warned, not refused, since
    it may be what it says."""
    shape = tuple(int(d) for d in shape)
    # Channels last: few of them, fewer than pixels along either side.
    if len(shape) == 3 and shape[-1] in CHANNELS and shape[0] not in CHANNELS and shape[-1] < min(shape[:2]):
        import warnings

        h, w, c = shape
        warnings.warn(
            f"{what} holds images of shape ({h}, {w}, {c}), read as {h} channels of {w}x{c} pixels (n, C, H, W); "
            f"if the last axis holds the channels, move it first: numpy.moveaxis(x, -1, 1)",
            VaekitWarning,
            stacklevel=2,  # where the images are read, so that a file read twice warns once
        )


def check_image_layout(what: str, found, trained, input_dim: int | None = None) -> None:
    """Images whose pixel count matches the model's but whose layout does not, channels-last
    (H, W, C) rows for a (C, H, W) model say, flatten to rows of the right width in the wrong
    order: refused rather than read as noise. Axes of size 1 do not count ((1, 28, 28) is
    (28, 28)). Images for a model of table rows (``trained`` None) have no order to check
    against, so they are refused too, unless they are rows already ((n, D, 1) say); where
    their values per row are not the model's ``input_dim``, that is said first, since no
    flattening mends it."""
    squeeze = lambda shape: tuple(int(d) for d in shape if int(d) != 1)  # noqa: E731
    if found is not None and trained is None and len(squeeze(found)) > 1:
        show = "(" + ", ".join(str(int(d)) for d in found) + ")"
        if input_dim is not None and math.prod(found) != input_dim:
            raise DataError(f"{what} holds arrays of shape {show} per row ({math.prod(found)} values), but the model was trained on "
                            f"table rows of {input_dim} feature{'' if input_dim == 1 else 's'}")  # fmt: skip
        raise DataError(f"{what} holds arrays of shape {show} per row, but the model was trained on table rows; "
                        "flatten them to rows in the training columns' order (x.reshape(len(x), -1))")
    if found is None or trained is None:
        return
    if squeeze(found) != squeeze(trained):
        show = lambda shape: "(" + ", ".join(str(int(d)) for d in shape) + ")"  # noqa: E731
        # Only the same pixels in another order can be put right by moving axes.
        fix = "reorder their axes (numpy.moveaxis) or flatten them to rows" if math.prod(found) == math.prod(trained) else "give it images of that shape"
        raise DataError(f"{what} holds images of shape {show(found)}, but the model was trained on images of shape {show(trained)}; {fix}")
