"""vaekit.data.stratify: which rows a picture shows, on splits sorted by class."""

from __future__ import annotations

import numpy as np
import pytest

from vaekit.data.stratify import class_counts, stratified_rows
from vaekit.errors import DataError


def test_class_counts_equal_where_the_classes_allow():
    np.testing.assert_array_equal(class_counts([100] * 10, 32), [4, 4, 3, 3, 3, 3, 3, 3, 3, 3])
    # small classes give all they have; the rest is shared by the large ones
    np.testing.assert_array_equal(class_counts([1, 2, 100, 100], 32), [1, 2, 15, 14])
    np.testing.assert_array_equal(class_counts([5, 5], 32), [5, 5])  # fewer rows than asked: all
    np.testing.assert_array_equal(class_counts([0, 7], 3), [0, 3])


def test_sorted_split_gives_every_class_equally():
    # 1000 rows sorted by class, as binarized MNIST's test split is: the first 100 are all 0s
    labels = np.repeat(np.arange(10), 100)
    rows = stratified_rows(1000, 50, labels, seed=0)
    assert len(rows) == 50 and len(np.unique(rows)) == 50
    np.testing.assert_array_equal(np.bincount(labels[rows], minlength=10), [5] * 10)
    # class by class, ascending within a class
    assert np.all(np.diff(labels[rows]) >= 0)
    assert all(np.all(np.diff(rows[labels[rows] == c]) > 0) for c in range(10))


def test_rows_are_deterministic_for_a_seed():
    labels = np.repeat(np.arange(4), [30, 5, 40, 25])
    a, b = stratified_rows(100, 20, labels, seed=3), stratified_rows(100, 20, labels, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, stratified_rows(100, 20, labels, seed=4))
    np.testing.assert_array_equal(np.bincount(labels[a]), [5, 5, 5, 5])


def test_without_labels_a_uniform_sample_across_the_split():
    rows = stratified_rows(10_000, 200, None, seed=0)
    assert len(np.unique(rows)) == 200 and np.all(np.diff(rows) > 0)
    # spread over the whole split, not its beginning: each tenth holds 20 ± 12 of them
    per_tenth = np.bincount(rows // 1000, minlength=10)
    assert per_tenth.min() >= 8 and per_tenth.max() <= 32
    np.testing.assert_array_equal(stratified_rows(5, 32, None, seed=0), np.arange(5))


def test_bad_labels():
    with pytest.raises(DataError, match=r"labels must have shape \(10,\) to match the rows, got \(9,\)"):
        stratified_rows(10, 3, np.zeros(9))
