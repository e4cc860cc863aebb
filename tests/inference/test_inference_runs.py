"""Every inference method through run directories: save, load and resume give the same
numbers, and ``vaekit gaps`` reports the decomposition of a saved run."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

import vaekit
from inference_helpers import digits_model
from vaekit.checkpoint import LAST_FILE, MODEL_FILE, load_tensors
from vaekit.cli import main
from vaekit.config import DataConfig, RunConfig, TrainConfig
from vaekit.evaluate import evaluate, gaps
from vaekit.train import fit

METHODS = ("amortized", "autoencoder", "map", "vi")
TRAIN_ARGS = ["--data", "digits", "--hidden", "32", "--latent-dim", "4", "--eval-k", "5"]
# --local-steps: the per-point fits of vi's new rows and of the point estimates' proposals.
EXTRA = {"amortized": ["--refine-steps", "2"], **{m: ["--local-steps", "10"] for m in ("autoencoder", "map", "vi")}}
GAP_KEYS = {"log_likelihood", "elbo", "elbo_optimal", "approximation_gap", "amortization_gap", "n", "k",
            "approximation_gap_se", "amortization_gap_se", "steps", "steps_taken"}
DIGITS_TEST_ROWS = 359  # round(1797 · 0.2), the CLI's default test split
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def cli(*argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(a) for a in argv])
    return code, out.getvalue()


def train(out, method, *more):
    code, _ = cli("train", "--out", out, "--inference", method, *TRAIN_ARGS, *EXTRA.get(method, []), *more)
    assert code == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory, single_thread):
    """{method: (straight, resumed)}: 2 epochs in one go; 1 epoch, then --resume --epochs 2."""
    root = tmp_path_factory.mktemp("inference_runs")
    out = {}
    with single_thread():
        for method in METHODS:
            straight, resumed = root / f"{method}-straight", root / f"{method}-resumed"
            train(straight, method, "--epochs", "2")
            train(resumed, method, "--epochs", "1")
            torch.manual_seed(123)  # the resume must take everything from the run directory
            code, _ = cli("train", "--out", resumed, "--resume", "--epochs", "2")
            assert code == 0
            out[method] = (straight, resumed)
    return out


def _same_tensors(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("method", METHODS)
def test_resume_equals_uninterrupted_run(method, runs):
    straight, resumed = runs[method]
    a, meta_a = load_tensors(straight / LAST_FILE)
    b, meta_b = load_tensors(resumed / LAST_FILE)
    # Every tensor of the training state: weights (per-point tables included), the state of
    # each optimizer (SparseAdam's for the tables), and the RNG.
    _same_tensors(a, b)
    assert meta_a["epoch"] == meta_b["epoch"] == 2
    assert meta_a["optim_scalars"] == meta_b["optim_scalars"]
    assert meta_a["param_groups"] == meta_b["param_groups"]
    if method in ("map", "vi"):
        tables = {"map": ["inference.z"], "vi": ["inference.mu", "inference.logvar"]}[method]
        assert all(f"model.{t}" in a for t in tables)
        assert len(meta_a["param_groups"]) == 2  # Adam and SparseAdam
        assert any(k.startswith("optim.1.") and k.endswith("exp_avg") for k in a)
    _same_tensors(load_tensors(straight / MODEL_FILE)[0], load_tensors(resumed / MODEL_FILE)[0])
    lines = [
        [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (straight, resumed)
    ]
    assert [(r["epoch"], r["train_loss"], r["valid_elbo"]) for r in lines[0]] == [
        (r["epoch"], r["train_loss"], r["valid_elbo"]) for r in lines[1]
    ]


@pytest.mark.parametrize("method", METHODS)
def test_load_gives_the_saved_weights(method, runs):
    straight, _ = runs[method]
    est = vaekit.load(straight)
    saved, _ = load_tensors(straight / MODEL_FILE)
    _same_tensors(est.model_.state_dict(), saved)
    assert est.model_.config.inference == method
    assert est.model_.config.refine_steps == (2 if method == "amortized" else 0)
    assert len(est.history_) == 2


@pytest.mark.parametrize("method", METHODS)
def test_loaded_model_equals_the_model_after_training(method, digits, tmp_path):
    kw = {"refine_steps": 2} if method == "amortized" else {}
    model = digits_model(method, local_steps=10, **kw)
    config = TrainConfig(epochs=2, lr=3e-3, batch_size=64, eval_k=5)
    run_config = RunConfig(model=model.config, train=config, data=DataConfig(source="array"))
    fit(model, digits["train"], digits["valid"], config, tmp_path, run_config)
    loaded = vaekit.load(tmp_path).model_
    _same_tensors(loaded.state_dict(), model.state_dict())
    results = []
    for m in (model, loaded):
        results.append(evaluate(m, digits["test"], k=5, seed=0))
    assert results[0] == results[1]


@pytest.mark.parametrize("method", METHODS)
def test_gaps_command(method, runs, capsys):
    straight, _ = runs[method]
    plot = straight / "gaps_test.png"
    plot.unlink(missing_ok=True)
    torch.manual_seed(0)
    capsys.readouterr()
    assert main(["gaps", str(straight), "--json", "--k", "20", "--steps", "20"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert GAP_KEYS <= set(result)
    assert (result["n"], result["k"]) == (DIGITS_TEST_ROWS, 20)
    assert plot.read_bytes()[:8] == PNG_MAGIC
    assert (straight / "gaps_test_bars.png").read_bytes()[:8] == PNG_MAGIC and result["bars"] == str(straight / "gaps_test_bars.png")
    # The arithmetic is exact: JSON keeps every bit of a Python float.
    assert result["approximation_gap"] == result["log_likelihood"] - result["elbo_optimal"]
    assert result["amortization_gap"] == result["elbo_optimal"] - result["elbo"]
    # And the command reports what the library computes on the run's test split (same global
    # stream: seeded, then one model built, as the command does).
    from vaekit.data import load_dataset

    torch.manual_seed(0)
    est = vaekit.load(straight)
    x = est.model_input(load_dataset(DataConfig()).split("test"))  # the pixels / 16 the model sees
    ref = gaps(est.model_, x, k=20, steps=20, seed=0)
    assert {k: result[k] for k in GAP_KEYS} == {k: ref[k] for k in GAP_KEYS}
    # The printed line gives each gap with its standard error (the same numbers: seeded noise).
    assert main(["gaps", str(straight), "--k", "20", "--steps", "20"]) == 0
    out, _ = capsys.readouterr()
    for name in ("approximation", "amortization"):
        assert f"{name} gap {result[name + '_gap']:.3f} ± {result[name + '_gap_se']:.3f}" in out, out
    # One row has no standard error: none is printed (JSON: null).
    one = straight / "one.npy"
    np.save(one, load_dataset(DataConfig()).split("test")[:1])
    assert main(["gaps", str(straight), "--data", str(one), "--split", "all", "--k", "20", "--steps", "5"]) == 0
    out, _ = capsys.readouterr()
    assert "all (1 row): " in out and "±" not in out and "nan" not in out and "no standard errors" in out, out
    assert main(["gaps", str(straight), "--data", str(one), "--split", "all", "--k", "20", "--steps", "5", "--json"]) == 0
    out, _ = capsys.readouterr()
    assert json.loads(out)["approximation_gap_se"] is None
    one.unlink()


@pytest.mark.parametrize("method", ["map", "vi"])
def test_gaps_of_the_training_split_use_the_learned_tables(method, runs, capsys):
    """`vaekit gaps --split train` on a per-point run scores each training row with the q_i
    it learned (gaps with idx = the rows' positions), not with a new fit for each row: the
    two give different ELBO(q), and the command's equals the library's with idx."""
    from vaekit.data import load_dataset

    straight, _ = runs[method]
    capsys.readouterr()
    assert main(["gaps", str(straight), "--split", "train", "--json", "--k", "5", "--steps", "20"]) == 0
    result = json.loads(capsys.readouterr()[0])
    est = vaekit.load(straight)
    x = est.model_input(load_dataset(DataConfig()).split("train"))
    assert len(x) == est.model_.config.n_points == result["n"]
    own = gaps(est.model_, x, k=5, steps=20, seed=0, idx=np.arange(len(x)))
    fresh = gaps(est.model_, x, k=5, steps=20, seed=0)
    assert result["elbo"] == own["elbo"] != fresh["elbo"]
    assert result["elbo_optimal"] == own["elbo_optimal"]


@pytest.mark.parametrize("method", ["map", "vi"])
def test_evaluate_of_the_training_split_uses_the_learned_tables(method, runs, capsys):
    """`vaekit evaluate --split train` scores a per-point run's training rows with their q_i,
    as `gaps` does: equal to the library's evaluate with idx, unlike a new fit for each row;
    other rows (--data) get a new fit."""
    from vaekit.data import load_dataset
    from vaekit.evaluate import evaluate

    straight, _ = runs[method]
    capsys.readouterr()
    assert main(["evaluate", str(straight), "--split", "train", "--json", "--k", "5"]) == 0
    result = json.loads(capsys.readouterr()[0])
    est = vaekit.load(straight)
    x = est.model_input(load_dataset(DataConfig()).split("train"))
    own = evaluate(est.model_, x, k=5, seed=0, idx=np.arange(len(x)))
    fresh = evaluate(est.model_, x, k=5, seed=0)
    assert result["elbo"] == own["elbo"] != fresh["elbo"]
    assert result["log_likelihood"] == own["log_likelihood"] != fresh["log_likelihood"]
