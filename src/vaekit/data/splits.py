"""Splitting rows into train/valid/test by fractions, with a seeded permutation."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from ..errors import DataError, count


class TooFewRows(DataError):
    """Too few rows for the split fractions: a verb that reads one split says how to read all."""


def _rows_of(n: int, fraction: float) -> int:
    """n·fraction rounded half up, of the fraction as written: the float product of 100 and
    0.145 is 14.4999…, the decimal one 14.5, which gives 15. (Not round(): banker's rounding
    would make 2.5 -> 2 but 3.5 -> 4.)"""
    return math.floor(n * Fraction(repr(float(fraction))) + Fraction(1, 2))


def split_sizes(n: int, valid_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(n_train, n_valid, n_test): n_valid = round(n·valid_fraction), n_test =
    round(n·test_fraction) (half up, of the fractions' shortest decimals), each at least 1
    when its fraction is > 0 and n >= 3."""
    n_valid, n_test = _rows_of(n, valid_fraction), _rows_of(n, test_fraction)
    if n >= 3:
        if valid_fraction > 0:
            n_valid = max(n_valid, 1)
        if test_fraction > 0:
            n_test = max(n_test, 1)
    return n - n_valid - n_test, n_valid, n_test


def split_ok(n: int, vf: float, tf: float) -> bool:
    """Whether n rows leave train >= 2 rows, and valid and test >= 1 row when their fraction is > 0."""
    n_train, n_valid, n_test = split_sizes(n, vf, tf)
    return n_train >= 2 and (vf == 0 or n_valid >= 1) and (tf == 0 or n_test >= 1)


def split_rows(n: int, vf: float, tf: float, seed: int) -> dict[str, np.ndarray]:
    """Row indices of each split: rows permuted by ``np.random.default_rng(seed).permutation(n)``;
    the first n_train go to train, the next n_valid to valid, the last n_test to test."""
    n_train, n_valid, _ = split_sizes(n, vf, tf)
    perm = np.random.default_rng(seed).permutation(n)
    return {"train": perm[:n_train], "valid": perm[n_train:n_train + n_valid], "test": perm[n_train + n_valid:]}


def split_by_fractions(
    x: np.ndarray, y: np.ndarray | None, what: str, vf: float, tf: float, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
    """``(x, y, rows)`` of each split, as ``split_rows`` says (``split_sizes`` for the sizes;
    ``rows``: the split's row numbers in x); DataError naming ``what`` and the rows needed when
    there are too few."""
    n = len(x)
    if not split_ok(n, vf, tf):
        need = next(m for m in range(max(n, 2), 10**9) if split_ok(m, vf, tf))
        raise TooFewRows(
            f"{what}: dataset has {count(n, 'row')}; at least {need} needed for valid_fraction={vf:g} and "
            f"test_fraction={tf:g} (train >= 2 rows, valid and test >= 1 row each when their fraction is > 0)"
        )
    idx = split_rows(n, vf, tf, seed)
    return {s: (np.ascontiguousarray(x[i]), None if y is None else y[i], i) for s, i in idx.items()}
