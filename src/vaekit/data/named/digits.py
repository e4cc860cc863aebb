"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, pixels 0..16, which
its models see scaled to [0, 1]), split by fractions with a seeded permutation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ...registry import DATASETS
from ..containers import SPLIT_NAMES, Dataset
from ..splits import split_by_fractions
from . import NamedDataset

if TYPE_CHECKING:
    from ...config import DataConfig


@DATASETS.register("digits")
class Digits(NamedDataset):
    """scikit-learn's 8x8 digits (UCI optdigits test set, bundled): raw pixels 0..16, which a
    model sees as x/16 in [0, 1] (``scaling``), so that it takes ``load_digits().data`` as it is."""

    scaling = (0.0, 16.0)

    @classmethod
    def load(cls, config: DataConfig) -> Dataset:
        from sklearn.datasets import load_digits  # lazy: sklearn is slow to import

        digits = load_digits()
        x = digits.data.astype(np.float32)
        parts = split_by_fractions(
            x, digits.target.astype(np.int64), "digits", config.valid_fraction, config.test_fraction, config.split_seed
        )
        return Dataset(
            name="digits",
            train=parts["train"][0],
            valid=parts["valid"][0],
            test=parts["test"][0],
            image_shape=(8, 8),
            labels={s: parts[s][1] for s in SPLIT_NAMES},
            rows={s: parts[s][2] for s in SPLIT_NAMES},
        )
