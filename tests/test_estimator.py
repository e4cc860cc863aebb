"""vaekit.VAE, the scikit-learn-style estimator: shapes, seeds, errors, persistence, and two
numerical references: anomaly ranking on corrupted digits, and the exact PPCA log-likelihood
of a fitted linear Gaussian VAE."""

from __future__ import annotations

import math
import re
import sys

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

import vaekit
from vaekit import VAE
from vaekit.errors import ConfigError, DataError

EVAL_KEYS = {"elbo", "recon", "kl", "log_likelihood", "bits_per_dim", "n", "k", "active_units", "latent_size", "kl_per_dim", "kl_per_group"}


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    x = (load_digits().data / 16.0).astype(np.float32)
    return x[np.random.default_rng(0).permutation(len(x))]


@pytest.fixture(scope="module")
def fitted(digits) -> VAE:
    """A small VAE fitted on 1400 digits (the other 397 are held out)."""
    return VAE(latent_dim=8, hidden=(64,), epochs=20, lr=3e-3, seed=0).fit(digits[:1400])


def test_fit_returns_self_with_fitted_state(digits):
    est = VAE(latent_dim=2, hidden=(16,), epochs=2, seed=0)
    assert est.fit(digits[:300]) is est
    assert est.n_features_in_ == 64
    assert isinstance(est.model_, vaekit.VAEModel)
    assert len(est.history_) == 2 and est.history_[-1]["epoch"] == 2
    assert est.config_.model.input_dim == 64 and est.config_.model.latent_dim == 2


def test_speed_settings_reach_the_training_config(digits, tmp_path):
    est = VAE(latent_dim=2, hidden=(16,), epochs=2, seed=0, amp="bf16", matmul_precision="medium").fit(digits[:300])
    assert (est.config_.train.amp, est.config_.train.matmul_precision) == ("bf16", "medium")
    assert all(p.dtype == torch.float32 for p in est.model_.parameters())
    est.save(tmp_path / "m")
    assert vaekit.load(tmp_path / "m").config_.train.amp == "bf16"
    with pytest.raises(ConfigError, match="amp"):
        VAE(amp="fp8").fit(digits[:300])
    # auto is recorded as what ran here, and the thread count as given
    from vaekit.hardware import resolve_amp

    auto = VAE(latent_dim=2, hidden=(16,), epochs=1, seed=0, amp="auto", threads=1).fit(digits[:300])
    assert (auto.config_.train.amp, auto.config_.train.threads) == (resolve_amp("auto"), 1)
    assert auto.get_params()["amp"] == "auto"


def test_encode_and_reconstruct_go_in_blocks_with_the_same_result(fitted, digits, monkeypatch):
    """Blocks bound the memory of encode and reconstruct; the numbers do not depend on them."""
    import vaekit.estimator as estimator

    x = digits[:300]
    mu, logvar = fitted.encode(x)
    x_hat = fitted.reconstruct(x)
    monkeypatch.setattr(estimator, "BATCH_ROWS", 64)
    mu_b, logvar_b = fitted.encode(x)
    np.testing.assert_allclose(mu_b, mu, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(logvar_b, logvar, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fitted.reconstruct(x), x_hat, rtol=1e-6, atol=1e-6)
    assert mu_b.shape == (300, 8) and x_hat.shape == (300, 64)


def test_memory_mapped_rows_give_the_same_latents(fitted, digits, tmp_path):
    from vaekit.data import load_array

    np.save(tmp_path / "x.npy", digits[:200])
    mapped, _, _ = load_array(str(tmp_path / "x.npy"), mmap=True)
    assert type(mapped).__name__ == "MappedRows" and len(mapped) == 200
    np.testing.assert_array_equal(fitted.encode(mapped)[0], fitted.encode(digits[:200])[0])
    np.testing.assert_array_equal(fitted.score_samples(mapped, k=5), fitted.score_samples(digits[:200], k=5))


def test_output_shapes_and_relations(fitted, digits):
    x = digits[1400:1450]
    mu, logvar = fitted.encode(x)
    assert mu.shape == logvar.shape == (50, 8)
    assert np.isfinite(mu).all() and np.isfinite(logvar).all()
    np.testing.assert_array_equal(fitted.transform(x), mu)
    z = np.random.default_rng(1).normal(size=(7, 8))
    x_hat = fitted.inverse_transform(z)
    assert x_hat.shape == (7, 64)
    assert ((x_hat >= 0) & (x_hat <= 1)).all()  # continuous-Bernoulli means lie in [0, 1]
    recon = fitted.reconstruct(x)
    assert recon.shape == (50, 64)
    np.testing.assert_allclose(recon, fitted.inverse_transform(mu), rtol=1e-6, atol=1e-6)
    # A reconstruction is closer to its own input than to the other rows' (on average).
    own = ((recon - x) ** 2).sum(1).mean()
    other = ((recon - np.roll(x, 1, axis=0)) ** 2).sum(1).mean()
    assert own < 0.6 * other
    with pytest.raises(DataError, match=r"\(n, 8\).*\(7, 3\)"):
        fitted.inverse_transform(np.zeros((7, 3)))
    # Latents closer than float32 resolves are latents still (no data check of their precision).
    close = np.vstack([np.full(8, 0.3), np.full(8, 0.1 + 0.2)])
    assert np.isfinite(fitted.inverse_transform(close)).all()


def test_sample_shape_and_seed(fitted):
    a = fitted.sample(5, seed=3)
    assert a.shape == (5, 64)
    np.testing.assert_array_equal(a, fitted.sample(5, seed=3))
    assert not np.array_equal(a, fitted.sample(5, seed=4))
    draws = fitted.sample(20, seed=3, mean=False)
    assert draws.shape == (20, 64) and ((draws >= 0) & (draws <= 1)).all()
    with pytest.raises(ConfigError, match="n must be an integer >= 1, got 0"):
        fitted.sample(0)


def test_score_samples_score_and_evaluate(fitted, digits):
    x = digits[1400:1460]
    s = fitted.score_samples(x, k=50)
    assert s.shape == (60,) and s.dtype == np.float64 and np.isfinite(s).all()
    np.testing.assert_array_equal(s, fitted.score_samples(x, k=50, seed=0))
    assert not np.array_equal(s, fitted.score_samples(x, k=50, seed=1))
    assert fitted.score(x, k=50) == pytest.approx(float(s.mean()), rel=0, abs=1e-12)
    # log p(x) ≥ ELBO on average (IWAE K=50 vs one-sample ELBO of the same q).
    terms = fitted.elbo(x)
    assert set(terms) == {"elbo", "recon", "kl"} and all(v.shape == (60,) for v in terms.values())
    assert s.mean() > terms["elbo"].mean()
    result = fitted.evaluate(x, k=50)
    assert set(result) == EVAL_KEYS
    assert result["n"] == 60 and result["k"] == 50
    assert result["bits_per_dim"] == pytest.approx(-result["log_likelihood"] / (64 * math.log(2)), rel=1e-12)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda x: x, "continuous_bernoulli"),  # digits / 16: grey levels in [0, 1]
        (lambda x: (x > 0.5).astype(np.float32), "bernoulli"),
        (lambda x: (x - x.mean(0)) / (x.std(0) + 1e-3), "gaussian"),  # standardized
    ],
    ids=["grey", "binary", "standardized"],
)
def test_auto_likelihood(digits, make, expected):
    est = VAE(latent_dim=2, hidden=(8,), epochs=1, seed=0).fit(make(digits[:200]))
    assert est.config_.model.likelihood == expected
    assert est.model_.config.likelihood == expected
    assert est.likelihood == "auto"  # the parameter itself is not altered (sklearn's clone rule)


def test_fit_on_image_arrays_takes_them_unflattened(digits):
    """(n, H, W) images give the model its image_shape; it then takes images and rows alike."""
    images = digits[:200].reshape(200, 8, 8)
    est = VAE(latent_dim=2, hidden=(8,), epochs=1, seed=0).fit(images)
    assert est.config_.model.image_shape == (8, 8) and est.n_features_in_ == 64
    np.testing.assert_array_equal(est.transform(images[:20]), est.transform(digits[:20]))
    np.testing.assert_array_equal(est.score_samples(images[:20], k=5), est.score_samples(digits[:20], k=5))
    with pytest.raises(DataError, match=r"X has images of shape \(8, 8\), but image_shape=\(4, 16\)"):
        VAE(latent_dim=2, hidden=(8,), epochs=1, image_shape=(4, 16)).fit(images)


def test_x_valid_is_taken_as_x_was(digits):
    """X_valid's columns must be X's in X's order; images of X's shape are taken unflattened."""
    import pandas as pd

    df = pd.DataFrame(digits[:200], columns=[f"p{i}" for i in range(64)])
    kw = dict(latent_dim=2, hidden=(8,), epochs=1)
    with pytest.raises(DataError, match=r"^X_valid: The feature names should match .* same order"):
        VAE(**kw).fit(df, X_valid=df[df.columns[::-1]])
    assert VAE(**kw).fit(df, X_valid=df.iloc[:20]).history_
    images = digits[:200].reshape(-1, 8, 8)
    assert VAE(**kw).fit(images, X_valid=images[:20]).history_
    with pytest.raises(DataError, match=r"X_valid has images of shape \(4, 16\), but X has images of shape \(8, 8\)"):
        VAE(**kw).fit(images, X_valid=digits[:20].reshape(-1, 4, 16))


def test_a_failed_fit_leaves_the_estimator_as_it_was(digits):
    """A refit refused (here a bad β, found after X was taken) keeps the model it had."""
    est = VAE(latent_dim=2, hidden=(8,), epochs=1).fit(digits[:200])
    before = est.transform(digits[:10])
    est.set_params(beta=-1.0)
    with pytest.raises(ConfigError, match="beta must be >= 0"):
        est.fit(digits[:200, :10])
    est.set_params(beta=1.0)
    assert est.n_features_in_ == 64
    np.testing.assert_array_equal(est.transform(digits[:10]), before)
    fresh = VAE(latent_dim=2, hidden=(8,), epochs=1, beta=-1.0)
    with pytest.raises(ConfigError):
        fresh.fit(digits[:200])
    assert not hasattr(fresh, "n_features_in_") and not hasattr(fresh, "model_")


@pytest.mark.parametrize(
    "params, message",
    [
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"seed": 1.5}, "seed must be an integer >= 0, got 1.5"),
        ({"seed": 2**70}, "seed must be <= "),
        ({"threads": 10**6}, "threads must be <= 1024"),
        ({"valid_fraction": float("nan")}, "valid_fraction must be a finite number"),
        ({"verbose": "no"}, "verbose must be true or false, got 'no'"),
        ({"progress": 1}, "progress must be true or false, got 1"),
        ({"scaling": (0, 0)}, "scaling must be (shift, scale) with both finite and scale > 0, got (0, 0)"),
        ({"scaling": (0, float("inf"))}, "scaling must be (shift, scale) with both finite and scale > 0"),
        ({"scaling": 16}, "scaling must be a pair (shift, scale) of numbers or None, got 16"),
        ({"scaling": (0, 16), "standardize": "on"}, "scaling fixes the input map, and standardize='on' would replace it"),
    ],
)
def test_bad_parameters_are_refused_before_anything_uses_them(params, message, digits):
    """Not numpy's or libgomp's error from the first use (a huge thread count aborts the process)."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        VAE(latent_dim=2, hidden=(8,), epochs=1, **params).fit(digits[:100])


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda est, x: est.score_samples(x, k=0), ConfigError, "k must be an integer >= 1, got 0"),
        (lambda est, x: est.score(x, k=1.5), ConfigError, "k must be an integer >= 1, got 1.5"),
        (lambda est, x: est.evaluate(x, k=-1), ConfigError, "k must be an integer >= 1, got -1"),
        (lambda est, x: est.score_samples(x, seed=-1), ConfigError, "seed must be an integer >= 0"),
        (lambda est, x: est.elbo(x, seed="a"), ConfigError, "seed must be an integer >= 0"),
        (lambda est, x: est.sample(3, seed="a"), ConfigError, "seed must be an integer >= 0"),
        (lambda est, x: est.sample(3, mean="False"), ConfigError, "mean must be true or false, got 'False'"),
        (lambda est, x: est.sample(3, mean=None), ConfigError, "mean must be true or false, got None"),
        (lambda est, x: est.score_samples(x, k=2, progress=1), ConfigError, "progress must be a callable taking the rows done, or None, got 1"),
        (lambda est, x: est.inverse_transform([["a"] * est.model_.latent_size]), DataError, "Z has dtype"),
        (lambda est, x: est.inverse_transform([[np.nan] + [0.0] * (est.model_.latent_size - 1)]), DataError, "Z contains NaN (first at row 1, column 1)"),
    ],
)
def test_bad_arguments_of_a_fitted_model(call, error, message, fitted, digits):
    with pytest.raises(error, match=re.escape(message)):
        call(fitted, digits[:10])


def test_numpy_seeds_switches_and_latents_of_any_kind(fitted, digits):
    np.testing.assert_array_equal(fitted.sample(3, seed=np.int64(2)), fitted.sample(3, seed=2))
    np.testing.assert_array_equal(fitted.sample(3, seed=2, mean=np.False_), fitted.sample(3, seed=2, mean=False))
    z = fitted.transform(digits[:4])
    expected = fitted.inverse_transform(z)
    np.testing.assert_array_equal(fitted.inverse_transform(torch.tensor(z, requires_grad=True)), expected)
    np.testing.assert_array_equal(fitted.inverse_transform(z.tolist()), expected)
    # any byte order and memory layout, as the other methods take them
    for other in (z.astype(">f4"), z.astype(">f8"), np.asfortranarray(z), z[:, ::-1][:, ::-1]):
        np.testing.assert_allclose(fitted.inverse_transform(other), expected, rtol=1e-6, atol=1e-6)


def test_get_params_set_params():
    est = VAE(latent_dim=3, hidden=(10, 5), beta=0.5)
    params = est.get_params()
    assert params["latent_dim"] == 3 and params["hidden"] == (10, 5) and params["beta"] == 0.5
    assert VAE(**params).get_params() == params  # clone
    assert est.set_params(**params) is est and est.get_params() == params
    est.set_params(latent_dim=7, lr=0.01)
    assert est.get_params() == dict(params, latent_dim=7, lr=0.01)
    with pytest.raises(ValueError, match="'latent_size'"):  # BaseEstimator.set_params
        est.set_params(latent_size=2)
    assert est.get_params() == dict(params, latent_dim=7, lr=0.01)


# Unfitted use raises scikit-learn's NotFittedError, which is also a ConfigError (the CLI's one line).
@pytest.mark.parametrize("method", ["transform", "encode", "reconstruct", "inverse_transform"])
def test_unfitted_raises_not_fitted_error(method, digits):
    with pytest.raises(NotFittedError, match="not fitted") as info:
        getattr(VAE(), method)(digits[:3] if method != "inverse_transform" else np.zeros((3, 20)))
    assert isinstance(info.value, ConfigError)
    with pytest.raises(NotFittedError, match="not fitted"):
        VAE().sample(2)


@pytest.mark.parametrize("method", ["score_samples", "score", "elbo", "evaluate"])
def test_unfitted_scoring_raises_not_fitted_error(method, digits):
    with pytest.raises(NotFittedError, match="not fitted") as info:
        getattr(VAE(), method)(digits[:3])
    assert isinstance(info.value, ConfigError)


def test_input_errors(fitted, digits):
    # scikit-learn's wording, which its estimator checks expect
    with pytest.raises(DataError, match=r"^X has 63 features, but VAE is expecting 64 features as input$"):
        fitted.transform(digits[:5, :63])
    with pytest.raises(DataError, match=r"65 features, but VAE is expecting 64"):
        fitted.score_samples(np.hstack([digits[:5], digits[:5, :1]]))
    bad = digits[:5].copy()
    bad[2, 10] = np.nan
    with pytest.raises(DataError, match=r"NaN \(first at row 3, column 11\)"):
        fitted.transform(bad)
    with pytest.raises(DataError, match="NaN"):
        VAE(epochs=1).fit(bad)
    with pytest.raises(DataError, match="2-D"):
        fitted.transform(digits[0])
    # Values outside the continuous Bernoulli's support [0, 1].
    with pytest.raises(DataError, match=r"continuous_bernoulli.*\[0, 1\]"):
        fitted.score_samples(digits[:5] * 2)
    # Text is refused however it comes, even text that spells numbers (numpy would read it).
    text = digits[:5].round(2).astype(str)
    for x in (text, text.astype(object), text.tolist()):
        with pytest.raises(DataError, match=r"^X (holds text|has dtype <U\d+); expected numbers"):
            fitted.transform(x)
    np.testing.assert_array_equal(fitted.transform(digits[:5].astype(object)), fitted.transform(digits[:5]))


def test_save_then_load_gives_identical_results(fitted, digits, tmp_path):
    x = digits[1400:1440]
    run_dir = fitted.save(tmp_path / "run")
    loaded = vaekit.load(run_dir)
    assert loaded.n_features_in_ == 64
    assert loaded.get_params()["latent_dim"] == 8 and loaded.get_params()["hidden"] == (64,)
    np.testing.assert_array_equal(loaded.transform(x), fitted.transform(x))
    np.testing.assert_array_equal(loaded.score_samples(x, k=20, seed=2), fitted.score_samples(x, k=20, seed=2))
    np.testing.assert_array_equal(loaded.sample(4, seed=1), fitted.sample(4, seed=1))


def test_save_and_load_keep_the_history(fitted, digits, tmp_path):
    """history_, the epochs' records, travels as metrics.jsonl, as a `vaekit train` run's does;
    a loaded model saved again keeps it too."""
    assert len(fitted.history_) == 20
    loaded = vaekit.load(fitted.save(tmp_path / "run"))
    assert loaded.history_ == fitted.history_
    assert vaekit.load(loaded.save(tmp_path / "again")).history_ == fitted.history_
    loaded.history_ = []  # a model without records saves none, not the old file's
    assert vaekit.load(loaded.save(tmp_path / "run")).history_ == []


def _names(d) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_save_and_load_keep_a_dataframe_columns(digits, tmp_path):
    """The columns a DataFrame gave fit are saved (config.json) and checked after vaekit.load,
    as pickle keeps them."""
    import pandas as pd

    df = pd.DataFrame(digits[:200], columns=[f"p{i}" for i in range(64)])
    est = VAE(latent_dim=2, hidden=(8,), epochs=1).fit(df)
    loaded = vaekit.load(est.save(tmp_path / "run"))
    assert list(loaded.feature_names_in_) == list(df.columns) and loaded.config_.data.feature_names == tuple(df.columns)
    np.testing.assert_array_equal(loaded.transform(df), est.transform(df))
    with pytest.raises(DataError, match="feature names should match"):
        loaded.transform(df[df.columns[::-1]])
    plain = vaekit.load(VAE(latent_dim=2, hidden=(8,), epochs=1).fit(digits[:200]).save(tmp_path / "plain"))
    assert not hasattr(plain, "feature_names_in_")


def test_save_replaces_a_saved_model(fitted, digits, tmp_path):
    fitted.save(tmp_path / "run")
    other = VAE(latent_dim=2, hidden=(8,), epochs=1, seed=1).fit(digits[:200])
    other.save(tmp_path / "run")  # a saved model alone is replaced whole
    assert _names(tmp_path / "run") == ["config.json", "metrics.jsonl", "model.safetensors"]
    assert vaekit.load(tmp_path / "run").get_params()["latent_dim"] == 2


def test_save_into_a_run_with_more_is_refused_unless_overwrite(fitted, digits, tmp_path):
    """A directory that holds more than a saved model (a `vaekit train` run: checkpoints,
    metrics, pictures) is not half replaced: refused, or with overwrite replaced whole."""
    from vaekit.errors import CheckpointError

    run = fitted.save(tmp_path / "run")
    for name in ("last.safetensors", "metrics.jsonl", "samples.png"):
        (run / name).write_bytes(b"of the old run")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(CheckpointError, match=r"holds a run with more than a saved model \(last.safetensors, samples.png\).*overwrite=True"):
        fitted.save(run)
    for overwrite in ("no", 1, None):  # a switch that deletes files takes True or False alone
        with pytest.raises(ConfigError, match=re.escape(f"overwrite must be true or false, got {overwrite!r}")):
            fitted.save(run, overwrite=overwrite)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    fitted.save(run, overwrite=True)
    assert _names(run) == ["config.json", "metrics.jsonl", "model.safetensors"]
    np.testing.assert_array_equal(vaekit.load(run).transform(digits[:10]), fitted.transform(digits[:10]))


@pytest.mark.parametrize("overwrite", [False, True])
def test_save_never_touches_a_directory_of_other_files(overwrite, fitted, tmp_path):
    """A project folder is not a run: saving into it is refused, with or without overwrite, and
    its files stay (a model saved among them would make them part of a run that a later
    overwrite=True empties)."""
    from vaekit.errors import CheckpointError

    project = tmp_path / "proj"
    (project / "src").mkdir(parents=True)
    (project / "README.md").write_text("mine")
    with pytest.raises(CheckpointError, match=r"holds files but no vaekit run \(README.md, src\)"):
        fitted.save(project, overwrite=overwrite)
    assert _names(project) == ["README.md", "src"] and (project / "README.md").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _names(fitted.save(empty, overwrite=overwrite)) == ["config.json", "metrics.jsonl", "model.safetensors"]


@pytest.mark.parametrize("name, choices", [("likelihood", "auto, bernoulli, continuous_bernoulli, gaussian"), ("standardize", "auto, on, off")])
def test_an_unknown_auto_option_lists_auto_among_its_choices(name, choices):
    with pytest.raises(ConfigError, match=rf"^{name} must be one of {choices}, got 'nope'$"):
        vaekit.VAE(epochs=1, **{name: "nope"}).fit(np.random.default_rng(0).random((30, 3)))


@pytest.mark.parametrize("run_dir", [None, 3, b"run", ["run"]])
def test_load_or_save_of_something_that_is_no_path_is_a_config_error(run_dir, fitted):
    message = rf"^a run directory is a path \(str or os.PathLike\), got {type(run_dir).__name__}$"
    with pytest.raises(ConfigError, match=message):
        vaekit.load(run_dir)
    with pytest.raises(ConfigError, match=message):
        fitted.save(run_dir)


@pytest.mark.parametrize("overwrite", [False, True])
def test_save_onto_a_file_is_refused_and_leaves_it(overwrite, fitted, tmp_path):
    from vaekit.errors import VaekitError

    target = tmp_path / "model.bin"
    target.write_bytes(b"mine")
    with pytest.raises(VaekitError, match=r"model.bin is a file, not a run directory"):
        fitted.save(target, overwrite=overwrite)
    assert target.read_bytes() == b"mine"


@pytest.mark.skipif(sys.platform == "win32", reason="the holder is killed with SIGKILL")
def test_save_into_a_locked_directory_is_refused(fitted, tmp_path):
    from lock_helpers import holding

    from vaekit.errors import RunLockedError

    run = tmp_path / "run"
    with holding(run) as holder:
        with pytest.raises(RunLockedError, match=rf"being written by another process \(pid {holder.pid}\)"):
            fitted.save(run)
        assert _names(run) == [".vaekit.lock"]


def test_fit_is_silent_unless_verbose(digits, capsys):
    capsys.readouterr()
    VAE(latent_dim=2, hidden=(8,), epochs=2, seed=0).fit(digits[:200])
    assert capsys.readouterr().err == ""
    VAE(latent_dim=2, hidden=(8,), epochs=2, seed=0, verbose=True).fit(digits[:200])
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[:2] for line in lines] == [["epoch", "1/2"], ["epoch", "2/2"]]


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted 1/2 (Mann–Whitney U / n1 n0)."""
    scores = np.concatenate([pos, neg])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for v in np.unique(scores):  # average ranks of ties
        tie = scores == v
        ranks[tie] = ranks[tie].mean()
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def test_auc_formula():
    assert _auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert _auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert _auc(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == 0.5
    assert _auc(np.array([2.0]), np.array([2.0])) == 0.5


def test_score_samples_ranks_corrupted_rows_lower(fitted, digits):
    clean = digits[1400:1700]
    rng = np.random.default_rng(7)
    corrupted = clean.copy()
    mask = rng.random(corrupted.shape) < 0.25  # a quarter of the pixels replaced by noise
    corrupted[mask] = rng.random(int(mask.sum()), dtype=np.float32)
    s_clean = fitted.score_samples(clean, k=100)
    s_bad = fitted.score_samples(corrupted, k=100)
    # Measured AUC ≈ 1.0 and a gap of tens of nats; 0.9 leaves room for any reasonable fit.
    assert _auc(s_clean, s_bad) > 0.9
    assert s_clean.mean() > s_bad.mean() + 10.0


def test_linear_gaussian_vae_scores_match_exact_ppca_likelihood():
    """hidden=() makes encoder and decoder affine maps, so the fitted model is
    z ~ N(0, I), x|z ~ N(Wz + b, σ²I) with the exact marginal x ~ N(b, WWᵀ + σ²I)
    (Tipping & Bishop 1999). score_samples (IWAE, K=1000) must reproduce it per row."""
    rng = np.random.default_rng(0)
    D, d, n = 5, 2, 2000
    w_true = rng.normal(size=(D, d))
    x = rng.normal(size=(n, d)) @ w_true.T + rng.normal(size=D) + 0.3 * rng.normal(size=(n, D))
    est = VAE(
        latent_dim=d, hidden=(), likelihood="gaussian", variance="shared", standardize="off",
        epochs=60, lr=1e-2, batch_size=100, dtype="float64", seed=0,
    ).fit(x)  # fmt: skip
    model = est.model_
    (decoder,) = [m for m in model.decoder if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        w = decoder.weight.double().numpy()
        b = decoder.bias.double().numpy()
        sigma2 = float(model.decode(torch.zeros(1, d, dtype=torch.float64)).variance[0, 0])
    cov = w @ w.T + sigma2 * np.eye(D)
    # The estimator reads data as float32 (check_data); the reference sees the same values.
    rows = x[:300].astype(np.float32).astype(np.float64)
    r = rows - b
    exact = -0.5 * (D * math.log(2 * math.pi) + np.linalg.slogdet(cov)[1] + np.einsum("ij,ij->i", r @ np.linalg.inv(cov), r))

    scores = est.score_samples(x[:300], k=1000, seed=0)
    diff = scores - exact
    # Measured (seeds 0-2): the per-row IWAE noise sd is ≈ 0.011 nats, so the mean of 300
    # rows has sd ≈ 0.0007; the IWAE bias is of order (ELBO gap)/K ≈ 0.03/1000. Mean diff
    # measured -0.0001 to 0.002: 0.005 is several sd. Per row, median |diff| 0.005, its 99th
    # percentile 0.03-0.05, and the largest 0.04-0.32 (a row whose importance weights have a
    # heavy tail, one draw far above the rest): 0.02, 0.15 and 0.6 leave room for that tail.
    assert abs(diff.mean()) < 0.005
    assert np.median(np.abs(diff)) < 0.02
    assert np.quantile(np.abs(diff), 0.99) < 0.15
    assert np.abs(diff).max() < 0.6
    # The ELBO of the same q is a lower bound on the exact log p(x): its mean (one-sample
    # noise, standard error ≈ 0.06 here) may not exceed it by more than 3 standard errors.
    gap = exact - est.elbo(x[:300])["elbo"]
    assert gap.mean() > -3 * gap.std() / math.sqrt(len(gap))
    # And the fitted σ² is near the PPCA maximum-likelihood value (mean of the smallest
    # D − d eigenvalues of the sample covariance; measured 0.092-0.094 vs 0.089).
    eig = np.sort(np.linalg.eigvalsh(np.cov(x.T, bias=True)))
    assert sigma2 == pytest.approx(eig[: D - d].mean(), rel=0.15)


def test_drawn_reconstructions_are_seeded_draws_around_the_mean_one(fitted, digits):
    """draw="z" decodes z ~ q(z|x), draw="x" draws x ~ p(x|z) too: the same shape as the mean
    reconstruction and different from it, the same for the same seed, another for another
    seed, and inside the likelihood's support (continuous Bernoulli: [0, 1])."""
    x = digits[1400:1460]
    mean = fitted.reconstruct(x)
    for draw in ("z", "x"):
        a = fitted.reconstruct(x, draw=draw, seed=3)
        assert a.shape == mean.shape == (60, 64) and a.dtype == mean.dtype
        assert np.isfinite(a).all() and ((a >= 0) & (a <= 1)).all()
        assert np.abs(a - mean).mean() > 1e-3
        np.testing.assert_array_equal(a, fitted.reconstruct(x, draw=draw, seed=3))
        assert not np.array_equal(a, fitted.reconstruct(x, draw=draw, seed=4))
        # Equal rows are drawn independently (one stream, as sample's), not alike.
        twice = fitted.reconstruct(np.repeat(x[:1], 2, axis=0), draw=draw, seed=3)
        assert not np.array_equal(twice[0], twice[1])
    # x ~ p(x|z) adds the likelihood's noise to E[x|z] at the same z (same seed, same z first).
    z_only, with_x = fitted.reconstruct(x, draw="z", seed=3), fitted.reconstruct(x, draw="x", seed=3)
    assert np.abs(with_x - z_only).mean() > 1e-3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"draw": "y"}, "draw must be None (the decoder's mean at the posterior mean) or one of 'z', 'x', got 'y'"),
        ({"draw": True}, "draw must be None"),
        ({"seed": 0}, "seed seeds the draws of draw='z' or 'x'; without draw the reconstruction has no noise (got seed=0)"),
        ({"draw": "z", "seed": -1}, "seed must be"),
    ],
)
def test_drawn_reconstruction_refuses_bad_arguments_before_any_work(fitted, digits, kwargs, message):
    with pytest.raises(ConfigError) as e:
        fitted.reconstruct_blocks(digits[:5], **kwargs)  # refused on the call, before any block
    assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=re.escape(message)):
        fitted.reconstruct(digits[:5], **kwargs)


def test_bernoulli_reconstructions_drawn_in_x_are_binary(digits):
    binary = (digits[:300] > 0.5).astype(np.float32)
    est = VAE(latent_dim=2, hidden=(16,), epochs=2, seed=0, likelihood="bernoulli").fit(binary)
    drawn = est.reconstruct(binary[:50], draw="x", seed=0)
    assert drawn.shape == (50, 64) and set(np.unique(drawn)) == {0.0, 1.0}
    # z alone keeps the decoder's mean: probabilities, strictly between 0 and 1.
    means = est.reconstruct(binary[:50], draw="z", seed=0)
    assert ((means > 0) & (means < 1)).all()


def test_a_point_estimate_draws_its_code():
    """inference="autoencoder": q is δ(z − ẑ), so z ~ q is ẑ and draw="z" is the mean one."""
    rng = np.random.default_rng(0)
    x = rng.random((80, 6))
    est = VAE(latent_dim=2, hidden=(8,), epochs=1, seed=0, inference="autoencoder", likelihood="gaussian").fit(x)
    np.testing.assert_array_equal(est.reconstruct(x[:20], draw="z", seed=1), est.reconstruct(x[:20]))
    assert not np.array_equal(est.reconstruct(x[:20], draw="x", seed=1), est.reconstruct(x[:20]))


def test_drawn_reconstructions_of_a_linear_gaussian_vae_have_the_posterior_predictive_moments():
    """hidden=(): q(z|x) = N(μ, diag σ²) and E[x|z] = Wz + b, so the decoder means at
    z ~ q(z|x) are Gaussian with mean Wμ + b (the mean reconstruction) and covariance
    C = W diag(σ²) Wᵀ; draws of x ~ p(x|z) add the likelihood's variance, C + s²I: the
    moments of ∫ p(x'|z) q(z|x) dz. The parameters need not be fitted well for this, so one
    epoch suffices."""
    from scipy.stats import chi2

    rng = np.random.default_rng(0)
    D, d, S = 5, 2, 4000
    x = rng.normal(size=(400, d)) @ rng.normal(size=(d, D)) + 0.3 * rng.normal(size=(400, D))
    est = VAE(latent_dim=d, hidden=(), likelihood="gaussian", variance="shared", standardize="off", epochs=1, dtype="float64", seed=0).fit(x)
    (decoder,) = [m for m in est.model_.decoder if isinstance(m, torch.nn.Linear)]
    w = decoder.weight.detach().double().numpy()
    with torch.no_grad():
        s2 = float(est.model_.decode(torch.zeros(1, d, dtype=torch.float64)).variance[0, 0])
    row = x[:1]
    _, logvar = est.encode(row)
    cov_z = w @ np.diag(np.exp(logvar[0])) @ w.T  # rank d: the draws vary in W's column space only
    mean = est.reconstruct(row)[0]
    for draw, cov, dof in (("z", cov_z, d), ("x", cov_z + s2 * np.eye(D), D)):
        draws = est.reconstruct(np.repeat(row, S, axis=0), draw=draw, seed=0)
        # S·m̄ᵀC⁺m̄ of the mean's offset m̄ is χ² with rank(C) degrees of freedom: beyond its
        # 1 − 1e-4 quantile only once in 10⁴ (the features are correlated through z, so a
        # bound per feature would not say how rare a value is).
        offset = draws.mean(0) - mean
        assert S * offset @ np.linalg.pinv(cov) @ offset < chi2.ppf(1 - 1e-4, dof), draw
        # The sample variances within 15% of the exact ones (relative standard error √(2/S) ≈ 2.2%).
        np.testing.assert_allclose(draws.var(0), np.diag(cov), rtol=0.15)
    # In z, the draws lie in W's column space around the mean (nothing of x's noise).
    residual = est.reconstruct(np.repeat(row, 50, axis=0), draw="z", seed=1) - mean
    np.testing.assert_allclose(residual - residual @ np.linalg.pinv(w).T @ w.T, 0, atol=1e-9)
    assert np.abs(residual).max() > 1e-3


def test_sample_from_the_aggregate_posterior_and_a_fitted_mixture(fitted, digits):
    """aggregate: z ~ q(z|x) for random rows x; gmm: z from a mixture fitted to the posterior
    means, whose draws have the mean and covariance of those means (5000 draws: the standard
    errors are a few hundredths). Both are seeded."""
    x = digits[:1400]
    for source in ("aggregate", "gmm"):
        a = fitted.sample(200, seed=3, source=source, X=x)
        assert a.shape == (200, 64) and np.isfinite(a).all()
        np.testing.assert_array_equal(a, fitted.sample(200, seed=3, source=source, X=x))
        assert not np.array_equal(a, fitted.sample(200, seed=4, source=source, X=x))
    # The mixture's draws have the latent statistics it was fitted to.
    z = fitted._gmm_latents(x, 10, torch.Generator().manual_seed(0))(5000).numpy()
    mu = fitted.transform(x)
    np.testing.assert_allclose(z.mean(0), mu.mean(0), atol=0.1)
    np.testing.assert_allclose(np.cov(z.T), np.cov(mu.T), atol=0.1)
    with pytest.raises(ConfigError, match="needs the rows X"):
        fitted.sample(5, source="aggregate")
    with pytest.raises(ConfigError, match="source must be one of"):
        fitted.sample(5, source="posterior", X=x)
    # What a source would ignore is refused, as the command line refuses --data and --components.
    with pytest.raises(ConfigError, match="source='prior' draws z ~ p\\(z\\) and reads none"):
        fitted.sample(5, source="prior", X=x)
    for source, X in (("prior", None), ("aggregate", x)):
        with pytest.raises(ConfigError, match=f"components sets the mixture of source 'gmm'; this draws from source '{source}'"):
            fitted.sample(5, source=source, X=X, components=3)


def test_aggregate_source_draws_from_the_mixture_of_every_rows_q(fitted, digits, monkeypatch):
    """source="aggregate" draws z ~ (1/N) Σ_i q(z|x_i): one row gives q(z|x) itself (its mean
    and variance σ², not the mean alone), and over three rows each q's mean responsibility
    E_z[π_i q_i(z) / Σ_j π_j q_j(z)] is exactly its weight 1/3 under the mixture."""
    drawn = []
    sample = fitted.model_.sample
    monkeypatch.setattr(fitted.model_, "sample", lambda m, z=None, **kw: drawn.append(z) or sample(m, z=z, **kw))
    mu, logvar = fitted.encode(digits[:300])
    rows = np.unique([mu[:, 0].argmin(), mu[:, 0].argmax(), mu[:, 1].argmax()])
    assert len(rows) == 3
    fitted.sample(20_000, seed=0, source="aggregate", X=digits[rows[:1]])
    z = drawn[-1].double().numpy()
    se = np.sqrt(np.exp(logvar[rows[0]]) / len(z))
    assert (np.abs(z.mean(0) - mu[rows[0]]) < 4 * se).all(), (z.mean(0), mu[rows[0]])
    np.testing.assert_allclose(z.var(0), np.exp(logvar[rows[0]]), rtol=0.05)
    fitted.sample(30_000, seed=1, source="aggregate", X=digits[rows])
    z = torch.as_tensor(drawn[-1], dtype=torch.float64)
    log_q = torch.distributions.Normal(torch.as_tensor(mu[rows], dtype=torch.float64), torch.as_tensor(np.exp(0.5 * logvar[rows]), dtype=torch.float64))
    resp = torch.softmax(log_q.log_prob(z[:, None, :]).sum(-1), dim=1).mean(0).numpy()
    np.testing.assert_allclose(resp, 1 / 3, atol=0.015)


def test_the_mixture_source_needs_two_rows_and_speaks_in_one_line(fitted, digits):
    """scikit-learn's mixture needs two rows whatever its size: one is refused by vaekit; rows
    with fewer distinct latents than components give one vaekit warning, not scikit-learn's."""
    import warnings

    from vaekit.errors import VaekitWarning

    with pytest.raises(DataError, match=r"^X has 1 row\(s\); a mixture of 1 component\(s\) needs at least 2$"):
        fitted.sample(3, seed=0, source="gmm", X=digits[:1], components=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fitted.sample(4, seed=0, source="gmm", X=np.repeat(digits[:1], 20, axis=0), components=3)
    assert out.shape == (4, 64) and np.isfinite(out).all()
    assert [w.category for w in caught] == [VaekitWarning]
    assert str(caught[0].message).startswith("the mixture fitted to the posterior means of X: Number of distinct clusters (1)")


def test_a_mixture_that_cannot_be_fitted_is_one_vaekit_error():
    """Finite rows whose posterior means are far apart in scale (one at ~1e28) leave a component
    of the mixture a singular covariance: scikit-learn's ValueError becomes one DataError line."""
    x = np.random.default_rng(0).standard_normal((200, 4))
    vae = VAE(latent_dim=2, hidden=(8,), epochs=1, seed=0).fit(x)
    far = x.copy()
    far[5, 1] = 1e30
    with pytest.raises(DataError, match=r"^a mixture of 2 component\(s\) could not be fitted to the posterior means of X: .* as large as [0-9.e+]+ .*source='aggregate' may do$"):
        vae.sample(5, seed=0, source="gmm", X=far, components=2)
    assert vae.sample(5, seed=0, source="aggregate", X=far).shape == (5, 4)


def test_rows_that_overflow_the_models_arithmetic_are_refused_not_nan():
    """A float32 value near float32's largest (within range, so the input checks pass) overflows
    the networks: every per-row result of it would be NaN. Each method refuses in one line
    naming the row, instead of handing back a NaN anomaly score or code; the other rows alone
    still work."""
    from vaekit.evaluate import evaluate, gaps

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    vae = VAE(latent_dim=2, hidden=(16,), epochs=2, seed=0, likelihood="gaussian").fit(x)
    far = np.vstack([x[:3], np.full((1, 5), 3e38)]).astype(np.float32)
    said = r"^row 4: the model's {} is not a number: its arithmetic overflowed on values that reach 3\.\d+e\+38 in the model's units"
    with pytest.raises(DataError, match=said.format(r"log p\(x\)")):
        vae.score_samples(far, k=5)
    with pytest.raises(DataError, match=said.format("ELBO")):
        vae.elbo(far)
    with pytest.raises(DataError, match=said.format("posterior mean")):
        vae.encode(far)
    with pytest.raises(DataError, match=said.format("reconstruction")):
        vae.reconstruct(far)
    mapped = vae.model_input(far)
    with pytest.raises(DataError, match=said.format("ELBO")):
        evaluate(vae.model_, mapped, k=5)
    with pytest.raises(DataError, match=said.format(r"log p\(x\)")):
        gaps(vae.model_, mapped, k=5, steps=2)
    assert np.isfinite(vae.score_samples(far[:3], k=5)).all() and np.isfinite(vae.reconstruct(far[:3])).all()
    # One value at 1e30 leaves finite codes, but their squares overflow: the KL is +inf (never
    # so for a finite q) and the ELBO -inf, which alone could be a density below the range.
    one = np.vstack([x[:3], [[1e30, 0, 0, 0, 0]]])
    assert np.isfinite(vae.encode(one)[0]).all()
    with pytest.raises(DataError, match=said.format("KL").replace(r"3\.\d+e\+38", r"1[.\d]*e\+30")):
        vae.elbo(one)
    with pytest.raises(DataError, match=said.format("KL").replace(r"3\.\d+e\+38", r"1[.\d]*e\+30")):
        evaluate(vae.model_, vae.model_input(one), k=5)
    # Its log p(x) is −inf for the same reason: score and gaps refuse it as evaluate does, rather
    # than hand back −inf (an overflow, not a density below the range) or NaN gaps.
    with pytest.raises(DataError, match=said.format("KL").replace(r"3\.\d+e\+38", r"1[.\d]*e\+30")):
        vae.score_samples(one, k=5)
    with pytest.raises(DataError, match=said.format("KL").replace(r"3\.\d+e\+38", r"1[.\d]*e\+30")):
        gaps(vae.model_, vae.model_input(one), k=5, steps=2)


def test_inverse_transform_of_read_only_latents_is_quiet(fitted, digits):
    import warnings

    Z = fitted.transform(digits[:5])
    Z.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = fitted.inverse_transform(Z)
    np.testing.assert_array_equal(out, fitted.inverse_transform(Z.copy()))


def test_inverse_transform_refuses_codes_beyond_the_models_float_range(fitted, digits):
    """float64 codes a float32 model would read as infinities are named, not decoded to NaN."""
    Z = fitted.transform(digits[:3]).astype(np.float64)
    Z[1, 0] = 1e50
    with pytest.raises(DataError, match=r"^Z has values beyond the range of the model's float32 \(first at row 2, column 1: 1e\+50\)"):
        fitted.inverse_transform(Z)
    Z[1, 0] = 3e38  # within float32's range: decoded
    assert fitted.inverse_transform(Z).shape == (3, 64)


def test_the_fitted_mixture_follows_the_latents_of_x_in_the_users_units():
    """With an input map (Gaussian data, standardised), sample(source="gmm") fits its mixture to
    transform(X), the latents of X as given, and the decoder's means of its draws sit where
    those of the aggregate posterior do (measured: within 0.05 of a column's sd; the latents of
    doubly-mapped rows put them 0.6 sd away, at a fifth of the spread)."""
    rng = np.random.default_rng(0)
    x = 50 + 10 * (rng.normal(size=(600, 2)) @ rng.normal(size=(2, 6))) + rng.normal(size=(600, 6))
    vae = VAE(latent_dim=2, hidden=(32,), epochs=30, seed=0, lr=3e-3, likelihood="gaussian").fit(x)
    assert vae.scaling_ is not None
    drawn = []
    sample = vae.model_.sample
    vae.model_.sample = lambda *args, z=None, **kwargs: (drawn.append(z), sample(*args, z=z, **kwargs))[1]
    gmm = vae.sample(5000, seed=0, source="gmm", X=x, components=1)
    aggregate = vae.sample(5000, seed=0, source="aggregate", X=x)
    mu = vae.transform(x)
    np.testing.assert_allclose(drawn[0].numpy().mean(0), mu.mean(0), atol=0.05)
    np.testing.assert_allclose(np.cov(drawn[0].numpy().T), np.cov(mu.T), atol=0.05, rtol=0.1)
    sd = x.std(0)
    np.testing.assert_array_less(np.abs(gmm.mean(0) - aggregate.mean(0)), 0.15 * sd)
    np.testing.assert_allclose(gmm.std(0), aggregate.std(0), rtol=0.2)


def test_a_parameter_that_acts_on_nothing_is_refused_and_the_estimator_stays_unfitted():
    """fixed_std acts under variance="fixed" alone and compile_mode under compile=True (its
    reduce-overhead on CUDA alone): set away from their defaults without them, fit refuses (the
    CLI refuses the flags); with them, or at their defaults, it fits."""
    x = np.random.default_rng(0).random((60, 4))
    for params, message in (({"likelihood": "gaussian", "fixed_std": 0.5}, "fixed_std applies to variance fixed only"),
                            ({"compile_mode": "reduce-overhead"}, "compile_mode applies only when compile is on"),
                            ({"compile": True, "compile_mode": "reduce-overhead"}, "compile_mode applies to device cuda only when it is reduce-overhead"),
                            ({"inference": "vi", "encoder": "gated"}, "encoder applies to inference with an encoder; inference vi has no encoder"),
                            ({"net": "gated", "activation": "tanh"}, "activation applies to the hidden layers of mlp and conv nets"),
                            ({"local_lr": 0.3}, "local_lr applies to inference vi or map or autoencoder only")):  # fmt: skip
        vae = VAE(epochs=1, hidden=(4,), latent_dim=2, **params)
        with pytest.raises(ConfigError, match=message):
            vae.fit(x)
        assert not hasattr(vae, "model_")
    fitted = VAE(epochs=1, hidden=(4,), latent_dim=2, likelihood="gaussian", variance="fixed", fixed_std=0.5).fit(x)
    assert float(fitted.model_.likelihood.logvar.exp().sqrt()) == pytest.approx(0.5)
    VAE(epochs=1, hidden=(4,), latent_dim=2, likelihood="gaussian", fixed_std=1.0).fit(x)  # the default: nothing to refuse


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_fit_trains_under_the_callers_no_grad(digits, mode):
    """fit turns gradients on for itself: the same bits as a fit outside the caller's mode."""
    ref = VAE(latent_dim=2, hidden=(8,), epochs=2, seed=0).fit(digits[:200])
    with mode():
        est = VAE(latent_dim=2, hidden=(8,), epochs=2, seed=0).fit(digits[:200])
        assert not torch.is_grad_enabled()  # the caller's mode is left as it was
    np.testing.assert_array_equal(est.transform(digits[:20]), ref.transform(digits[:20]))


def test_a_fixed_scaling_fits_data_in_its_own_units(digits, tmp_path):
    """scaling=(0, 16) on the pixels 0..16 is the model of the pixels / 16: the same weights and
    latents, samples and reconstructions in 0..16, densities less 64·log 16 (the Jacobian)."""
    from sklearn.base import clone

    raw = digits[:300] * 16.0
    scaled = VAE(latent_dim=2, hidden=(16,), epochs=2).fit(digits[:300])
    est = VAE(latent_dim=2, hidden=(16,), epochs=2, scaling=(0, 16)).fit(raw)
    assert est.config_.model.likelihood == scaled.config_.model.likelihood == "continuous_bernoulli"
    assert (est.scaling_.shift.tolist(), est.scaling_.scale.tolist()) == ([0.0], [16.0])
    np.testing.assert_array_equal(est.transform(raw), scaled.transform(digits[:300]))
    np.testing.assert_allclose(est.sample(4, seed=1), 16 * scaled.sample(4, seed=1), rtol=1e-6)
    np.testing.assert_allclose(est.score_samples(raw[:20], k=5), scaled.score_samples(digits[:20], k=5) - 64 * math.log(16), rtol=1e-6)
    # Kept by clone and by save/load: a refit reads the same units.
    loaded = vaekit.load(est.save(tmp_path / "run"))
    assert loaded.get_params()["scaling"] == (0.0, 16.0)
    np.testing.assert_array_equal(clone(loaded).fit(raw).transform(raw), est.transform(raw))
    # A learned standardisation is learned again by a refit, not kept.
    gaussian = vaekit.load(VAE(latent_dim=2, hidden=(8,), epochs=1).fit(raw).save(tmp_path / "g"))
    assert gaussian.get_params()["standardize"] == "on" and gaussian.get_params()["scaling"] is None


@pytest.mark.parametrize("held_value, likelihood", [(0.5, "continuous_bernoulli"), (1.5, "gaussian")])
def test_auto_likelihood_reads_the_validation_rows_too(held_value, likelihood):
    """A value only a held-out row has cannot fall outside the likelihood "auto" chooses."""
    rng = np.random.default_rng(0)
    x = (rng.random((60, 5)) > 0.5).astype(np.float64)
    n_valid = 6  # round(0.1 · 60): the first 6 rows of the fit's permutation are held out
    x[np.random.default_rng(0).permutation(60)[:n_valid][0], 0] = held_value
    est = VAE(latent_dim=2, hidden=(8,), epochs=1, seed=0).fit(x)
    assert est.config_.model.likelihood == likelihood
    assert est.score_samples(x, k=5).shape == (60,)


def test_valid_fraction_rounds_as_the_cli_and_zero_is_refused(digits):
    from vaekit.data.splits import split_sizes

    # 25 rows at 0.1: 2.5 held out rounds half up, as vaekit train's split does (Python's round:
    # 2); per-datapoint inference keeps one q per training row, so n_points counts them.
    est = VAE(latent_dim=2, hidden=(8,), epochs=1, inference="vi", seed=0).fit(digits[:25])
    assert split_sizes(25, 0.1, 0.0) == (22, 3, 0) and est.config_.model.n_points == 22
    with pytest.raises(DataError, match=r"valid_fraction=0 holds out no rows.*X_valid"):
        VAE(latent_dim=2, hidden=(8,), epochs=1, valid_fraction=0.0).fit(digits[:50])
    # with X_valid given, valid_fraction plays no part
    VAE(latent_dim=2, hidden=(8,), epochs=1, valid_fraction=0.0).fit(digits[:50], X_valid=digits[50:60])


def test_out_of_support_errors_show_the_values_exactly():
    rng = np.random.default_rng(0)
    est = VAE(latent_dim=2, hidden=(8,), epochs=1, seed=0).fit((rng.random((60, 5)) > 0.5).astype(float))
    with pytest.raises(DataError, match=r"e\.g\. 1\.0000001: values from 1\.0000001 to 1\.0000001"):
        est.transform(np.full((3, 5), 1.0000001))
    with pytest.raises(ConfigError, match=r"seed must be <= 9223372036854775807, got 18446744073709551616"):
        est.sample(3, seed=2**64)


def test_a_model_moved_to_float64_saves_and_loads_as_float64(digits, tmp_path):
    est = VAE(latent_dim=2, hidden=(8,), epochs=1, seed=0).fit(digits[:100])
    est.model_.double()
    est.save(tmp_path / "run")
    back = vaekit.load(tmp_path / "run")
    assert next(back.model_.parameters()).dtype == torch.float64 and back.config_.train.dtype == "float64"
    np.testing.assert_array_equal(back.transform(digits[:10]), est.transform(digits[:10]))
    assert est.config_.train.dtype == "float32"  # the fitted estimator's own record is left alone
    # A model fitted under bf16 autocast, moved to float64, steps in float64 when refitted.
    mixed = VAE(latent_dim=2, hidden=(8,), epochs=1, seed=0, amp="bf16").fit(digits[:100])
    mixed.model_.double()
    mixed.save(tmp_path / "mixed")
    back = vaekit.load(tmp_path / "mixed")
    assert (back.config_.train.dtype, back.config_.train.amp, back.get_params()["amp"]) == ("float64", "off", "off")
    np.testing.assert_array_equal(back.transform(digits[:10]), mixed.transform(digits[:10]))


def test_a_bfloat16_model_answers_in_float32_and_is_not_saved(digits, tmp_path):
    from vaekit.errors import CheckpointError

    est = VAE(latent_dim=2, hidden=(8,), epochs=1, seed=0).fit(digits[:100])
    est.save(tmp_path / "run")
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    est.model_.to(torch.bfloat16)
    z = est.transform(digits[:10])
    assert z.dtype == np.float32 and z.shape == (10, 2) and np.isfinite(z).all()
    assert est.sample(3, seed=1).dtype == np.float32 and est.inverse_transform(z).shape == (10, 64)
    assert est.reconstruct(digits[:4]).dtype == np.float32
    with pytest.raises(CheckpointError, match=r"parameters are bfloat16.*model_\.float\(\)"):
        est.save(tmp_path / "run", overwrite=True)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


def test_a_read_only_memory_map_is_read_without_warnings(tmp_path):
    """np.load(mmap_mode="r") rows: fit, encode, score_samples and aggregate sampling raise no
    warning (torch's about non-writable arrays does not apply to rows only read) and give what
    the same rows in memory give."""
    import warnings

    x = np.random.default_rng(0).random((60, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = vaekit.VAE(latent_dim=2, hidden=(8,), epochs=1, seed=0).fit(mapped)
        got = (est.encode(mapped)[0], est.score_samples(mapped, k=3), est.sample(4, seed=0, source="aggregate", X=mapped))
    ref = vaekit.VAE(latent_dim=2, hidden=(8,), epochs=1, seed=0).fit(x)
    for a, b in zip(got, (ref.encode(x)[0], ref.score_samples(x, k=3), ref.sample(4, seed=0, source="aggregate", X=x))):
        np.testing.assert_array_equal(a, b)


def test_sample_out_of_memory_is_a_memory_error(monkeypatch):
    """torch's CPU allocator failing inside sample becomes one MemoryError naming n and the
    way out; any other RuntimeError passes through as it was."""
    est = vaekit.VAE(latent_dim=2, hidden=(8,), epochs=1, seed=0).fit(np.random.default_rng(0).random((40, 5)))

    def fail(message):
        def sample(*a, **k):
            raise RuntimeError(message)

        return sample

    monkeypatch.setattr(est.model_, "sample", fail("[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"))
    with pytest.raises(MemoryError, match=r"^sample\(n=7\) ran out of memory \(.*can't allocate memory.*\); draw fewer rows at a time$"):
        est.sample(7)
    monkeypatch.setattr(est.model_, "sample", fail("something else"))
    with pytest.raises(RuntimeError, match="^something else$"):
        est.sample(7)


def test_sample_more_rows_than_memory_holds_is_refused_before_drawing(monkeypatch):
    """n rows of D float32 values beyond the free memory: a ConfigError naming both sizes before
    any row is drawn (the process would otherwise grow until the kernel kills it); as many rows
    as fit are drawn, and sample_blocks, which streams, is not limited."""
    from vaekit import hardware

    est = vaekit.VAE(latent_dim=2, hidden=(8,), epochs=1, seed=0).fit(np.random.default_rng(0).random((40, 5)))
    monkeypatch.setattr(hardware, "available_memory", lambda device="cpu": 7 * 5 * 4)
    monkeypatch.setattr(est.model_, "sample", lambda *a, **k: pytest.fail("drew rows"))
    with pytest.raises(ConfigError, match=r"^sample\(n=8\) needs at least 1.49e-07 GiB for its rows and the machine has 1.3e-07 GiB free: .*sample_blocks$"):
        est.sample(8)
    monkeypatch.undo()
    monkeypatch.setattr(hardware, "available_memory", lambda device="cpu": 7 * 5 * 4)
    assert est.sample(7, seed=0).shape == (7, 5)
    assert sum(len(b) for b in est.sample_blocks(8, seed=0)) == 8
    with pytest.raises(ConfigError, match="n must be"):
        est.sample(-1)
    with pytest.raises(ConfigError, match="^source must be one of"):  # the arguments' own error first
        est.sample(8, source="nope")


def test_tensors_of_images_meta_tensors_and_mixed_column_names():
    """A torch tensor of images is flattened as numpy (no NumPy 2 deprecation of reshaping a
    tensor); a meta tensor and a DataFrame whose column names mix types are DataErrors."""
    import warnings

    import pandas as pd

    imgs = np.random.default_rng(0).random((60, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        vae = VAE(latent_dim=2, hidden=(16,), epochs=1, seed=0).fit(torch.tensor(imgs))
        z = vae.transform(torch.tensor(imgs))
    np.testing.assert_array_equal(z, vae.transform(imgs))
    with pytest.raises(DataError, match=r"^X is a meta tensor: it holds no values$"):
        vae.transform(torch.empty(5, 8, 8, device="meta"))
    with pytest.raises(DataError, match=r"^X is a meta tensor"):
        VAE(latent_dim=2, hidden=(8,), epochs=1).fit(torch.empty(50, 6, device="meta"))
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(100, 4)), columns=["a", 1, "c", 2])
    with pytest.raises(DataError, match=r"^Feature names are only supported if all input features have string names"):
        VAE(latent_dim=2, hidden=(8,), epochs=1).fit(frame)
    # The same for validation rows and for latents: X_valid, and Z of inverse_transform.
    x = frame.to_numpy()
    with pytest.raises(DataError, match=r"^X_valid: Feature names are only supported if all input features have string names"):
        VAE(latent_dim=2, hidden=(8,), epochs=1).fit(x, X_valid=frame[:10])
    with pytest.raises(DataError, match=r"^X_valid could not be converted to an array .*expected a 2-D table of numbers$"):
        VAE(latent_dim=2, hidden=(8,), epochs=1).fit(x, X_valid=[[0.1, 0.2, 0.3, 0.4], [0.5]])
    with pytest.raises(DataError, match=r"^Z is a meta tensor: it holds no values$"):
        vae.inverse_transform(torch.empty(3, 2, device="meta"))
    with pytest.raises(DataError, match=r"^Z could not be converted to an array .*expected a 2-D table of numbers$"):
        vae.inverse_transform([[0.1, 0.2], [0.3]])
    z = np.random.default_rng(1).normal(size=(4, 2))
    expected = vae.inverse_transform(z)
    np.testing.assert_array_equal(vae.inverse_transform(torch.tensor(z)), expected)
    np.testing.assert_array_equal(vae.inverse_transform(pd.DataFrame(z, columns=["vae0", "vae1"])), expected)
    np.testing.assert_array_equal(vae.inverse_transform(z.tolist()), expected)


@pytest.mark.parametrize("source", ["prior", "aggregate", "gmm"])
def test_sample_blocks_are_sample_in_pieces(fitted, digits, monkeypatch, source):
    """sample_blocks(n) gives sample(n)'s rows in blocks of BATCH_ROWS, each block its own
    draws (one generator, one mixture stream: an int seed would repeat the first block), and
    refuses bad options when called, before a block is asked for."""
    from vaekit import estimator

    monkeypatch.setattr(estimator, "BATCH_ROWS", 5)
    options = {} if source == "prior" else {"X": digits[:40], **({"components": 3} if source == "gmm" else {})}
    blocks = list(fitted.sample_blocks(12, seed=7, source=source, **options))
    assert [len(b) for b in blocks] == [5, 5, 2]
    np.testing.assert_array_equal(np.concatenate(blocks), fitted.sample(12, seed=7, source=source, **options))
    assert not np.allclose(blocks[0][:2], blocks[1][:2])
    with pytest.raises(ConfigError, match="source must be one of"):
        fitted.sample_blocks(3, source="posterior")
    with pytest.raises(ConfigError, match="n must be"):
        fitted.sample_blocks(0)


def test_fit_and_its_methods_ignore_the_callers_autocast(digits):
    """A caller's torch.autocast region does not turn a float32 fit (amp="off") or its
    evaluation into bfloat16: the same bits as outside the region."""
    kw = dict(latent_dim=2, hidden=(8,), epochs=2, seed=0, amp="off")
    ref = VAE(**kw).fit(digits[:200])
    x = digits[:20]
    want = (ref.transform(x), ref.score_samples(x, k=5), ref.elbo(x)["elbo"], ref.evaluate(x, k=5)["log_likelihood"],
            ref.inverse_transform(ref.transform(x)), ref.reconstruct(x, draw="z", seed=1), ref.sample(5, seed=2))  # fmt: skip
    with torch.autocast("cpu", dtype=torch.bfloat16):
        est = VAE(**kw).fit(digits[:200])
        got = (est.transform(x), est.score_samples(x, k=5), est.elbo(x)["elbo"], est.evaluate(x, k=5)["log_likelihood"],
               est.inverse_transform(est.transform(x)), est.reconstruct(x, draw="z", seed=1), est.sample(5, seed=2))  # fmt: skip
        assert torch.is_autocast_enabled("cpu")  # the caller's region is left as it was
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)


def test_an_x_valid_of_another_width_is_named_against_x(digits):
    with pytest.raises(DataError, match=r"^X_valid has 10 features per row, but X has 64$"):
        VAE(latent_dim=2, hidden=(8,), epochs=1).fit(digits[:100], X_valid=digits[:20, :10])


@pytest.mark.parametrize(
    "params, message",
    [
        ({"inference": [2]}, r"^inference method must be a name, one of: amortized, .*; got \[2\]$"),  # unhashable: no TypeError
        ({"inference": {"a": 1}}, r"^inference method must be a name"),
        ({"n_samples": 10**7}, r"^n_samples must be <= 500000, got 10000000$"),  # capped as k is
    ],
)
def test_a_parameter_of_the_wrong_kind_or_size_is_one_error(params, message):
    x = np.random.default_rng(0).random((60, 4))
    vae = VAE(epochs=1, hidden=(4,), latent_dim=2, **params)
    with pytest.raises(ConfigError, match=message):
        vae.fit(x)
    assert not hasattr(vae, "model_")


def test_valid_fraction_with_x_valid_is_refused():
    """X_valid replaces the rows valid_fraction would hold out: a fraction other than its
    default beside X_valid would act on nothing, and is refused as other such parameters are;
    0 (hold none of X out) agrees with X_valid."""
    x = np.random.default_rng(0).random((60, 4))
    with pytest.raises(ConfigError, match=r"^valid_fraction applies when fit holds rows of X out; X_valid is given \(valid_fraction=0\.5\)$"):
        VAE(epochs=1, hidden=(4,), latent_dim=2, valid_fraction=0.5).fit(x, X_valid=x[:10])
    VAE(epochs=1, hidden=(4,), latent_dim=2).fit(x, X_valid=x[:10])  # the default: nothing to refuse
    VAE(epochs=1, hidden=(4,), latent_dim=2, valid_fraction=0.0).fit(x, X_valid=x[:10])  # "hold none of X out"
    VAE(epochs=1, hidden=(4,), latent_dim=2, valid_fraction=0.5).fit(x)


def test_a_fit_that_runs_out_of_memory_is_a_memory_error_and_changes_nothing(monkeypatch):
    """torch's allocator failing (a RuntimeError) comes out as a MemoryError that says what to
    ask less of, and a fitted estimator stays fitted to its model; other errors pass as they are."""
    from vaekit import train

    x = np.random.default_rng(0).random((60, 4))
    vae = VAE(epochs=1, hidden=(4,), latent_dim=2).fit(x)
    model = vae.model_

    def allocator_fails(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 GB")

    monkeypatch.setattr(train, "fit", allocator_fails)
    with pytest.raises(MemoryError, match=r"^fit ran out of memory \(\[enforce fail .*can't allocate memory.*\); ask for less at once: a smaller batch_size, k or n_samples$"):
        vae.fit(x)
    assert vae.model_ is model
    monkeypatch.setattr(train, "fit", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("something else")))
    with pytest.raises(RuntimeError, match="^something else$"):
        vae.fit(x)


@pytest.mark.parametrize(
    "n, valid, message",
    [
        (0, False, r"^X has 0 sample\(s\) \(shape=\(0, 4\)\); at least 3 are needed to hold out a validation set$"),
        (2, False, r"^X has 2 sample\(s\) \(shape=\(2, 4\)\); at least 3 are needed to hold out a validation set$"),
        (0, True, r"^X has 0 sample\(s\) \(shape=\(0, 4\)\); at least 2 are needed$"),
        (1, True, r"^X has 1 sample\(s\) \(shape=\(1, 4\)\); at least 2 are needed$"),
    ],
)
def test_too_few_rows_name_the_whole_need(n, valid, message):
    """Zero rows are refused with the same count as one or two: what fit needs, not what any array needs."""
    est = VAE(epochs=1)
    with pytest.raises(DataError, match=message):
        est.fit(np.zeros((n, 4)), X_valid=np.zeros((3, 4)) if valid else None)
    assert not hasattr(est, "model_")


def test_a_fitted_mixtures_draws_come_in_no_order_of_component(digits):
    """GaussianMixture.sample returns its draws grouped by component; sample(source="gmm")
    shuffles them, so that any block of rows (the first n, a file's first block) is a draw of
    the whole mixture: the first and second halves of 4000 draws have the same mean within
    a few standard errors (grouped by component they differ by many)."""
    est = VAE(latent_dim=2, hidden=(32,), epochs=5, lr=3e-3, seed=0).fit(digits[:600])
    z = est._gmm_latents(digits[:600], 10, torch.Generator().manual_seed(0))(4000).double().numpy()
    first, second = z[:2000], z[2000:]
    se = np.sqrt(first.var(0) / 2000 + second.var(0) / 2000)
    assert (np.abs(first.mean(0) - second.mean(0)) < 5 * se).all()
    # And what the user sees: rows of sample() from the first and the last block alike.
    x = est.sample(4000, seed=1, source="gmm", X=digits[:600])
    se = np.sqrt(x[:2000].var(0) / 2000 + x[2000:].var(0) / 2000) + 1e-12
    assert (np.abs(x[:2000].mean(0) - x[2000:].mean(0)) < 5 * se).mean() > 0.95


def test_the_same_seed_fits_the_same_model_whatever_the_global_stream(digits):
    """The initial weights are part of the fit: VAE(seed=s).fit(X) gives the same bits whatever
    torch's global stream was before (tests/test_train.py's test_estimator_same_seed_same_parameters
    fits from the same global state each time, so it cannot tell)."""
    fitted = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        fitted.append(VAE(latent_dim=4, hidden=(32,), epochs=1, seed=0).fit(digits[:300]))
    a, b = (dict(f.model_.state_dict()) for f in fitted)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rows_a_fitted_model_reads_are_not_refused_by_their_own_spread(tmp_path):
    """Whether float32 resolves a feature is judged once, on the training rows: two float64
    rows 1e-9 apart in a column, scored together, are not refused as "finer than float32", and
    score as each does alone (so do validation rows given beside X, and streamed rows)."""
    from vaekit.data import load_array

    rng = np.random.default_rng(0)
    X = rng.random((300, 3))  # float64 in [0, 1]: continuous Bernoulli, no input map
    close = np.array([[0.5, 0.2, 0.9], [0.5 + 1e-9, 0.7, 0.1]])
    est = vaekit.VAE(latent_dim=2, hidden=(8,), epochs=1).fit(X, X_valid=close)
    assert est.scaling_ is None
    together = est.score_samples(close, k=5)
    alone = [est.score_samples(row[None], k=5)[0] for row in close]
    np.testing.assert_allclose(together, alone, rtol=1e-5)
    np.save(tmp_path / "close.npy", close)
    mapped, _, _ = load_array(str(tmp_path / "close.npy"), mmap=True)
    np.testing.assert_allclose(est.score_samples(mapped, k=5), together, rtol=1e-5)
    with pytest.raises(DataError, match="finer than float32"):  # training rows still are judged
        vaekit.VAE(latent_dim=2, hidden=(8,), epochs=1).fit(np.vstack([close] * 3))


def test_fit_trains_alone_inside_a_process_group(digits, monkeypatch):
    """A script that has joined a torch.distributed group (DDP, torchrun) and fits the
    estimator on its own rows gets the model a lone process fits, not a share of the batches."""
    from vaekit import train

    alone = VAE(latent_dim=2, hidden=(8,), epochs=2, seed=0).fit(digits[:200])
    monkeypatch.setattr(train, "rank_world", lambda: (1, 2))  # as in rank 1 of a group of 2
    inside = VAE(latent_dim=2, hidden=(8,), epochs=2, seed=0).fit(digits[:200])
    assert [h["valid_elbo"] for h in inside.history_] == [h["valid_elbo"] for h in alone.history_]
    np.testing.assert_array_equal(inside.transform(digits[:20]), alone.transform(digits[:20]))


def test_a_run_fitted_for_cuda_graphs_loads_and_refits_on_the_cpu(digits, tmp_path):
    """load puts the model on the CPU, where compile_mode reduce-overhead (CUDA graphs) acts on
    nothing: the loaded estimator's parameters use the default mode, so clone(...).fit runs."""
    import json

    from sklearn.base import clone

    VAE(latent_dim=2, hidden=(8,), epochs=1, seed=0).fit(digits[:100]).save(tmp_path / "run")
    path = tmp_path / "run" / "config.json"
    config = json.loads(path.read_text())
    config["train"].update(device="cuda", compile=True, compile_mode="reduce-overhead")
    path.write_text(json.dumps(config))
    loaded = vaekit.load(tmp_path / "run")
    assert (loaded.device, loaded.compile, loaded.compile_mode) == ("cpu", True, "default")
    refit = clone(loaded).set_params(compile=False, epochs=1).fit(digits[:100])
    assert refit.transform(digits[:5]).shape == (5, 2)
