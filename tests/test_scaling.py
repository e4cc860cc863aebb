"""vaekit.scaling: the input map a model stores. Standardisation statistics (of the training
split alone, constant columns kept, streamed), log-densities of the user's values checked
exactly against a hand computation, data ×100 and +1000 trained without NaN, samples and
reconstructions in the user's units, save/load, and the NaN path with standardisation off."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import vaekit
from vaekit import VAE
from vaekit.errors import ConfigError, TrainingError
from vaekit.scaling import Scaling


def table(n: int = 600, seed: int = 0) -> np.ndarray:
    """n rows of a 2-factor linear Gaussian model in 6 columns, roughly unit scale, float32."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)) @ rng.normal(size=(2, 6)) + 0.3 * rng.normal(size=(n, 6))
    return x.astype(np.float32)


SMALL = dict(latent_dim=2, hidden=(16,), epochs=3, seed=0)


# -- the statistics ------------------------------------------------------------------------------


def test_standardizing_is_the_mean_and_std_of_each_column_constant_columns_kept():
    x = np.array([[1.0, 5.0, 7.0], [3.0, 5.0, -1.0], [2.0, 5.0, 3.0], [6.0, 5.0, 3.0]], dtype=np.float32)
    s = Scaling.standardizing(x)
    np.testing.assert_array_equal(s.shift, [3.0, 5.0, 3.0])
    # Population std: sqrt(mean((x − m)²)) = sqrt(3.5), 0 → kept at scale 1, sqrt(8).
    np.testing.assert_allclose(s.scale, [math.sqrt(3.5), 1.0, math.sqrt(8.0)], rtol=1e-15)
    z = s.to_model(x)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-7)
    np.testing.assert_allclose(z[:, [0, 2]].std(0), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(z[:, 1], 0.0)  # centred, not divided by 0
    np.testing.assert_allclose(s.to_user(z), x, rtol=1e-6)
    assert s.log_det(3) == pytest.approx(-(0.5 * math.log(3.5) + 0.5 * math.log(8.0)), rel=1e-15)


def test_standardizing_memory_mapped_rows_equals_the_array(tmp_path, monkeypatch):
    """Block by block (here 7 rows a block), with an offset of 1e3 that a one-pass E[x²] − E[x]²
    would turn into noise: the same statistics as numpy's two-pass ones."""
    import vaekit.data.containers as containers
    from vaekit.data import load_array

    x = table(100) + 1000.0
    np.save(tmp_path / "x.npy", x)
    monkeypatch.setattr(containers, "CHUNK_ROWS", 7)
    mapped, _, _ = load_array(str(tmp_path / "x.npy"), mmap=True)
    s = Scaling.standardizing(mapped)
    np.testing.assert_allclose(s.shift, x.astype(np.float64).mean(0), rtol=1e-14)
    np.testing.assert_allclose(s.scale, x.astype(np.float64).std(0), rtol=1e-10)
    np.testing.assert_array_equal(mapped.mapped(s)[:5], s.to_model(x[:5]))


def test_statistics_come_from_the_training_split_only(tmp_path, capsys):
    """The estimator's held-out rows and a file's valid and test splits (here shifted and
    scaled away from the training rows) do not move the mean and std the model stores."""
    from cli_helpers import cli

    x = table(500)
    est = VAE(**SMALL, valid_fraction=0.2).fit(x)
    train_rows = np.random.default_rng(0).permutation(500)[100:]  # fit's split: valid first
    np.testing.assert_allclose(est.config_.model.input_shift, x[train_rows].astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(est.config_.model.input_scale, x[train_rows].astype(np.float64).std(0), rtol=1e-12)

    train, valid, test = 3 * table(300, 1) + 5, table(50, 2) + 10, 2 * table(50, 3) + 20
    np.savez(tmp_path / "splits.npz", train=train, valid=valid, test=test)
    code, _, err = cli(capsys, "train", "--data", tmp_path / "splits.npz", "--out", tmp_path / "run", "--epochs", "1", "--hidden", "8", "--eval-k", "2")
    assert code == 0, err
    model = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert model["likelihood"] == "gaussian" and model["standardize"] == "on"
    np.testing.assert_allclose(model["input_shift"], train.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(model["input_scale"], train.astype(np.float64).std(0), rtol=1e-12)


def test_standardize_option():
    x = table(200)
    assert VAE(**SMALL).fit(x).config_.model.standardize == "on"  # auto: Gaussian values beyond [0, 1]
    off = VAE(**SMALL, standardize="off").fit(x)
    assert off.config_.model.standardize == "off" and off.config_.model.input_scale is None and off.scaling_ is None
    grey = (x - x.min()) / (x.max() - x.min())
    assert VAE(**SMALL, likelihood="gaussian").fit(grey).config_.model.standardize == "off"  # auto: values in [0, 1]
    assert VAE(**SMALL, likelihood="gaussian", standardize="on").fit(grey).config_.model.standardize == "on"
    with pytest.raises(ConfigError, match="standardize must be off with the continuous_bernoulli likelihood"):
        VAE(**SMALL, standardize="on").fit(grey)
    with pytest.raises(ConfigError, match="standardize must be one of auto, on, off, got 'yes'"):
        VAE(**SMALL, standardize="yes").fit(x)


# -- densities of the user's values ---------------------------------------------------------------


def test_log_px_is_a_density_of_the_users_values_exactly(tmp_path):
    """A linear Gaussian model in standardised units, z ~ N(0, I), x' | z ~ N(Wz + b, σ²I), whose
    encoder is the exact posterior (W has orthogonal columns, so it is diagonal): every
    importance weight equals p(x'), and the IWAE estimate is exact for any K. In the user's
    units x = m + s·x' the model is x ~ N(m + s·b, S(WWᵀ + σ²I)S), S = diag(s), computed here
    by hand; the saved and reloaded model must give exactly that, whatever K."""
    from hierarchy_helpers import set_exact_linear_gaussian
    from vaekit.checkpoint import save_model
    from vaekit.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from vaekit.model import VAEModel

    D, d, sigma2 = 4, 2, 0.3
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(D, d)))
    w, b = q * np.array([2.0, 0.7]), rng.normal(size=D)
    m, s = np.array([1000.0, -3.0, 0.5, 40.0]), np.array([100.0, 0.01, 1.0, 7.0])
    config = ModelConfig(
        input_dim=D, latent_dim=d, hidden=(), likelihood="gaussian", variance="shared",
        standardize="on", input_shift=tuple(m), input_scale=tuple(s),
    )  # fmt: skip
    model = VAEModel(config).double()
    set_exact_linear_gaussian(model, w, b, sigma2)
    save_model(tmp_path / "run", model, RunConfig(model=config, train=TrainConfig(dtype="float64"), data=DataConfig(source="array")))
    est = vaekit.load(tmp_path / "run")
    assert est.scaling_ is not None and est.model_.log_det == pytest.approx(-np.log(s).sum(), rel=1e-15)

    # Rows of the user's values; float32, as check_data hands them to every model.
    x_std = rng.normal(size=(50, d)) @ w.T + b + math.sqrt(sigma2) * rng.normal(size=(50, D))
    x = (m + s * x_std).astype(np.float32).astype(np.float64)
    cov = np.diag(s) @ (w @ w.T + sigma2 * np.eye(D)) @ np.diag(s)
    r = x - (m + s * b)
    exact = -0.5 * (D * math.log(2 * math.pi) + np.linalg.slogdet(cov)[1] + np.einsum("ij,ij->i", r @ np.linalg.inv(cov), r))
    for k, seed in ((1, 0), (50, 1)):
        # The map runs in float64 and the model rows are float32 (7 digits): 1e-4 nats.
        np.testing.assert_allclose(est.score_samples(x, k=k, seed=seed), exact, rtol=0, atol=1e-4)
    np.testing.assert_allclose(est.evaluate(x, k=5)["log_likelihood"], exact.mean(), rtol=0, atol=1e-4)
    # And the same rows in standardised units are (log) Σ_j log s_j more likely.
    without = VAEModel(ModelConfig(**{**config.__dict__, "standardize": "off", "input_shift": None, "input_scale": None})).double()
    without.load_state_dict(est.model_.state_dict())
    from vaekit.evaluate import log_px_per_point

    np.testing.assert_allclose(log_px_per_point(without, (x - m) / s, k=1), exact + np.log(s).sum(), rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def fits():
    """The same model (seed, options) on a table, on the table × 100, and on the table + 1000."""
    x = table(600)
    return x, {name: VAE(**dict(SMALL, epochs=20, lr=3e-3)).fit(v) for name, v in (("x", x), ("x100", 100 * x), ("x+1000", x + 1000))}


def test_data_times_100_and_plus_1000_train_and_give_the_change_of_variables(fits):
    """Standardised, the three tables are one table (to float32 rounding), so the three fits
    are one model; its densities differ only by the Jacobian: D·log 100 lower for x × 100,
    equal for x + 1000."""
    x, est = fits
    scores = {name: e.score_samples({"x": x, "x100": 100 * x, "x+1000": x + 1000}[name], k=100) for name, e in est.items()}
    assert all(np.isfinite(v).all() for v in scores.values())
    assert all(e.config_.model.standardize == "on" for e in est.values())
    D = x.shape[1]
    # Each row's Monte Carlo noise is seeded by the row the model reads, and the three
    # standardised tables differ in their last bits, so rows differ by the estimate's noise
    # (measured at K = 100: standard deviation 0.13 nats per row) and means over 600 rows by
    # about 0.13/√600 = 0.005 (measured: −0.007 and −0.005 from D·log 100 = 27.631 and from 0).
    assert scores["x"].mean() - scores["x100"].mean() == pytest.approx(D * math.log(100), abs=0.03)
    assert scores["x"].mean() - scores["x+1000"].mean() == pytest.approx(0.0, abs=0.03)
    assert np.median(np.abs(scores["x"] - scores["x100"] - D * math.log(100))) < 0.2


def test_samples_and_reconstructions_come_back_in_the_users_units(fits):
    """The mean of 5000 samples of the model of x + 1000 is near the data's mean (measured:
    0.12 off at most, per column), and its reconstructions are near their inputs; ×100 likewise,
    scaled. inverse_transform and reconstruct are the decoder's mean mapped back by hand."""
    x, est = fits
    for name, data, tol in (("x+1000", x + 1000, 0.15), ("x100", 100 * x, 15.0)):
        e = est[name]
        samples = e.sample(5000, seed=0)
        np.testing.assert_allclose(samples.mean(0), data.mean(0), atol=tol)
        recon = e.reconstruct(data[:200])
        # Measured 0.55 of the rows' own spread around the mean (a model that ignored x: 1).
        assert np.abs(recon - data[:200]).mean() < 0.7 * np.abs(data[:200] - data.mean(0)).mean()
        np.testing.assert_allclose(e.inverse_transform(e.transform(data[:200])), recon, rtol=1e-6)
        # E[x|z] of the standardised model, mapped back by hand.
        with torch.no_grad():
            mean = e.model_.decode(torch.as_tensor(e.transform(data[:5]))).mean.numpy()
        np.testing.assert_allclose(recon[:5], e.scaling_.shift + e.scaling_.scale * mean, rtol=1e-6)


def test_save_and_load_keep_the_scaling(fits, tmp_path):
    x, est = fits
    e = est["x100"]
    e.save(tmp_path / "m")
    same = vaekit.load(tmp_path / "m")
    np.testing.assert_array_equal(same.scaling_.shift, e.scaling_.shift)
    np.testing.assert_array_equal(same.scaling_.scale, e.scaling_.scale)
    np.testing.assert_array_equal(same.score_samples(100 * x[:50], k=10), e.score_samples(100 * x[:50], k=10))
    np.testing.assert_array_equal(same.sample(20, seed=1), e.sample(20, seed=1))
    np.testing.assert_array_equal(same.reconstruct(100 * x[:20]), e.reconstruct(100 * x[:20]))


# -- standardisation off: the NaN, said in the user's terms, and no run left behind ----------------


def test_standardize_off_on_data_times_1000_names_the_scale(tmp_path, capsys):
    from cli_helpers import cli

    x = 1000 * table(300)
    with pytest.raises(TrainingError) as info:
        VAE(**SMALL, standardize="off").fit(x)
    message = str(info.value)
    assert message.startswith("loss became NaN or infinite at epoch 1, step ")
    assert "standardisation is off" in message and f"run from {x.min():.4g} to {x.max():.4g}" in message
    assert "--standardize on" in message and "--lr 0.001" in message

    np.save(tmp_path / "x1000.npy", x)
    run = tmp_path / "run"
    argv = ["train", "--data", tmp_path / "x1000.npy", "--out", run, "--epochs", "1", "--hidden", "16", "--eval-k", "2"]
    code, out, err = cli(capsys, *argv, "--standardize", "off")
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("vaekit: error: loss became NaN") and "standardisation is off" in err
    assert not run.exists()
    code, _, err = cli(capsys, *argv)  # the same command, standardised by default
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["model"]["standardize"] == "on"
