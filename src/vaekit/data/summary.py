"""What the values of a data set are, read block by block: the summary that choosing a
likelihood needs, for an array or for ``MappedRows`` larger than memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .containers import MappedRows, kept_dtype


@dataclass(frozen=True)
class ValueSummary:
    """``binary``: every value is 0 or 1; ``min``, ``max``: the extremes (NaN when some value is
    NaN; +inf and -inf for no values)."""

    binary: bool
    min: float
    max: float


def summarize(x: Any) -> ValueSummary:
    """The ``ValueSummary`` of an array, of ``MappedRows`` read ``CHUNK_ROWS`` rows at a time
    in file order (the order does not change the summary, and the page cache serves it best),
    at the precision of the rows in memory, or of a tuple of those (a data set's splits)."""
    binary, lo, hi = True, np.inf, -np.inf
    for block in _blocks(x):
        if block.size == 0:
            continue
        # np.minimum, not min(): a NaN must stay NaN, and then no range check passes.
        binary = binary and bool(np.isin(block, (0, 1)).all())
        lo, hi = np.minimum(lo, block.min()), np.maximum(hi, block.max())
    return ValueSummary(binary=binary, min=float(lo), max=float(hi))


def _blocks(x: Any):
    if isinstance(x, tuple):
        for part in x:
            yield from _blocks(part)
    elif isinstance(x, MappedRows):
        # Values not yet mapped are read as precisely as the rows in memory are (float64 for
        # float64 data: 1 + 2e-16 is not in [0, 1]), so that streaming chooses as they do.
        dtype = x.dtype if x.scaling is not None else kept_dtype(x.array.dtype)
        with np.errstate(over="ignore"):  # a map's output beyond float32's range reads as ±inf, its float32 extreme
            yield from MappedRows(x.array, np.sort(x.index), x.scaling, dtype).chunks()
    else:
        yield np.asarray(x)
