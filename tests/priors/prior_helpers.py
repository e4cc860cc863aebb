"""What every learned prior's tests check after a save and load."""

from __future__ import annotations

import numpy as np
import torch

import vaekit


def assert_round_trip(est, path, names: tuple[str, ...], x: np.ndarray) -> "vaekit.VAE":
    """Save ``est`` and load it: the prior's tensors ``names`` are bit-identical, and so are
    log p(z), seeded samples and the log-likelihood scores of ``x``. Returns the loaded one."""
    est.save(path)
    loaded = vaekit.load(path)
    for name in names:
        assert torch.equal(getattr(loaded.model_.prior, name), getattr(est.model_.prior, name)), name
    size = est.model_.latents[-1].size
    z = torch.randn(10, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.model_.log_pz(z), est.model_.log_pz(z))
    assert np.array_equal(loaded.sample(5, seed=1), est.sample(5, seed=1))
    assert np.array_equal(loaded.score_samples(x, k=5), est.score_samples(x, k=5))
    return loaded


def default_priors() -> list[str]:
    """The priors a default model can use: those that need a source the default lacks (the
    aggregate prior needs an earlier run) refuse it with ConfigError and have tests of their own."""
    from vaekit.config import ModelConfig
    from vaekit.errors import ConfigError
    from vaekit.registry import PRIORS

    out = []
    for name in PRIORS.names():
        try:
            ModelConfig(input_dim=3, prior=name)
        except ConfigError:
            continue
        out.append(name)
    return out
