"""vaekit.runs: the pictures of a run show rows from across the test split, by class."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from vaekit import plots
from vaekit.config import ModelConfig
from vaekit.data import Dataset
from vaekit.model import VAEModel
from vaekit.runs import LATENT_POINTS, RECONSTRUCTED_ROWS, picture_rows, train_run, write_pictures
from vaekit.config import DataConfig, RunConfig, TrainConfig
from vaekit.objectives.elbo import ElboObjective

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


# ---- a run set aside by --overwrite ------------------------------------------------------------


def _digits_run(run_dir: Path) -> dict[str, bytes]:
    from vaekit.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    config = RunConfig(
        model=ModelConfig(input_dim=64, latent_dim=2, hidden=(8,), likelihood="continuous_bernoulli", image_shape=(8, 8)),
        train=TrainConfig(epochs=1, batch_size=256, eval_k=2, seed=0),
        data=DataConfig(source="digits"),
    )
    train_run(config, run_dir)
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


class Killed(BaseException):
    """Stands in for a kill (or a SIGTERM) between two renames."""


def test_a_set_aside_cut_short_at_any_file_is_undone(tmp_path, monkeypatch):
    """A kill after any number of set_aside's renames leaves the old run split between RUN_DIR
    and .vaekit-replaced: recovery moves it back whole, and deletes none of it."""
    from vaekit import checkpoint as ckpt
    from vaekit.runs import recover_replaced

    run_dir = tmp_path / "run"
    before = _digits_run(run_dir)
    n_files = len(list(run_dir.iterdir()))
    real_replace = Path.replace
    for moves in range(n_files + 1):
        calls = {"n": 0}

        def replace(self, target, moves=moves, calls=calls):
            if Path(target).parent.name == ckpt.REPLACED_DIR:
                if calls["n"] == moves:
                    raise Killed
                calls["n"] += 1
            return real_replace(self, target)

        monkeypatch.setattr(Path, "replace", replace)
        with contextlib.suppress(Killed):  # all renames done when moves is the file count
            ckpt.set_aside(run_dir)
        monkeypatch.undo()
        recover_replaced(run_dir)
        assert _files(run_dir) == before, moves


def test_an_interrupt_inside_set_aside_gives_the_run_back(tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM while --overwrite moves the old run aside: train_run's clean-up
    puts it back as it was."""
    from vaekit import checkpoint as ckpt
    from vaekit.config import RunConfig

    run_dir = tmp_path / "run"
    before = _digits_run(run_dir)
    config = RunConfig.load(run_dir / ckpt.CONFIG_FILE)
    real_replace = Path.replace
    calls = {"n": 0}

    def replace(self, target):
        if Path(target).parent.name == ckpt.REPLACED_DIR:
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        train_run(config, run_dir, overwrite=True)
    monkeypatch.undo()
    assert _files(run_dir) == before


def test_readers_say_what_the_next_writer_does_with_a_run_set_aside(tmp_path):
    from vaekit import checkpoint as ckpt
    from vaekit.errors import CheckpointError

    run_dir = tmp_path / "run"
    _digits_run(run_dir)
    # A new run that got as far as its checkpoint, not its best model: the old run will go.
    ckpt.set_aside(run_dir)
    aside = run_dir / ckpt.REPLACED_DIR
    for name in (ckpt.CONFIG_FILE, ckpt.LAST_FILE):
        (run_dir / name).write_bytes((aside / name).read_bytes())
    with pytest.raises(CheckpointError, match=r"no model.safetensors; the run an --overwrite replaced is in .* which deletes it"):
        ckpt.load_run(run_dir)
    # Without a checkpoint the old run comes back.
    (run_dir / ckpt.LAST_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"was stopped before its new run's first checkpoint.* puts it back"):
        ckpt.load_run(run_dir)
    # A run alone between its checkpoint and its best model: --resume writes it.
    shutil.rmtree(run_dir)
    _digits_run(run_dir)
    (run_dir / ckpt.MODEL_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"no model.safetensors \(the run stopped between its checkpoint and its best model\): .*--resume"):
        ckpt.load_run(run_dir)
    # A folder where the weights belong is named as such, not sent to --resume (which cannot write there).
    (run_dir / ckpt.MODEL_FILE).mkdir()
    with pytest.raises(CheckpointError, match=r"model.safetensors: not a file"):
        ckpt.load_run(run_dir)
    # Neither file: the run never finished an epoch (or lost both); --resume has nothing either.
    (run_dir / ckpt.MODEL_FILE).rmdir()
    (run_dir / ckpt.LAST_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"no model.safetensors and no last.safetensors \(the run stopped before its first epoch ended.*--overwrite"):
        ckpt.load_run(run_dir)


def test_loading_leaves_the_callers_random_stream_and_fitting_ignores_the_default_dtype(tmp_path):
    """vaekit.load builds the model (a random start, overwritten at once) on a fork of torch's
    stream: the caller's next draws are those it would have had. A default dtype the caller set
    (torch.set_default_dtype) does not change what a float32 fit with the same seed learns."""
    import numpy as np
    import torch

    import vaekit

    X = np.random.default_rng(0).random((60, 5)).astype(np.float32)
    kw = dict(latent_dim=2, hidden=(8,), epochs=2, batch_size=16, seed=3)
    vae = vaekit.VAE(**kw).fit(X)
    vae.save(tmp_path / "m")
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    vaekit.load(tmp_path / "m")
    assert torch.equal(torch.rand(3), expected)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        other = vaekit.VAE(**kw).fit(X)
    finally:
        torch.set_default_dtype(old)
    for a, b in zip(vae.model_.state_dict().values(), other.model_.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_a_test_row_that_overflows_says_the_trained_model_is_kept(tmp_path, capsys):
    """Training finishes before the test split is evaluated: a test row that overflows the
    model's arithmetic ends the command with exit 1, and the line says the model is saved."""
    from cli_helpers import cli

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3))
    test = x[:10].copy()
    test[4, 1] = 1e30
    np.savez(tmp_path / "d.npz", train=x[:100], valid=x[100:], test=test)
    run = tmp_path / "run"
    code, out, err = cli(capsys, "train", "--data", tmp_path / "d.npz", "--out", run, "--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--eval-k", "2", "--quiet")
    assert code == 1 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("vaekit: error: [test] ") and f"training finished: the model is saved in {run}" in err
    assert (run / "model.safetensors").is_file()
    assert cli(capsys, "evaluate", run, "--data", tmp_path / "d.npz", "--split", "valid", "--k", "2")[0] == 0  # and it evaluates


def test_the_summary_names_the_best_epoch_and_its_validation_elbo(tmp_path, monkeypatch):
    scores = iter([1.0, 3.0, 2.0])  # epoch 2 the best, epoch 3 the last
    monkeypatch.setattr(ElboObjective, "validate", lambda self, model, x, terms, seed: next(scores))
    config = RunConfig(
        model=ModelConfig(input_dim=64, latent_dim=2, hidden=(8,), likelihood="continuous_bernoulli", image_shape=(8, 8)),
        train=TrainConfig(epochs=3, batch_size=256, eval_k=2, seed=0, quiet=True),
        data=DataConfig(source="digits"),
    )
    summary = train_run(config, tmp_path)
    from vaekit.checkpoint import read_metrics

    history = read_metrics(tmp_path)
    assert [r["valid_score"] for r in history] == [1.0, 3.0, 2.0]
    assert summary["epochs"] == 3
    assert summary["best_epoch"] == 2
    assert summary["valid_elbo"] == history[1]["valid_elbo"] != history[2]["valid_elbo"]
