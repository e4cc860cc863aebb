"""Shared by the training tests: the digits split and the small model they train."""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch

from vaekit.config import ModelConfig
from vaekit.model import VAEModel


@contextlib.contextmanager
def one_thread():
    """One intra-op thread: these models are tiny, and on a shared 2-core machine two threads
    fighting other processes made each small op up to 50 times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def digits_split() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 8x8 digits scaled to [0, 1]: 1280 training rows (10 equal batches of 128)
    and 300 validation rows, split by a fixed permutation."""
    from sklearn.datasets import load_digits

    x = (load_digits().data / 16.0).astype(np.float32)
    perm = np.random.default_rng(0).permutation(len(x))
    return x[perm[:1280]], x[perm[-300:]]


def small_model(seed: int = 0, **kw) -> VAEModel:
    """64-32-4 continuous-Bernoulli VAE with seeded initial weights; ``kw`` overrides the config."""
    cfg = dict(input_dim=64, latent_dim=4, hidden=(32,), likelihood="continuous_bernoulli")
    cfg.update(kw)
    torch.manual_seed(seed)
    return VAEModel(ModelConfig(**cfg))
