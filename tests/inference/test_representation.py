"""The latent code of a point-estimate method is the point estimate itself: encode, transform,
reconstruct and the pictures give the autoencoder's ẑ = e(x) and MAP's argmax, while log p(x)
is still estimated with the Gaussian proposal around ẑ."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vaekit import VAE
from vaekit.inference.optimize import optimize_point


@pytest.fixture(scope="module")
def rows():
    from sklearn.datasets import load_digits

    return load_digits().data[:300]


def fitted(rows, inference: str) -> VAE:
    extra = {"local_steps": 30} if inference in ("autoencoder", "map") else {}
    return VAE(latent_dim=2, hidden=(32,), epochs=3, batch_size=64, inference=inference, seed=0, **extra).fit(rows)


def test_autoencoder_code_is_the_encoder_output(rows):
    vae = fitted(rows, "autoencoder")
    model = vae.model_
    with torch.no_grad():
        x = torch.as_tensor(vae.model_input(rows[:50]), dtype=torch.float32)
        code = model.inference.encoder(x)
        x_hat = model.decode(code).mean.numpy()
        proposal = model.evaluation_posterior(x).mean
    mu, logvar = vae.encode(rows[:50])
    np.testing.assert_allclose(mu, code.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(vae.transform(rows[:50]), mu)
    assert np.all(logvar == -np.inf)  # δ(z − ẑ): σ² = 0 exactly
    np.testing.assert_allclose(vae.reconstruct(rows[:50]), vae.scaling_.to_user(x_hat), rtol=1e-5, atol=1e-4)
    # The proposal log p(x) is estimated with is centred elsewhere (the ELBO-optimal mean).
    assert float((proposal - code).abs().max()) > 1e-3
    assert np.all(np.isfinite(vae.score_samples(rows[:50], k=20)))


def test_map_code_is_the_argmax(rows):
    vae = fitted(rows, "map")
    model = vae.model_
    x = torch.as_tensor(vae.model_input(rows[:40]), dtype=torch.float32)
    z0 = torch.zeros(40, 2)
    reach = float(model.inference.z.detach().pow(2).mean().sqrt())  # the training codes' RMS
    expected = optimize_point(model, x, z0, model.config.local_steps, model.config.local_lr, reach=reach).mean.detach().numpy()
    mu, logvar = vae.encode(rows[:40])
    np.testing.assert_allclose(mu, expected, rtol=0, atol=1e-6)
    assert np.all(logvar == -np.inf)


def test_density_methods_code_is_the_posterior_mean(rows):
    vae = fitted(rows, "amortized")
    with torch.no_grad():
        x = torch.as_tensor(vae.model_input(rows[:30]), dtype=torch.float32)
        q = vae.model_.evaluation_posterior(x)
    mu, logvar = vae.encode(rows[:30])
    np.testing.assert_allclose(mu, q.mu.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(logvar, q.logvar.numpy(), rtol=0, atol=1e-6)
