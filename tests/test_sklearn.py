"""vaekit.VAE as a scikit-learn estimator: sklearn's common checks (estimator_checks), and
its use in Pipeline, cross_val_score and GridSearchCV, NotFittedError, the caller's random
state left alone, and DataFrames with feature names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from sklearn.utils.validation import check_is_fitted

from vaekit import VAE
from vaekit.errors import DataError, NotNumbersError, VaekitError

# A configuration that trains in well under a second: the checks fit it dozens of times.
TINY = dict(latent_dim=2, hidden=(4,), epochs=1, batch_size=16, likelihood="gaussian")

# Checks that cannot pass exactly, with the reason. Each row's Monte Carlo noise is its own
# (distributions.RowStreams), so a row's estimate no longer depends on its neighbours; what is
# left is float32 rounding, which depends on how many rows a matrix product holds (about 1e-7
# relative, above these checks' tolerance). test_row_estimates_do_not_depend_on_the_other_rows
# asserts the invariance to that rounding.
EXPECTED_FAILED = {
    "check_methods_subset_invariance": "float32 products over a different number of rows round differently (~1e-7 relative)",
    "check_methods_sample_order_invariance": "float32 products over rows in another order round differently (~1e-7 relative)",
}


@parametrize_with_checks(
    [VAE(**TINY), VAE(**TINY, inference="vi", local_steps=5)], expected_failed_checks=lambda est: EXPECTED_FAILED
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    # Correlated Gaussian rows with scales far from 1 (so StandardScaler changes them).
    rng = np.random.default_rng(0)
    return (rng.normal(size=(120, 2)) @ rng.normal(size=(2, 6)) + 0.1 * rng.normal(size=(120, 6))) * 50 + 10


def test_pipeline_with_standard_scaler(X):
    pipe = make_pipeline(StandardScaler(), VAE(**TINY, seed=0)).fit(X)
    z = pipe.transform(X)
    assert z.shape == (120, 2) and np.isfinite(z).all()
    # The pipeline is the scaler then the VAE: the same numbers by hand.
    vae = pipe[-1]
    np.testing.assert_array_equal(z, vae.transform(pipe[0].transform(X)))
    assert np.isfinite(pipe.score(X))
    np.testing.assert_array_equal(make_pipeline(StandardScaler(), VAE(**TINY, seed=0)).fit_transform(X), z)


def test_cross_val_score_is_the_held_out_mean_log_likelihood(X):
    x = StandardScaler().fit_transform(X)
    scores = cross_val_score(VAE(**TINY, seed=0), x, cv=KFold(3))
    assert scores.shape == (3,) and np.isfinite(scores).all()
    # Each fold's score is VAE.score on the held-out rows of a VAE fitted on the others.
    train, test = next(KFold(3).split(x))
    assert scores[0] == VAE(**TINY, seed=0).fit(x[train]).score(x[test])


def test_grid_search_over_latent_dim(X):
    x = StandardScaler().fit_transform(X)
    search = GridSearchCV(VAE(**TINY, seed=0), {"latent_dim": [1, 2]}, cv=2).fit(x)
    assert search.best_params_["latent_dim"] in (1, 2)
    assert search.best_estimator_.transform(x).shape == (120, search.best_params_["latent_dim"])
    assert list(search.cv_results_["param_latent_dim"]) == [1, 2]


def test_y_is_ignored_and_x_valid_is_a_keyword(X):
    x = StandardScaler().fit_transform(X)
    a = VAE(**TINY, seed=0).fit(x).transform(x)
    np.testing.assert_array_equal(VAE(**TINY, seed=0).fit(x, np.arange(120)).transform(x), a)
    b = VAE(**TINY, seed=0).fit(x[:100], X_valid=x[100:])
    assert b.n_features_in_ == 6
    with pytest.raises(TypeError):
        VAE(**TINY).fit(x[:100], None, x[100:])  # X_valid is keyword-only: y takes the second place


def test_unfitted_raises_sklearns_not_fitted_error(X):
    est = VAE(**TINY)
    with pytest.raises(NotFittedError, match="not fitted"):
        check_is_fitted(est)
    for method in (est.transform, est.score_samples, est.score):
        with pytest.raises(NotFittedError, match="not fitted") as info:
            method(X)
        assert isinstance(info.value, VaekitError)  # the CLI prints it as one line
    check_is_fitted(est.fit(X))


def test_fit_leaves_the_global_random_state_alone(X):
    torch.manual_seed(123)
    np.random.seed(123)
    torch_before, numpy_before = torch.get_rng_state(), np.random.get_state()
    est = VAE(**TINY, seed=7).fit(X)
    assert torch.equal(torch.get_rng_state(), torch_before)
    numpy_after = np.random.get_state()
    assert numpy_after[0] == numpy_before[0] and np.array_equal(numpy_after[1], numpy_before[1])
    assert numpy_after[2:] == numpy_before[2:]
    # The caller's next draw is the one it would have been without the fit.
    a = torch.rand(3)
    torch.manual_seed(123)
    np.testing.assert_array_equal(a.numpy(), torch.rand(3).numpy())
    # And the fit is still a function of its own seed, whatever the global state.
    torch.manual_seed(999)
    np.testing.assert_array_equal(VAE(**TINY, seed=7).fit(X).transform(X), est.transform(X))


def test_fits_in_threads_give_the_bits_each_gives_alone(X):
    """torch's generator is the process's: fits in several threads run one at a time, so each
    equals its fit alone, and the calling thread's random state stays where it was."""
    import threading

    alone = {seed: VAE(**TINY, seed=seed).fit(X).transform(X) for seed in (0, 1)}
    torch.manual_seed(5)
    before = torch.get_rng_state()
    results: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, VAE(**TINY, seed=i % 2).fit(X).transform(X))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        np.testing.assert_array_equal(results[i], alone[i % 2])
    assert torch.equal(torch.get_rng_state(), before)


def test_fit_matches_a_training_run_with_the_same_seed(X):
    """The estimator's numbers are those of vaekit.train.fit seeded by hand (as before this
    estimator forked the random state): the fork changes nothing inside the fit."""
    from vaekit.model import VAEModel
    from vaekit.train import fit

    x = StandardScaler().fit_transform(X).astype(np.float32)
    est = VAE(**TINY, seed=3).fit(x[:100], X_valid=x[100:])
    torch.manual_seed(3)
    model = VAEModel(est.config_.model)
    # The rows as the model sees them: standardised by the statistics of x[:100] alone.
    history = fit(model, est.scaling_.to_model(x[:100]), est.scaling_.to_model(x[100:]), est.config_.train)
    timing = {"train_seconds", "images_per_second", "epoch_seconds"}  # wall clock, never equal
    assert [{k: v for k, v in h.items() if k not in timing} for h in history] == [
        {k: v for k, v in h.items() if k not in timing} for h in est.history_
    ]
    for p, q in zip(model.parameters(), est.model_.parameters()):
        assert torch.equal(p, q)


def test_dataframe_input_with_feature_names(X):
    pd = pytest.importorskip("pandas")
    x = StandardScaler().fit_transform(X)
    columns = [f"f{i}" for i in range(6)]
    df = pd.DataFrame(x, columns=columns)
    est = VAE(**TINY, seed=0).fit(df)
    assert list(est.feature_names_in_) == columns and est.n_features_in_ == 6
    # A DataFrame gives the numbers its array gives, in every method that takes X.
    ref = VAE(**TINY, seed=0).fit(x)
    assert not hasattr(ref, "feature_names_in_")
    np.testing.assert_array_equal(est.transform(df), ref.transform(x))
    np.testing.assert_array_equal(est.score_samples(df, k=10), ref.score_samples(x, k=10))
    np.testing.assert_array_equal(est.reconstruct(df), ref.reconstruct(x))
    # Columns renamed or reordered since fit: an error naming them.
    with pytest.raises(DataError, match="feature names should match"):
        est.transform(df[columns[::-1]])
    # A plain array after a DataFrame fit: sklearn's warning, and the same numbers.
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        np.testing.assert_array_equal(est.transform(x), ref.transform(x))
    # Mixed column types (bool and float) come as an object array: read as numbers.
    mixed = df.assign(f0=df["f0"] > 0)
    np.testing.assert_array_equal(est.transform(mixed), est.transform(df.assign(f0=(df["f0"] > 0).astype(float))))
    with pytest.raises(NotNumbersError, match="column 'f0' holds text; expected numbers") as refused:
        est.transform(df.assign(f0="a"))
    assert isinstance(refused.value, DataError) and isinstance(refused.value, TypeError)  # vaekit's kind and numpy's
    # Text that spells numbers, dates and durations are refused, as numpy arrays of them are.
    for column, found in ((df["f0"].astype(str), "text"), (pd.Timestamp("2020-01-01") + pd.to_timedelta(df["f0"], "D"), "datetime64"),
                          (pd.to_timedelta(df["f0"], "D"), "timedelta64")):  # fmt: skip
        with pytest.raises(DataError, match=f"column 'f0' holds {found}"):
            est.transform(df.assign(f0=column))
    # pandas' nullable columns: numbers as their float columns give them, pd.NA a missing value.
    nullable = df.assign(f0=df["f0"].astype("Float64"))
    np.testing.assert_array_equal(est.transform(nullable), est.transform(df))
    nullable.loc[3, "f0"] = pd.NA
    with pytest.raises(DataError, match=r"NaN \(first at row 4, column 1\)"):
        est.transform(nullable)


def test_feature_names_out_and_pandas_output():
    """transform's columns are named vae0, vae1, ... and set_output(transform="pandas") gives a
    DataFrame, alone and at the end of a pipeline."""
    pd = pytest.importorskip("pandas")
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = pd.DataFrame(np.random.default_rng(0).normal(size=(120, 3)), columns=["a", "b", "c"])
    est = VAE(latent_dim=2, hidden=(8,), epochs=1).set_output(transform="pandas")
    Z = est.fit_transform(X)
    assert isinstance(Z, pd.DataFrame) and list(Z.columns) == ["vae0", "vae1"]
    np.testing.assert_array_equal(Z.to_numpy(), est.set_output(transform="default").transform(X))
    assert list(est.get_feature_names_out()) == ["vae0", "vae1"]
    pipe = make_pipeline(StandardScaler(), VAE(latent_dim=2, hidden=(8,), epochs=1)).set_output(transform="pandas").fit(X)
    assert list(pipe.transform(X).columns) == ["vae0", "vae1"] == list(pipe.get_feature_names_out())


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"inference": "vi", "local_steps": 10},
        {"inference": "map", "local_steps": 10},
        {"latent_dim": (2, 2), "hidden": (6,)},
        {"prior": "vampprior", "pseudo_inputs": 5},
        {"dtype": "float64"},
    ],
    ids=["amortized", "vi", "map", "two-layer", "vampprior", "float64"],
)
def test_row_estimates_do_not_depend_on_the_other_rows(X, kw):
    """A row's Monte Carlo estimates (score_samples, elbo, and transform where q is optimised
    per row) are the same alone, in a subset, in another order or batch, and across calls: each
    row draws its noise from a stream of its own. Only float32 rounding differs."""
    vae = VAE(**{**TINY, **kw}, seed=0).fit(X)
    tol = dict(rtol=1e-5, atol=1e-5) if kw.get("dtype") != "float64" else dict(rtol=1e-12, atol=1e-12)
    perm = np.random.default_rng(1).permutation(len(X))
    full = vae.score_samples(X, k=50)
    np.testing.assert_allclose(vae.score_samples(X[perm], k=50), full[perm], **tol)
    np.testing.assert_allclose(np.concatenate([vae.score_samples(X[i : i + 1], k=50) for i in range(4)]), full[:4], **tol)
    # Another seed draws other noise: the estimate is Monte Carlo, not a fixed function.
    assert np.abs(vae.score_samples(X, k=50, seed=1) - full).max() > 1e-4
    elbo = vae.elbo(X)["elbo"]
    np.testing.assert_allclose(vae.elbo(X[perm])["elbo"], elbo[perm], **tol)
    np.testing.assert_allclose(vae.elbo(X[7:9])["elbo"], elbo[7:9], **tol)
    z = vae.transform(X)
    np.testing.assert_allclose(vae.transform(X[perm]), z[perm], **tol)
    np.testing.assert_allclose(vae.transform(X[5:6]), z[5:6], **tol)


def test_row_streams_do_not_depend_on_chunking():
    """RowStreams reads each row's stream in fixed pages: drawing 70 samples at once or as
    3 + 67 gives the same values, and a row's draws are the same in any batch."""
    from vaekit.distributions import RowStreams

    x = torch.arange(12.0).reshape(4, 3)
    whole = RowStreams(x, seed=3).randn(70, 5, torch.float32)  # (70, 4, 5)
    parts = RowStreams(x, seed=3)
    split = torch.cat([parts.randn(3, 5, torch.float32), parts.randn(67, 5, torch.float32)])
    assert torch.equal(whole, split)
    alone = RowStreams(x[2:3], seed=3).randn(70, 5, torch.float32)
    assert torch.equal(alone[:, 0], whole[:, 2])
    assert not torch.equal(whole[:, 0], whole[:, 1])  # rows differ, so do their streams
    assert not torch.equal(RowStreams(x, seed=4).randn(70, 5, torch.float32), whole)
    # −0.0 is 0.0: a row that holds it draws what the same row with 0.0 draws.
    signed = torch.tensor([[0.0, 1.0], [-0.0, 1.0]])
    draws = RowStreams(signed, seed=3).randn(5, 2, torch.float32)
    assert torch.equal(draws[:, 0], draws[:, 1])
    # The streams of one seed are disjoint by use: a q fitted on FIT draws is checked on CHECK
    # draws and estimated on ESTIMATE draws, never on its own.
    uses = [RowStreams(x, seed=3, use=u).randn(5, 5, torch.float32) for u in (RowStreams.ESTIMATE, RowStreams.CHECK, RowStreams.FIT)]
    assert torch.equal(uses[0], whole[:5]) and not torch.equal(uses[0], uses[1]) and not torch.equal(uses[0], uses[2])
    assert not torch.equal(uses[1], uses[2])
    # Standard normal: moments of many draws.
    many = RowStreams(x, seed=0).randn(20000, 5, torch.float64)
    assert abs(float(many.mean())) < 0.01 and abs(float(many.std()) - 1) < 0.01
