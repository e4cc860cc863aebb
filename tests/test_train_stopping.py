"""The early-stopping rule on scripted validation scores: ties, and its state across --resume.
The scores are scripted by replacing the objective's ``validate`` (as the resume tests of
tests/test_train.py do), so the stopping epoch and the best epoch follow by hand from the rule
"a new best is strictly greater; stop after ``patience`` epochs without one"."""

from __future__ import annotations

import pytest
import torch

from train_helpers import digits_split, small_model
from vaekit import checkpoint as ckpt
from vaekit.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from vaekit.objectives.elbo import ElboObjective
from vaekit.train import fit


def _run_config(config: TrainConfig) -> RunConfig:
    return RunConfig(
        model=ModelConfig(input_dim=64, latent_dim=4, hidden=(32,), likelihood="continuous_bernoulli"),
        train=config,
        data=DataConfig(source="digits"),
    )


def _script(monkeypatch, scores: list[float]) -> None:
    """Each validation from now on returns the next of ``scores``."""
    left = list(scores)
    monkeypatch.setattr(ElboObjective, "validate", lambda self, model, x, terms, seed: float(left.pop(0)))


def _fit(tmp_path, epochs: int, patience: int, resume: bool = False) -> list[dict]:
    x_train, x_valid = digits_split()
    config = TrainConfig(epochs=epochs, batch_size=640, seed=0, patience=patience)
    return fit(small_model(0), x_train[:640], x_valid[:50], config, run_dir=tmp_path, run_config=_run_config(config), resume=resume)


def test_a_tie_is_no_new_best_and_counts_toward_patience(tmp_path, monkeypatch):
    """A validation score equal to the best is not an improvement: a flat score stops the run
    after ``patience`` epochs, and the best epoch stays the first of the equal ones."""
    _script(monkeypatch, [0.0] * 10)
    history = _fit(tmp_path, epochs=10, patience=2)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert ckpt.load_tensors(tmp_path / ckpt.MODEL_FILE)[1]["epoch"] == 1
    meta = ckpt.load_tensors(tmp_path / ckpt.LAST_FILE)[1]
    assert (meta["best_epoch"], meta["bad_epochs"], meta["stopped"]) == (1, 2, True)


SCORES = [1.0, 3.0, 2.0, 2.5, 2.9, 2.8, 2.7, 2.6, 2.5, 2.4]  # best at epoch 2, then only worse


@pytest.mark.parametrize("cut", [3, 4])
def test_a_resume_inside_a_run_of_bad_epochs_stops_where_the_straight_run_does(tmp_path, monkeypatch, cut):
    """Patience 3 on SCORES stops after epoch 5 (epochs 3, 4, 5 without a new best) with epoch
    2 the best. Cut after epoch ``cut`` (one or two bad epochs counted) and resumed, the run
    must stop at the same epoch with the same best: the checkpoint's best score and bad-epoch
    count carry over, they do not start afresh."""
    _script(monkeypatch, SCORES)
    straight = _fit(tmp_path / "straight", epochs=10, patience=3)
    assert [r["epoch"] for r in straight] == [1, 2, 3, 4, 5]

    _script(monkeypatch, SCORES)
    _fit(tmp_path / "cut", epochs=cut, patience=3)
    _script(monkeypatch, SCORES[cut:])  # the resumed epochs see the same scores as before
    resumed = _fit(tmp_path / "cut", epochs=10, patience=3, resume=True)
    assert [r["epoch"] for r in resumed] == [1, 2, 3, 4, 5]
    weights, meta = ckpt.load_tensors(tmp_path / "cut" / ckpt.MODEL_FILE)
    assert meta["epoch"] == 2
    last = ckpt.load_tensors(tmp_path / "cut" / ckpt.LAST_FILE)[1]
    assert (last["epoch"], last["best_epoch"], last["best_valid"], last["stopped"]) == (5, 2, 3.0, True)
    # The best weights are epoch 2's, the same bits as the straight run's.
    want = ckpt.load_tensors(tmp_path / "straight" / ckpt.MODEL_FILE)[0]
    assert all(torch.equal(weights[k], want[k]) for k in want)


def test_a_stopped_run_resumed_with_more_epochs_trains_no_further(tmp_path, monkeypatch):
    """A run that early stopping ended is finished: --resume with a larger --epochs trains no
    epoch more and keeps its best model."""
    _script(monkeypatch, SCORES)
    _fit(tmp_path, epochs=10, patience=3)
    before = (tmp_path / ckpt.MODEL_FILE).read_bytes(), (tmp_path / ckpt.LAST_FILE).read_bytes()
    _script(monkeypatch, SCORES[5:])
    history = _fit(tmp_path, epochs=20, patience=3, resume=True)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5]
    assert ckpt.load_tensors(tmp_path / ckpt.LAST_FILE)[1]["epoch"] == 5
    assert (tmp_path / ckpt.MODEL_FILE).read_bytes() == before[0]


def test_warm_up_epochs_do_not_count_toward_patience(tmp_path, monkeypatch):
    """Under a warm-up of 4 epochs the objective still moves with β: epochs 2 to 4 without a
    new best leave the patience whole, and the run stops only after 2 bad epochs past it (a
    new best during warm-up is still kept as the best)."""
    _script(monkeypatch, [3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    x_train, x_valid = digits_split()
    config = TrainConfig(epochs=8, batch_size=640, seed=0, patience=2, warmup=4)
    history = fit(small_model(0), x_train[:640], x_valid[:50], config, run_dir=tmp_path, run_config=_run_config(config))
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6]
    meta = ckpt.load_tensors(tmp_path / ckpt.LAST_FILE)[1]
    assert (meta["best_epoch"], meta["bad_epochs"], meta["stopped"]) == (1, 2, True)
