"""Learning-rate schedules (vaekit.schedules): the plateau rule against torch's own
ReduceLROnPlateau on random histories, Burda et al.'s staircase against its stage lengths, the
rates a fit really steps at, bit-exact resume across cuts, and the config's refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vaekit.config import TrainConfig
from vaekit.errors import ConfigError
from vaekit.schedules import burda_stage, lr_at
from vaekit.train import fit
from cli_helpers import assert_train_refused
from train_helpers import digits_split, small_model


def _history(scores) -> list[dict]:
    return [{"epoch": e, "valid_score": float(s)} for e, s in enumerate(scores, start=1)]


def test_constant_is_the_rate_throughout():
    config = TrainConfig(lr=3e-4)
    history = _history(np.linspace(-100, -200, 30))  # only ever worse: no effect
    assert {lr_at(config, e, history[: e - 1]) for e in range(1, 31)} == {3e-4}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("patience, factor, lr_min, warmup", [(1, 0.5, 0.0, 0), (3, 0.1, 2e-6, 0), (2, 0.3, 0.0, 7)])
def test_plateau_matches_torchs_reduce_on_plateau(seed, patience, factor, lr_min, warmup):
    """A random walk of validation scores with long flat stretches (plenty of cuts): every
    epoch's rate equals the rate torch.optim.lr_scheduler.ReduceLROnPlateau (mode max, absolute
    threshold 0, no eps) sets after being stepped with the scores of the epochs before it, warm-up
    epochs left out."""
    rng = np.random.default_rng(seed)
    scores = np.cumsum(rng.normal(0.0, 1.0, 80) * (rng.random(80) < 0.5))
    config = TrainConfig(lr=1e-3, lr_schedule="plateau", lr_patience=patience, lr_factor=factor, lr_min=lr_min, warmup=warmup)
    history = _history(scores)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="max", factor=factor, patience=patience, threshold=0.0, threshold_mode="abs", min_lr=lr_min,
        eps=0.0,  # torch skips cuts smaller than eps; the rule here has no such floor but lr_min
    )
    want = []
    for e in range(1, len(scores) + 1):
        want.append(opt.param_groups[0]["lr"])
        if e > warmup:
            ref.step(scores[e - 1])
    got = [lr_at(config, e, history[: e - 1]) for e in range(1, len(scores) + 1)]
    assert len(set(want)) >= 3  # the walk does cut the rate, more than once
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    # The rate of epoch e depends on the epochs before it only.
    assert got == [lr_at(config, e, history) for e in range(1, len(scores) + 1)]


def test_plateau_ignores_warmup_epochs():
    """Scores that only fall during a 10-epoch warm-up cut nothing; the same after it, with
    patience 2, cut at the third bad epoch after the first counted one."""
    config = TrainConfig(lr=1.0, lr_schedule="plateau", lr_patience=2, lr_factor=0.5, warmup=10)
    history = _history(-np.arange(1.0, 17.0))  # falling throughout
    rates = [lr_at(config, e, history[: e - 1]) for e in range(1, 17)]
    # Epoch 11 sets the best; 12, 13, 14 are bad (14: 3 > 2, cut); 15, 16, 17 bad again.
    assert rates == [1.0] * 14 + [0.5] * 2
    assert lr_at(config, 17, history) == 0.5 and lr_at(config, 18, history + _history([-99.0] * 17)[16:]) == 0.25


def test_burda_staircase():
    """Stage i lasts 3^i epochs (1, 3, 9, ..., 2187: 3280 epochs in all) at lr·10^(−i/7);
    epochs after the last stage stay at lr/10."""
    lengths = [sum(1 for e in range(1, 3281) if burda_stage(e) == i) for i in range(8)]
    assert lengths == [3**i for i in range(8)]
    assert [burda_stage(e) for e in (1, 2, 4, 5, 13, 14, 40, 41, 1093, 1094, 3280, 3281, 10**6)] == [0, 1, 1, 2, 2, 3, 3, 4, 6, 7, 7, 7, 7]
    config = TrainConfig(lr=1e-3, lr_schedule="burda")
    for e, i in [(1, 0), (3, 1), (10, 2), (3280, 7), (5000, 7)]:
        assert math.isclose(lr_at(config, e, []), 1e-3 * 10 ** (-i / 7), rel_tol=1e-15)
    assert math.isclose(lr_at(config, 5000, []), 1e-4, rel_tol=1e-12)


def _fit(epochs, run_dir=None, resume=False, **kw):
    """200 digit rows trained; validated on 50 inverted digits, whose ELBO falls as the model
    learns the digits, so that the plateau rule cuts within a few epochs."""
    x_train, x_valid = digits_split()
    model = small_model()
    config = TrainConfig(epochs=epochs, batch_size=50, lr=1e-2, seed=0, **kw)
    history = fit(model, x_train[:200], 1 - x_valid[:50], config, run_dir, _run_config(config), resume=resume)
    return model, history


def _run_config(train):
    from vaekit.config import DataConfig, ModelConfig, RunConfig

    return RunConfig(
        model=ModelConfig(input_dim=64, latent_dim=4, hidden=(32,), likelihood="continuous_bernoulli"),
        train=train,
        data=DataConfig(source="array", test_fraction=0.0),
    )


def test_fit_steps_at_the_recorded_rates():
    """Each epoch's record carries its rate, which is the schedule's for the history before
    it; the run equals a constant-rate one up to the first cut and differs after it."""
    kw = dict(lr_schedule="plateau", lr_patience=1, lr_factor=0.1)
    _, history = _fit(8, **kw)
    rates = [r["lr"] for r in history]
    config = TrainConfig(epochs=8, batch_size=50, lr=1e-2, seed=0, **kw)
    assert rates == [lr_at(config, r["epoch"], history) for r in history]
    assert len(set(rates)) >= 3, rates  # cut at least twice
    # Rates that differ give scores that differ from the first cut on: the schedule reaches Adam.
    _, constant = _fit(8)
    cut = rates.index(rates[-1] if len(set(rates)) == 1 else sorted(set(rates), reverse=True)[1])
    scores = [r["valid_score"] for r in history]
    assert scores[:cut] == [r["valid_score"] for r in constant][:cut]
    assert all(a != b for a, b in zip(scores[cut:], [r["valid_score"] for r in constant][cut:]))


@pytest.mark.parametrize("kw", [dict(lr_schedule="plateau", lr_patience=1, lr_factor=0.1), dict(lr_schedule="burda")])
def test_resume_across_cuts_is_bit_identical(tmp_path, kw):
    """6 epochs straight against 3 + resume to 6, with cuts on both sides of the break: every
    tensor and every recorded rate equal."""
    with torch.random.fork_rng():
        straight, h_straight = _fit(6, tmp_path / "a", **kw)
        _fit(3, tmp_path / "b", **kw)
        resumed, h_resumed = _fit(6, tmp_path / "b", resume=True, **kw)
    rates = [r["lr"] for r in h_straight]
    assert len(set(rates[:3])) < len(set(rates))  # a new rate after the break
    assert rates == [r["lr"] for r in h_resumed]
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_config_refusals():
    with pytest.raises(ConfigError, match="lr_schedule must be one of constant, plateau, burda, got 'cosine'"):
        TrainConfig(lr_schedule="cosine")
    with pytest.raises(ConfigError, match="lr_factor must be < 1, got 1.0"):
        TrainConfig(lr_schedule="plateau", lr_factor=1.0)
    with pytest.raises(ConfigError, match="lr_factor must be > 0, got 0"):
        TrainConfig(lr_schedule="plateau", lr_factor=0)
    with pytest.raises(ConfigError, match="lr_patience must be an integer >= 1, got 0"):
        TrainConfig(lr_schedule="plateau", lr_patience=0)
    for name, value in [("lr_factor", 0.1), ("lr_patience", 3), ("lr_min", 1e-5)]:
        for schedule in ("constant", "burda"):
            with pytest.raises(ConfigError, match=f"{name} applies to lr_schedule plateau only; this run uses lr_schedule {schedule}"):
                TrainConfig(lr_schedule=schedule, **{name: value})
    # A floor above the starting rate would make the first cut a raise.
    with pytest.raises(ConfigError, match="lr_min must not exceed lr, the starting rate: got 0.01 above 0.001"):
        TrainConfig(lr=1e-3, lr_schedule="plateau", lr_min=1e-2)
    assert TrainConfig(lr=1e-3, lr_schedule="plateau", lr_min=1e-3).lr_min == 1e-3


@pytest.mark.parametrize(
    "argv, culprits",
    [
        (["--lr-schedule", "cosine"], ["--lr-schedule", "constant, plateau, burda", "cosine"]),
        (["--lr-factor", "0.1"], ["--lr-factor", "plateau"]),
        # Given at their defaults they would be dropped as silently: refused too.
        (["--lr-factor", "0.5"], ["--lr-factor", "applies to lr_schedule plateau only", "lr_schedule constant"]),
        (["--lr-patience", "10"], ["--lr-patience", "plateau only"]),
        (["--lr-schedule", "burda", "--lr-min", "0"], ["--lr-min", "plateau only", "lr_schedule burda"]),
        (["--lr-schedule", "plateau", "--lr-factor", "2"], ["--lr-factor", "< 1"]),
        (["--lr-schedule", "plateau", "--lr-min", "-1"], ["--lr-min", ">= 0"]),
        (["--lr-schedule", "plateau", "--lr", "1e-3", "--lr-min", "1"], ["--lr-min", "must not exceed", "1.0 above 0.001"]),
    ],
)
def test_cli_bad_schedule(argv, culprits, tmp_path, capsys):
    assert_train_refused(capsys, tmp_path, argv, culprits)


def test_resume_may_add_a_schedule_that_agrees_with_the_run(tmp_path):
    """2 epochs at a constant rate (epoch 2 is worse: 1 bad epoch, no cut yet under patience 1),
    resumed to 6 under plateau: bit for bit the straight plateau run, which cuts from epoch 4 on."""
    kw = dict(lr_schedule="plateau", lr_patience=1, lr_factor=0.1)
    with torch.random.fork_rng():
        straight, h_straight = _fit(6, tmp_path / "a", **kw)
        _, h_two = _fit(2, tmp_path / "b")
        resumed, h_resumed = _fit(6, tmp_path / "b", resume=True, **kw)
    assert h_two[1]["valid_score"] < h_two[0]["valid_score"]
    assert [r["lr"] for r in h_resumed] == [r["lr"] for r in h_straight] and len({r["lr"] for r in h_straight}) >= 2
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_schedule_the_run_contradicts(tmp_path):
    """4 constant-rate epochs with bad epochs 2, 3 and 4: plateau with patience 1 would have cut
    for epoch 4, so resuming under it is refused, naming that epoch, and the run is untouched."""
    run = tmp_path / "b"
    with torch.random.fork_rng():
        _fit(4, run)
        before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
        with pytest.raises(ConfigError, match=r"--lr-schedule plateau gives epoch 4 the learning rate 0\.001, where .* used 0\.01; "
                                              r"resume it with the schedule it was trained with"):  # fmt: skip
            _fit(6, run, resume=True, lr_schedule="plateau", lr_patience=1, lr_factor=0.1)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_cli_resume_with_a_schedule(tmp_path, capsys):
    """From the command line: adding burda to a 1-epoch constant run is accepted (stage 0 is one
    epoch at lr) and recorded in config.json; adding it to a 2-epoch run is a one-line usage
    error, exit 2, with config.json unchanged."""
    import json

    from cli_helpers import cli

    common = ["--data", "digits", "--hidden", "16", "--latent-dim", "2", "--eval-k", "2", "--quiet"]
    for epochs, ok in ((1, True), (2, False)):
        out = tmp_path / f"r{epochs}"
        assert cli(capsys, "train", *common, "--epochs", str(epochs), "--out", out)[0] == 0
        config = (out / "config.json").read_text()
        code, _, err = cli(capsys, "train", *common, "--epochs", "3", "--out", out, "--resume", "--lr-schedule", "burda")
        if ok:
            assert code == 0, err
            assert json.loads((out / "config.json").read_text())["train"]["lr_schedule"] == "burda"
            rates = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
            assert rates[0] == 1e-3 and rates[1] == rates[2] == pytest.approx(1e-3 * 10 ** (-1 / 7), rel=1e-12)
        else:
            lines = err.splitlines()
            assert code == 2 and len(lines) == 1 and "epoch 2" in lines[0] and "burda" in lines[0], err
            assert (out / "config.json").read_text() == config


def test_runs_from_before_schedules_count_as_constant(tmp_path):
    """Records without "lr" (runs trained before schedules existed) stepped at lr: a plateau
    schedule that would not have cut yet agrees with them, one that would have does not."""
    from vaekit.train import _check_schedule

    rising, falling = _history([-5.0, -4.0, -3.0]), _history([-3.0, -4.0, -5.0, -6.0])
    plateau = TrainConfig(lr=1e-3, lr_schedule="plateau", lr_patience=1)
    _check_schedule(TrainConfig(lr=1e-3), falling, tmp_path)
    _check_schedule(plateau, rising, tmp_path)
    with pytest.raises(ConfigError, match="gives epoch 4 the learning rate 0.0005"):
        _check_schedule(plateau, falling, tmp_path)
