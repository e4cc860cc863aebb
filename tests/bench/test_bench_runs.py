"""bench/bubbles.py, bench/overfit.py and bench/prior_from.py end to end at tiny settings: each
runs its whole main() (training included) and writes what its docstring promises, with finite
numbers, in the place ``--out`` names."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from bench_helpers import load_bench
from PIL import Image
from train_helpers import one_thread

from vaekit.cli import main as vaekit_main


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def _main(name: str, monkeypatch, capsys, *argv: str) -> str:
    """bench/NAME.py's main() with ARGV, as its command line runs it; its stdout."""
    module = load_bench(name)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *map(str, argv)])
    capsys.readouterr()
    module.main()
    return capsys.readouterr().out


def _finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def test_bubbles_draws_one_panel_per_beta(tmp_path, monkeypatch, capsys):
    figure = tmp_path / "bubbles.png"
    out = _main("bubbles", monkeypatch, capsys, "--epochs", "1", "--hidden", "16", "--out", figure)
    lines = out.splitlines()
    # One line per β, then the JSON line.
    assert [line.split(":")[0] for line in lines[:3]] == ["β = 0.1", "β = 1", "β = 4"]
    result = json.loads(lines[-1])
    assert result["figure"] == str(figure)
    assert [r["beta"] for r in result["results"]] == [0.1, 1.0, 4.0]
    for r in result["results"]:
        assert _finite(r["valid_recon"], r["valid_kl"], r["force_mean"], r["force_variance"], r["mean_sigma"])
        # The KL is its two forces (bench/README.md's "KL = mean + variance").
        assert r["valid_kl"] == pytest.approx(r["force_mean"] + r["force_variance"], rel=1e-6)
        # The mean force is ½‖μ‖² averaged over the same rows, so the farthest ‖μ‖ bounds it.
        assert r["max_mu_norm"] ** 2 >= 2 * r["force_mean"] * (1 - 1e-6) > 0
    with Image.open(figure) as img:
        assert img.format == "PNG" and img.size[0] > 2 * img.size[1]  # three panels side by side


def test_overfit_writes_its_table_json_and_picture(tmp_path, monkeypatch, capsys):
    overfit = load_bench("overfit")
    # map-noprior's path is map's with another objective: one of the two covers both.
    methods = ["map-noprior", "amortized"]
    out = _main(
        "overfit", monkeypatch, capsys, "--widths", "8", "16", "--methods", *methods, "--epochs", "2", "--rows", "200",
        "--latent-dim", "2", "--encoder-width", "16", "--eval-rows", "20", "--k", "5", "--out", tmp_path,
    )  # fmt: skip
    result = json.loads((tmp_path / "overfit.json").read_text())
    rows = result["rows"]
    assert [(r["method"], r["width"]) for r in rows] == [(m, w) for w in (8, 16) for m in methods]
    for r in rows:
        assert _finite(r["train_log_px"], r["test_log_px"], r["gap"], r["seconds"])
        assert r["gap"] == pytest.approx(r["train_log_px"] - r["test_log_px"])
        assert 1 <= r["best_epoch"] <= r["epochs"] <= 2
    table = overfit.table(rows)
    assert out.rstrip().endswith(table)
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows)
    assert all(len(line.split("|")) == len(lines[0].split("|")) == 8 for line in lines)  # 6 columns
    assert lines[2].startswith("| map-noprior | 8 | ")
    # --table reads the same rows back from the JSON.
    assert _main("overfit", monkeypatch, capsys, "--table", "--out", tmp_path).strip() == table
    with Image.open(tmp_path / "overfit.png") as img:
        assert img.format == "PNG" and min(img.size) > 100


def test_prior_from_trains_its_five_runs_and_scores_each_prior(tmp_path, monkeypatch, capsys):
    """Its five `vaekit train` commands run in this process (the same argument lists), so the
    test takes seconds rather than five interpreter starts."""
    prior_from = load_bench("prior_from")
    commands = []

    def in_process(cmd, check, stdout):
        assert cmd[:3] == [sys.executable, "-m", "vaekit"] and check
        commands.append(cmd[3:])
        code = vaekit_main([*cmd[3:], "--quiet"])
        if code:
            raise subprocess.CalledProcessError(code, cmd)

    monkeypatch.setattr(prior_from.subprocess, "run", in_process)
    monkeypatch.setattr(sys, "argv", ["prior_from.py", "--epochs", "1", "--first-epochs", "1", "--k", "5",
                                      "--components", "20", "--fit-components", "2", "--out", str(tmp_path)])  # fmt: skip
    capsys.readouterr()
    prior_from.main()
    out = capsys.readouterr().out
    assert len(commands) == 5 and all(c[0] == "train" for c in commands)
    result = json.loads(out.splitlines()[-1])
    assert result["bench"] == "prior_from" and result["k"] == 5
    priors = ["standard normal", "mixture, learned", "aggregate of 0-4", "mixture fitted to it"]
    assert [r["prior"] for r in result["rows"]] == priors
    for r in result["rows"]:
        assert _finite(*(r[f"test log p(x) {part}"] for part in ("all", "0-4", "5-9")))
    for run in ("first", "standard", "mixture", "aggregate", "fitted"):
        assert (tmp_path / run / "model.safetensors").is_file(), run
    # The printed table: a header, then one line per prior with its three numbers.
    table = out.splitlines()[-6:-1]
    assert table[0].split() == ["prior", "all", "0-4", "5-9"]
    assert [line.rsplit(None, 3)[0].strip() for line in table[1:]] == priors
