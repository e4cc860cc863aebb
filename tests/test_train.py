"""vaekit.train: the one training loop.

Numbers checked against independent references: 784·ln 2 for an untrained Bernoulli decoder,
the entropy of the per-pixel-mean independent-Bernoulli model on binarized MNIST, the
warm-up formula β_e = min(1, e/warmup) and loss − (−ELBO) = (1 − β)·KL, the 1/S variance of
an S-sample Monte Carlo mean, and bit-for-bit equality of interrupted+resumed vs uninterrupted
runs (on the CPU every operation is deterministic for a fixed thread count).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from train_helpers import digits_split, small_model
from vaekit import checkpoint as ckpt
from vaekit import train as train_mod
from vaekit.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from vaekit.errors import TrainingError
from vaekit.evaluate import elbo_per_point
from vaekit.model import VAEModel
from vaekit.objectives import elbo
from vaekit.train import fit

MNIST = Path(__file__).resolve().parents[2] / "shared/data/binarized_mnist/binarized_mnist.npz"
RECORD_KEYS = {"epoch", "beta", "train_loss", "train_elbo", "valid_elbo", "valid_recon", "valid_kl", "images_per_second"}


def is_timing(key: str) -> bool:
    """Fields of a metrics record that measure wall-clock time, so differ between two runs."""
    return key.endswith("_seconds") or key.endswith("_per_second")


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return digits_split()


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), f"tensor {k} differs"


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not is_timing(k)} for r in records]


def temp_files(run_dir: Path) -> set[str]:
    return {p.name for p in run_dir.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")}


# ---- binarized MNIST ---------------------------------------------------------------------------


@pytest.mark.skipif(not MNIST.is_file(), reason=f"{MNIST} not present")
def test_short_mnist_training_beats_baselines():
    with np.load(MNIST) as z:
        x_train = z["train"][:20000].astype(np.float32)
        x_valid = z["valid"][:2000].astype(np.float32)

    # Independent-Bernoulli baseline with p_d the training mean of pixel d: its expected
    # negative log-likelihood is the entropy −Σ_d [p log p + (1−p) log(1−p)] (0 log 0 = 0);
    # measured 205.6 nats on these 20 000 rows.
    p = x_train.astype(np.float64).mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.where((p > 0) & (p < 1), p * np.log(p) + (1 - p) * np.log1p(-p), 0.0)
    baseline = float(-h.sum())
    assert 200.0 < baseline < 212.0

    model = small_model(0, input_dim=784, latent_dim=20, hidden=(400,), likelihood="bernoulli")
    config = TrainConfig(epochs=2, batch_size=128, lr=1e-3, seed=0)
    # Untrained: decoder logits are near 0, so each pixel costs ≈ ln 2 and −ELBO ≈ 784·ln 2
    # = 543.4 nats (plus a small KL and the spread of the initial logits; measured ≈ 545).
    before = -elbo_per_point(model, x_valid, seed=config.seed + 1)["elbo"].mean()
    assert abs(before - 784 * math.log(2)) < 15.0

    history = fit(model, x_train, x_valid, config)
    neg_elbo = -history[-1]["valid_elbo"]
    # Measured 138.8 nats with seed 0 (138.1 and 140.0 with seeds 1 and 2; ≈117 after 2 epochs
    # on all 50 000 rows): 143 leaves ~4 nats for BLAS/platform differences, and is far below
    # both 543 (untrained) and 206 (independent pixels).
    assert neg_elbo < 143.0
    assert neg_elbo < baseline - 50.0
    assert -history[0]["valid_elbo"] > neg_elbo  # the second epoch improved on the first
    # The model holds the best (= last, here) weights: re-evaluating reproduces the record, to
    # the rounding of products split among however many threads MKL picks outside training
    # (training fixes the count; on a busy machine a plain call may get fewer: measured 2e-9).
    again = elbo_per_point(model, x_valid, seed=config.seed + 1, per_row=False)["elbo"].mean()
    assert again == pytest.approx(max(r["valid_elbo"] for r in history), rel=1e-7, abs=0)


# ---- history and warm-up -----------------------------------------------------------------------


def test_history_records_and_warmup(digits):
    x_train, x_valid = digits
    model = small_model()
    history = fit(model, x_train, x_valid, TrainConfig(epochs=5, warmup=4, batch_size=128, lr=1e-3))
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5]
    for r in history:
        assert RECORD_KEYS <= set(r)
        assert all(math.isfinite(r[k]) for k in RECORD_KEYS)
        assert r["images_per_second"] > 0
        # Averages of per-point terms with elbo = recon − kl (float32 terms: 1e-4 nats).
        assert r["valid_elbo"] == pytest.approx(r["valid_recon"] - r["valid_kl"], abs=1e-4)
        assert r["valid_kl"] > 0
    assert [r["beta"] for r in history] == [0.25, 0.5, 0.75, 1.0, 1.0]
    # 1280 rows in 10 equal batches, so the mean batch loss is the mean per-point loss:
    # loss − (−ELBO) = −(recon − β kl) + (recon − kl) = −(1 − β)·KL < 0 while β < 1
    # (measured −0.046, −0.052, −0.054: the KL is small this early), and the two agree to
    # float32 rounding (|loss| ≲ 10, so ~1e-5) once β = 1.
    for r in history:
        gap = r["train_loss"] - (-r["train_elbo"])
        if r["beta"] < 1:
            assert r["train_loss"] != -r["train_elbo"]
            assert gap < -1e-2
        else:
            assert gap == pytest.approx(0.0, abs=1e-4)


def test_train_loss_decreases_and_model_is_left_in_eval_mode(digits):
    x_train, x_valid = digits
    model = small_model()
    history = fit(model, x_train, x_valid, TrainConfig(epochs=4, batch_size=64, lr=3e-3))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["valid_elbo"] > history[0]["valid_elbo"]
    assert model.training is False


# ---- early stopping ----------------------------------------------------------------------------


@pytest.mark.parametrize("patience", [1, 3])
def test_early_stopping_keeps_the_best_epoch(digits, tmp_path, patience):
    # 40 training rows, a wide net and lr 1e-2: the model overfits and the validation ELBO
    # (fixed evaluation noise, seed + 1) starts falling after ~35 epochs, far before 200.
    x_all = np.concatenate(digits)
    x_train, x_valid = x_all[:40], x_all[-300:]
    model_config = ModelConfig(input_dim=64, latent_dim=8, hidden=(128,), likelihood="continuous_bernoulli")
    config = TrainConfig(epochs=200, batch_size=20, lr=1e-2, patience=patience, seed=0)
    run_config = RunConfig(model=model_config, train=config, data=DataConfig(source="digits"))
    torch.manual_seed(0)
    model = VAEModel(model_config)
    history = fit(model, x_train, x_valid, config, run_dir=tmp_path, run_config=run_config)

    valid = [r["valid_elbo"] for r in history]
    assert len(history) < config.epochs
    best = int(np.argmax(valid))
    # The rule: stop at the first run of `patience` epochs without a new best.
    assert len(history) == best + 1 + patience
    running_best, bad = -math.inf, 0
    for v in valid[:-1]:
        bad = 0 if v > running_best else bad + 1
        running_best = max(running_best, v)
        assert bad < patience
    # The model holds the best epoch's weights, the ones in model.safetensors ...
    saved, _ = ckpt.load_tensors(tmp_path / ckpt.MODEL_FILE)
    assert_same_tensors(params(model), saved)
    # ... and re-evaluating with the training loop's validation seed gives the recorded ELBO.
    again = float(elbo_per_point(model, x_valid, seed=config.seed + 1, per_row=False)["elbo"].mean())
    assert again == pytest.approx(valid[best], abs=1e-5)
    # last.safetensors is the stopping epoch, not the best one, and says it stopped.
    last, meta = ckpt.load_tensors(tmp_path / ckpt.LAST_FILE)
    assert meta["stopped"] is True and meta["epoch"] == len(history) and meta["best_epoch"] == best + 1
    assert any(not torch.equal(last[f"model.{k}"], v) for k, v in saved.items())
    lines = (tmp_path / ckpt.METRICS_FILE).read_text().splitlines()
    assert without_timing([json.loads(s) for s in lines]) == without_timing(history)


# ---- reproducibility ---------------------------------------------------------------------------


def test_same_seed_same_parameters_other_seed_differs(digits):
    x_train, x_valid = digits
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        model = small_model(0)  # same initial weights; the training seed varies
        fit(model, x_train, x_valid, TrainConfig(epochs=2, batch_size=64, seed=seed))
        runs[name] = params(model)
    assert_same_tensors(runs["a"], runs["b"])
    assert any(not torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])


def test_estimator_same_seed_same_parameters(digits):
    from vaekit import VAE

    x_train, _ = digits
    fitted = [VAE(latent_dim=4, hidden=(32,), epochs=1, seed=s).fit(x_train) for s in (0, 0, 1)]
    # The initial weights are part of the fit: same seed, same model whatever the global RNG.
    assert_same_tensors(params(fitted[0].model_), params(fitted[1].model_))
    assert any(not torch.equal(a, b) for a, b in zip(fitted[0].model_.parameters(), fitted[2].model_.parameters()))


# ---- resume ------------------------------------------------------------------------------------


class Interrupted(BaseException):
    """Stands in for a kill: a BaseException, so no `except Exception` swallows it."""


def _run_config(config: TrainConfig) -> RunConfig:
    return RunConfig(
        model=ModelConfig(input_dim=64, latent_dim=4, hidden=(32,), likelihood="continuous_bernoulli"),
        train=config,
        data=DataConfig(source="digits"),
    )


@pytest.mark.parametrize(
    ("where", "ema"), [("model_file_replace", 0.0), ("last_file_replace", 0.0), ("metrics_append", 0.0), ("last_file_replace", 0.9)]
)
def test_in_process_interrupt_and_resume_is_exact(digits, tmp_path, monkeypatch, where, ema):
    """An interruption at epoch 3 inside one of the three writes of an epoch, then --resume,
    ends bit-for-bit where the uninterrupted run ends; with the weights' average (``ema``) too,
    which last.safetensors carries."""
    x_train, x_valid = digits
    config = TrainConfig(epochs=6, batch_size=128, lr=3e-3, seed=3, ema=ema)
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = small_model(0)
    ref_history = fit(ref, x_train, x_valid, config, run_dir=ref_dir, run_config=_run_config(config))

    calls = {"n": 0}
    if where == "metrics_append":
        real_append = train_mod._append_metrics

        def append(run_dir, record):
            if record["epoch"] == 3:
                raise Interrupted
            real_append(run_dir, record)

        monkeypatch.setattr(train_mod, "_append_metrics", append)
    else:
        target = ckpt.MODEL_FILE if where == "model_file_replace" else ckpt.LAST_FILE
        real_replace = os.replace

        def replace(src, dst):
            if Path(dst).name == target:
                calls["n"] += 1
                if calls["n"] == 3:  # epoch 3 (the validation ELBO improves every epoch here)
                    raise Interrupted
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Interrupted):
        fit(small_model(0), x_train, x_valid, config, run_dir=run_dir, run_config=_run_config(config))
    monkeypatch.undo()
    assert temp_files(run_dir) == set()  # the failed atomic write cleaned up after itself

    torch.manual_seed(12345)  # the resumed process's RNG starts anywhere: resume restores it
    resumed = small_model(7)  # and its initial weights do not matter either
    history = fit(resumed, x_train, x_valid, config, run_dir=run_dir, resume=True)

    assert_same_tensors(params(resumed), params(ref))
    assert without_timing(history) == without_timing(ref_history)
    for name in (ckpt.MODEL_FILE, ckpt.LAST_FILE):
        assert_same_tensors(ckpt.load_tensors(run_dir / name)[0], ckpt.load_tensors(ref_dir / name)[0])
    lines = [json.loads(s) for s in (run_dir / ckpt.METRICS_FILE).read_text().splitlines()]
    assert without_timing(lines) == without_timing(ref_history)
    assert temp_files(run_dir) == set()


def test_resume_removes_temp_files_left_by_a_kill(tmp_path):
    from vaekit.runs import train_run

    config = RunConfig(
        model=ModelConfig(input_dim=64, latent_dim=2, hidden=(8,), likelihood="continuous_bernoulli", image_shape=(8, 8)),
        train=TrainConfig(epochs=1, batch_size=256, eval_k=2, seed=0),
        data=DataConfig(source="digits"),
    )
    train_run(config, tmp_path)
    # What SIGKILL between mkstemp and os.replace leaves behind: a half-written temp file.
    stale = tmp_path / ".last.safetensors.k1ll3d.tmp"
    stale.write_bytes((tmp_path / ckpt.LAST_FILE).read_bytes()[:100])
    (tmp_path / ".curves.png.0123456789ab.tmp").write_bytes(b"\x89PNG")  # ... or a picture's
    config.train.epochs = 2
    summary = train_run(config, tmp_path, resume=True)
    assert summary["epochs"] == 2
    assert temp_files(tmp_path) == set()


def _launch(out: Path) -> list[str]:
    return [
        sys.executable, "-m", "vaekit", "train", "--data", "digits", "--epochs", "40",
        "--latent-dim", "4", "--hidden", "32", "--batch-size", "16", "--eval-k", "10",
        "--seed", "5", "--no-progress", "--json", "--out", str(out),
    ]  # fmt: skip


def _resume(out: Path) -> list[str]:
    # A resumed run takes every option but --epochs/--device/--eval-k from RUN_DIR/config.json.
    return [sys.executable, "-m", "vaekit", "train", "--resume", "--out", str(out), "--no-progress", "--json"]


def _metric_lines(run_dir: Path) -> int:
    try:
        return (run_dir / ckpt.METRICS_FILE).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _kill_when(proc: subprocess.Popen, run_dir: Path, lines: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while _metric_lines(run_dir) < lines:
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before {lines} epochs: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {lines} lines in metrics.jsonl after {timeout} s")
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_kill_and_resume_reproduces_uninterrupted_run(tmp_path):
    """A real `vaekit train` process SIGKILLed twice (wherever it happens to be, possibly in the
    middle of a checkpoint write), resumed each time with `vaekit train --resume`, ends with
    the same bits as a run that was never interrupted."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = subprocess.run(_launch(ref_dir), env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr

    left_by_kills: set[str] = set()
    popen = dict(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _kill_when(subprocess.Popen(_launch(run_dir), **popen), run_dir, 3)
    left_by_kills |= temp_files(run_dir)
    first = _metric_lines(run_dir)
    assert first < 40
    _kill_when(subprocess.Popen(_resume(run_dir), **popen), run_dir, first + 3)
    left_by_kills |= temp_files(run_dir)
    assert _metric_lines(run_dir) < 40
    done = subprocess.run(_resume(run_dir), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    for name in (ckpt.MODEL_FILE, ckpt.LAST_FILE):
        got, meta = ckpt.load_tensors(run_dir / name)
        want, ref_meta = ckpt.load_tensors(ref_dir / name)
        # Model weights, Adam moments and step counts, and the saved RNG state.
        assert_same_tensors(got, want)
        if name == ckpt.LAST_FILE:
            assert meta["epoch"] == ref_meta["epoch"] == 40
            assert without_timing(meta["history"]) == without_timing(ref_meta["history"])
    lines = lambda d: [json.loads(s) for s in (d / ckpt.METRICS_FILE).read_text().splitlines()]  # noqa: E731
    assert len(lines(run_dir)) == 40
    assert without_timing(lines(run_dir)) == without_timing(lines(ref_dir))
    # The final test evaluation (same weights, same seeds) is identical too.
    assert json.loads(done.stdout)["test"] == json.loads(ref.stdout)["test"]
    # The resumed runs leave no temp files of their own (one left by a kill landing inside a
    # write is the subject of test_resume_removes_temp_files_left_by_a_kill).
    assert temp_files(run_dir) <= left_by_kills
    assert temp_files(ref_dir) == set()


def test_nan_loss_stops_training_naming_epoch_and_step_and_keeps_the_checkpoint(digits, tmp_path):
    x_train, x_valid = digits
    config = TrainConfig(epochs=2, batch_size=128, seed=0)
    fit(small_model(0), x_train, x_valid, config, run_dir=tmp_path, run_config=_run_config(config))
    before = (tmp_path / ckpt.LAST_FILE).read_bytes()
    # A NaN rows cannot bring (fit refuses them): the encoder turns NaN on the batch holding a
    # marked row, a value no digit pixel takes.
    marked = x_train.copy()
    marked[1000, 5] = 0.123456
    model = small_model(0)

    def nan_on_marked(module, args, out):
        return out * torch.nan if (args[0] == torch.tensor(0.123456, dtype=args[0].dtype)).any() else out

    model.inference.encoder.net[0].register_forward_hook(nan_on_marked)
    # Epoch 3's permutation comes from the restored RNG state; find the marked row's step in it.
    rng = torch.get_rng_state()
    torch.set_rng_state(ckpt.load_tensors(tmp_path / ckpt.LAST_FILE)[0]["rng.cpu"])
    step = int((torch.randperm(len(marked)) == 1000).nonzero()[0, 0]) // 128 + 1
    torch.set_rng_state(rng)
    with pytest.raises(TrainingError, match=rf"epoch 3, step {step}\b.*{re.escape(str(tmp_path))}"):
        fit(model, marked, x_valid, TrainConfig(epochs=3, batch_size=128, seed=0), run_dir=tmp_path, resume=True)
    assert (tmp_path / ckpt.LAST_FILE).read_bytes() == before
    assert ckpt.load_tensors(tmp_path / ckpt.LAST_FILE)[1]["epoch"] == 2


# ---- objective variants ------------------------------------------------------------------------


def test_n_samples_averages_samples_and_trains(digits):
    x_train, x_valid = digits
    model = small_model(0)
    x = torch.as_tensor(x_valid[:64])
    with torch.no_grad():
        # The S-sample recon term is the mean of log p(x|z_s) over S draws from q.
        g = torch.Generator().manual_seed(11)
        terms = elbo(model, x, n_samples=4, generator=g)
        q = model.posterior(x)
        z = q.rsample((4,), generator=torch.Generator().manual_seed(11))
        assert torch.allclose(terms.recon, model.decode(z).log_prob(x).mean(0), rtol=1e-6, atol=1e-5)
        # Its variance across seeds is that of one sample divided by 4. With 300 seeds the
        # ratio of sample variances is 0.25 within ~±0.04 (1 sd), so (0.1, 0.5) is > 5 sd wide.
        recon = {s: torch.stack([
            elbo(model, x, n_samples=s, generator=torch.Generator().manual_seed(seed)).recon.mean()
            for seed in range(300)
        ]) for s in (1, 4)}  # fmt: skip
        ratio = float(recon[4].var() / recon[1].var())
        assert 0.1 < ratio < 0.5
        # Both estimate the same expectation: means agree within 5 standard errors.
        se = math.sqrt((recon[1].var() + recon[4].var()) / 300)
        assert abs(float(recon[1].mean() - recon[4].mean())) < 5 * se

    history = fit(model, x_train, x_valid, TrainConfig(epochs=3, batch_size=64, lr=3e-3, n_samples=4))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["valid_elbo"] > history[0]["valid_elbo"]
    one = small_model(0)
    fit(one, x_train, x_valid, TrainConfig(epochs=3, batch_size=64, lr=3e-3, n_samples=1))
    assert any(not torch.equal(a, b) for a, b in zip(one.parameters(), model.parameters()))


def test_monte_carlo_kl_trains(digits):
    x_train, x_valid = digits
    model = small_model(0)
    history = fit(model, x_train, x_valid, TrainConfig(epochs=4, batch_size=64, lr=3e-3, analytic_kl=False))
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 5.0
    assert history[-1]["valid_elbo"] > history[0]["valid_elbo"]
    # The MC KL is a different (noisier) gradient from the closed form: the runs differ.
    closed = small_model(0)
    fit(closed, x_train, x_valid, TrainConfig(epochs=4, batch_size=64, lr=3e-3, analytic_kl=True))
    assert any(not torch.equal(a, b) for a, b in zip(closed.parameters(), model.parameters()))


def test_float64_training(digits):
    x_train, x_valid = digits
    model = small_model(0)
    history = fit(model, x_train, x_valid, TrainConfig(epochs=3, batch_size=64, lr=3e-3, dtype="float64"))
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["valid_elbo"] > history[0]["valid_elbo"]
    # The model's own evaluation runs in float64 as well.
    valid = elbo_per_point(model, x_valid)
    assert valid["elbo"].dtype == np.float64 and np.isfinite(valid["elbo"]).all()


# ---- the optimizers: torch's numbers, without importing torch._dynamo ------------------------

# One training in a fresh process: the estimator's fit; a run directory written (the
# optimizers' state_dict) and resumed (load_state_dict); and the same for per-point VI (its
# SparseAdam, and validation through inference.optimize's own Adam).
_NO_DYNAMO_SCRIPT = """
import sys
import numpy as np
import torch
import vaekit
from vaekit.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from vaekit.model import VAEModel
from vaekit.train import fit

x = np.random.default_rng(0).random((96, 8)).astype("float32")
vaekit.VAE(latent_dim=2, hidden=(4,), epochs=1).fit(x)
config = TrainConfig(epochs=1, batch_size=32)
model = ModelConfig(input_dim=8, latent_dim=2, hidden=(4,), likelihood="continuous_bernoulli")
run_config = RunConfig(model=model, train=config, data=DataConfig(source="array"))
fit(VAEModel(model), x, x[:16], config, sys.argv[1], run_config)
config.epochs = 2
fit(VAEModel(model), x, x[:16], config, sys.argv[1], run_config, resume=True)
vi = ModelConfig(input_dim=8, latent_dim=2, hidden=(4,), likelihood="continuous_bernoulli", inference="vi", n_points=96)
vi_config = RunConfig(model=vi, train=TrainConfig(epochs=1, batch_size=32), data=DataConfig(source="array"))
fit(VAEModel(vi), x, x[:16], vi_config.train, sys.argv[1] + "-vi", vi_config)
vi_config.train.epochs = 2
fit(VAEModel(vi), x, x[:16], vi_config.train, sys.argv[1] + "-vi", vi_config, resume=True)
print("torch._dynamo" in sys.modules)
"""


def test_training_does_not_import_dynamo(tmp_path):
    """torch wraps Optimizer.add_param_group, zero_grad, state_dict, load_state_dict in
    torch._dynamo.disable and Adam.step in graph breaks, each importing torch._dynamo (0.9 s)
    on first use; make_optimizers' classes call them unwrapped (compile=True imports it anyway)."""
    done = subprocess.run(
        [sys.executable, "-c", _NO_DYNAMO_SCRIPT, str(tmp_path / "run")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False"]


def _same_state(a: dict, b: dict) -> None:
    """Two optimizer state_dicts hold the same groups and bit-identical state."""
    assert a["param_groups"] == b["param_groups"]
    assert sorted(a["state"]) == sorted(b["state"])
    for pid, s in a["state"].items():
        assert sorted(s) == sorted(b["state"][pid])
        for key, v in s.items():
            w = b["state"][pid][key]
            assert type(v) is type(w) and (torch.equal(v, w) and v.dtype == w.dtype if torch.is_tensor(v) else v == w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_make_optimizers_steps_like_torchs_adam_and_sparse_adam(dtype):
    """Bit for bit the updates and state of torch.optim.Adam(fused=True) and SparseAdam (the
    reference: torch's own classes, driven by the same losses)."""
    model = small_model(0, inference="vi", n_points=10).to(dtype)
    ref = small_model(0, inference="vi", n_points=10).to(dtype)
    ours = train_mod.make_optimizers(model, lr=1e-2, point_lr=1e-2)
    local = ref.inference.local_parameters()
    shared = [p for p in ref.parameters() if all(p is not q for q in local)]
    theirs = [torch.optim.Adam(shared, lr=1e-2, fused=True), torch.optim.SparseAdam(local, lr=1e-2)]
    assert isinstance(ours[0], torch.optim.Adam) and isinstance(ours[1], torch.optim.SparseAdam)
    x = torch.as_tensor(digits_split()[0][:10], dtype=dtype)
    objective = train_mod.make_objective(model, TrainConfig())
    for m, opts in ((model, ours), (ref, theirs)):
        torch.manual_seed(3)
        for _ in range(5):
            loss, _ = m(objective, x, torch.arange(10), torch.randn(1, 10, m.noise_size, dtype=dtype))
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in opts:
                opt.step()
    assert_same_tensors(params(model), params(ref))
    for j, (a, b) in enumerate(zip(ours, theirs)):
        _same_state(a.state_dict(), b.state_dict())
        # torch's state loaded into a fresh optimizer of ours is that state.
        fresh = train_mod.make_optimizers(small_model(1, inference="vi", n_points=10).to(dtype), lr=1e-2, point_lr=1e-2)[j]
        fresh.load_state_dict(b.state_dict())
        _same_state(fresh.state_dict(), b.state_dict())



def _fit_run(digits, run_dir: Path, epochs: int, resume: bool = False) -> list[dict]:
    x_train, x_valid = digits
    config = TrainConfig(epochs=epochs, batch_size=640, eval_k=2, seed=0)
    return fit(small_model(0), x_train, x_valid, config, run_dir=run_dir, run_config=_run_config(config), resume=resume)


def _files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}


def test_resume_with_fewer_epochs_than_trained_is_refused(digits, tmp_path):
    from vaekit.errors import ConfigError

    _fit_run(digits, tmp_path, epochs=3)
    before = _files(tmp_path)
    with pytest.raises(ConfigError, match=r"has trained 3 epochs; --epochs 2"):
        _fit_run(digits, tmp_path, epochs=2, resume=True)
    assert _files(tmp_path) == before
    # The run's own length: a finished run, whose best weights come back.
    assert len(_fit_run(digits, tmp_path, epochs=3, resume=True)) == 3


@pytest.mark.parametrize("damage", ["deleted", "directory"])
def test_resume_when_the_best_weights_are_the_last_rewrites_them(digits, tmp_path, monkeypatch, damage):
    from vaekit.objectives.elbo import ElboObjective

    # Every epoch better than the one before: the best epoch is the last checkpoint's.
    scores = iter(range(100))
    monkeypatch.setattr(ElboObjective, "validate", lambda self, model, x, terms, seed: float(next(scores)))
    _fit_run(digits, tmp_path, epochs=2)
    kept = ckpt.load_tensors(tmp_path / ckpt.MODEL_FILE)[0]
    (tmp_path / ckpt.MODEL_FILE).unlink()
    if damage == "directory":
        (tmp_path / ckpt.MODEL_FILE).mkdir()
        with pytest.raises(IsADirectoryError):  # a directory is not replaced by a file
            _fit_run(digits, tmp_path, epochs=2, resume=True)
        (tmp_path / ckpt.MODEL_FILE).rmdir()
    _fit_run(digits, tmp_path, epochs=2, resume=True)
    assert_same_tensors(ckpt.load_tensors(tmp_path / ckpt.MODEL_FILE)[0], kept)


def test_a_best_model_write_that_fails_leaves_the_earlier_state_to_readers(digits, tmp_path, monkeypatch):
    """The epoch's checkpoint is written before its best model: a disk that fills between the
    two leaves model.safetensors and metrics.jsonl of the earlier epochs (what evaluate and
    load read), and the next resume rewrites the best model from last.safetensors."""
    import errno

    from vaekit.objectives.elbo import ElboObjective

    scores = iter(range(100))  # every epoch the best
    monkeypatch.setattr(ElboObjective, "validate", lambda self, model, x, terms, seed: float(next(scores)))
    _fit_run(digits, tmp_path, epochs=2)
    before = (tmp_path / ckpt.MODEL_FILE).read_bytes()
    real_save = ckpt.save_tensors

    def full_disk(path, tensors, meta=None):
        if Path(path).name == ckpt.MODEL_FILE:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_save(path, tensors, meta)

    monkeypatch.setattr(ckpt, "save_tensors", full_disk)
    with pytest.raises(OSError):
        _fit_run(digits, tmp_path, epochs=4, resume=True)
    assert (tmp_path / ckpt.MODEL_FILE).read_bytes() == before
    assert [r["epoch"] for r in ckpt.read_metrics(tmp_path)] == [1, 2]
    assert ckpt.load_tensors(tmp_path / ckpt.LAST_FILE)[1]["epoch"] == 3
    monkeypatch.setattr(ckpt, "save_tensors", real_save)
    _fit_run(digits, tmp_path, epochs=4, resume=True)
    weights, meta = ckpt.load_tensors(tmp_path / ckpt.MODEL_FILE)
    assert meta["epoch"] == 4
    last = ckpt.load_tensors(tmp_path / ckpt.LAST_FILE)[0]
    assert_same_tensors(weights, {k.removeprefix("model."): v for k, v in last.items() if k.startswith("model.")})


def test_resume_with_a_best_model_of_another_epoch_is_refused(digits, tmp_path, monkeypatch):
    from vaekit.errors import CheckpointError
    from vaekit.objectives.elbo import ElboObjective

    scores = iter([0.0, -1.0])  # epoch 1 best, epoch 2 worse
    monkeypatch.setattr(ElboObjective, "validate", lambda self, model, x, terms, seed: next(scores))
    _fit_run(digits, tmp_path, epochs=2)
    weights, meta = ckpt.load_tensors(tmp_path / ckpt.MODEL_FILE)
    assert meta["epoch"] == 1
    ckpt.save_tensors(tmp_path / ckpt.MODEL_FILE, weights, dict(meta, epoch=2))
    with pytest.raises(CheckpointError, match=r"model.safetensors holds epoch 2: the best weights \(epoch 1\) are lost"):
        _fit_run(digits, tmp_path, epochs=3, resume=True)


def test_resume_when_the_best_weights_are_lost_is_refused(digits, tmp_path, monkeypatch):
    from vaekit.errors import CheckpointError
    from vaekit.objectives.elbo import ElboObjective

    # Epoch 1 best, epoch 2 worse: model.safetensors holds epoch 1, last.safetensors epoch 2.
    scores = iter([0.0, -1.0])
    monkeypatch.setattr(ElboObjective, "validate", lambda self, model, x, terms, seed: next(scores))
    _fit_run(digits, tmp_path, epochs=2)
    (tmp_path / ckpt.MODEL_FILE).unlink()
    before = _files(tmp_path)
    for epochs in (2, 4):  # finished, or continued: the best weights cannot come back either way
        with pytest.raises(CheckpointError, match=r"model.safetensors is missing .*epoch 1.* holds epoch 2"):
            _fit_run(digits, tmp_path, epochs=epochs, resume=True)
        assert _files(tmp_path) == before


def test_data_fingerprint_sees_values_not_containers():
    """The checkpoint's hash of a split: equal for the array, its float64 copy, a tensor and
    MappedRows of the same values; different when a sampled row changes; "" for no rows."""
    import torch

    from vaekit.data import MappedRows
    from vaekit.train import FINGERPRINT_ROWS, data_fingerprint

    x = np.random.default_rng(1).normal(size=(1000, 4)).astype(np.float32)
    h = data_fingerprint(x)
    assert len(h) == 16 and h == data_fingerprint(x.astype(np.float64)) == data_fingerprint(torch.from_numpy(x))
    assert h == data_fingerprint(MappedRows(x))
    y = x.copy()
    y[-1, 0] += 1e-3  # the last row is always sampled
    assert data_fingerprint(y) != h and data_fingerprint(x[:-1]) != h
    assert data_fingerprint(x[:0]) == "" and data_fingerprint(x[:FINGERPRINT_ROWS - 5]) != data_fingerprint(x[:FINGERPRINT_ROWS - 4])


def test_the_nan_advice_shows_the_digits_that_tell_the_values_apart():
    from vaekit.train import _span

    assert _span(0.0, 1.0) == "0 to 1"
    assert _span(-3.14159, 2.71828) == "-3.142 to 2.718"
    assert _span(0.5, 0.52) == "0.5 to 0.52"
    assert _span(1e5 - 0.0031, 1e5 + 0.0042) == "99999.9969 to 100000.0042"
    assert _span(5.0, 5.0) == "5 to 5"


def test_valid_k_tracks_the_evidence_and_the_gap_without_changing_training(digits):
    """valid_k > 0: each epoch records the K-sample log p(x) of the validation rows (the
    importance-weighted estimate of the weights that epoch ended with, on its own stream) and
    the gap log p(x) − ELBO; the trained weights and the other records are the same bits as
    without it, and valid_k = 0 records None."""
    from vaekit.evaluate import log_px_per_point

    x_train, x_valid = digits
    plain, tracked = small_model(), small_model()
    h0 = fit(plain, x_train, x_valid, TrainConfig(epochs=2, batch_size=128, patience=None))
    h1 = fit(tracked, x_train, x_valid, TrainConfig(epochs=2, batch_size=128, valid_k=7, seed=0))
    assert_same_tensors(params(plain), params(tracked))
    strip = ("valid_log_px", "valid_gap")
    assert [{k: v for k, v in r.items() if k not in strip} for r in without_timing(h0)] == \
        [{k: v for k, v in r.items() if k not in strip} for r in without_timing(h1)]  # fmt: skip
    assert all(r["valid_log_px"] is None and r["valid_gap"] is None for r in h0)
    last = h1[-1]
    expected = float(log_px_per_point(tracked, x_valid, k=7, seed=3, per_row=False).mean())
    assert last["valid_log_px"] == expected
    assert last["valid_gap"] == expected - last["valid_elbo"]
    assert all(r["valid_gap"] > 0 for r in h1)  # K = 7 already bounds above the ELBO here


# ---- the weights' moving average (--ema) ---------------------------------------------------------


def _ema_config(epochs: int = 4) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=128, lr=3e-3, seed=3, ema=0.9, eval_k=2)


def test_ema_validates_and_keeps_the_averaged_weights(digits, tmp_path):
    """With ``ema`` every validation value is the averaged weights' (recomputed here from the
    saved best model with the validation's own noise), model.safetensors holds the average at
    the best epoch, last.safetensors both the step's own weights (to train on from) and the
    average, and ``fit`` leaves the model holding the best average. Without ema the average
    does not exist and the record is the raw weights'."""
    x_train, x_valid = digits
    config = _ema_config()
    model = small_model(0)
    history = fit(model, x_train, x_valid, config, run_dir=tmp_path, run_config=_run_config(config))
    best = max(history, key=lambda r: r["valid_score"])
    weights, meta = ckpt.load_tensors(tmp_path / ckpt.MODEL_FILE)
    assert meta["epoch"] == best["epoch"]
    assert_same_tensors(params(model), weights)
    check = small_model(5)
    check.load_state_dict(weights)
    valid = elbo_per_point(check, torch.as_tensor(x_valid), seed=config.seed + 1, per_row=False)
    assert float(valid["elbo"].mean()) == best["valid_elbo"]
    last, last_meta = ckpt.load_tensors(tmp_path / ckpt.LAST_FILE)
    assert last_meta["average_updates"] == config.epochs * math.ceil(len(x_train) / config.batch_size)
    own = {k.removeprefix("model."): v for k, v in last.items() if k.startswith("model.")}
    average = {k.removeprefix("average."): v for k, v in last.items() if k.startswith("average.")}
    assert set(average) == {name for name, _ in check.named_parameters()}
    assert all(not torch.equal(own[k], average[k]) for k in average)
    if best["epoch"] == config.epochs:
        assert all(torch.equal(weights[k], average[k]) for k in average)
    # The raw weights of the last epoch score otherwise than what was recorded for it.
    raw = small_model(5)
    raw.load_state_dict(own)
    raw_elbo = float(elbo_per_point(raw, torch.as_tensor(x_valid), seed=config.seed + 1, per_row=False)["elbo"].mean())
    assert raw_elbo != history[-1]["valid_elbo"]
    without = dataclasses.replace(config, ema=0.0)
    plain = fit(small_model(0), x_train, x_valid, without, run_dir=tmp_path / "plain", run_config=_run_config(without))
    assert not any(k.startswith("average.") for k in ckpt.load_tensors(tmp_path / "plain" / ckpt.LAST_FILE)[0])
    assert plain[-1]["train_loss"] == history[-1]["train_loss"]  # the steps themselves are the same
    assert plain[-1]["valid_elbo"] != history[-1]["valid_elbo"]


def test_ema_resume_rewrites_a_lost_best_model_from_the_average(digits, tmp_path, monkeypatch):
    """A best epoch that is the last checkpoint's: a resume rewrites model.safetensors from the
    checkpoint's average, not from the step's own weights."""
    from vaekit.objectives.elbo import ElboObjective

    x_train, x_valid = digits
    config = _ema_config(2)
    scores = iter(range(100))
    monkeypatch.setattr(ElboObjective, "validate", lambda self, model, x, terms, seed: float(next(scores)))
    fit(small_model(0), x_train, x_valid, config, run_dir=tmp_path, run_config=_run_config(config))
    kept = ckpt.load_tensors(tmp_path / ckpt.MODEL_FILE)[0]
    (tmp_path / ckpt.MODEL_FILE).unlink()
    fit(small_model(0), x_train, x_valid, config, run_dir=tmp_path, resume=True)
    assert_same_tensors(ckpt.load_tensors(tmp_path / ckpt.MODEL_FILE)[0], kept)


def test_ema_resume_from_a_checkpoint_without_its_average_is_refused(digits, tmp_path):
    from vaekit.errors import CheckpointError

    x_train, x_valid = digits
    config = _ema_config(1)
    fit(small_model(0), x_train, x_valid, config, run_dir=tmp_path, run_config=_run_config(config))
    tensors, meta = ckpt.load_tensors(tmp_path / ckpt.LAST_FILE)
    ckpt.save_tensors(tmp_path / ckpt.LAST_FILE, {k: v for k, v in tensors.items() if not k.startswith("average.")}, meta)
    before = _files(tmp_path)
    with pytest.raises(CheckpointError, match=r"last.safetensors: the weights' average does not fit the model \(no average of "):
        fit(small_model(0), x_train, x_valid, _ema_config(2), run_dir=tmp_path, resume=True)
    assert _files(tmp_path) == before


# ---- what fit takes -----------------------------------------------------------------------------


def test_fit_checks_its_rows_before_training(digits):
    """fit is public: rows a model cannot read are named as a DataError before any step, not met
    as a shape error, or trained on out of the likelihood's support (positive ELBOs), or a NaN
    loss blamed on the learning rate; a per-point method's tables must match the training rows."""
    from vaekit.errors import ConfigError, DataError

    x_train, x_valid = digits
    config = TrainConfig(epochs=1, batch_size=128, seed=0)
    nan = x_train.copy()
    nan[3, 2] = np.nan
    for train_rows, valid_rows, message in [
        (x_train * 16, x_valid, r"x_train"),  # 0..16 under a continuous Bernoulli on [0, 1]
        (x_train[:, :60], x_valid, r"x_train.*64"),
        (x_train, x_valid[:0], r"x_valid has 0 rows"),
        (x_train, x_valid[:, 0], r"x_valid"),
        (nan, x_valid, r"x_train contains NaN \(first at row 4, column 3\)"),
    ]:
        with pytest.raises(DataError, match=message):
            fit(small_model(0), train_rows, valid_rows, config)
    assert len(fit(small_model(0), x_train.tolist(), x_valid.tolist(), config)) == 1  # lists are rows too
    vi = small_model(0, inference="vi", n_points=100)
    with pytest.raises(ConfigError, match=rf"n_points=100 training rows, and x_train has {len(x_train)}; build the model with n_points={len(x_train)}"):
        fit(vi, x_train, x_valid, config)


def test_fit_leaves_the_callers_random_stream_as_it_found_it(digits):
    """The run seeds torch's global stream from config.seed (so that it is reproducible); the
    caller's stream continues afterwards as if fit had not run."""
    x_train, x_valid = digits
    draws = []
    for seed in (1, 2):
        model = small_model(0)  # seeds its own weights first
        torch.manual_seed(seed)
        fit(model, x_train, x_valid, TrainConfig(epochs=1, batch_size=128, seed=0))
        draws.append(torch.rand(3))
        torch.manual_seed(seed)
        assert torch.equal(draws[-1], torch.rand(3))
    assert not torch.equal(draws[0], draws[1])


def test_weights_made_huge_by_an_epochs_last_step_are_blamed_on_training_not_on_the_rows():
    """A last step that leaves finite but huge weights makes the validation ELBO overflow on
    ordinary rows; the run says training diverged and names the learning rate, not the rows.
    (Standardised rows of N(10, 3²): |x'| < 3.3; lr 1e12 overflows after the first epoch.)"""
    from vaekit import VAE

    x = np.random.default_rng(0).normal(size=(60, 5)) * 3 + 10
    with pytest.raises(TrainingError, match=r"^the model's outputs overflow on its own training rows after epoch 1: training diverged; .*"
                       r"likely cause is the learning rate \(--lr 1e\+12; try a lower one\)$"):  # fmt: skip
        VAE(latent_dim=2, hidden=(8,), epochs=2, lr=1e12, seed=0).fit(x)


def test_a_nan_from_a_tiny_fixed_std_names_it():
    """A fixed σ that float32 holds but whose gradient (x − mean)/σ² it does not: the NaN names
    --fixed-std, not only the learning rate, which cannot help there."""
    from vaekit import VAE

    x = np.random.default_rng(0).normal(size=(60, 5))
    with pytest.raises(TrainingError, match=r"likely cause: the fixed σ: --fixed-std 1e-19 is so small beside .* that \(x − mean\)/σ² overflows float32"):
        VAE(latent_dim=2, hidden=(8,), epochs=1, likelihood="gaussian", variance="fixed", fixed_std=1e-19, seed=0).fit(x)
