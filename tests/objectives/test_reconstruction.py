"""The notes' plain autoencoder objective: E_q[log p(x|z)] alone."""

from __future__ import annotations

import torch

from vaekit.config import ModelConfig, TrainConfig
from vaekit.model import VAEModel
from vaekit.objectives import elbo
from vaekit.registry import OBJECTIVES


def test_reconstruction_is_the_elbos_first_term_on_the_same_noise():
    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=6, latent_dim=2, hidden=(5,), likelihood="bernoulli"))
    x = torch.bernoulli(torch.full((7, 6), 0.5))
    eps = torch.randn(1, 7, model.noise_size)
    objective = OBJECTIVES.get("reconstruction")(TrainConfig(objective="reconstruction"))
    loss, value = objective.loss(model, x, None, eps)
    torch.testing.assert_close(value, elbo(model, x, eps=eps).recon, rtol=0, atol=0)
    torch.testing.assert_close(loss, -value.mean())


def test_validation_draws_from_its_own_seeded_stream():
    """Repeatable for a seed, another value for another seed, and torch's global stream (the
    training loop's) left where it was."""
    model = VAEModel(ModelConfig(input_dim=6, latent_dim=2, hidden=(5,), likelihood="bernoulli"))
    objective = OBJECTIVES.get("reconstruction")(TrainConfig(objective="reconstruction"))
    x = torch.bernoulli(torch.full((20, 6), 0.5))
    state = torch.get_rng_state()
    first = objective.validate(model, x, None, 1)
    assert objective.validate(model, x, None, 1) == first != objective.validate(model, x, None, 2)
    assert torch.equal(torch.get_rng_state(), state)
