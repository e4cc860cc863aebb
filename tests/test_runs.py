"""vaekit.runs: the pictures of a run show rows from across the test split, by class."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from vaekit import plots
from vaekit.config import ModelConfig
from vaekit.data import Dataset
from vaekit.model import VAEModel
from vaekit.runs import LATENT_POINTS, RECONSTRUCTED_ROWS, picture_rows, write_pictures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sorted_digits() -> Dataset:
    """The digits with a test split sorted by class, as binarized MNIST's is."""
    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target
    order = np.argsort(y[1000:], kind="stable") + 1000
    return Dataset(
        "sorted digits", x[:800], x[800:1000], x[order], image_shape=(8, 8),
        labels={"train": y[:800], "valid": y[800:1000], "test": y[order]},
    )


def test_picture_rows_cover_every_class_equally(sorted_digits):
    labels = sorted_digits.split_labels("test")
    rows = picture_rows(sorted_digits, seed=0)
    recon = rows["reconstructions"]
    assert len(recon) == RECONSTRUCTED_ROWS == 32
    # 32 rows over 10 classes: two classes give 4, the others 3 (the first rows would all be 0s)
    np.testing.assert_array_equal(np.sort(np.bincount(labels[recon], minlength=10)), [3] * 8 + [4] * 2)
    # 797 test rows < LATENT_POINTS: the latent picture shows all of them
    assert LATENT_POINTS > len(labels) and np.array_equal(np.sort(rows["latent"]), np.arange(len(labels)))
    again = picture_rows(sorted_digits, seed=0)
    assert all(np.array_equal(rows[k], again[k]) for k in rows)
    assert not np.array_equal(recon, picture_rows(sorted_digits, seed=1)["reconstructions"])


def test_write_pictures_spans_the_posterior_means(sorted_digits, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=64, latent_dim=2, hidden=(16,), likelihood="continuous_bernoulli", image_shape=(8, 8)))
    model.eval()
    seen = {}
    real_grid, real_recon, real_scatter = plots.latent_traversal_grid, plots.reconstruction_grid, plots.latent_scatter

    def grid(decode, path, shape, **kwargs):
        seen["limits"] = np.asarray(kwargs["limits"])
        return real_grid(decode, path, shape, **kwargs)

    def recon(x, x_hat, path, shape, **kwargs):
        seen["recon_labels"] = np.asarray(kwargs["labels"])
        return real_recon(x, x_hat, path, shape, **kwargs)

    def scatter(mu, path, labels=None, **kwargs):
        seen["mu"], seen["scatter_labels"] = mu, labels
        return real_scatter(mu, path, labels=labels, **kwargs)

    monkeypatch.setattr(plots, "latent_traversal_grid", grid)
    monkeypatch.setattr(plots, "reconstruction_grid", recon)
    monkeypatch.setattr(plots, "latent_scatter", scatter)
    written = write_pictures(model, sorted_digits, [], tmp_path, seed=0)

    names = {p.name for p in written}
    # and bubbles.png, which a 2-D diagonal-Gaussian latent adds (validation rows, vaekit.bubbles)
    assert names == {"samples.png", "reconstructions.png", "kl_per_dim.png", "latent.png", "latent_grid.png", "bubbles.png"}
    for p in written:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 500
    np.testing.assert_array_equal(np.sort(np.bincount(seen["recon_labels"], minlength=10)), [3] * 8 + [4] * 2)
    assert len(np.unique(seen["scatter_labels"])) == 10
    # the grid spans the central 98% of the posterior means it was drawn from, per dimension
    mu, limits = seen["mu"], seen["limits"]
    assert limits.shape == (2, 2) and mu.shape == (797, 2)
    inside = (mu >= limits[:, 0]) & (mu <= limits[:, 1])
    assert np.all(inside.mean(axis=0) >= 0.98)
    np.testing.assert_allclose(limits[:, 0], np.percentile(mu, 1, axis=0, method="lower"))
    np.testing.assert_allclose(limits[:, 1], np.percentile(mu, 99, axis=0, method="higher"))
