"""Which rows a picture shows: a seeded random sample across a split, the same number of rows
from every class where labels exist. Splits are often stored sorted by class (binarized MNIST's
test split is), so the first rows of a split would show one class only."""

from __future__ import annotations

import numpy as np

from ..errors import DataError


def class_counts(available: np.ndarray, k: int) -> np.ndarray:
    """How many rows to take from each class, with ``available[c]`` rows in class c: k in all
    (or every row when there are fewer), as equal as the classes allow. A class with fewer rows
    than its share gives all of them, and the rest is shared among the others; the first classes
    get one more where k does not divide evenly."""
    available = np.asarray(available, dtype=np.int64)
    take = np.zeros_like(available)
    left = min(int(k), int(available.sum()))
    open_ = available > 0
    while left > 0:
        share, extra = divmod(left, int(open_.sum()))
        for c in np.flatnonzero(open_):
            want = share + (1 if extra > 0 else 0)
            extra -= want > share
            got = min(want, int(available[c] - take[c]))
            take[c] += got
            left -= got
        open_ = take < available
    return take


def stratified_rows(n: int, k: int, labels: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Positions of min(k, n) rows of a split of ``n`` rows, drawn without replacement with
    ``np.random.default_rng(seed)``. With ``labels`` (n,) every class gives the same number of
    rows as far as its size allows (``class_counts``); the positions come class by class, in
    ascending order within a class (pictures read class by class). Without labels: a uniform
    sample, in ascending order."""
    if n < 0 or k < 0:
        raise DataError(f"n and k must be >= 0, got n={n}, k={k}")
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(n, size=min(k, n), replace=False))
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise DataError(f"labels must have shape ({n},) to match the rows, got {labels.shape}")
    classes, inverse = np.unique(labels, return_inverse=True)
    members = [np.flatnonzero(inverse == c) for c in range(len(classes))]
    counts = class_counts(np.array([len(m) for m in members]), k)
    picked = [np.sort(rng.choice(m, size=int(t), replace=False)) for m, t in zip(members, counts)]
    return np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
