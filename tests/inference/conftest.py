"""Fixtures of the inference tests: digits rows, small digits models trained once per session,
the exact-posterior linear-Gaussian model, one intra-op thread."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from inference_helpers import DIGITS_TRAIN, N_TEST, N_TRAIN, N_VALID, LinearGaussian, digits_model
from train_helpers import one_thread
from vaekit.train import fit


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def single_thread():
    """``one_thread`` for module- and session-scoped fixtures, which set up before the autouse one."""
    return one_thread


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits scaled to [0, 1] (x/16), split by a fixed permutation."""
    from sklearn.datasets import load_digits

    x = (load_digits().data / 16.0).astype(np.float32)
    perm = np.random.default_rng(0).permutation(len(x))
    a, b, c = N_TRAIN, N_TRAIN + N_VALID, N_TRAIN + N_VALID + N_TEST
    return {"train": x[perm[:a]], "valid": x[perm[a:b]], "test": x[perm[b:c]]}


@pytest.fixture(scope="session")
def trained(digits):
    """{method: (model, history)} for amortized, map and vi, fitted on the digits rows.
    Shared: tests must not change these models (copy.deepcopy first)."""
    out = {}
    # fork_rng: what the fixture draws does not depend on, nor change, which test came first.
    with torch.random.fork_rng(), one_thread():
        for method, epochs in (("amortized", 10), ("map", 5), ("vi", 5)):
            model = digits_model(method, local_steps=50)
            history = fit(model, digits["train"], digits["valid"], dataclasses.replace(DIGITS_TRAIN, epochs=epochs))
            out[method] = (model, history)
    return out


@pytest.fixture
def linear_gaussian():
    return LinearGaussian
