"""vaekit.scaling: the input map a model stores. Standardisation statistics (of the training
split alone, constant columns kept, streamed), log-densities of the user's values checked
exactly against a hand computation, data ×100 and +1000 trained without NaN, samples and
reconstructions in the user's units, save/load, and the NaN path with standardisation off."""

from __future__ import annotations

import json
import math
import re

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


@pytest.mark.parametrize("mmap", [False, True])
def test_a_spread_whose_square_underflows_is_still_measured(tmp_path, monkeypatch, mmap):
    """Features of N(0, 1)·1e-200 (whose variance 1e-400 float64 cannot hold) get their std, as
    the same values times 2^700 do, divided back; constant columns, tiny or not, stay at scale 1,
    and a column at 1 that varies by 1e-200 is float64's constant. The change of variables adds
    −Σ log σ, log 1e200 and more per feature."""
    import vaekit.data.containers as containers
    from vaekit.data import load_array

    rng = np.random.default_rng(0)
    unit = rng.normal(size=(50, 2))
    x = np.column_stack([unit * 1e-200, np.full(50, 3e-250), 1.0 + unit[:, 0] * 1e-200])
    np.save(tmp_path / "x.npy", x)
    monkeypatch.setattr(containers, "CHUNK_ROWS", 7)
    s = Scaling.standardizing(load_array(str(tmp_path / "x.npy"), mmap=True)[0] if mmap else x)
    np.testing.assert_allclose(s.scale[:2], (x[:, :2] * 2.0**700).std(0) / 2.0**700, rtol=1e-12)
    np.testing.assert_allclose(s.scale[:2], unit.std(0) * 1e-200, rtol=1e-12)
    np.testing.assert_array_equal(s.scale[2:], [1.0, 1.0])
    np.testing.assert_allclose(s.to_model(x)[:, :2], (unit - unit.mean(0)) / unit.std(0), rtol=1e-5, atol=1e-6)
    assert s.log_det(4) == pytest.approx(-np.log(unit.std(0) * 1e-200).sum(), rel=1e-12)


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

    # Rows of the user's values in float64, which a float64 model reads through its map unrounded.
    x_std = rng.normal(size=(50, d)) @ w.T + b + math.sqrt(sigma2) * rng.normal(size=(50, D))
    x = m + s * x_std
    cov = np.diag(s) @ (w @ w.T + sigma2 * np.eye(D)) @ np.diag(s)
    r = x - (m + s * b)
    exact = -0.5 * (D * math.log(2 * math.pi) + np.linalg.slogdet(cov)[1] + np.einsum("ij,ij->i", r @ np.linalg.inv(cov), r))
    for k, seed in ((1, 0), (50, 1)):
        # float64 throughout: exact to float64's rounding (the values are ~ −10 nats).
        np.testing.assert_allclose(est.score_samples(x, k=k, seed=seed), exact, rtol=0, atol=1e-9)
    np.testing.assert_allclose(est.evaluate(x, k=5)["log_likelihood"], exact.mean(), rtol=0, atol=1e-9)
    # A float32 model reads float32 rows (7 digits): 1e-4 nats.
    est32 = vaekit.load(tmp_path / "run")
    est32.model_.float()
    np.testing.assert_allclose(est32.score_samples(x, k=1), exact, rtol=0, atol=1e-4)
    # And the same rows in standardised units are (log) Σ_j log s_j more likely.
    without = VAEModel(ModelConfig(**{**config.__dict__, "standardize": "off", "input_shift": None, "input_scale": None})).double()
    without.load_state_dict(est.model_.state_dict())
    from vaekit.evaluate import log_px_per_point

    np.testing.assert_allclose(log_px_per_point(without, (x - m) / s, k=1), exact + np.log(s).sum(), rtol=0, atol=1e-9)


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


def test_a_bernoulli_model_of_0_255_pixels_gives_the_probabilities_of_its_0_1_twin():
    """A probability mass is not a density: scaling 0/255 pixels to 0/1 relabels the values and
    adds no −Σ log 255 to log P(x). The two fits are one model (same seed, same values seen),
    so they score every row the same, and the model's probabilities of all 2^D images sum to 1
    (K = 4000: the estimate's noise, measured, moves the sum by under 0.02)."""
    import itertools

    D = 5
    B = (np.random.default_rng(0).random((300, D)) < 0.3).astype(np.float64)
    opts = dict(latent_dim=1, hidden=(8,), epochs=3, seed=0)
    a = VAE(**opts).fit(B)
    b = VAE(**opts, scaling=(0, 255)).fit(255 * B)
    assert a.config_.model.likelihood == b.config_.model.likelihood == "bernoulli"
    assert b.model_.log_det == 0.0
    np.testing.assert_allclose(b.score_samples(255 * B[:20], k=50), a.score_samples(B[:20], k=50), rtol=0, atol=1e-6)
    every = np.array(list(itertools.product((0.0, 255.0), repeat=D)))
    assert np.exp(b.score_samples(every, k=4000)).sum() == pytest.approx(1.0, abs=0.02)


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


# -- precision: float64 values keep their digits until the map -------------------------------------


def offset_table(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(centred, centred + 1e5) in float64: a table that varies by ~1e-3 around 0 and around
    1e5, where float32 steps by 0.008 (it would round the second to a handful of values)."""
    centred = 1e-3 * table(n).astype(np.float64)
    return centred, centred + 1e5


def test_the_map_reads_float64_values_before_any_float32_cast():
    from vaekit.data import check_data

    centred, x = offset_table()
    kept = check_data(x, dtype=None)
    assert kept.dtype == np.float64 and np.array_equal(kept, x)
    s = Scaling.standardizing(kept)
    mapped = s.to_model(kept)
    assert mapped.dtype == np.float32
    reference = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    np.testing.assert_allclose(mapped, reference, rtol=0, atol=1e-6)
    np.testing.assert_allclose(mapped.std(0), 1.0, atol=1e-5)
    # Cast to float32 first, the same map sees a few rounded levels per column.
    assert len(np.unique(s.to_model(x.astype(np.float32))[:, 0])) < 10 < len(np.unique(mapped[:, 0]))
    assert s.to_model(kept, np.float64).dtype == np.float64
    # Back in the user's units: float64 where float32 would round by more than 1% of a feature's
    # scale, the model's dtype elsewhere.
    back = s.to_user(mapped)
    assert back.dtype == np.float64 and s.float32_rounds()
    np.testing.assert_allclose(back, x, rtol=0, atol=1e-9)
    plain = Scaling.standardizing(1000 + table(50))
    assert not plain.float32_rounds() and plain.to_user(np.zeros((1, 6), np.float32)).dtype == np.float32


def test_apply_without_a_map_refuses_what_float32_cannot_resolve():
    from vaekit.errors import DataError
    from vaekit.scaling import apply

    _, x = offset_table()
    with pytest.raises(DataError, match=r"^X: column 1 varies by .* finer than float32 .*or standardise it, first$"):
        apply(None, x, np.float32, "X")
    assert apply(None, x, np.float64, "X").dtype == np.float64  # a float64 model reads it as it is
    assert apply(Scaling.standardizing(x), x, np.float32, "X").dtype == np.float32


def test_data_around_1e5_fit_as_their_centred_copy():
    """Standardised in float64, x + 1e5 and x are one table to float32's rounding, so the two
    fits are one model: the same latents and densities, samples 1e5 apart. A float32 cast
    before the map refused x + 1e5 (float32 cannot resolve it)."""
    centred, x = offset_table()
    est = {name: VAE(**SMALL, likelihood="gaussian").fit(v) for name, v in (("centred", centred), ("x", x))}
    np.testing.assert_allclose(est["x"].scaling_.shift - est["centred"].scaling_.shift, 1e5, rtol=0, atol=1e-9)
    np.testing.assert_allclose(est["x"].transform(x), est["centred"].transform(centred), rtol=0, atol=1e-4)
    # Each row's Monte Carlo noise is seeded by the values the model reads, which differ in
    # their last bits: means over the rows agree to the estimate's noise (0.3 nats per row at K = 10).
    a, b = est["x"].score_samples(x, k=10), est["centred"].score_samples(centred, k=10)
    assert abs(a.mean() - b.mean()) < 0.1 and np.median(np.abs(a - b)) < 0.3
    a, b = est["x"].sample(20, seed=3), est["centred"].sample(20, seed=3)
    assert a.dtype == np.float64 and b.dtype == np.float32  # float32 would round x's samples to 0.008
    np.testing.assert_allclose(a - 1e5, b, rtol=0, atol=1e-6)
    # Without a map a float32 model cannot read x: refused with the remedy.
    with pytest.raises(vaekit.errors.DataError, match="finer than float32"):
        VAE(**SMALL, likelihood="gaussian", standardize="off").fit(x)


def test_a_float64_model_reads_float64_values():
    centred, _ = offset_table(60)
    x = 1e3 * centred  # unit scale; float32 would round every value
    assert not np.array_equal(x.astype(np.float32), x)
    est = VAE(**dict(SMALL, epochs=1), likelihood="gaussian", standardize="off", dtype="float64").fit(x)
    assert est.model_input(x).dtype == np.float64 and np.array_equal(est.model_input(x), x)
    z = est.transform(x)
    assert z.dtype == np.float64 and np.isfinite(z).all()
    est32 = VAE(**dict(SMALL, epochs=1), likelihood="gaussian", dtype="float64").fit(centred)
    np.testing.assert_array_equal(est32.model_input(centred), (centred - est32.scaling_.shift) / est32.scaling_.scale)


def test_cli_trains_on_float64_file_around_1e5_as_on_its_centred_copy(tmp_path, capsys):
    """vaekit train and encode on a float64 .npy around 1e5 (in memory and memory-mapped)
    give the latents of the same run on the centred file."""
    from cli_helpers import cli

    centred, x = offset_table(300)
    latents = {}
    for name, values in (("centred", centred), ("x", x), ("x-mmap", x)):
        np.save(tmp_path / f"{name}.npy", values)
        run, mmap = tmp_path / name, ["--mmap"] if name.endswith("mmap") else []
        argv = ["--data", tmp_path / f"{name}.npy", "--out", run, "--epochs", "2", "--hidden", "16", "--latent-dim", "2", "--eval-k", "2", "--likelihood", "gaussian", *mmap]
        code, _, err = cli(capsys, "train", *argv)
        assert code == 0, err
        code, _, err = cli(capsys, "encode", run, "--data", tmp_path / f"{name}.npy", "--out", tmp_path / f"{name}-z.npy", *mmap)
        assert code == 0, err
        latents[name] = np.load(tmp_path / f"{name}-z.npy")
    np.testing.assert_allclose(latents["x"], latents["centred"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(latents["x-mmap"], latents["centred"], rtol=0, atol=1e-4)


def test_a_feature_constant_up_to_float64_rounding_is_a_constant():
    """0.1 + 0.2 beside 0.3 varies by 3e-17: no spread to standardise by (scale 1, as for an
    exactly constant column; dividing by 3e-16 would add 36 nats to every density), and
    nothing for float32 to resolve (a model without a map reads it)."""
    from vaekit.data import check_data

    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 4))
    x[:, 2] = np.where(rng.uniform(size=300) > 0.5, 0.1 + 0.2, 0.3)
    assert 0 < x[:, 2].std() < 1e-16
    s = Scaling.standardizing(x)
    assert s.scale[2] == 1.0 and s.shift[2] == pytest.approx(0.3)
    np.testing.assert_allclose(s.scale[[0, 1, 3]], x[:, [0, 1, 3]].std(0))
    exact = x.copy()
    exact[:, 2] = 0.3
    np.testing.assert_array_equal(Scaling.standardizing(exact).scale, s.scale)
    assert check_data(x).dtype == np.float32  # not refused as a feature float32 cannot resolve


def test_values_beyond_float32_in_the_models_units_are_refused():
    """A model of data at 1e-12 scale reading 1e28 would see 1e40 (an infinity in float32): a
    DataError naming the column and the map, through the API and the CLI; a float64 model
    reads it. Outputs that float32 cannot hold at all come back in float64."""
    x = 1e-12 * table(200).astype(np.float64)
    est = VAE(**dict(SMALL, epochs=1), likelihood="gaussian").fit(x)
    far = x[:3].copy()
    far[1, 4] = 1e28
    with pytest.raises(vaekit.errors.DataError, match=r"^X: a value of column 5 \(1e\+28\) lies at .*e\+(39|40) in the model's units .*beyond float32's range"):
        est.score_samples(far)
    assert VAE(**dict(SMALL, epochs=1), likelihood="gaussian", dtype="float64").fit(x).transform(far).dtype == np.float64
    assert Scaling(np.array([3e38]), np.array([2e37])).float32_rounds()
    assert Scaling(np.array([3e38]), np.array([2e37])).to_user(np.array([[1.5]], np.float32)).dtype == np.float64


def test_cli_refuses_values_beyond_float32_in_the_models_units(tmp_path, capsys):
    from cli_helpers import cli

    x = 1e-12 * table(200).astype(np.float64)
    np.save(tmp_path / "x.npy", x)
    far = x[:5].copy()
    far[2, 0] = 1e28
    np.save(tmp_path / "far.npy", far)
    run = tmp_path / "run"
    assert cli(capsys, "train", "--data", tmp_path / "x.npy", "--out", run, "--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--eval-k", "2", "--likelihood", "gaussian")[0] == 0
    for verb in (["encode"], ["score", "--k", "2"]):
        code, out, err = cli(capsys, verb[0], run, "--data", tmp_path / "far.npy", "--out", tmp_path / "o.npy", *verb[1:])
        assert code == 1 and out == "" and len(err.splitlines()) == 1 and "beyond float32's range" in err, err
        assert not (tmp_path / "o.npy").exists()


def test_the_map_goes_block_by_block_with_the_same_result(monkeypatch):
    """Rows mapped a few at a time (the float64 temporaries of a whole-array map held four
    copies of the input) give the whole map's values, and a value beyond float32 in a later
    block is named by its own row and column."""
    import vaekit.scaling as scaling

    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(103, 7))
    s = Scaling(np.full(7, 3.0), np.full(7, 2.0))
    whole = ((x - 3.0) / 2.0).astype(np.float32)
    monkeypatch.setattr(scaling, "MAP_BLOCK", 7 * 10)
    np.testing.assert_array_equal(s.to_model(x), whole)
    assert s.to_model(x[:0]).shape == (0, 7)
    far = x.copy()
    far[95, 2] = 1e45
    with pytest.raises(vaekit.errors.DataError, match=r"^a value of column 3 \(1e\+45\) lies at"):
        s.to_model(far)


def test_values_beyond_float32_read_through_the_map_or_by_a_float64_model():
    """The input map computes in float64, so a feature at 1e50 reaches a float32 model
    standardised: the same model as for the unit-scale table, log p(x) less D·log 1e50. A
    float64 model reads it too; a float32 model without a map refuses it by its row."""
    x = table(200).astype(np.float64)
    scores = {}
    for scale in (1.0, 1e50):
        est = VAE(**SMALL, likelihood="gaussian").fit(scale * x)
        scores[scale] = est.score_samples(scale * x[:20], k=10)
        assert np.isfinite(est.transform(scale * x[:20])).all()
    np.testing.assert_allclose(scores[1e50], scores[1.0] - 6 * np.log(1e50), rtol=1e-6)
    f64 = VAE(**SMALL, likelihood="gaussian", dtype="float64").fit(1e50 * x)
    # Its Monte Carlo draws are float64's own: the same estimate to within their noise.
    np.testing.assert_allclose(f64.score_samples(1e50 * x[:20], k=10), scores[1e50], rtol=1e-3)
    with pytest.raises(vaekit.errors.DataError, match=r"has values too large for a float32 model \(first at row \d+, column 1: .*--dtype float64\)?"):
        VAE(**SMALL, likelihood="gaussian", standardize="off").fit(1e50 * x)


@pytest.mark.parametrize("mmap", [False, True])
def test_cli_names_the_file_row_a_float32_model_cannot_read(tmp_path, capsys, mmap):
    from cli_helpers import cli

    x = table(100).astype(np.float64)
    x[41:, 2] = 1e50  # in every split, so that the standardised model has seen it
    np.save(tmp_path / "x.npy", x)
    flags = ["--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--eval-k", "2", "--likelihood", "gaussian"] + (["--mmap"] if mmap else [])
    code, _, err = cli(capsys, "train", "--data", tmp_path / "x.npy", "--out", tmp_path / "a", "--standardize", "off", *flags)
    assert code == 1 and len(err.splitlines()) == 1, err
    found = re.search(r"has values too large for a float32 model \(first at row (\d+), column 3: 1e\+50\)", err)
    assert found and int(found.group(1)) >= 42, err  # the row's number in the file, not in its split
    assert not (tmp_path / "a").exists()
    assert cli(capsys, "train", "--data", tmp_path / "x.npy", "--out", tmp_path / "b", *flags)[0] == 0  # standardised, it fits


def test_user_value_reads_shift_and_scale_each_per_feature_or_shared():
    """A config may hold one shift for every feature beside a scale per feature, or the
    reverse; the value in the user's units is shift_j + scale_j·x' either way."""
    per = np.array([1.0, 2.0, 3.0])
    one = np.array([10.0])
    cases = [(one, per, [10.5, 11.0, 11.5]), (per, one, [6.0, 7.0, 8.0]), (per, per, [1.5, 3.0, 4.5]), (one, one, [15.0] * 3)]
    for shift, scale, expected in cases:
        s = Scaling(shift, scale)
        assert [s.user_value(0.5, j) for j in range(3)] == expected
        np.testing.assert_allclose(s.to_model(np.array([expected]), np.float64), [[0.5, 0.5, 0.5]])
