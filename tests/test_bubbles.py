"""vaekit.bubbles: the bubbles of a 2-D latent kept by the training loop at the start and the
middle of training, and the pictures `vaekit train` draws from them (bubbles.png, and
spaces.png for data in 3-D)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import cli
from matplotlib.collections import EllipseCollection

from vaekit import bubbles, plots
from vaekit.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from vaekit.model import VAEModel
from vaekit.train import fit

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rows(n: int = 120, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)


def model(latent_dim: int = 2) -> VAEModel:
    torch.manual_seed(0)
    return VAEModel(ModelConfig(input_dim=3, latent_dim=latent_dim, hidden=(8,), likelihood="gaussian"))


def run_config(m: VAEModel, train: TrainConfig) -> RunConfig:
    return RunConfig(model=m.config, train=train, data=DataConfig(source="array"))


@pytest.mark.parametrize("epochs, kept", [(1, (0,)), (2, (0, 1)), (3, (0, 2)), (10, (0, 5)), (11, (0, 6))])
def test_snapshot_epochs_are_the_start_and_the_middle(epochs, kept):
    assert bubbles.snapshot_epochs(epochs) == kept


def test_snapshots_round_trip_and_replace(tmp_path):
    assert bubbles.load_snapshots(tmp_path) == {}
    a, b = np.arange(8.0).reshape(4, 2), -np.arange(8.0).reshape(4, 2)
    bubbles.save_snapshot(tmp_path, 5, a, b)
    bubbles.save_snapshot(tmp_path, 0, b, a)
    bubbles.save_snapshot(tmp_path, 5, a + 1, b)  # the same epoch again replaces it
    kept = bubbles.load_snapshots(tmp_path)
    assert list(kept) == [0, 5]
    np.testing.assert_array_equal(kept[0][0], b)
    np.testing.assert_array_equal(kept[5][0], a + 1)
    np.testing.assert_array_equal(kept[5][1], b)
    assert sorted(p.name for p in tmp_path.iterdir()) == [bubbles.BUBBLES_FILE]  # no temporary left


def test_fit_keeps_the_start_and_middle_bubbles_without_changing_training(tmp_path):
    """4 epochs: bubbles.npz holds epoch 0 (the initial encoder's q of the first validation
    rows, checked against a fresh model) and epoch 2; a run without a directory (no snapshots)
    ends with bit-identical weights, so keeping them draws nothing from the training stream."""
    x = rows()
    config = TrainConfig(epochs=4, batch_size=32, seed=3)
    with_dir = model()
    fit(with_dir, x[:90], x[90:], config, tmp_path, run_config(with_dir, config))
    kept = bubbles.load_snapshots(tmp_path)
    assert list(kept) == [0, 2]
    assert [v[0].shape for v in kept.values()] == [(30, 2), (30, 2)]
    fresh = model()
    fresh.prior.init_from_data(x[:90], np.random.default_rng(3))
    mu0, logvar0 = bubbles.posterior_parameters(fresh, x[90:])
    np.testing.assert_allclose(kept[0][0], mu0, rtol=0, atol=1e-7)
    np.testing.assert_allclose(kept[0][1], logvar0, rtol=0, atol=1e-7)
    assert not np.allclose(kept[2][0], mu0)  # training moved the bubbles
    without = model()
    fit(without, x[:90], x[90:], config)
    for k, v in without.state_dict().items():
        assert torch.equal(v, with_dir.state_dict()[k]), k


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "File is not a zip file"),  # cut short
        (lambda p: np.savez(p, mu_z1=np.zeros((3, 2))), "an array 'mu_z1', not of a snapshot"),  # another program's
        (lambda p: np.savez(p, mu_1=np.zeros((3, 2))), "mu_1 without logvar_1"),
        (lambda p: np.savez(p, mu_1=np.zeros(3), logvar_1=np.zeros(3)), "mu_1 and logvar_1 are not two \\(n, d\\) float arrays alike"),
    ],
)
def test_an_unreadable_bubbles_file_is_left_out_with_a_warning(tmp_path, capsys, damage, why):
    """bubbles.npz only feeds a picture: damaged, or holding other arrays, it is read as no
    snapshots with one warning naming it and why, and a resumed run trains on and ends as
    usual (it used to stop with a traceback after its new epochs were saved)."""
    from vaekit.errors import VaekitWarning

    run = tmp_path / "run"
    argv = ["train", "--data", "digits", "--hidden", "8", "--latent-dim", "2", "--eval-k", "2", "--quiet", "--out", str(run)]
    assert cli(capsys, *argv, "--epochs", "2")[0] == 0
    assert list(bubbles.load_snapshots(run)) == [0, 1]
    damage(run / "bubbles.npz")
    with pytest.warns(VaekitWarning, match="not a file of bubbles"):
        code, _, err = cli(capsys, "train", "--out", str(run), "--resume", "--epochs", "3", "--quiet")
    assert code == 0, err
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    with pytest.warns(VaekitWarning, match=rf"bubbles\.npz: not a file of bubbles vaekit can read \({why}\); its bubbles are left out"):
        assert bubbles.load_snapshots(run) == {}


def test_no_bubbles_beyond_a_plane(tmp_path):
    x = rows(60)
    config = TrainConfig(epochs=2, batch_size=30)
    four = model(latent_dim=4)
    assert not bubbles.drawable(four)
    fit(four, x[:40], x[40:], config, tmp_path, run_config(four, config))
    assert (tmp_path / "metrics.jsonl").is_file() and not (tmp_path / bubbles.BUBBLES_FILE).exists()


def test_train_on_swiss_roll_writes_bubbles_and_spaces(tmp_path, capsys):
    """`vaekit train --data swiss_roll --latent-dim 2 --likelihood gaussian`: bubbles.png with
    three panels of 500 ellipses (start, middle, end), spaces.png, and the forces per epoch."""
    run = tmp_path / "roll"
    code, out, err = cli(capsys, "train", "--data", "swiss_roll", "--latent-dim", "2", "--likelihood", "gaussian",
                         "--epochs", "3", "--hidden", "16", "--eval-k", "2", "--out", run)  # fmt: skip
    assert code == 0, err
    for name in ("bubbles.png", "spaces.png", "latent.png", "curves.png"):
        assert (run / name).read_bytes()[:8] == PNG_MAGIC, name
    with Image.open(run / "spaces.png") as img:
        assert img.size[0] > 2 * img.size[1]  # three panels side by side
    kept = bubbles.load_snapshots(run)
    assert list(kept) == [0, 2] and kept[0][0].shape == (bubbles.BUBBLE_ROWS, 2)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    end = np.zeros((bubbles.BUBBLE_ROWS, 2))
    panels = bubbles.training_panels(run, metrics, end, end)
    best = max(metrics, key=lambda r: r["valid_score"])["epoch"]
    assert [p[0] for p in panels] == ["start: before training", "middle: after epoch 2", f"end: the best epoch, {best} of 3"]
    fig = plots._bubbles_figure(panels, labels=np.zeros(bubbles.BUBBLE_ROWS, dtype=np.int64))
    assert [sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, EllipseCollection)) for ax in fig.axes] == [500] * 3
    for r in metrics:
        assert r["force_recon"] + r["force_mean"] + r["force_variance"] == pytest.approx(-r["valid_elbo"], rel=1e-5)
    assert not (run / "samples.png").exists()  # not images


def test_bubble_rows_are_a_fixed_sample_across_the_split():
    """Not the first rows (a split sorted by class would show its first classes only): a
    seeded uniform sample over the whole split, the same every time; all rows when fewer."""
    picked = bubbles.rows(5000)
    assert len(picked) == bubbles.BUBBLE_ROWS and len(set(picked.tolist())) == len(picked)
    assert np.all(np.diff(picked) > 0) and picked.max() > 4000 and picked.min() < 1000
    np.testing.assert_array_equal(picked, bubbles.rows(5000))
    np.testing.assert_array_equal(bubbles.rows(30), np.arange(30))
