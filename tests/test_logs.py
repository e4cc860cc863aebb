"""vaekit.logs: the epoch line, the evaluation's progress lines, and TensorBoard events that
hold what metrics.jsonl holds."""

from __future__ import annotations

import sys

import pytest

from cli_helpers import cli
from vaekit.checkpoint import read_metrics
from vaekit.logs import TENSORBOARD_DIR, RowProgress, epoch_line, scalars

RECORD = {
    "epoch": 12, "beta": 1.0, "objective": "elbo", "train_loss": 98.31, "train_objective": -98.3149, "train_elbo": -98.3149,
    "valid_elbo": -99.02, "valid_recon": -75.0, "valid_kl": 24.06, "valid_score": -99.0204, "active_units": 18,
    "kl_per_dim": [1.5, 0.0], "kl_per_group": {"z": 1.5}, "train_seconds": 3.0, "images_per_second": 15600.4, "epoch_seconds": 3.21,
}  # fmt: skip
SMALL = ["--data", "digits", "--epochs", "2", "--hidden", "8", "--latent-dim", "2", "--eval-k", "2"]


def test_epoch_line():
    assert epoch_line(RECORD, 100) == "epoch  12/100  elbo  train    -98.315  valid    -99.020  kl   24.060     3.2 s    15600 img/s"
    assert len(epoch_line(dict(RECORD, epoch=1, images_per_second=9.0, epoch_seconds=0.4), 100)) == len(epoch_line(RECORD, 100))


def test_epoch_line_shows_the_rate():
    """The rate each epoch stepped at, so a schedule's cuts are visible in a log; records from
    before rates were recorded print without it."""
    line = epoch_line(dict(RECORD, lr=5e-4), 100)
    assert line == "epoch  12/100  elbo  train    -98.315  valid    -99.020  kl   24.060  lr 5.00e-04     3.2 s    15600 img/s"
    assert len(epoch_line(dict(RECORD, lr=6.25e-05), 100)) == len(line)


def test_epoch_line_shows_the_evidence_and_the_gap_when_tracked():
    """train --valid-k K: the validation log p(x) and the gap log p(x) − ELBO after the KL."""
    line = epoch_line(dict(RECORD, valid_log_px=-95.5, valid_gap=3.52), 100)
    assert line == "epoch  12/100  elbo  train    -98.315  valid    -99.020  kl   24.060  log p(x)    -95.500  gap to ELBO   3.520     3.2 s    15600 img/s"
    assert epoch_line(dict(RECORD, valid_log_px=None, valid_gap=None), 100) == epoch_line(RECORD, 100)


def test_row_progress_prints_a_line_per_tenth(capsys):
    progress = RowProgress(1000, "evaluating log p(x) (K=1000)", bar=False)
    for done in (50, 256, 512, 768, 1000):  # batches of 256 rows after a first small one
        progress(done)
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == [f"evaluating log p(x) (K=1000): {n}/1000 rows" for n in (256, 512, 768, 1000)]


def test_scalars_flatten_a_record():
    got = dict(scalars(RECORD))
    assert got["valid_score"] == -99.0204 and got["kl_per_dim/1"] == 0.0 and got["kl_per_group/z"] == 1.5
    assert "epoch" not in got and "objective" not in got
    assert "train_elbo" not in dict(scalars(dict(RECORD, train_elbo=None)))


def test_tensorboard_events_hold_the_metrics(tmp_path, capsys):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--out", run, *SMALL, "--tensorboard", "--quiet")
    assert code == 0, err
    code, _, err = cli(capsys, "train", "--out", run, "--resume", "--epochs", "3")  # tensorboard stays on
    assert code == 0, err
    events = EventAccumulator(str(run / TENSORBOARD_DIR), size_guidance={"scalars": 0})
    events.Reload()
    metrics = read_metrics(run)
    assert [r["epoch"] for r in metrics] == [1, 2, 3]
    want = {}
    for r in metrics:
        for tag, value in scalars(r):
            want.setdefault(tag, []).append((r["epoch"], value))
    assert sorted(events.Tags()["scalars"]) == sorted(want)
    for tag, points in want.items():
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points], tag
        for (_, g), (_, w) in zip(got, points):
            assert g == pytest.approx(w, rel=1e-6, abs=1e-30), tag  # stored as float32


def test_tensorboard_without_the_package_is_one_line(tmp_path, capsys, monkeypatch):
    # An entry None in sys.modules makes the import fail, as without the package.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    code, out, err = cli(capsys, "train", "--out", tmp_path / "r", *SMALL, "--tensorboard")
    assert code == 2 and out == ""
    assert err.splitlines() == ["vaekit: error: --tensorboard needs the tensorboard package: pip install tensorboard"]
    assert not (tmp_path / "r").exists()
