"""Tests of the ``vaekit`` command: what it writes and prints on good input, and on bad input
an exit code, exactly one stderr line ``vaekit: error: …`` naming the culprit, and no traceback.

Most commands run in-process through ``vaekit.cli.main(argv)`` (a subprocess costs ~2 s of
torch import); a representative subset runs as a real ``python -m vaekit`` process, which is
the only way to see what the user sees (exit status of the interpreter, full stderr).
One small digits run (3 epochs, 2-D latent) is trained once per session and reused;
commands that could damage a run work on a copy of it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import vaekit
from vaekit.checkpoint import read_metrics
from vaekit.cli import main
from vaekit.config import CONFIG_VERSION
from vaekit.errors import CheckpointError, VaekitWarning
from cli_helpers import cli
from vaekit.outputs import write_array, write_blocks

DIGITS_N, DIGITS_VALID, DIGITS_TEST, DIM = 1797, 180, 359, 64
TEST_KEYS = {"elbo", "recon", "kl", "log_likelihood", "bits_per_dim", "n", "k", "active_units", "latent_size", "kl_per_dim", "kl_per_group"}
TRAIN_ARGS = ["--epochs", "3", "--latent-dim", "2", "--hidden", "32", "--eval-k", "10"]
RUN_FILES = (
    "config.json", "model.safetensors", "last.safetensors", "metrics.jsonl",
    "samples.png", "reconstructions.png", "curves.png", "latent.png", "latent_grid.png", "kl_per_dim.png", "bubbles.png",
)  # fmt: skip
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")


# -- helpers ------------------------------------------------------------------------------------


def vaekit_process(*argv, cwd=None) -> subprocess.CompletedProcess:
    """``python -m vaekit ARGV`` in a real process, stdout and stderr captured."""
    return subprocess.run(
        [sys.executable, "-m", "vaekit", *map(str, argv)],
        capture_output=True, text=True, cwd=cwd, timeout=300,
    )  # fmt: skip




def assert_error(code, out: str, err: str, expected_code: int | None, *culprits: str) -> str:
    """One stderr line 'vaekit: error: …' naming every culprit, no traceback, nothing on stdout,
    and exit code ``expected_code`` (any non-zero code when None)."""
    assert "Traceback" not in err and "Traceback" not in out, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got:\n{err}"
    line = lines[0]
    assert line.startswith("vaekit: error: "), line
    for c in culprits:
        assert c in line, f"{c!r} not named in: {line}"
    assert out == "", out
    if expected_code is None:
        assert code not in (0, None), line
    else:
        assert code == expected_code, f"exit code {code}, expected {expected_code}: {line}"
    return line


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (temporary files included) with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def state_dict(run: Path) -> dict[str, torch.Tensor]:
    return vaekit.load(run).model_.state_dict()


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# -- session fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(run_dir, the CompletedProcess of `vaekit train --json`): the one digits run."""
    run = tmp_path_factory.mktemp("cli") / "run"
    proc = vaekit_process("train", "--out", run, *TRAIN_ARGS, "--json")
    assert proc.returncode == 0, proc.stderr
    return run, proc


@pytest.fixture(scope="session")
def run(trained) -> Path:
    return trained[0]


@pytest.fixture(scope="session")
def digits_rows() -> np.ndarray:
    """The first 50 digits as scikit-learn gives them (pixels 0..16), which a digits run takes."""
    from sklearn.datasets import load_digits

    return load_digits().data[:50]


@pytest.fixture(scope="session")
def files(tmp_path_factory, digits_rows) -> Path:
    """Data files, good and bad, in one directory."""
    from sklearn.datasets import load_digits

    d = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    header = ",".join(f"p{i}" for i in range(DIM))
    np.savetxt(d / "digits50.csv", digits_rows, delimiter=",", header=header, comments="")
    np.savetxt(d / "digits300.csv", load_digits().data[:300] / 16.0, delimiter=",", fmt="%.4f")
    np.savetxt(d / "ten.csv", rng.random((20, 10)), delimiter=",")
    (d / "nan.csv").write_text("a,b\n1,2\n3,nan\n4,5\n5,6\n6,7\n")
    (d / "badcell.csv").write_text("a,b\n1,2\n3,x\n4,5\n5,6\n6,7\n")
    a = rng.random((30, 5))
    a[3, 2] = np.inf
    np.save(d / "inf.npy", a)
    np.save(d / "big.npy", np.full((30, 5), 1.5))
    np.save(d / "empty.npy", np.zeros((0, 5)))
    np.save(d / "one.npy", np.zeros((1, 5)))
    (d / "corrupt.npy").write_bytes(rng.bytes(300))
    (d / "corrupt.npz").write_bytes(rng.bytes(300))
    np.savez(d / "whole.npz", x=rng.random((50, 5)))
    whole = (d / "whole.npz").read_bytes()
    (d / "truncated.npz").write_bytes(whole[: len(whole) // 2])
    (d / "somedir").mkdir()
    np.savetxt(d / "neg.csv", np.full((5, DIM), -0.2), delimiter=",")
    np.savetxt(d / "twod.csv", rng.standard_normal((100, 2)), delimiter=",")
    # |x| ~ 1e20 fits float32 (max 3.4e38), but x² overflows to inf in the Gaussian log-density.
    np.savetxt(d / "huge.csv", 1e20 * (1 + rng.random((40, 3))), delimiter=",")
    return d


@pytest.fixture(scope="session")
def run2d(tmp_path_factory, files) -> Path:
    """A Gaussian model of 2-D non-image data."""
    out = tmp_path_factory.mktemp("cli2d") / "run"
    code = main(["train", "--out", str(out), "--data", str(files / "twod.csv"), "--epochs", "1",
                 "--hidden", "8", "--latent-dim", "2", "--eval-k", "5", "--json"])  # fmt: skip
    assert code == 0
    return out


@pytest.fixture
def run_copy(run, tmp_path) -> Path:
    dst = tmp_path / "runcopy"
    shutil.copytree(run, dst)
    return dst


# -- 1. happy paths -----------------------------------------------------------------------------


def test_train_json_prints_one_object_with_summary(trained):
    run, proc = trained
    assert "\r" not in proc.stderr  # no progress bar when stderr is not a terminal
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert set(summary) == {"run_dir", "epochs", "best_epoch", "valid_elbo", "test"}
    assert summary["run_dir"] == str(run)
    assert summary["epochs"] == 3
    assert 1 <= summary["best_epoch"] <= 3
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert summary["valid_elbo"] == max(r["valid_elbo"] for r in metrics)
    t = summary["test"]
    assert set(t) == TEST_KEYS
    assert t["n"] == DIGITS_TEST and t["k"] == 10
    assert t["elbo"] == pytest.approx(t["recon"] - t["kl"], rel=1e-6)
    assert t["kl"] >= 0
    # IWAE_K >= ELBO holds in expectation only; a 3-epoch model's gap is small, so a slack of 5 nats.
    assert t["log_likelihood"] > t["elbo"] - 5
    assert t["bits_per_dim"] == pytest.approx(-t["log_likelihood"] / (DIM * math.log(2)), rel=1e-12)
    assert all(math.isfinite(t[k]) for k in ("elbo", "recon", "kl", "log_likelihood", "bits_per_dim"))


def test_train_writes_run_directory(run):
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    for name in RUN_FILES:
        if name.endswith(".png"):
            assert (run / name).read_bytes()[:8] == PNG_MAGIC, name
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["latent_dim"] == 2 and config["model"]["hidden"] == [32]
    assert config["model"]["likelihood"] == "continuous_bernoulli"  # auto, for grey levels in [0, 1]
    assert config["train"]["epochs"] == 3 and config["train"]["eval_k"] == 10
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in metrics] == [1, 2, 3]
    for r in metrics:
        assert {"epoch", "train_loss", "train_elbo", "valid_elbo", "valid_recon", "valid_kl"} <= set(r)
        assert all(math.isfinite(r[k]) for k in ("train_loss", "valid_elbo"))
    # not a leftover temporary file
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_evaluate_json(run, capsys):
    code, out, err = cli(capsys, "evaluate", run, "--json", "--k", "20")
    assert code == 0 and err == ""
    r = json.loads(out)
    assert set(r) == TEST_KEYS | {"split", "inference", "seconds"}
    assert r["inference"] == "amortized" and r["seconds"] > 0
    assert r["k"] == 20 and r["n"] == DIGITS_TEST and r["split"] == "test"
    assert r["elbo"] == pytest.approx(r["recon"] - r["kl"], rel=1e-6)
    assert r["log_likelihood"] > r["elbo"] - 5


def test_evaluate_repeats_the_training_summary(trained, capsys):
    """Same model, split, K and seed as the end of `train`: the same numbers."""
    run, proc = trained
    code, out, _ = cli(capsys, "evaluate", run, "--json", "--k", "10")
    assert code == 0
    r = json.loads(out)
    t = json.loads(proc.stdout)["test"]
    for key in TEST_KEYS:
        assert r[key] == pytest.approx(t[key], rel=1e-9), key


@pytest.mark.parametrize("split, n", [("valid", DIGITS_VALID), ("all", DIGITS_N)])
def test_evaluate_split(run, capsys, split, n):
    code, out, _ = cli(capsys, "evaluate", run, "--json", "--k", "2", "--split", split)
    assert code == 0
    r = json.loads(out)
    assert r["n"] == n and r["split"] == split


def test_evaluate_text_output(run, capsys):
    code, out, _ = cli(capsys, "evaluate", run, "--k", "2")
    assert code == 0
    assert f"test ({DIGITS_TEST} rows)" in out and "ELBO" in out and "K=2" in out


def test_sample_npy(run, tmp_path, capsys):
    code, out, _ = cli(capsys, "sample", run, "-n", "7", "--out", tmp_path / "x.npy", "--json")
    assert code == 0
    assert json.loads(out) == {"out": str(tmp_path / "x.npy"), "n": 7, "source": "prior"}
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (7, DIM)
    assert np.isfinite(x).all() and x.min() >= 0 and x.max() <= 16  # digits' raw pixel range


@pytest.mark.parametrize("name", ["s.png", "s.PNG"])
def test_sample_png(run, tmp_path, capsys, name):
    """A picture whatever the suffix's case (as .NPY is an array), never text under its name."""
    from PIL import Image

    code, _, _ = cli(capsys, "sample", run, "-n", "7", "--out", tmp_path / name)
    assert code == 0
    assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    with Image.open(tmp_path / name) as im:
        assert im.size[0] > 8 and im.size[1] >= 8


def test_sample_aggregate_and_draw(run, digits_rows, tmp_path, capsys):
    paths = {name: tmp_path / f"{name}.npy" for name in ("prior", "aggregate", "draw", "gmm")}
    assert cli(capsys, "sample", run, "-n", "7", "--out", paths["prior"])[0] == 0
    assert cli(capsys, "sample", run, "-n", "7", "--out", paths["aggregate"], "--source", "aggregate")[0] == 0
    assert cli(capsys, "sample", run, "-n", "7", "--out", paths["draw"], "--draw")[0] == 0
    assert cli(capsys, "sample", run, "-n", "7", "--out", paths["gmm"], "--source", "gmm", "--components", "3")[0] == 0
    prior, aggregate, draw, gmm = (np.load(p) for p in paths.values())
    for x in (aggregate, draw, gmm):
        assert x.shape == (7, DIM) and np.isfinite(x).all() and x.min() >= 0 and x.max() <= 16
    assert not np.allclose(aggregate, prior)  # z from q(z|x) of training rows, not from p(z)
    # Same seed, same z: --draw gives x ~ p(x|z), which differs from E[x|z] almost surely.
    assert np.abs(draw - prior).mean() > 1e-3
    # A file given with --data is read whole (no split of its own): three rows suffice, and
    # the samples are the library's from exactly those rows.
    rows = digits_rows[:3]
    np.save(tmp_path / "three.npy", rows)
    est = vaekit.load(run)
    for source in ("aggregate", "gmm"):
        out = tmp_path / f"three-{source}.npy"
        code, _, err = cli(capsys, "sample", run, "-n", "5", "--seed", "2", "--source", source, "--data", tmp_path / "three.npy",
                           *(["--components", "2"] if source == "gmm" else []), "--out", out)  # fmt: skip
        assert code == 0, err
        expected = est.sample(5, seed=2, source=source, X=rows, **({"components": 2} if source == "gmm" else {}))
        np.testing.assert_array_equal(np.load(out), expected)
        # --mmap reads the rows it draws from the mapped file: the same samples.
        mapped = tmp_path / f"three-{source}-mmap.npy"
        code, _, err = cli(capsys, "sample", run, "-n", "5", "--seed", "2", "--source", source, "--data", tmp_path / "three.npy",
                           *(["--components", "2"] if source == "gmm" else []), "--mmap", "--out", mapped)  # fmt: skip
        assert code == 0, err
        np.testing.assert_array_equal(np.load(mapped), expected)
    # --mmap with --source prior would read nothing: refused as --data is.
    code, _, err = cli(capsys, "sample", run, "--mmap", "--out", tmp_path / "p.npy")
    assert code == 2 and "--mmap gives the rows of --source aggregate or gmm; --source prior draws z ~ p(z) and reads none" in err
    # A mixture needs two rows, even of one component: one line, nothing written.
    np.save(tmp_path / "one.npy", rows[:1])
    code, _, err = cli(capsys, "sample", run, "-n", "5", "--source", "gmm", "--components", "1", "--data", tmp_path / "one.npy",
                       "--out", tmp_path / "one-gmm.npy")  # fmt: skip
    assert code == 1 and err.strip() == f"vaekit: error: --components 1: a mixture needs at least 2 rows, and {tmp_path / 'one.npy'} has 1"
    assert not (tmp_path / "one-gmm.npy").exists()


def test_sample_picture_title_names_the_rows_drawn_from(run, digits_rows, tmp_path, capsys, monkeypatch):
    """The title of a .png of --source aggregate or gmm says whose posteriors z came from:
    the --data file (its name), or the training split of a named dataset or of the run's data."""
    from vaekit import plots

    titles = []
    monkeypatch.setattr(plots, "image_grid", lambda x, out, shape, title=None, **k: titles.append(title))
    np.save(tmp_path / "three.npy", digits_rows[:3])
    cases = [
        (["--source", "aggregate", "--data", tmp_path / "three.npy"], "z ~ q(z|x), x from three.npy, decoder means"),
        (["--source", "aggregate", "--data", "digits"], "z ~ q(z|x), x from the train split of digits, decoder means"),
        (["--source", "aggregate"], "z ~ q(z|x), x from the train split of digits, decoder means"),
        (["--source", "gmm", "--components", "2", "--data", tmp_path / "three.npy", "--draw"],
         "z ~ a 2-component mixture fitted to q of three.npy, drawn x ~ p(x|z)"),
        ([], "z ~ p(z), decoder means"),
    ]  # fmt: skip
    for argv, title in cases:
        code, _, err = cli(capsys, "sample", run, "-n", "4", *argv, "--out", tmp_path / "s.png")
        assert code == 0, err
        assert titles.pop() == f"4 samples: {title}"


def test_sample_is_seeded(run, tmp_path, capsys):
    for name in ("a", "b"):
        assert cli(capsys, "sample", run, "-n", "5", "--seed", "3", "--out", tmp_path / f"{name}.npy")[0] == 0
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".csv"])
@pytest.mark.parametrize("source", ["prior", "aggregate", "gmm"])
def test_sample_writes_its_rows_block_by_block(run, digits_rows, tmp_path, capsys, monkeypatch, suffix, source):
    """The file holds the library's sample(n) however many blocks it took (here blocks of 4
    rows: 11 rows in 3), and n rows that the disk cannot hold are refused before any work."""
    from vaekit import estimator

    monkeypatch.setattr(estimator, "BATCH_ROWS", 4)
    held = []
    import vaekit.cli as cli_mod

    write_blocks = cli_mod.write_blocks
    monkeypatch.setattr(cli_mod, "write_blocks", lambda out, blocks, *a, **k: write_blocks(out, (held.append(len(b)) or b for b in blocks), *a, **k))
    rows = digits_rows[:20]
    np.save(tmp_path / "rows.npy", rows)
    data = [] if source == "prior" else ["--data", tmp_path / "rows.npy"]
    options = {"components": 2} if source == "gmm" else {}
    out = tmp_path / f"s{suffix}"
    code, _, err = cli(capsys, "sample", run, "-n", "11", "--seed", "4", "--source", source, *data,
                       *(["--components", "2"] if options else []), "--out", out)  # fmt: skip
    assert code == 0, err
    assert held == [4, 4, 3]
    if suffix == ".npy":
        got = np.load(out)
    elif suffix == ".npz":
        with np.load(out) as z:
            got = z["x"]
    else:
        header = not out.read_text()[0].isdigit()  # a named dataset's columns have no names
        got = np.loadtxt(out, delimiter=",", skiprows=int(header), dtype=np.float32)
    expected = vaekit.load(run).sample(11, seed=4, source=source, X=None if source == "prior" else rows, **options)
    np.testing.assert_allclose(got, expected, rtol=1e-6 if suffix == ".csv" else 0, atol=0)
    assert not np.array_equal(got[:4], got[4:8])  # each block its own draws
    out.write_bytes(b"keep")
    code, stdout, err = cli(capsys, "sample", run, "-n", str(10**13), "--source", source, *data,
                            *(["--components", "2"] if options else []), "--out", out, "--overwrite")  # fmt: skip
    assert_error(code, stdout, err, 1, f"--out {out}: the output needs at least", "GiB free")
    assert out.read_bytes() == b"keep"


def test_out_through_a_symbolic_link_writes_its_target(run, tmp_path, capsys):
    (tmp_path / "keep").mkdir()
    target = tmp_path / "keep" / "codes.npy"
    target.write_bytes(b"old")
    link = tmp_path / "codes.npy"
    link.symlink_to(target)
    code, out, err = cli(capsys, "encode", run, "--data", "digits", "--out", link)
    assert_error(code, out, err, 1, f"--out {link}: exists; pass --overwrite to replace it")
    assert target.read_bytes() == b"old"
    code, _, err = cli(capsys, "encode", run, "--data", "digits", "--out", link, "--overwrite")
    assert code == 0, err
    assert link.is_symlink() and np.load(target).shape == (DIGITS_N, 4)


def test_a_quoted_tilde_is_the_home_directory_in_every_path(run, tmp_path, capsys, monkeypatch):
    """"~/x" given in quotes reaches vaekit unexpanded: --data, --out and RUN_DIR read it alike."""
    import shutil

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(run, tmp_path / "r")
    (tmp_path / "out").mkdir()
    code, _, err = cli(capsys, "encode", "~/r", "--data", "digits", "--out", "~/out/codes.npy")
    assert code == 0, err
    assert np.load(tmp_path / "out" / "codes.npy").shape == (DIGITS_N, 4)


def test_encode_npy_npz_csv(run, tmp_path, capsys):
    code, out, _ = cli(capsys, "encode", run, "--data", "digits", "--out", tmp_path / "e.npy", "--json")
    assert code == 0
    assert json.loads(out)["n"] == DIGITS_N and json.loads(out)["latent_dim"] == 2
    e = np.load(tmp_path / "e.npy")
    assert e.shape == (DIGITS_N, 4)  # μ then log σ², latent_dim 2, every row of digits
    assert cli(capsys, "encode", run, "--data", "digits", "--out", tmp_path / "e.npz")[0] == 0
    with np.load(tmp_path / "e.npz") as z:
        assert set(z.files) == {"mu", "logvar"}
        np.testing.assert_array_equal(z["mu"], e[:, :2])
        np.testing.assert_array_equal(z["logvar"], e[:, 2:])
    assert cli(capsys, "encode", run, "--data", "digits", "--out", tmp_path / "e.csv")[0] == 0
    lines = (tmp_path / "e.csv").read_text().splitlines()
    assert lines[0] == "mu_0,mu_1,logvar_0,logvar_1"
    assert len(lines) == DIGITS_N + 1
    np.testing.assert_allclose(np.loadtxt(tmp_path / "e.csv", delimiter=",", skiprows=1), e, rtol=1e-6, atol=1e-7)


def test_encode_user_file_keeps_row_order(run, files, digits_rows, tmp_path, capsys):
    code, _, _ = cli(capsys, "encode", run, "--data", files / "digits50.csv", "--out", tmp_path / "e.npy")
    assert code == 0
    mu, logvar = vaekit.load(run).encode(digits_rows)
    e = np.load(tmp_path / "e.npy")
    np.testing.assert_allclose(e, np.concatenate([mu, logvar], axis=1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("verb, extra", [("encode", []), ("reconstruct", []), ("score", ["--k", "5"]), ("evaluate", ["--k", "5"])])
def test_mmap_verbs_equal_the_in_memory_ones(verb, extra, run, digits_rows, tmp_path, capsys):
    """--mmap streams a .npy in blocks (with the mapped check) and gives the same numbers."""
    np.save(tmp_path / "x.npy", digits_rows.astype(np.float32))
    outputs = []
    for flags in ([], ["--mmap"], ["--no-mmap"]):
        out = tmp_path / f"{verb}{'-'.join(flags)}.npy"
        argv = [verb, run, "--data", tmp_path / "x.npy", *extra, *flags, "--json"]
        argv += ["--split", "all"] if verb == "evaluate" else ["--out", out]
        code, stdout, err = cli(capsys, *argv)
        assert code == 0, err
        outputs.append(json.loads(stdout) if verb == "evaluate" else np.load(out))
    if verb == "evaluate":
        outputs = [{k: v for k, v in o.items() if k != "seconds"} for o in outputs]
        assert outputs[0] == outputs[1] == outputs[2]
    else:
        np.testing.assert_array_equal(outputs[0], outputs[1])
        np.testing.assert_array_equal(outputs[0], outputs[2])


@pytest.mark.parametrize("verb", ["encode", "reconstruct", "score", "evaluate"])
def test_mmap_verbs_refuse_the_wrong_width_before_scaling(verb, run, digits_rows, tmp_path, capsys):
    """The digits model scales its input (x / 16): the width is checked before any block is
    mapped, so the message is the in-memory one, not numpy's broadcasting error."""
    np.save(tmp_path / "x.npy", digits_rows[:, :-1].astype(np.float64))
    argv = [verb, run, "--data", tmp_path / "x.npy", "--mmap"]
    argv += ["--split", "all"] if verb == "evaluate" else ["--out", tmp_path / "o.npy"]
    code, out, err = cli(capsys, *argv)
    assert_error(code, out, err, 1, f"x.npy has {DIM - 1} features per row, but the model was trained on {DIM}")
    assert not (tmp_path / "o.npy").exists()


def test_mmap_verb_refuses_a_csv(run, files, tmp_path, capsys):
    code, out, err = cli(capsys, "encode", run, "--data", files / "digits50.csv", "--mmap", "--out", tmp_path / "e.npy")
    assert_error(code, out, err, 2, "digits50.csv", ".npy")  # the usage error --mmap on a named dataset is
    assert not (tmp_path / "e.npy").exists()


def test_reconstruct_npy_and_png(run, files, digits_rows, tmp_path, capsys):
    code, _, _ = cli(capsys, "reconstruct", run, "--data", files / "digits50.csv", "--out", tmp_path / "r.npy")
    assert code == 0
    r = np.load(tmp_path / "r.npy")
    assert r.shape == (50, DIM)
    np.testing.assert_allclose(r, vaekit.load(run).reconstruct(digits_rows), rtol=1e-6, atol=1e-6)
    code, out, _ = cli(capsys, "reconstruct", run, "--data", files / "digits50.csv", "--out", tmp_path / "r.png")
    assert code == 0 and out.strip() == f"wrote reconstructions of 32 rows to {tmp_path / 'r.png'}"  # the picture's sample
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG_MAGIC
    # --seed picks the picture's rows: 0 by default, another sample otherwise.
    for seed, name in ((0, "r0.png"), (5, "r5.png")):
        assert cli(capsys, "reconstruct", run, "--data", files / "digits50.csv", "--seed", seed, "--out", tmp_path / name)[0] == 0
    assert (tmp_path / "r0.png").read_bytes() == (tmp_path / "r.png").read_bytes() != (tmp_path / "r5.png").read_bytes()
    assert cli(capsys, "reconstruct", run, "--data", files / "digits50.csv", "--out", tmp_path / "r.PNG")[0] == 0
    assert (tmp_path / "r.PNG").read_bytes() == (tmp_path / "r.png").read_bytes()


def test_reconstruct_draw(run, files, digits_rows, tmp_path, capsys, monkeypatch):
    """--draw z decodes z ~ q(z|x), --draw x draws x ~ p(x|z) too: the library's drawn
    reconstructions, seeded by --seed (default 0, so the same command gives the same file),
    different from the mean ones, in the data's units (digits' pixels 0..16)."""
    from vaekit import plots

    est = vaekit.load(run)
    mean = est.reconstruct(digits_rows)
    for draw in ("z", "x"):
        code, out, err = cli(capsys, "reconstruct", run, "--data", files / "digits50.csv", "--draw", draw, "--out", tmp_path / f"{draw}.npy", "--json")
        assert code == 0, err
        assert json.loads(out) == {"out": str(tmp_path / f"{draw}.npy"), "n": 50, "draw": draw}
        r = np.load(tmp_path / f"{draw}.npy")
        assert r.shape == (50, DIM) and np.isfinite(r).all() and r.min() >= 0 and r.max() <= 16
        np.testing.assert_allclose(r, est.reconstruct(digits_rows, draw=draw, seed=0), rtol=1e-6, atol=1e-6)
        assert np.abs(r - mean).mean() > 1e-3
        for name in ("a", "b"):
            assert cli(capsys, "reconstruct", run, "--data", files / "digits50.csv", "--draw", draw, "--seed", "3", "--out", tmp_path / f"{draw}{name}.csv")[0] == 0
        a, b = (np.loadtxt(tmp_path / f"{draw}{name}.csv", delimiter=",") for name in "ab")
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, r)
    code, out, _ = cli(capsys, "reconstruct", run, "--data", files / "digits50.csv", "--draw", "x", "--out", tmp_path / "x2.npy")
    assert out.strip() == f"wrote reconstructions of 50 rows to {tmp_path / 'x2.npy'} (z drawn from q(z|x), x from p(x|z))"
    # Without --draw the report says "draw": null, and --seed still picks a picture's rows only.
    code, out, _ = cli(capsys, "reconstruct", run, "--data", files / "digits50.csv", "--out", tmp_path / "m.npy", "--json")
    assert json.loads(out)["draw"] is None
    # A picture of drawn reconstructions shows the same rows as the mean one, and says what it drew.
    shown = []
    monkeypatch.setattr(plots, "reconstruction_grid", lambda x, r, out, shape, n, labels=None, title=None: shown.append((x, r, title)))
    for argv in ([], ["--draw", "z"], ["--draw", "x"]):
        assert cli(capsys, "reconstruct", run, "--data", files / "digits50.csv", *argv, "--out", tmp_path / "r.png")[0] == 0
    (x0, r0, t0), (x1, r1, t1), (x2, r2, t2) = shown
    np.testing.assert_array_equal(x0, x1)
    np.testing.assert_array_equal(x0, x2)
    assert not np.allclose(r0, r1) and not np.allclose(r1, r2)
    assert t0.endswith("and their reconstructions")
    assert t1.endswith("and their reconstructions at z ~ q(z|x)")
    assert t2.endswith("and their reconstructions, drawn x ~ p(x|z) at z ~ q(z|x)")


def test_reconstruct_of_a_point_estimate_draws_x_and_refuses_draw_z(tmp_path, capsys):
    """A point estimate's q(z|x) is its code: --draw z would return the mean reconstructions
    under another name, so it is refused in one line; --draw x draws x ~ p(x|z) at the code
    and says so."""
    run = tmp_path / "ae"
    assert cli(capsys, "train", "--data", "digits", "--inference", "autoencoder", "--hidden", "8", "--latent-dim", "2", "--epochs", "1", "--eval-k", "2", "--quiet", "--out", run)[0] == 0
    code, out, err = cli(capsys, "reconstruct", run, "--data", "digits", "--draw", "z", "--out", tmp_path / "z.npy")
    assert_error(code, out, err, 2, "--draw z draws z ~ q(z|x), and inference autoencoder's q(z|x) is a point (the row's code): nothing to draw")
    assert not (tmp_path / "z.npy").exists()
    code, out, err = cli(capsys, "reconstruct", run, "--data", "digits", "--draw", "x", "--out", tmp_path / "x.npy")
    assert code == 0 and out.strip().endswith("(x drawn from p(x|z) at the code z)"), err
    mean = tmp_path / "m.npy"
    assert cli(capsys, "reconstruct", run, "--data", "digits", "--out", mean)[0] == 0
    assert not np.array_equal(np.load(tmp_path / "x.npy"), np.load(mean))


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".csv"])
def test_reconstruct_writes_block_by_block(suffix, run, digits_rows, tmp_path, capsys, monkeypatch):
    """The file is written one block of rows at a time (so an --mmap input larger than memory
    can be reconstructed) and holds exactly what the API returns, in row order."""
    from vaekit import estimator

    monkeypatch.setattr(estimator, "BATCH_ROWS", 7)  # 50 rows: 8 blocks, the last one short
    np.save(tmp_path / "x.npy", digits_rows.astype(np.float32))
    blocks = []
    original = estimator.VAE.reconstruct_blocks

    def counted(self, X, **kwargs):
        for block in original(self, X, **kwargs):
            blocks.append(block.shape[0])
            yield block

    monkeypatch.setattr(estimator.VAE, "reconstruct_blocks", counted)
    out = tmp_path / f"r{suffix}"
    code, _, err = cli(capsys, "reconstruct", run, "--data", tmp_path / "x.npy", "--mmap", "--out", out)
    assert code == 0, err
    assert blocks == [7] * 7 + [1]
    if suffix == ".npy":
        r = np.load(out)
    elif suffix == ".npz":
        r = np.load(out)["x"]
    else:
        r = np.loadtxt(out, delimiter=",")
    assert r.shape == (50, DIM)
    expected = vaekit.load(run).reconstruct(digits_rows)
    np.testing.assert_allclose(r, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_block_writer_keeps_the_blocks_dtype(suffix, tmp_path):
    from vaekit.outputs import write_blocks

    rng = np.random.default_rng(0)
    blocks = [rng.normal(size=(3, 4)), rng.normal(size=(2, 4))]  # float64, as a --dtype float64 model gives
    write_blocks(tmp_path / f"r{suffix}", iter(blocks), (5, 4))
    r = np.load(tmp_path / f"r{suffix}")
    r = r["x"] if suffix == ".npz" else r
    assert r.dtype == np.float64
    np.testing.assert_array_equal(r, np.concatenate(blocks))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_csv_outputs_read_back_as_the_values_written(dtype, tmp_path):
    """Every value of a .csv reads back exactly (9 significant digits for float32, 17 for
    float64): 1e5 ± 1e-3 in float64 keeps its digits, through both writers."""
    from vaekit.outputs import write_array, write_blocks

    x = (1e5 + 1e-3 * np.random.default_rng(0).normal(size=(6, 3))).astype(dtype)
    write_array(tmp_path / "a.csv", x, header=["a", "b", "c"])
    write_blocks(tmp_path / "b.csv", iter([x[:4], x[4:]]), x.shape)
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "a.csv", delimiter=",", skiprows=1).astype(dtype), x)
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "b.csv", delimiter=",").astype(dtype), x)


def test_reconstruct_failing_midway_leaves_the_old_file(run, digits_rows, tmp_path, capsys, monkeypatch):
    from vaekit import estimator

    out = tmp_path / "r.npy"
    out.write_bytes(b"earlier output")
    np.save(tmp_path / "x.npy", digits_rows.astype(np.float32))
    monkeypatch.setattr(estimator, "BATCH_ROWS", 10)
    original = estimator.VAE.reconstruct_blocks

    def failing(self, X, **kwargs):
        for i, block in enumerate(original(self, X, **kwargs)):
            if i == 2:
                raise OSError(28, "No space left on device")
            yield block

    monkeypatch.setattr(estimator.VAE, "reconstruct_blocks", failing)
    code, out_text, err = cli(capsys, "reconstruct", run, "--data", tmp_path / "x.npy", "--out", out, "--overwrite")
    assert_error(code, out_text, err, 1, "r.npy", "No space left")
    assert out.read_bytes() == b"earlier output"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_api_takes_raw_digits_as_the_cli_does(run, tmp_path, capsys):
    """A `--data digits` run stores the dataset's scaling (pixels / 16), so the API takes
    scikit-learn's raw pixels and gives, row for row, what `vaekit score` reports for them."""
    from sklearn.datasets import load_digits

    from vaekit.data.splits import split_rows

    config = json.loads((run / "config.json").read_text())["model"]
    assert (config["standardize"], config["input_shift"], config["input_scale"]) == ("off", [0.0], [16.0])
    code, _, err = cli(capsys, "score", run, "--data", "digits", "--split", "test", "--out", tmp_path / "s.npy", "--k", "10")
    assert code == 0, err
    rows = load_digits().data[split_rows(DIGITS_N, 0.1, 0.2, 0)["test"]]
    est = vaekit.load(run)
    np.testing.assert_array_equal(est.score_samples(rows, k=10, seed=0), np.load(tmp_path / "s.npy"))
    # Densities of the raw pixels: those of the model's x / 16, less 64·log 16.
    from vaekit.evaluate import log_px_per_point

    bare = vaekit.load(run).model_
    bare.log_det = 0.0  # the same network, densities of the values it sees
    scaled = log_px_per_point(bare, (rows / 16).astype(np.float32), k=10, seed=0)
    # float32 log-densities: 64·log 16 = 177.4 is added at a resolution of about 1.5e-5.
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), scaled - DIM * math.log(16), rtol=0, atol=1e-4)
    assert est.sample(5, seed=0).max() > 1  # samples in pixels 0..16, as the inputs


def _as_version_2(run: Path) -> None:
    """Rewrite RUN/config.json as version 2 wrote it: no input map (its loader scaled digits)
    nor any other field a later version added."""
    from config_helpers import as_version

    config = as_version(json.loads((run / "config.json").read_text()), 2)
    assert not {"standardize", "input_shift", "input_scale"} & set(config["model"])
    (run / "config.json").write_text(json.dumps(config))


def test_version_2_run_loads_and_scores_as_before(run, run_copy, tmp_path, capsys):
    """A run written before models stored their scaling saw digits / 16 from the loader and
    reported densities of those values: so it still does, by the CLI and the API, and it
    refuses raw pixels saying why. Same weights: 64·log 16 above the new run's densities of
    the raw pixels."""
    from sklearn.datasets import load_digits

    _as_version_2(run_copy)
    old = vaekit.load(run_copy)
    assert old.scaling_ is None and old.config_.model.standardize == "off" and old.config_.version == CONFIG_VERSION
    for r, name in ((run, "new.npy"), (run_copy, "old.npy")):
        code, _, err = cli(capsys, "score", r, "--data", "digits", "--out", tmp_path / name, "--k", "10")
        assert code == 0, err
    # float32 log-densities: 64·log 16 = 177.4 is added at a resolution of about 1.5e-5.
    np.testing.assert_allclose(np.load(tmp_path / "old.npy"), np.load(tmp_path / "new.npy") + DIM * math.log(16), rtol=0, atol=1e-4)
    code, out, _ = cli(capsys, "evaluate", run_copy, "--k", "10", "--json")
    assert code == 0 and json.loads(out)["log_likelihood"] > 0  # grey levels in [0, 1], as before
    raw = load_digits().data[:20]
    np.testing.assert_allclose(old.score_samples(raw / 16, k=10), vaekit.load(run).score_samples(raw, k=10) + DIM * math.log(16), rtol=0, atol=1e-4)
    with pytest.raises(vaekit.VaekitError, match=r"values from 0.0 to 16.0, and this model applies no scaling to its input"):
        old.score_samples(raw)


def test_model_of_image_arrays_takes_them_unflattened(tmp_path, capsys):
    """A run trained from an (n, H, W) .npy file takes (n, H, W) and (n, H·W) rows alike."""
    from sklearn.datasets import load_digits

    images = load_digits().images[:300]
    np.save(tmp_path / "images.npy", images)
    code, _, err = cli(capsys, "train", "--data", tmp_path / "images.npy", "--out", tmp_path / "run", *SMALL)
    assert code == 0, err
    est = vaekit.load(tmp_path / "run")
    assert est.config_.model.image_shape == (8, 8)
    flat = images[:10].reshape(10, -1)
    np.testing.assert_array_equal(est.score_samples(images[:10], k=5), est.score_samples(flat, k=5))
    np.testing.assert_array_equal(est.transform(images[:10]), est.transform(flat))
    np.testing.assert_array_equal(est.reconstruct(images[:10]), est.reconstruct(flat))
    with pytest.raises(vaekit.VaekitError, match=r"images of shape \(4, 16\), but the model was trained on images of shape \(8, 8\)"):
        est.transform(images[:10].reshape(10, 4, 16))
    # Axes of size 1 do not count, in the API as on the command line: (1, 8, 8) is (8, 8).
    np.testing.assert_array_equal(est.transform(images[:10, None]), est.transform(flat))
    np.save(tmp_path / "one_channel.npy", images[:10, None])
    code, _, err = cli(capsys, "encode", tmp_path / "run", "--data", tmp_path / "one_channel.npy", "--out", tmp_path / "z.npy")
    assert code == 0, err
    z = est.transform(flat)
    np.testing.assert_allclose(np.load(tmp_path / "z.npy")[:, : z.shape[1]], z, rtol=1e-6)  # μ, then log σ²


def test_pictures_of_a_float64_model(tmp_path, capsys):
    """A float64 model's reconstructions, nearly constant where the digits' pixels are (a
    border pixel is always 0), are drawn: a picture asks nothing of float32's resolution."""
    from sklearn.datasets import load_digits

    np.save(tmp_path / "images.npy", load_digits().images[:300] / 16)
    run_dir = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--data", tmp_path / "images.npy", "--out", run_dir, "--net", "conv", "--channels", "4,8",
                       "--dtype", "float64", "--latent-dim", "4", *SMALL)  # fmt: skip
    assert code == 0, err
    for verb, extra in (("reconstruct", ("--data", tmp_path / "images.npy")), ("sample", ())):
        code, _, err = cli(capsys, verb, run_dir, *extra, "--out", tmp_path / f"{verb}.png")
        assert code == 0, err
        assert (tmp_path / f"{verb}.png").read_bytes()[:8] == PNG_MAGIC


def test_images_of_other_channel_counts_train_without_image_pictures(tmp_path, capsys):
    """(n, C, H, W) with C not 1 or 3 are data, not pictures: the run trains and draws what
    needs no image grid; a .png of samples or reconstructions is refused in one line."""
    images = (np.random.default_rng(0).random((200, 2, 4, 4)) > 0.5).astype(np.float32)
    np.save(tmp_path / "c2.npy", images)
    run_dir = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--data", tmp_path / "c2.npy", "--out", run_dir, *SMALL)
    assert code == 0, err
    names = {p.name for p in run_dir.iterdir()}
    assert {"model.safetensors", "curves.png", "latent.png"} <= names and not names & {"samples.png", "reconstructions.png"}
    assert vaekit.load(run_dir).config_.model.image_shape == (2, 4, 4)
    for verb, extra in (("sample", ()), ("reconstruct", ("--data", tmp_path / "c2.npy"))):
        code, out, err = cli(capsys, verb, run_dir, *extra, "--out", tmp_path / "x.png")
        assert_error(code, out, err, 2, "images have shape (2, 4, 4)", "1 or 3 channels")
        code, _, err = cli(capsys, verb, run_dir, *extra, "--out", tmp_path / f"{verb}.npy")
        assert code == 0, err
        assert np.load(tmp_path / f"{verb}.npy").shape[1] == 32
    assert not (tmp_path / "x.png").exists()


def test_split_all_of_a_named_dataset_keeps_its_row_order(run, tmp_path, capsys):
    """`--split all` (the default of encode, reconstruct and score) gives a named dataset's rows
    in its own order: row i of the output is row i of load_digits().data, as in the API."""
    from sklearn.datasets import load_digits

    x = load_digits().data
    est = vaekit.load(run)
    for verb, extra in (("encode", ()), ("score", ("--k", "5"))):
        code, _, err = cli(capsys, verb, run, "--data", "digits", *extra, "--out", tmp_path / f"{verb}.npy")
        assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "encode.npy")[:, : est.model_.latent_size], est.transform(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "score.npy"), est.score_samples(x, k=5), rtol=1e-5)


def test_score_user_csv_matches_api(run, files, digits_rows, tmp_path, capsys):
    code, out, _ = cli(capsys, "score", run, "--data", files / "digits50.csv", "--out", tmp_path / "s.npy", "--k", "10", "--json")
    assert code == 0
    summary = json.loads(out)
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (50,) and np.isfinite(s).all()
    assert summary["n"] == 50 and summary["k"] == 10
    assert summary["mean"] == pytest.approx(s.mean(), rel=1e-12)
    # Same rows, K, seed and batching: the same numbers, row for row, in the file's order.
    expected = vaekit.load(run).score_samples(digits_rows, k=10, seed=0)
    np.testing.assert_allclose(s, expected, rtol=1e-9)
    code, _, _ = cli(capsys, "score", run, "--data", files / "digits50.csv", "--out", tmp_path / "s.csv", "--k", "10")
    assert code == 0
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "log_px" and len(lines) == 51
    np.testing.assert_allclose(np.array(lines[1:], dtype=float), s, rtol=1e-7)


VERB_OPTIONS = {
    "train": ("--data", "--epochs", "--latent-dim", "--likelihood", "--resume", "--overwrite", "--out", "--json"),
    "evaluate": ("RUN_DIR", "--k", "--split", "--data", "--json"),
    "sample": ("RUN_DIR", "-n", "--out", "--source", "--draw"),
    "encode": ("RUN_DIR", "--data", "--out", "--split"),
    "reconstruct": ("RUN_DIR", "--data", "--out", "--draw", "--seed"),
    "score": ("RUN_DIR", "--data", "--out", "--k"),
}


@pytest.mark.parametrize("verb", sorted(VERB_OPTIONS))
def test_help_of_every_verb(verb):
    proc = vaekit_process(verb, "--help")
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith(f"usage: vaekit {verb}")
    for option in VERB_OPTIONS[verb]:
        assert option in proc.stdout, option


def test_top_level_help_and_version():
    proc = vaekit_process("--help")
    assert proc.returncode == 0
    for verb in VERB_OPTIONS:
        assert verb in proc.stdout
    proc = vaekit_process("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"vaekit {vaekit.__version__}"


def test_no_command_is_a_usage_error():
    proc = vaekit_process()
    assert_error(proc.returncode, proc.stdout, proc.stderr, 2, "COMMAND")


# -- 2. bad input -------------------------------------------------------------------------------

# (argv, exit code, culprits named in the message). "{run}": the trained run; "{files}": the
# data files; "{tmp}": this test's tmp_path. Train commands carry small sizes so that a
# missed error costs a second, not a minute.
SMALL = ["--epochs", "1", "--hidden", "8", "--eval-k", "2"]
BAD_INPUT = {
    # data files
    "missing-file": (["train", "--out", "{tmp}/r", "--data", "{files}/missing.csv", *SMALL], 1, ["missing.csv", "no such file"]),
    "directory-as-data": (["train", "--out", "{tmp}/r", "--data", "{files}/somedir", *SMALL], 1, ["somedir", "directory"]),
    "corrupt-npy": (["train", "--out", "{tmp}/r", "--data", "{files}/corrupt.npy", *SMALL], 1, ["corrupt.npy"]),
    "corrupt-npz": (["train", "--out", "{tmp}/r", "--data", "{files}/corrupt.npz", *SMALL], 1, ["corrupt.npz"]),
    "truncated-npz": (["train", "--out", "{tmp}/r", "--data", "{files}/truncated.npz", *SMALL], 1, ["truncated.npz"]),
    "nan-in-csv": (["train", "--out", "{tmp}/r", "--data", "{files}/nan.csv", *SMALL], 1, ["nan.csv", "NaN", "row 3", "column 2"]),
    "inf-in-npy": (["train", "--out", "{tmp}/r", "--data", "{files}/inf.npy", *SMALL], 1, ["inf.npy", "infinity", "row 4", "column 3"]),
    "non-numeric-cell": (["train", "--out", "{tmp}/r", "--data", "{files}/badcell.csv", *SMALL], 1, ["badcell.csv", "row 3", "column 2", "'x'"]),
    "empty-dataset": (["train", "--out", "{tmp}/r", "--data", "{files}/empty.npy", *SMALL], 1, ["empty.npy", "0 rows"]),
    "one-row-dataset": (["train", "--out", "{tmp}/r", "--data", "{files}/one.npy", *SMALL], 1, ["one.npy", "has 1 row;"]),
    "unknown-dataset": (["train", "--out", "{tmp}/r", "--data", "foo", *SMALL], 1, ["'foo'", "digits"]),
    # values outside the likelihood's support
    "bernoulli-on-grey-levels": (["train", "--out", "{tmp}/r", "--likelihood", "bernoulli", *SMALL], 1, ["bernoulli", "digits", "0.0625"]),
    "continuous-bernoulli-above-1": (["train", "--out", "{tmp}/r", "--likelihood", "continuous_bernoulli", "--data", "{files}/big.npy", *SMALL], 1, ["continuous_bernoulli", "big.npy", "1.5"]),
    "score-below-0": (["score", "{run}", "--data", "{files}/neg.csv", "--out", "{tmp}/s.npy", "--k", "2"], 1, ["neg.csv", "continuous_bernoulli", "-0.2"]),
    # feature count
    "encode-10-features": (["encode", "{run}", "--data", "{files}/ten.csv", "--out", "{tmp}/e.npy"], 1, ["ten.csv", "10", "64"]),
    "score-10-features": (["score", "{run}", "--data", "{files}/ten.csv", "--out", "{tmp}/s.npy", "--k", "2"], 1, ["ten.csv", "10", "64"]),
    "evaluate-10-features": (["evaluate", "{run}", "--data", "{files}/ten.csv", "--k", "2"], 1, ["ten.csv", "10", "64"]),
    "reconstruct-10-features": (["reconstruct", "{run}", "--data", "{files}/ten.csv", "--out", "{tmp}/r.npy"], 1, ["ten.csv", "10", "64"]),
    "aggregate-10-features": (["sample", "{run}", "--source", "aggregate", "--data", "{files}/ten.csv", "--out", "{tmp}/x.npy"], 1, ["ten.csv", "10", "64"]),
    # options
    "unknown-option": (["train", "--out", "{tmp}/r", "--foo"], 2, ["--foo"]),
    "beta-negative": (["train", "--out", "{tmp}/r", "--beta", "-1"], 2, ["--beta", "-1"]),
    "epochs-0": (["train", "--out", "{tmp}/r", "--epochs", "0"], 2, ["--epochs", "0"]),
    "epochs-not-int": (["train", "--out", "{tmp}/r", "--epochs", "1.5"], 2, ["--epochs", "1.5"]),
    "lr-0": (["train", "--out", "{tmp}/r", "--lr", "0"], 2, ["--lr", "0"]),
    "hidden-not-ints": (["train", "--out", "{tmp}/r", "--hidden", "a,b"], 2, ["--hidden", "a,b"]),
    "standardize-unknown": (["train", "--out", "{tmp}/r", "--standardize", "nope"], 2, ["--standardize must be one of auto, on, off, got 'nope'"]),
    "likelihood-unknown": (["train", "--out", "{tmp}/r", "--likelihood", "nope"], 2, ["--likelihood must be one of auto, bernoulli,", "'nope'", "gaussian"]),
    "activation-unknown": (["train", "--out", "{tmp}/r", "--activation", "nope"], 2, ["--activation", "'nope'", "relu"]),
    "latent-dim-0": (["train", "--out", "{tmp}/r", "--latent-dim", "0"], 2, ["--latent-dim", "0"]),
    "dtype-unknown": (["train", "--out", "{tmp}/r", "--dtype", "float16"], 2, ["--dtype", "float16"]),
    "amp-unknown": (["train", "--out", "{tmp}/r", "--amp", "fp8"], 2, ["--amp", "'fp8'", "bf16"]),
    "amp-with-float64": (["train", "--out", "{tmp}/r", "--amp", "bf16", "--dtype", "float64"], 2, ["bf16", "float64"]),
    "matmul-precision-unknown": (["train", "--out", "{tmp}/r", "--matmul-precision", "low"], 2, ["--matmul-precision", "'low'", "medium"]),
    "compile-mode-unknown": (["train", "--out", "{tmp}/r", "--compile-mode", "fast"], 2, ["--compile-mode", "'fast'", "reduce-overhead"]),
    "valid-fraction-1.5": (["train", "--out", "{tmp}/r", "--valid-fraction", "1.5"], 2, ["--valid-fraction", "1.5"]),
    "evaluate-k-0": (["evaluate", "{run}", "--k", "0"], 2, ["--k", "0"]),
    "score-k-0": (["score", "{run}", "--data", "digits", "--out", "{tmp}/s.npy", "--k", "0"], 2, ["--k", "0"]),
    "evaluate-split-unknown": (["evaluate", "{run}", "--split", "nope"], 2, ["--split", "'nope'"]),
    "sample-n-0": (["sample", "{run}", "-n", "0", "--out", "{tmp}/x.npy"], 2, ["-n", "0"]),
    "sample-out-txt": (["sample", "{run}", "--out", "{tmp}/x.txt"], 2, ["x.txt", ".npy"]),
    "score-out-png": (["score", "{run}", "--data", "digits", "--out", "{tmp}/s.png"], 2, ["s.png", ".npy"]),
    "sample-out-missing-dir": (["sample", "{run}", "--out", "{tmp}/nodir/x.npy"], 1, ["nodir", "does not exist"]),
    "sample-prior-with-data": (["sample", "{run}", "--data", "digits", "--out", "{tmp}/x.npy"], 2, ["--data", "--source prior"]),
    "sample-components-without-gmm": (["sample", "{run}", "--source", "aggregate", "--components", "3", "--out", "{tmp}/x.npy"], 2, ["--components", "aggregate"]),
    "sample-components-0": (["sample", "{run}", "--source", "gmm", "--components", "0", "--out", "{tmp}/x.npy"], 2, ["--components", "0"]),
    "sample-components-above-rows": (["sample", "{run}", "--source", "gmm", "--components", "100000", "--out", "{tmp}/x.npy"], 1,
                                     ["--components 100000: a mixture needs at least as many rows", "the train split of digits has"]),
    "sample-seed-negative": (["sample", "{run}", "--seed", "-1", "--out", "{tmp}/x.npy"], 2, ["--seed", "-1"]),
    "evaluate-seed-negative": (["evaluate", "{run}", "--seed", "-1"], 2, ["--seed", "-1"]),
    "score-seed-too-large": (["score", "{run}", "--seed", str(2**70), "--out", "{tmp}/x.npy"], 2, ["--seed", "must be <= 9223372036854775807"]),
    "score-seed-not-int": (["score", "{run}", "--data", "digits", "--seed", "x", "--out", "{tmp}/s.npy"], 2, ["--seed", "'x'"]),
    # encode draws nothing (q of new rows is a function of x and θ); a table of reconstructions holds every row
    "encode-seed": (["encode", "{run}", "--data", "digits", "--seed", "1", "--out", "{tmp}/z.npy"], 2, ["unrecognized", "--seed"]),
    "reconstruct-seed-table": (["reconstruct", "{run}", "--data", "digits", "--seed", "1", "--out", "{tmp}/r.npy"], 2, ["--seed", ".png", "r.npy", "--draw"]),
    "reconstruct-draw-unknown": (["reconstruct", "{run}", "--data", "digits", "--draw", "y", "--out", "{tmp}/r.npy"], 2, ["--draw", "'y'", "'z'", "'x'"]),
    "reconstruct-draw-missing": (["reconstruct", "{run}", "--data", "digits", "--out", "{tmp}/r.npy", "--draw"], 2, ["--draw", "expected one argument"]),
    "reconstruct-draw-seed-negative": (["reconstruct", "{run}", "--data", "digits", "--draw", "z", "--seed", "-1", "--out", "{tmp}/r.npy"], 2, ["--seed", "-1"]),
    "mmap-named-dataset": (["train", "--out", "{tmp}/r", "--data", "digits", "--mmap", *SMALL], 2, ["mmap", "digits", "built-in"]),
    "valid-fraction-0": (["train", "--out", "{tmp}/r", "--data", "{files}/digits300.csv", "--valid-fraction", "0", *SMALL], 1, ["no valid rows", "--valid-fraction 0"]),
    "test-fraction-0": (["train", "--out", "{tmp}/r", "--data", "{files}/digits300.csv", "--test-fraction", "0", *SMALL], 1, ["no test rows", "--test-fraction 0"]),
    "decoder-input-all-one-group": (["train", "--out", "{tmp}/r", "--decoder-input", "all", *SMALL], 2, ["--decoder-input all", "several latent groups"]),
    "refine-in-training-without-steps": (["train", "--out", "{tmp}/r", "--refine-in-training", *SMALL], 2, ["--refine-in-training needs --refine-steps"]),
    # run directories
    "run-dir-missing": (["evaluate", "{tmp}/nonexistent", "--k", "2"], 1, ["nonexistent"]),
    "run-dir-without-config": (["evaluate", "{files}/somedir", "--k", "2"], 1, ["somedir", "config.json"]),
    "resume-nothing": (["train", "--out", "{tmp}/nonexistent", "--resume"], 1, ["nonexistent", "nothing to resume"]),
}


def _fill(argv, **paths) -> list[str]:
    return [a.format(**paths) for a in argv]


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input(case, run, files, tmp_path, capsys):
    argv, code_expected, culprits = BAD_INPUT[case]
    code, out, err = cli(capsys, *_fill(argv, run=run, files=files, tmp=tmp_path))
    assert_error(code, out, err, code_expected, *culprits)


@no_cuda
def test_device_cuda_without_cuda(tmp_path, capsys):
    code, out, err = cli(capsys, "train", "--out", tmp_path / "r", "--device", "cuda", *SMALL)
    assert_error(code, out, err, 2, "--device", "cuda", "CUDA")
    assert not (tmp_path / "r" / "model.safetensors").exists()


@pytest.mark.parametrize("verb_args", [["sample"], ["reconstruct", "--data", "{files}/twod.csv"]], ids=["sample", "reconstruct"])
@pytest.mark.parametrize("name", ["samples.png", "samples.PNG"])
def test_png_out_for_non_image_model(verb_args, run2d, files, tmp_path, capsys, name):
    argv = [verb_args[0], run2d, *_fill(verb_args[1:], files=files), "--out", tmp_path / name]
    code, out, err = cli(capsys, *argv)
    assert_error(code, out, err, 2, name, "not images")
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("verb", ["sample", "reconstruct", "encode"])
@pytest.mark.parametrize("where", ["directory", "directory_without_suffix", "parent_is_a_file"])
def test_out_that_cannot_be_written_is_refused_first(verb, where, run, tmp_path, capsys):
    """An --out naming a directory (whatever its name), or under a file, gets one line before
    any work: not the traceback of the write at the end."""
    suffix = ".npy" if verb == "encode" else ".png"
    if where.startswith("directory"):
        out = tmp_path / ("taken" if where == "directory_without_suffix" else f"taken{suffix}")
        out.mkdir()
    else:
        (tmp_path / "afile").write_text("keep me")
        out = tmp_path / "afile" / f"x{suffix}"
    argv = [verb, run, "--out", out] + ([] if verb == "sample" else ["--data", "digits"])
    code, stdout, err = cli(capsys, *argv)
    assert_error(code, stdout, err, 1, str(out), "is a file, not a directory" if where == "parent_is_a_file" else "is a directory; name a file")
    assert where != "parent_is_a_file" or (tmp_path / "afile").read_text() == "keep me"


def test_gaps_checks_both_pictures_before_writing_either(run_copy, tmp_path, capsys):
    before = snapshot(run_copy)
    code, out, err = cli(capsys, "gaps", run_copy, "--k", "2", "--steps", "2", "--bars", tmp_path / "missing" / "b.png")
    assert_error(code, out, err, 1, "--bars", "does not exist")
    code, out, err = cli(capsys, "gaps", run_copy, "--k", "2", "--steps", "2", "--plot", tmp_path / "a.png", "--bars", tmp_path / "a.png")
    assert_error(code, out, err, 2, "--plot and --bars")
    assert snapshot(run_copy) == before and not (tmp_path / "a.png").exists()


def test_a_picture_that_cannot_be_written_is_one_line(run, tmp_path, capsys, monkeypatch):
    import vaekit.plots

    def full(path, write):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(vaekit.plots, "_atomic_write", full)
    code, out, err = cli(capsys, "sample", run, "--out", tmp_path / "s.png")
    assert_error(code, out, err, 1, "s.png", "cannot write (No space left on device)")


@pytest.mark.parametrize(
    "error",
    [RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to allocate 8e11 bytes"), MemoryError()],
    ids=["torch", "python"],
)
def test_out_of_memory_is_one_line(error, run, tmp_path, capsys, monkeypatch):
    """What a block too large for the memory meets: the allocator's failure as one line, exit 1."""
    import vaekit.estimator

    def too_much(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(vaekit.estimator.VAE, "sample_blocks", too_much)
    code, out, err = cli(capsys, "sample", run, "-n", "1000", "--out", tmp_path / "s.npy")
    assert_error(code, out, err, 1, "out of memory", "fewer samples")
    assert not (tmp_path / "s.npy").exists()


def test_other_runtime_errors_are_not_called_memory(run, tmp_path, capsys, monkeypatch):
    import vaekit.estimator

    def broken(self, *args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(vaekit.estimator.VAE, "sample_blocks", broken)
    with pytest.raises(RuntimeError, match="shapes"):
        cli(capsys, "sample", run, "--out", tmp_path / "s.npy")


def test_json_output_is_strict_json(run, digits_rows, tmp_path, capsys):
    """gaps on one row has no standard error: null, not the NaN strict parsers reject."""
    np.save(tmp_path / "one.npy", digits_rows[:1])
    code, out, err = cli(capsys, "gaps", run, "--data", tmp_path / "one.npy", "--split", "all", "--k", "3", "--steps", "2",
                         "--plot", tmp_path / "p.png", "--bars", tmp_path / "b.png", "--json")  # fmt: skip
    assert code == 0, err
    result = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in --json output"))
    assert result["n"] == 1 and result["approximation_gap_se"] is None and math.isfinite(result["approximation_gap"])


@pytest.fixture(scope="module")
def api_run(tmp_path_factory, digits_rows):
    """A run saved from the Python API: its rows were an in-memory array, and it keeps no test split."""
    run = tmp_path_factory.mktemp("api") / "run"
    vaekit.VAE(latent_dim=2, hidden=(8,), epochs=1, seed=0).fit(digits_rows).save(run)
    return run


def test_an_api_run_reads_every_row_of_a_table_by_default(api_run, files, capsys):
    code, out, err = cli(capsys, "evaluate", api_run, "--data", files / "digits50.csv", "--k", "2", "--split", "test")
    assert_error(code, out, err, 1, "digits50.csv has no test rows", "--split all")
    code, out, err = cli(capsys, "evaluate", api_run, "--data", files / "digits50.csv", "--k", "2", "--json")
    assert code == 0 and json.loads(out)["n"] == 50 and json.loads(out)["split"] == "all", err


def test_an_npz_with_an_empty_test_array_is_read_for_its_other_splits(run, digits_rows, tmp_path, capsys):
    """An .npz of train/valid/test arrays whose test array is empty: the verbs read its train
    split and all its rows; its test split is named empty (with --split all as the way out), and
    train refuses it as it refuses no test rows; an empty train array is still refused."""
    np.savez(tmp_path / "t.npz", train=digits_rows[:30], valid=digits_rows[30:40], test=digits_rows[:0])
    for split, n in (("train", 30), ("all", 40)):
        code, out, err = cli(capsys, "evaluate", run, "--data", tmp_path / "t.npz", "--k", "2", "--split", split, "--json")
        assert code == 0 and json.loads(out)["n"] == n, err
    code, out, err = cli(capsys, "encode", run, "--data", tmp_path / "t.npz", "--out", tmp_path / "z.npy")
    assert code == 0 and np.load(tmp_path / "z.npy").shape[0] == 40, err
    code, out, err = cli(capsys, "evaluate", run, "--data", tmp_path / "t.npz", "--k", "2")
    assert_error(code, out, err, 1, "t.npz has no test rows (its test array is empty); --split all uses every row")
    code, out, err = cli(capsys, "train", "--data", tmp_path / "t.npz", "--out", tmp_path / "r", "--epochs", "1", "--hidden", "4", "--latent-dim", "2")
    assert_error(code, out, err, 1, "has no test rows (its test split is empty)")
    np.savez(tmp_path / "e.npz", train=digits_rows[:0], valid=digits_rows[:5], test=digits_rows[5:9])
    code, out, err = cli(capsys, "evaluate", run, "--data", tmp_path / "e.npz", "--k", "2", "--split", "all")
    assert_error(code, out, err, 1, "e.npz [train] has 0 rows")


@pytest.mark.parametrize("verb", ["evaluate", "gaps", "encode"])
def test_too_few_rows_for_a_split_points_to_split_all(verb, run, digits_rows, tmp_path, capsys):
    """A 3-row file read by a verb's default split has too few rows for the run's fractions: the
    error says so in one line and names --split all, which reads the 3 rows."""
    np.save(tmp_path / "three.npy", digits_rows[:3])
    out_file = ["--out", tmp_path / "z.npy"] if verb == "encode" else ["--k", "2"]
    default = ["--split", "test"] if verb == "encode" else []  # encode reads every row by default
    code, out, err = cli(capsys, verb, run, "--data", tmp_path / "three.npy", *out_file, *default)
    assert_error(code, out, err, 1, "three.npy: dataset has 3 rows; at least 4 needed", "; --split all reads every row")
    code, out, err = cli(capsys, verb, run, "--data", tmp_path / "three.npy", *out_file, "--split", "all")
    assert code == 0, err


def test_an_api_run_cannot_be_resumed_from_the_command_line(api_run, capsys):
    before = snapshot(api_run)
    code, out, err = cli(capsys, "train", "--out", api_run, "--resume")
    assert_error(code, out, err, 2, str(api_run), "in-memory array", "resume")
    assert snapshot(api_run) == before


def test_resume_and_overwrite_contradict(run_copy, capsys):
    before = snapshot(run_copy)
    code, out, err = cli(capsys, "train", "--out", run_copy, "--resume", "--overwrite")
    assert_error(code, out, err, 2, "--resume", "--overwrite")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("mmap", [[], ["--mmap"]], ids=["memory", "mmap"])
def test_images_of_another_layout_are_refused(mmap, run, digits_rows, tmp_path, capsys):
    """The digits model saw 8 x 8 images: rows of 64 pixels laid out 4 x 16 (as channels-last
    data for a channels-first model would be) are refused, not read as noise; (1, 8, 8) and
    flat rows are the same images."""
    np.save(tmp_path / "wide.npy", digits_rows.reshape(-1, 4, 16))
    code, out, err = cli(capsys, "reconstruct", run, "--data", tmp_path / "wide.npy", *mmap, "--out", tmp_path / "r.npy")
    assert_error(code, out, err, 1, "wide.npy", "(4, 16)", "(8, 8)")
    assert not (tmp_path / "r.npy").exists()
    outputs = []
    for name, rows in (("chw", digits_rows.reshape(-1, 1, 8, 8)), ("flat", digits_rows)):
        np.save(tmp_path / f"{name}.npy", rows)
        code, _, err = cli(capsys, "encode", run, "--data", tmp_path / f"{name}.npy", *mmap, "--out", tmp_path / f"{name}_e.npy")
        assert code == 0, err
        outputs.append(np.load(tmp_path / f"{name}_e.npy"))
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_a_csv_header_is_recorded_and_checked(tmp_path, capsys):
    """train records a CSV's header (config.json data.feature_names); a table given to a verb
    must repeat it, names and order; a table without a header is taken as it is."""
    rows = np.random.default_rng(0).normal(size=(120, 3))
    np.savetxt(tmp_path / "t.csv", rows, delimiter=",", header="a,b,c", comments="")
    np.savetxt(tmp_path / "swapped.csv", rows[:, [2, 1, 0]], delimiter=",", header="c,b,a", comments="")
    np.savetxt(tmp_path / "bare.csv", rows, delimiter=",")
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--data", tmp_path / "t.csv", "--out", run, *SMALL, "--quiet")
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["data"]["feature_names"] == ["a", "b", "c"]
    code, out, err = cli(capsys, "encode", run, "--data", tmp_path / "swapped.csv", "--out", tmp_path / "e.npy")
    assert_error(code, out, err, 1, "swapped.csv has the columns c, b, a", "trained on a, b, c")
    assert not (tmp_path / "e.npy").exists()
    outputs = []
    for name in ("t.csv", "bare.csv"):
        code, _, err = cli(capsys, "encode", run, "--data", tmp_path / name, "--out", tmp_path / f"{name}.npy")
        assert code == 0, err
        outputs.append(np.load(tmp_path / f"{name}.npy"))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    code, _, err = cli(capsys, "evaluate", run, "--k", "2")  # the run's own file
    assert code == 0, err
    # Rows in the data's units go out under the data's header, and read back as that table.
    for verb, extra in (("sample", ["-n", "7"]), ("reconstruct", ["--data", tmp_path / "bare.csv"])):
        out = tmp_path / f"{verb}.csv"
        code, _, err = cli(capsys, verb, run, *extra, "--out", out)
        assert code == 0, err
        assert out.read_text().splitlines()[0] == "a,b,c"
        values = np.loadtxt(out, delimiter=",", skiprows=1, ndmin=2)
        assert values.shape == ((7, 3) if verb == "sample" else rows.shape) and np.isfinite(values).all()
        code, _, err = cli(capsys, "score", run, "--data", out, "--k", "2", "--out", tmp_path / f"{verb}-score.csv")
        assert code == 0, err
    code, _, err = cli(capsys, "sample", run, "-n", "3", "--out", tmp_path / "s.npy")
    assert code == 0 and np.load(tmp_path / "s.npy").shape == (3, 3), err
    # The API holds the same header: a DataFrame must repeat it, names and order.
    pd = pytest.importorskip("pandas")
    est = vaekit.load(run)
    assert list(est.feature_names_in_) == ["a", "b", "c"]
    frame = pd.DataFrame(rows, columns=["a", "b", "c"])
    with pytest.warns(UserWarning, match="does not have valid feature names"):  # scikit-learn's, for an array
        np.testing.assert_array_equal(est.transform(frame), est.transform(rows))
    with pytest.raises(vaekit.VaekitError, match="feature names should match"):
        est.transform(frame[["c", "b", "a"]])


def test_bad_input_in_a_real_process(run, files, tmp_path):
    """What the user sees: the interpreter's exit status and its whole stderr."""
    cases = [
        (["train", "--out", tmp_path / "r", "--data", files / "missing.csv"], 1, "missing.csv"),
        (["train", "--out", tmp_path / "r", "--foo"], 2, "--foo"),
        (["encode", run, "--data", files / "ten.csv", "--out", tmp_path / "e.npy"], 1, "ten.csv"),
    ]
    for argv, code, culprit in cases:
        proc = vaekit_process(*argv)
        assert_error(proc.returncode, proc.stdout, proc.stderr, code, culprit)


def test_train_into_existing_run(run_copy, capsys):
    before = snapshot(run_copy)
    code, out, err = cli(capsys, "train", "--out", run_copy, *SMALL)
    assert_error(code, out, err, 1, str(run_copy), "--resume", "--overwrite")
    assert snapshot(run_copy) == before
    # A bad option is the usage error it is (exit 2), whatever --out holds: a training option,
    # or a model option's value.
    for bad in (["--lr", "-1"], ["--prior", "vampprior", "--pseudo-inputs", "0"], ["--prior", "mixture", "--components", "0"]):
        code, out, err = cli(capsys, "train", "--out", run_copy, *SMALL, *bad)
        assert_error(code, out, err, 2, bad[-2])
        assert snapshot(run_copy) == before


def test_train_refuses_a_directory_of_other_files(tmp_path, capsys):
    """Files that are not a run's would become part of one, which a later --overwrite empties
    (--overwrite itself refuses them: test_overwrite_refuses_a_directory_that_holds_no_vaekit_run)."""
    project = tmp_path / "proj"
    (project / "src").mkdir(parents=True)
    (project / "notes.txt").write_text("keep me")
    code, out, err = cli(capsys, "train", "--out", project, *SMALL)
    assert_error(code, out, err, 1, str(project), "notes.txt", "no vaekit run")
    assert sorted(p.name for p in project.iterdir()) == ["notes.txt", "src"]


def test_train_out_is_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("keep me")
    code, out, err = cli(capsys, "train", "--out", tmp_path / "afile", *SMALL)
    assert_error(code, out, err, 1, "afile", "not a directory")
    assert (tmp_path / "afile").read_text() == "keep me"


@pytest.mark.parametrize("given", [[], ["--objective", "auto", "--likelihood", "auto", "--standardize", "auto", "--amp", "auto"],
                                   ["--objective", "elbo"]])  # fmt: skip
def test_resume_accepts_the_run_own_values(files, tmp_path, capsys, given):
    """The original command line plus --resume resumes: unchanged values are not changes, and
    an "auto" that the run resolved (--objective auto: the inference method's own) is its value."""
    argv = ["train", "--out", tmp_path / "r", *_fill(RESUME_ARGS, files=files), *given]
    assert cli(capsys, *argv, "--epochs", "1")[0] == 0
    code, _, err = cli(capsys, *argv, "--epochs", "2", "--resume")
    assert code == 0, err
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_refuses_an_auto_objective_that_is_not_the_runs(files, tmp_path, capsys):
    """--objective auto names the amortized method's ELBO: a run trained on the IWAE bound
    cannot resume under it, and stays as it was."""
    argv = ["train", "--out", tmp_path / "r", *_fill(RESUME_ARGS, files=files)]
    assert cli(capsys, *argv, "--epochs", "1", "--objective", "iwae", "--k", "2")[0] == 0
    before = snapshot(tmp_path / "r")
    code, out, err = cli(capsys, *argv, "--epochs", "2", "--resume", "--objective", "auto")
    assert_error(code, out, err, 2, "--objective cannot change when resuming", "objective='iwae'")
    assert snapshot(tmp_path / "r") == before


def test_resume_cannot_change_lr(run_copy, capsys):
    before = snapshot(run_copy)
    code, out, err = cli(capsys, "train", "--out", run_copy, "--resume", "--lr", "0.1")
    assert_error(code, out, err, 2, "--lr", "cannot change", "0.001")
    assert snapshot(run_copy) == before


def test_resume_empty_directory_names_the_missing_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, out, err = cli(capsys, "train", "--out", tmp_path / "empty", "--resume")
    assert_error(code, out, err, None, "empty")


def test_resume_empty_directory_exit_code(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, out, err = cli(capsys, "train", "--out", tmp_path / "empty", "--resume")
    assert_error(code, out, err, 1, "empty", "nothing to resume (no config.json)")
    (tmp_path / "empty" / "config.json").mkdir()  # a folder where the settings' file would be
    code, out, err = cli(capsys, "train", "--out", tmp_path / "empty", "--resume")
    assert_error(code, out, err, 1, "nothing to resume (config.json is not a file)")


def test_resume_without_last_checkpoint(run_copy, capsys):
    (run_copy / "last.safetensors").unlink()
    before = snapshot(run_copy)
    code, out, err = cli(capsys, "train", "--out", run_copy, "--resume")
    assert_error(code, out, err, 1, "nothing to resume", "last.safetensors", "start it again with --overwrite")
    assert snapshot(run_copy) == before
    # As the message says: a run killed before its first checkpoint starts again.
    code, _, err = cli(capsys, "train", "--data", "digits", "--out", run_copy, *SMALL, "--overwrite", "--quiet")
    assert code == 0 and (run_copy / "last.safetensors").is_file(), err


# Corrupted checkpoints: (file, how to spoil it, culprits). Each runs on a copy of the run.
def _truncate(p: Path) -> None:
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 2])


def _flip_last_bytes(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[-10] ^= 0xFF  # the tensor data lies at the end of a safetensors file; the length is kept
    p.write_bytes(bytes(b))


def _edit_config(**model):
    def edit(p: Path) -> None:
        d = json.loads(p.read_text())
        d["model"].update(model)
        p.write_text(json.dumps(d, indent=2))

    return edit


CORRUPT = {
    "model-truncated": ("model.safetensors", _truncate, ["model.safetensors"]),
    "model-tampered": ("model.safetensors", _flip_last_bytes, ["model.safetensors", "checksum"]),
    "model-random-bytes": ("model.safetensors", lambda p: p.write_bytes(np.random.default_rng(1).bytes(4096)), ["model.safetensors"]),
    "model-text": ("model.safetensors", lambda p: p.write_text("these are not the weights you are looking for\n"), ["model.safetensors"]),
    "model-empty": ("model.safetensors", lambda p: p.write_bytes(b""), ["model.safetensors"]),
    "config-invalid-json": ("config.json", lambda p: p.write_text("{not json"), ["config.json", "JSON"]),
    "config-unknown-field": ("config.json", _edit_config(bogus=1), ["config.json", "bogus"]),
    "config-shapes-disagree": ("config.json", _edit_config(latent_dim=3), ["config.json", "model.latent_dim is 3", "saved with 2"]),
    "config-scale-edited": ("config.json", _edit_config(input_scale=[17.0]), ["config.json", "model.input_scale is [17.0]", "saved with [16.0]"]),
}
# A broken config.json is a damaged checkpoint (exit 1), not an option the user gave (exit 2).


@pytest.mark.parametrize("verb", ["evaluate", "sample"])
@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_checkpoint(case, verb, run_copy, tmp_path, capsys):
    name, spoil, culprits = CORRUPT[case]
    spoil(run_copy / name)
    before = snapshot(run_copy)
    argv = ["evaluate", run_copy, "--k", "2"] if verb == "evaluate" else ["sample", run_copy, "-n", "3", "--out", tmp_path / "x.npy"]
    code, out, err = cli(capsys, *argv)
    assert_error(code, out, err, None, str(run_copy), *culprits)
    assert snapshot(run_copy) == before  # nothing rewritten, no temporary file left behind
    assert not (tmp_path / "x.npy").exists()


@pytest.mark.parametrize(
    "case",
    sorted(CORRUPT),
)
def test_corrupt_checkpoint_exit_code(case, run_copy, capsys):
    name, spoil, _ = CORRUPT[case]
    spoil(run_copy / name)
    code, _, _ = cli(capsys, "evaluate", run_copy, "--k", "2")
    assert code == 1


def test_corrupt_checkpoint_in_a_real_process(run_copy):
    _flip_last_bytes(run_copy / "model.safetensors")
    before = snapshot(run_copy)
    proc = vaekit_process("evaluate", run_copy, "--k", "2")
    assert_error(proc.returncode, proc.stdout, proc.stderr, 1, "model.safetensors", "checksum")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("spoil", [_truncate, _flip_last_bytes], ids=["truncated", "tampered"])
def test_resume_from_corrupt_last_checkpoint(spoil, run_copy, capsys):
    spoil(run_copy / "last.safetensors")
    before = snapshot(run_copy)
    code, out, err = cli(capsys, "train", "--out", run_copy, "--resume")
    assert_error(code, out, err, 1, "last.safetensors")
    assert snapshot(run_copy) == before


def test_failed_resume_with_new_epochs_leaves_config_alone(run_copy, capsys):
    _truncate(run_copy / "last.safetensors")
    before = snapshot(run_copy)
    code, out, err = cli(capsys, "train", "--out", run_copy, "--resume", "--epochs", "5")
    assert_error(code, out, err, 1, "last.safetensors")
    assert snapshot(run_copy) == before


def test_resume_failing_in_its_first_epoch_leaves_the_run_as_it_was(run_copy, capsys, monkeypatch):
    """A resume that asks for more epochs and turns NaN before its first new checkpoint
    changes nothing, config.json (which would record the new epochs) included."""
    import vaekit.train as vtrain
    from vaekit.errors import TrainingError

    def nan_epoch(self, n, beta, epoch, run_dir, progress):
        raise TrainingError(f"loss became NaN or infinite at epoch {epoch}, step 1")

    monkeypatch.setattr(vtrain._Step, "epoch", nan_epoch)
    before = snapshot(run_copy)
    code, out, err = cli(capsys, "train", "--out", run_copy, "--resume", "--epochs", "5")
    assert_error(code, out, err, 1, "NaN", "epoch 4")
    assert snapshot(run_copy) == before


@no_cuda
def test_failed_resume_with_bad_device_leaves_run_resumable(run_copy, capsys):
    before = snapshot(run_copy)
    code, out, err = cli(capsys, "train", "--out", run_copy, "--resume", "--device", "cuda")
    assert_error(code, out, err, 2, "--device", "CUDA")
    assert snapshot(run_copy) == before


def test_fractions_sum_names_both_options(tmp_path, capsys):
    code, out, err = cli(capsys, "train", "--out", tmp_path / "r", "--test-fraction", "0.95")
    assert_error(code, out, err, 2, "--valid-fraction", "--test-fraction", "1.05")


# -- 3. resume through the CLI ------------------------------------------------------------------

# 300 digits rows in batches of 32: 7 steps an epoch, a fraction of the full digits' cost.
RESUME_ARGS = ["--data", "{files}/digits300.csv", "--batch-size", "32", "--latent-dim", "2", "--hidden", "16", "--eval-k", "5", "--seed", "3"]


def test_resume_equals_uninterrupted_run(files, tmp_path, capsys):
    """2 epochs, then --resume --epochs 4 in a fresh process (so everything comes from the run
    directory), against an uninterrupted 4-epoch run with the same options."""
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    # The global seed only works around the unseeded initial weights (test_seed_fixes_initial_weights);
    # from the first step on, the run's own --seed and the checkpointed RNG state decide.
    torch.manual_seed(1234)
    assert cli(capsys, "train", "--out", resumed, "--epochs", "2", *_fill(RESUME_ARGS, files=files))[0] == 0
    assert len((resumed / "metrics.jsonl").read_text().splitlines()) == 2
    proc = vaekit_process("train", "--out", resumed, "--resume", "--epochs", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["epochs"] == 4
    torch.manual_seed(1234)
    assert cli(capsys, "train", "--out", straight, "--epochs", "4", *_fill(RESUME_ARGS, files=files))[0] == 0

    metrics = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in metrics] == [1, 2, 3, 4]
    reference = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    for r, s in zip(metrics, reference):
        assert (r["train_loss"], r["valid_elbo"]) == (s["train_loss"], s["valid_elbo"]), r["epoch"]
    assert json.loads((resumed / "config.json").read_text()) == json.loads((straight / "config.json").read_text())
    assert_same_tensors(state_dict(resumed), state_dict(straight))
    from vaekit.checkpoint import load_run

    _, last_resumed = load_run(resumed, "last.safetensors")
    _, last_straight = load_run(straight, "last.safetensors")
    assert_same_tensors(last_resumed.state_dict(), last_straight.state_dict())


def test_seed_fixes_initial_weights(files, tmp_path, capsys):
    """Two runs with the same --seed in one process give the same model."""
    for name in ("a", "b"):
        torch.manual_seed(len(name) * 1000 + ord(name))  # whatever state earlier work left behind
        assert cli(capsys, "train", "--out", tmp_path / name, "--epochs", "1", *_fill(RESUME_ARGS, files=files))[0] == 0
    assert_same_tensors(state_dict(tmp_path / "a"), state_dict(tmp_path / "b"))


def test_resume_may_change_the_speed_settings(files, tmp_path, capsys):
    """--amp, --matmul-precision, --compile and --compile-mode change how fast a run goes, not
    the model: a resume may set them, and config.json records the new values."""
    out = tmp_path / "r"
    assert cli(capsys, "train", "--out", out, "--epochs", "1", *_fill(RESUME_ARGS, files=files))[0] == 0
    assert json.loads((out / "config.json").read_text())["train"]["threads"] == torch.get_num_threads()  # 0 recorded as what ran
    code, _, err = cli(capsys, "train", "--out", out, "--resume", "--epochs", "2", "--amp", "bf16", "--matmul-precision", "medium", "--threads", "1")
    assert code == 0, err
    saved = json.loads((out / "config.json").read_text())["train"]
    assert (saved["amp"], saved["matmul_precision"], saved["epochs"], saved["threads"]) == ("bf16", "medium", 2, 1)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    # A speed option that acts on nothing is refused on resume as on a new run, and changes nothing.
    code, _, err = cli(capsys, "train", "--out", out, "--resume", "--epochs", "3", "--compile-mode", "reduce-overhead")
    assert code == 2 and err.strip() == "vaekit: error: --compile-mode applies only when --compile is on; this run has compile off"
    code, _, err = cli(capsys, "train", "--out", out, "--resume", "--epochs", "3", "--compile", "--compile-mode", "reduce-overhead")
    assert code == 2 and err.strip().endswith("--compile-mode applies to device cuda only when it is reduce-overhead (it replays the step as a CUDA graph); this run has device cpu")
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 2


# -- 4. NaN during training ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def nan_run(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("nan") / "run"
    # A 2-D latent: the run keeps bubbles.npz from before its first step.
    proc = vaekit_process("train", "--out", out, "--data", files / "huge.csv", "--likelihood", "gaussian", "--latent-dim", "2",
                          "--standardize", "off", "--epochs", "2", "--hidden", "8", "--eval-k", "2", "--tensorboard")  # fmt: skip
    return out, proc


def test_nan_loss_stops_training(nan_run):
    out, proc = nan_run
    line = assert_error(proc.returncode, proc.stdout, proc.stderr, 1, "NaN", "epoch 1", "step")
    assert "infinite" in line
    # The likely cause, in the user's terms: the scale of the data, with standardisation off.
    assert "standardisation is off" in line and "--standardize on" in line and "--lr 0.001" in line
    assert re.search(r"values the model sees run from 1\.\d+e\+20 to [12](\.\d+)?e\+20", line), line


def test_nan_in_first_epoch_leaves_no_run_directory(nan_run, files):
    """A fresh run that fails before its first checkpoint removes the directory it made (its
    TensorBoard events too), so the same command works again (here: with standardisation, as
    by default)."""
    out, proc = nan_run
    assert not out.exists()
    assert "checkpoint" not in proc.stderr, proc.stderr
    proc = vaekit_process("train", "--out", out, "--data", files / "huge.csv", "--likelihood", "gaussian",
                          "--epochs", "2", "--hidden", "8", "--eval-k", "2", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert math.isfinite(json.loads(proc.stdout)["test"]["log_likelihood"])
    assert json.loads((out / "config.json").read_text())["model"]["standardize"] == "on"


@pytest.mark.parametrize("split", ["valid", "test"])
def test_a_split_row_that_overflows_the_model_is_named_by_train(tmp_path, capsys, split):
    """A validation or test row at 1e20 (finite, but its code's square overflows the KL) is
    refused in one line naming split and row: a validation ELBO of −inf each epoch picked no
    best epoch, and a test row failed in the pictures with "kl_per_dim contains NaN". A bad
    validation row stops the first epoch (no run left); a bad test row, the finished run
    (its checkpoint kept, no pictures half drawn)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 3))
    splits = {"train": x, "valid": x[:5].copy(), "test": x[:5].copy()}
    splits[split][2] *= 1e20
    np.savez(tmp_path / "d.npz", **splits)
    out = tmp_path / "run"
    code, o, err = cli(capsys, "train", "--data", tmp_path / "d.npz", "--out", out, "--epochs", "2", "--hidden", "8",
                       "--latent-dim", "2", "--eval-k", "5", "--quiet")  # fmt: skip
    line = assert_error(code, o, err, 1, f"[{split}] row 3: the model's KL is not a number", "1.")
    assert "e+20" in line
    if split == "valid":
        assert not out.exists()
    else:
        assert (out / "model.safetensors").exists() and not (out / "kl_per_dim.png").exists()
        vaekit.load(out)


def test_nan_keeps_last_good_checkpoint(files, tmp_path):
    """In-process: 2 good epochs, then a resumed epoch 3 that turns NaN. The run directory must
    be byte-for-byte as the good epochs left it, and still load."""
    from dataclasses import replace

    import vaekit.train as vtrain
    from vaekit.checkpoint import load_tensors
    from vaekit.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from vaekit.data import load_dataset
    from vaekit.errors import TrainingError
    from vaekit.model import VAEModel

    data_config = DataConfig(source=str(files / "digits300.csv"))
    data = load_dataset(data_config)
    config = RunConfig(
        model=ModelConfig(input_dim=DIM, latent_dim=2, hidden=(16,), likelihood="continuous_bernoulli"),
        train=TrainConfig(epochs=2, batch_size=32, eval_k=2),
        data=data_config,
    )
    run = tmp_path / "run"
    vtrain.fit(VAEModel(config.model), data.train, data.valid, config.train, run, config)
    names = ("model.safetensors", "last.safetensors", "metrics.jsonl", "config.json")
    before = {f: (run / f).read_bytes() for f in names}
    weights_before = state_dict(run)

    # Blow up from the 4th training step of the resumed run on: a forward hook on the first
    # layer makes its output NaN (the hook is on this model instance, whatever the loss code is).
    model = VAEModel(config.model)
    first_layer = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    calls = {"n": 0}

    def nan_from_step_4(module, inputs, output):
        if module.training:
            calls["n"] += 1
            if calls["n"] >= 4:
                return output * float("nan")
        return None

    first_layer.register_forward_hook(nan_from_step_4)
    with pytest.raises(TrainingError) as info:
        vtrain.fit(model, data.train, data.valid, replace(config.train, epochs=3), run, config, resume=True)
    message = str(info.value)
    assert "NaN" in message and "epoch 3" in message and re.search(r"step \d+", message), message
    assert {f: (run / f).read_bytes() for f in names} == before
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    load_tensors(run / "last.safetensors")  # still a valid checkpoint
    assert_same_tensors(state_dict(run), weights_before)


def test_train_on_the_iwae_objective(tmp_path, capsys):
    """--objective iwae --k K trains on the K-sample bound and keeps the epoch with the best
    validation bound; the ELBO is still reported beside it, and the bound sits above it."""
    run = tmp_path / "iwae"
    assert main(["train", "--data", "digits", "--objective", "iwae", "--k", "4", "--epochs", "3", "--hidden", "32",
                 "--latent-dim", "4", "--eval-k", "5", "--out", str(run), "--json"]) == 0  # fmt: skip
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["objective"] == "iwae" and config["train"]["k"] == 4
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["objective"] == "iwae" and r["train_elbo"] is None for r in metrics)
    assert all(r["valid_score"] > r["valid_elbo"] for r in metrics)  # a 4-sample bound above the ELBO
    summary = json.loads(capsys.readouterr().out)
    assert summary["best_epoch"] == max(metrics, key=lambda r: r["valid_score"])["epoch"]


@pytest.mark.parametrize(
    "argv, culprit",
    [
        (["--objective", "iwae", "--inference", "autoencoder"], "objective iwae needs a density q"),
        (["--objective", "iwae", "--beta", "0.5"], "--beta applies to objective elbo only"),
        (["--k", "5"], "--k applies to objective iwae only"),
        (["--variance", "feature"], "--variance applies to likelihood gaussian only"),
        # Options that act only under another option's value, given without it.
        (["--likelihood", "gaussian", "--fixed-std", "0.5"], "--fixed-std applies to variance fixed only; this run has variance shared"),
        (["--likelihood", "gaussian", "--fixed-std", "1"], "--fixed-std applies to variance fixed only"),  # even at its default
        (["--compile-mode", "reduce-overhead"], "--compile-mode applies only when --compile is on; this run has compile off"),
        # torch.compile drops reduce-overhead's CUDA graph on the CPU: it would be mode default.
        (["--compile", "--compile-mode", "reduce-overhead"],
         "--compile-mode applies to device cuda only when it is reduce-overhead (it replays the step as a CUDA graph); this run has device cpu"),
        (["--refine-lr", "0.1"], "--refine-lr applies only when --refine-steps > 0; this run has refine_steps 0"),
        (["--local-steps", "5"], "--local-steps applies to inference vi or map or autoencoder only; this run has inference amortized"),
        (["--inference", "map", "--n-samples", "3"], "--n-samples applies to inference amortized or topdown or ladder or vi only; this run has inference map"),
        (["--inference", "autoencoder", "--objective", "elbo", "--n-samples", "2"], "--n-samples applies to inference"),
        (["--dtype", "float64", "--matmul-precision", "medium"], "--matmul-precision applies to dtype float32 only; this run has dtype float64"),
        (["--local-lr", "0.3"], "--local-lr applies to inference vi or map or autoencoder only; this run has inference amortized"),
        # Options whose effect depends on several others.
        (["--inference", "vi", "--encoder", "gated"], "--encoder applies to inference with an encoder; inference vi has no encoder"),
        (["--inference", "map", "--hidden", "8", "--decoder-hidden", "4"],
         "--hidden applies to the encoder, and to the decoder when --decoder-hidden is not given; inference map has no encoder"),
        (["--hidden", "", "--activation", "tanh"], "--activation applies to the hidden layers of mlp and conv nets; this model's networks are gated or linear"),
        (["--net", "gated", "--activation", "relu"], "--activation applies to the hidden layers of mlp and conv nets"),  # even at its default
        (["--encoder", "gated", "--hidden", "8", "--decoder-hidden", "", "--activation", "elu"], "--activation applies to the hidden layers"),
        # One latent group: these would be inference amortized under another name.
        (["--inference", "topdown"], "--inference topdown applies to models with several latent groups"),
        (["--inference", "ladder", "--latent-dim", "4"], "--inference ladder applies to models with several latent groups (latent_dim 40,40) only; with one, 4, it is inference amortized"),
        (["--prior", "aggregate", "--prior-from", "elsewhere", "--prior-mixture", "11", "--prior-components", "10"],
         "--prior-mixture must be at most --prior-components, the posteriors it is fitted to: got 11 components for 10"),
        (["--objective", "nope"], "--objective must be one of"),
        (["--net", "nope"], "--net must be one of"),
    ],
)
def test_component_options_are_checked_before_a_run_directory_exists(argv, culprit, tmp_path, capsys):
    run = tmp_path / "never"
    assert main(["train", "--data", "digits", "--out", str(run), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert culprit in err and len(err.splitlines()) == 1
    assert not run.exists()


@pytest.mark.parametrize(
    "argv, flag, values",
    [(["--inference", "vi", "--hidden", "8"], "--activation", ("tanh", "elu")),  # the decoder's widths, by default
     (["--inference", "vi", "--latent-dim", "2,2", "--decoder-hidden", "4"], "--hidden", ("8", "6")),  # p(z1|z2) has the encoder's widths
     (["--net", "gated", "--decoder", "mlp", "--hidden", "8"], "--activation", ("tanh", "elu")),
     (["--hidden", "", "--decoder-hidden", "8"], "--activation", ("tanh", "elu"))],  # fmt: skip
)
def test_options_that_act_somewhere_in_the_model_are_taken(argv, flag, values, tmp_path, capsys):
    """The counterparts of the refusals above: each option is taken, and another value of it
    trains other weights from the same seed."""
    from safetensors.numpy import load_file

    weights = []
    for value in values:
        run = tmp_path / value
        code = main(["train", "--data", "digits", "--epochs", "1", "--eval-k", "2", "--latent-dim", "2", *argv, flag, value, "--out", str(run), "--quiet"])
        assert code == 0, capsys.readouterr().err
        weights.append(load_file(run / "model.safetensors"))
    assert any(a.shape != weights[1][k].shape or not np.array_equal(a, weights[1][k]) for k, a in weights[0].items())


def test_split_options_are_refused_for_fixed_splits(tmp_path, capsys):
    """An .npz with its own valid and test arrays (or binarized MNIST) has no splits to carve:
    --valid-fraction, --test-fraction and --split-seed would be recorded without acting. With
    only a test array, valid is carved from train: --valid-fraction and --split-seed act."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    np.savez(tmp_path / "fixed.npz", train=x[:40], valid=x[40:50], test=x[50:])
    np.savez(tmp_path / "test-only.npz", train=x[:50], test=x[50:])
    base = ["train", "--epochs", "1", "--eval-k", "2", "--latent-dim", "2", "--hidden", "4", "--quiet"]
    for flag, value, says in (("--valid-fraction", "0.3", "--valid-fraction applies to rows split by fractions; {} has a fixed valid split of its own"),
                              ("--test-fraction", "0.1", "--test-fraction applies to rows split by fractions; {} has a fixed test split of its own"),
                              ("--split-seed", "5", "--split-seed applies to rows split by fractions; {} has fixed valid and test splits of its own")):  # fmt: skip
        run = tmp_path / f"never{flag}"
        assert main([*base, "--data", str(tmp_path / "fixed.npz"), flag, value, "--out", str(run)]) == 2
        assert capsys.readouterr().err.strip() == f"vaekit: error: {says.format(tmp_path / 'fixed.npz')}"
        assert not run.exists()
    assert main([*base, "--data", str(tmp_path / "test-only.npz"), "--test-fraction", "0.1", "--out", str(tmp_path / "t")]) == 2
    runs = []
    for seed in ("1", "2"):
        runs.append(tmp_path / f"seed{seed}")
        assert main([*base, "--data", str(tmp_path / "test-only.npz"), "--split-seed", seed, "--valid-fraction", "0.3", "--out", str(runs[-1])]) == 0
    from vaekit.data import load_dataset
    from vaekit.config import RunConfig

    valid = [load_dataset(RunConfig.load(r / "config.json").data).valid for r in runs]
    assert len(valid[0]) == 15 and not np.array_equal(valid[0], valid[1])  # the seed picks other rows


def test_a_closed_stdout_ends_quietly(run):
    """`vaekit ... --json | head -c 1`: the reader stops, and vaekit ends as a pipeline's tools
    do on SIGPIPE (141), without an error line."""
    proc = subprocess.Popen([sys.executable, "-m", "vaekit", "evaluate", str(run), "--k", "2", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and err == ""


# -- 5. one writer per run directory --------------------------------------------------------------


def _train_process(run: Path, *argv, log: Path) -> subprocess.Popen:
    """``python -m vaekit train --data digits --out RUN ARGV`` started, its stderr into ``log``."""
    err = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "vaekit", "train", "--data", "digits", "--out", str(run), *map(str, argv)],
                            stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
    err.close()
    return proc


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX lock test")
def test_a_second_train_into_a_run_being_written_is_refused(tmp_path, capsys):
    """While one `vaekit train` writes RUN_DIR, a second one (--overwrite, --resume) is refused
    with one line naming the writer's pid, and changes nothing: the first writer (a run too long
    to finish, so the test holds on any machine) is then stopped after a few epochs, and its
    run resumes from exactly the epochs it wrote."""
    from lock_helpers import kill9, wait_until_locked_by

    run, log = tmp_path / "run", tmp_path / "first.log"
    first = _train_process(run, "--epochs", 100000, "--hidden", 32, "--latent-dim", 2, "--eval-k", 10, log=log)
    try:
        wait_until_locked_by(run, first)
        for flag in ("--overwrite", "--resume"):
            code, out, err = cli(capsys, "train", "--data", "digits", "--out", run, "--epochs", "3", flag)
            assert_error(code, out, err, 1, str(run), "being written by another process", f"(pid {first.pid})")
            assert first.poll() is None
        deadline = time.monotonic() + 600
        while len(read_metrics(run)) < 3:
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        if first.poll() is None:
            kill9(first)
    n = len(read_metrics(run))
    assert [r["epoch"] for r in read_metrics(run)] == list(range(1, n + 1))
    assert sum(line.startswith("epoch ") for line in log.read_text().splitlines()) >= n - 1
    code, _, err = cli(capsys, "train", "--out", run, "--resume", "--epochs", str(n + 1), "--quiet")
    assert code == 0, err
    epochs = [r["epoch"] for r in read_metrics(run)]
    # The kill may land between an epoch's metrics line and its checkpoint: resume then
    # repeats that epoch from the checkpoint, and the metrics are rewritten to match.
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= n, epochs
    assert not (run / ".vaekit.lock").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_train_after_a_writer_killed_by_sigkill(tmp_path, capsys):
    """A kill -9 leaves the lock file but no lock: the next train goes ahead."""
    from lock_helpers import kill9, wait_until_locked_by

    run = tmp_path / "run"
    first = _train_process(run, "--epochs", 1000, "--hidden", 32, "--eval-k", 2, log=tmp_path / "first.log")
    try:
        wait_until_locked_by(run, first)
    finally:
        kill9(first)
    assert (run / ".vaekit.lock").is_file()
    code, _, err = cli(capsys, "train", "--data", "digits", "--out", run, *TRAIN_ARGS[2:], "--epochs", "1", "--overwrite", "--quiet")
    assert code == 0, err
    assert [r["epoch"] for r in read_metrics(run)] == [1]
    assert not (run / ".vaekit.lock").exists()


def test_overwrite_leaves_nothing_of_the_previous_run(run_copy, capsys):
    """Pictures the new run does not draw (latent_grid.png and bubbles.png of a 2-D latent), outputs written
    into the run, the user's files (named in a warning), TensorBoard events and leftover temporaries all go."""
    (run_copy / "gaps_test.png").write_bytes(PNG_MAGIC)
    (run_copy / "z.npy").write_bytes(b"old")
    (run_copy / "tensorboard").mkdir()
    (run_copy / "tensorboard" / "events.out.tfevents.1.old").write_bytes(b"old")
    (run_copy / ".model.safetensors.0123456789ab.tmp").write_bytes(b"old")
    (run_copy / "notes.txt").write_text("mine")
    # Files that no run writes are named before they go, the run's own (gaps' plots too) are not.
    with pytest.warns(VaekitWarning, match=r"files that are not the old run's: notes.txt, z.npy \(given back") as caught:
        code, _, err = cli(capsys, "train", "--data", "digits", "--out", run_copy, "--latent-dim", "3", *SMALL, "--overwrite", "--quiet")
    assert code == 0, err
    assert len([w for w in caught if "--overwrite" in str(w.message)]) == 1
    assert sorted(p.name for p in run_copy.iterdir()) == sorted(set(RUN_FILES) - {"latent_grid.png", "bubbles.png"})
    assert [r["epoch"] for r in read_metrics(run_copy)] == [1]


@pytest.mark.parametrize("content", [{"notes.txt": "mine"}, {"config.json": '{"name": "another tool"}', "data.bin": "x"}], ids=["no-config", "foreign-config"])
def test_overwrite_refuses_a_directory_that_holds_no_vaekit_run(content, tmp_path, capsys):
    d = tmp_path / "mine"
    d.mkdir()
    for name, text in content.items():
        (d / name).write_text(text)
    code, out, err = cli(capsys, "train", "--data", "digits", "--out", d, *SMALL, "--overwrite")
    assert_error(code, out, err, 1, str(d), "does not look like a vaekit run", "not deleting")
    assert {p.name: p.read_text() for p in d.iterdir()} == content


@pytest.mark.parametrize("inner", ["a-run", "being-written"])
def test_overwrite_refuses_a_run_directory_that_holds_another_run(inner, run, run_copy, capsys):
    """A run trained into a folder of another run would go with it, even while a process
    writes it: --overwrite refuses, naming it, and changes nothing."""
    from vaekit.lock import RunLock

    nested = run_copy / "inner"
    shutil.copytree(run, nested)
    with RunLock(nested) if inner == "being-written" else contextlib.nullcontext():
        before = snapshot(run_copy)
        code, out, err = cli(capsys, "train", "--data", "digits", "--out", run_copy, *SMALL, "--overwrite")
        assert_error(code, out, err, 1, f"holds another run, {nested}", "move it out first")
        assert snapshot(run_copy) == before


def test_overwrite_refuses_data_inside_the_run_directory(run_copy, files, capsys):
    shutil.copy(files / "digits300.csv", run_copy / "rows.csv")
    before = snapshot(run_copy)
    code, out, err = cli(capsys, "train", "--data", run_copy / "rows.csv", "--out", run_copy, *SMALL, "--overwrite")
    assert_error(code, out, err, 2, "rows.csv", "--overwrite empties")
    assert snapshot(run_copy) == before


def test_a_refused_overwrite_leaves_the_old_run(run, run_copy, files, capsys):
    """--overwrite empties the directory only once the new run has passed its checks: data
    outside the likelihood's support, or a model too large for memory, leave the old run (also
    one without last.safetensors, as VAE.save writes it) as it was."""
    before = snapshot(run_copy)
    code, out, err = cli(capsys, "train", "--data", files / "ten.csv", "--likelihood", "bernoulli", "--out", run_copy, *SMALL, "--overwrite")
    assert_error(code, out, err, 1, "outside the support of the bernoulli likelihood")
    assert snapshot(run_copy) == before
    (run_copy / "last.safetensors").unlink()
    before = snapshot(run_copy)
    code, out, err = cli(capsys, "train", "--data", "digits", "--latent-dim", "1000000000", "--out", run_copy, *SMALL, "--overwrite")
    assert_error(code, out, err, 2, "parameters", "free")
    assert snapshot(run_copy) == before
    # Refusals that come once training starts (the device, a loss NaN at its first step) give
    # the old run back from where --overwrite set it aside.
    late = [["--lr", "1e30"]] + ([] if torch.cuda.is_available() else [["--device", "cuda"]])
    for argv in late:
        code, out, err = cli(capsys, "train", "--data", "digits", "--out", run_copy, *SMALL, *argv, "--overwrite")
        assert code != 0 and len(err.strip().splitlines()) == 1, err
        assert snapshot(run_copy) == before
    # The earlier run an aggregate prior reads: missing, or of another latent size.
    for prior_from, culprit in ((run_copy.parent / "missing", "not a run directory"), (run, "latent size is 2, this model's top group has 3")):
        code, out, err = cli(capsys, "train", "--data", "digits", "--latent-dim", "3", "--prior", "aggregate", "--prior-from", prior_from,
                             "--out", run_copy, *SMALL, "--overwrite")  # fmt: skip
        assert code != 0 and culprit in err, err
        assert snapshot(run_copy) == before


def _stopped_overwrite(run_dir: Path, checkpoint: bool = False) -> None:
    """What a kill leaves of an --overwrite of RUN_DIR: the old run in .vaekit-replaced beside
    the start of the new one (its config.json, metrics and a temporary file; with
    ``checkpoint``, a last.safetensors too) and a stale lock."""
    from vaekit import checkpoint as ckpt

    ckpt.set_aside(run_dir)
    (run_dir / "config.json").write_bytes((run_dir / ckpt.REPLACED_DIR / "config.json").read_bytes())
    (run_dir / "metrics.jsonl").write_text("")
    (run_dir / ".curves.png.0123456789ab.tmp").write_bytes(b"half")
    if checkpoint:
        (run_dir / "last.safetensors").write_bytes((run_dir / ckpt.REPLACED_DIR / "last.safetensors").read_bytes())
    (run_dir / ".vaekit.lock").write_text("999999999\n")


def test_a_run_reads_its_data_again_from_any_directory(tmp_path, capsys, monkeypatch):
    """--data and --data-dir given relative to where train ran are kept absolute: evaluate,
    sample from the aggregate posterior and --resume started elsewhere find them."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    (here / "data").mkdir(parents=True)
    elsewhere.mkdir()
    np.save(here / "data" / "rows.npy", np.random.default_rng(0).random((120, 5)).astype(np.float32))

    def run_in(cwd, *argv):
        monkeypatch.chdir(cwd)
        return cli(capsys, *map(str, argv))

    code, _, err = run_in(here, "train", "--data", "rows.npy", "--data-dir", "data", "--out", "run", *SMALL, "--quiet")
    assert code == 0, err
    config = json.loads((here / "run" / "config.json").read_text())
    assert config["data"]["source"] == str(here / "data" / "rows.npy") and config["data"]["data_dir"] == str(here / "data")
    run = here / "run"
    for argv in (["evaluate", run, "--k", "2"], ["sample", run, "-n", "3", "--source", "aggregate", "--out", "s.npy"],
                 ["train", "--out", run, "--resume", "--epochs", "2", "--quiet"]):  # fmt: skip
        code, _, err = run_in(elsewhere, *argv)
        assert code == 0, (argv, err)
    # Repeating --data on resume names the same file however it is written; another file is refused.
    for epochs, data in ((3, ["--data", "data/rows.npy"]), (4, ["--data", "rows.npy", "--data-dir", "data"])):
        code, _, err = run_in(here, "train", "--out", "run", "--resume", "--epochs", epochs, *data, "--quiet")
        assert code == 0, err
    assert json.loads((run / "config.json").read_text())["data"]["data_dir"] == str(here / "data")
    code, _, err = run_in(elsewhere, "train", "--out", run, "--resume", "--epochs", "5", "--data", "rows.npy", "--quiet")
    assert code == 0, err  # found in the run's --data-dir, as train finds it
    np.save(elsewhere / "rows.npy", np.zeros((120, 5), dtype=np.float32))  # now rows.npy here is another file
    code, _, err = run_in(elsewhere, "train", "--out", run, "--resume", "--epochs", "6", "--data", "rows.npy", "--quiet")
    assert code == 2 and "--data cannot change when resuming" in err, err


def test_a_run_trained_streamed_streams_its_file_again_however_it_is_named(tmp_path, capsys, monkeypatch):
    """The run keeps its file absolute; --data naming the same file as typed (or another way)
    still streams it, as the run's own data."""
    import vaekit.data as data_mod

    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "rows.npy", np.random.default_rng(0).random((120, 5)).astype(np.float32))
    code, _, err = cli(capsys, "train", "--data", "rows.npy", "--mmap", "--out", "run", *SMALL, "--quiet")
    assert code == 0, err
    seen = []
    real = data_mod.load_dataset
    monkeypatch.setattr(data_mod, "load_dataset", lambda config: seen.append(config.mmap) or real(config))
    for given in ("rows.npy", "./rows.npy", str(tmp_path / "rows.npy")):
        code, _, err = cli(capsys, "encode", "run", "--data", given, "--split", "test", "--out", "e.npy", "--overwrite")
        assert code == 0, err
    assert seen == [True, True, True]


def test_resume_names_an_edited_model_field_before_reading_the_data(run_copy, capsys):
    config = json.loads((run_copy / "config.json").read_text())
    config["model"]["likelihood"] = "bernoulli"
    (run_copy / "config.json").write_text(json.dumps(config))
    code, out, err = cli(capsys, "train", "--out", run_copy, "--resume", "--epochs", "4")
    assert_error(code, out, err, 1, "model.likelihood is \"bernoulli\"", "last.safetensors was saved with \"continuous_bernoulli\"")


@pytest.mark.parametrize(
    "section,field,value",
    [("train", "batch_size", 50), ("train", "dtype", "float64"), ("train", "seed", 3), ("train", "objective", "iwae"),
     ("data", "split_seed", 4), ("data", "valid_fraction", 0.2),
     # The objective's own options, as fixed as the core ones.
     ("train", "beta", 4.0), ("train", "warmup", 3), ("train", "free_bits", 0.5), ("train", "n_samples", 2)],
)  # fmt: skip
def test_resume_names_an_edited_fixed_field(run_copy, capsys, section, field, value):
    """A train or data field that --resume may not change, edited in config.json, is refused as
    the same change on the command line is: the checkpoint keeps the values it was saved with.
    Nothing in the run directory changes."""
    config = json.loads((run_copy / "config.json").read_text())
    saved = config[section][field]
    config[section][field] = value
    (run_copy / "config.json").write_text(json.dumps(config))
    before = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    code, out, err = cli(capsys, "train", "--out", run_copy, "--resume", "--epochs", "4")
    assert_error(code, out, err, 1, f"{section}.{field} is {json.dumps(value)}", f"last.safetensors was saved with {json.dumps(saved)}")
    assert {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()} == before


@pytest.mark.parametrize(
    "version,section,field,saved", [(9, "train", "weight_decay", 0.5), (8, "train", "ema", 0.9), (7, "model", "x_path", "layer")]
)
def test_resume_names_a_field_taken_out_of_config_json(files, tmp_path, capsys, version, section, field, saved):
    """A field that a config version added, taken out with the version lowered to one without
    it, would read as its older default: the checkpoint's record refuses that as it refuses an
    edited value, and nothing in the run directory changes."""
    run = tmp_path / "r"
    argv = ["train", "--out", run, *_fill(RESUME_ARGS, files=files), "--latent-dim", "2,2", "--inference", "topdown",
            "--x-path", "layer", "--ema", "0.9"]  # fmt: skip
    if field == "weight_decay":  # alone: a file without a later field is named by the first that differs
        argv += ["--weight-decay", "0.5"]
    assert cli(capsys, *argv, "--epochs", "1")[0] == 0
    config = json.loads((run / "config.json").read_text())
    assert config[section][field] == saved
    from config_helpers import as_version

    as_version(config, version)  # takes out the field, and those that later versions added
    (run / "config.json").write_text(json.dumps(config))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    code, out, err = cli(capsys, "train", "--out", run, "--resume", "--epochs", "2")
    assert_error(code, out, err, 1, f"{section}.{field} is ", f"last.safetensors was saved with {json.dumps(saved)}")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_weights_of_another_dtype_than_config_json_says_are_refused(run_copy, capsys):
    """A config.json whose train.dtype was edited would load float32 weights into a float64
    model by a silent cast: every reader refuses, naming the dtypes."""
    config = json.loads((run_copy / "config.json").read_text())
    config["train"]["dtype"] = "float64"
    (run_copy / "config.json").write_text(json.dumps(config))
    code, out, err = cli(capsys, "evaluate", run_copy, "--k", "2")
    assert_error(code, out, err, 1, "model.safetensors: tensor", "is float32, config.json implies float64")
    with pytest.raises(CheckpointError, match="is float32, config.json implies float64"):
        vaekit.load(run_copy)


@pytest.mark.parametrize("name", ["config.json", "metrics.jsonl"])
def test_json_nested_deeper_than_the_parser_goes_is_damage_not_a_crash(run_copy, capsys, name):
    """A file of 100 000 nested brackets makes json's parser recurse past Python's limit: a
    damaged config.json is refused in one line, a damaged metrics line is warned about and the
    run is read."""
    (run_copy / name).write_text("[" * 100_000 + "]" * 100_000 + "\n")
    if name == "config.json":
        code, out, err = cli(capsys, "evaluate", run_copy, "--k", "2")
        assert_error(code, out, err, 1, "config.json: not valid JSON (nested too deeply")
    else:
        with pytest.warns(VaekitWarning, match="metrics.jsonl: line 1 is not an epoch's record"):
            code, out, err = cli(capsys, "evaluate", run_copy, "--k", "2")
        assert code == 0, err


def test_the_aggregate_posterior_of_a_point_estimate_is_its_codes(tmp_path, capsys):
    """sample --source aggregate draws z ~ q(z|x) of random rows: for the autoencoder, whose
    q is δ(z − ẑ), every sample is the reconstruction of one of the rows."""
    from sklearn.datasets import load_digits

    x = load_digits().data[:40]
    np.save(tmp_path / "x.npy", x)
    code, _, err = cli(capsys, "train", "--data", "digits", "--inference", "autoencoder", "--local-steps", "5", "--out", tmp_path / "ae", *SMALL, "--quiet")
    assert code == 0, err
    est = vaekit.load(tmp_path / "ae")
    samples = est.sample(30, seed=0, source="aggregate", X=x)
    recon = est.reconstruct(x)
    distance = np.abs(samples[:, None, :] - recon[None, :, :]).max(-1).min(-1)
    assert distance.max() < 1e-4, distance


def _put_back(files: dict[str, bytes], run_dir: Path) -> None:
    """RUN_DIR holding exactly ``files`` (a snapshot) again."""
    shutil.rmtree(run_dir)
    for name, data in files.items():
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_bytes(data)


def test_an_overwrite_stopped_by_a_kill_gives_the_old_run_back(run_copy, capsys):
    """Readers say where the old run is; the next train into RUN_DIR, whatever its flags,
    first puts it back (the stopped run had no checkpoint to keep), so --resume continues it."""
    before = snapshot(run_copy)
    _stopped_overwrite(run_copy)
    code, out, err = cli(capsys, "evaluate", run_copy, "--k", "2")
    assert_error(code, out, err, 1, ".vaekit-replaced", f"vaekit train --out {run_copy}")
    code, out, err = cli(capsys, "train", "--out", run_copy, "--resume", "--epochs", "4", "--quiet")
    assert code == 0, err
    assert not (run_copy / ".vaekit-replaced").exists()
    assert [r["epoch"] for r in read_metrics(run_copy)] == [1, 2, 3, 4]
    # A plain train puts it back too, and then refuses to write over it.
    _put_back(before, run_copy)
    _stopped_overwrite(run_copy)
    code, out, err = cli(capsys, "train", "--data", "digits", "--out", run_copy, *SMALL)
    assert_error(code, out, err, 1, "already holds a run")
    assert snapshot(run_copy) == before


def test_an_overwrite_stopped_after_its_first_checkpoint_keeps_the_new_run(run_copy, capsys):
    from vaekit import checkpoint as ckpt

    _stopped_overwrite(run_copy, checkpoint=True)
    new_run = {name: (run_copy / name).read_bytes() for name in ("config.json", "last.safetensors")}
    code, out, err = cli(capsys, "train", "--data", "digits", "--out", run_copy, *SMALL)
    assert_error(code, out, err, 1, "already holds a run")
    assert not (run_copy / ckpt.REPLACED_DIR).exists()
    assert {name: (run_copy / name).read_bytes() for name in new_run} == new_run


def test_a_restore_cut_short_is_finished(run_copy):
    """A kill while the old run moved back leaves part of it in RUN_DIR, part aside: the
    next writer finishes the move and deletes nothing of it."""
    from vaekit import checkpoint as ckpt
    from vaekit.errors import CheckpointError

    before = snapshot(run_copy)
    est = vaekit.load(run_copy)
    ckpt.set_aside(run_copy)
    aside = run_copy / ckpt.REPLACED_DIR
    (aside / ckpt.RESTORING).touch()
    for name in ("config.json", "last.safetensors"):
        (aside / name).replace(run_copy / name)
    # VAE.save puts the run back under its lock, then refuses to write over a whole run.
    with pytest.raises(CheckpointError, match="holds a run with more than a saved model"):
        est.save(run_copy)
    assert snapshot(run_copy) == before


@pytest.mark.parametrize(
    "error",
    [RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:5555: Connection reset by peer"),
     torch.distributed.DistBackendError("NCCL communicator was aborted")],
)
def test_a_broken_data_parallel_group_is_one_line(monkeypatch, capsys, error):
    """A peer of a torchrun group that dies makes the others' next collective fail: one line."""
    import vaekit.cli as cli_mod

    def broken(args):
        raise error

    monkeypatch.setattr(cli_mod, "cmd_sample", broken)
    monkeypatch.setattr(cli_mod, "cmd_train", broken)
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = main(["sample", "run", "-n", "2", "--out", "x.npy"])
    out, err = capsys.readouterr()
    assert_error(code, out, err, 1, "the data-parallel group broke", "what was written is intact")
    assert "--resume" not in err  # a verb that trains nothing leaves no run to continue
    code = main(["train", "--data", "digits", "--out", "run"])
    out, err = capsys.readouterr()
    assert_error(code, out, err, 1, "the data-parallel group broke", "a run with a checkpoint continues with --resume")
    monkeypatch.setenv("WORLD_SIZE", "1")  # alone, such an error is no peer's: it is raised
    with pytest.raises(type(error)):
        main(["sample", "run", "-n", "2", "--out", "x.npy"])


def test_sigterm_ends_a_run_as_an_interrupt_does(run_copy):
    """SIGTERM (a scheduler's stop) during an --overwrite: exit 143 in one line, the old run
    back as it was, no lock or temporary file left."""
    import signal

    before = snapshot(run_copy)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vaekit", "train", "--data", "digits", "--out", str(run_copy), "--epochs", "200", "--hidden", "8",
         "--eval-k", "2", "--overwrite", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (run_copy / ".vaekit-replaced").is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == [err.strip()] and "terminated" in err and "Traceback" not in err, err
    assert snapshot(run_copy) == before


# A verb whose process gets ``signal`` while the module ``argv[2]`` is being imported: an audit
# hook sends it at that moment, the way a Ctrl-C in the first second does.
SIGNAL_DURING_IMPORT = """
import os, signal, sys
sent, number, module = [], getattr(signal, sys.argv[1]), sys.argv[2]
def hook(event, args):
    if event == "import" and args[0] == module and not sent:
        sent.append(1)
        os.kill(os.getpid(), number)
sys.addaudithook(hook)
sys.argv = ["vaekit", "evaluate", sys.argv[3], "--k", "2"]
from vaekit.entry import run
run()
"""


def signal_during_import(name: str, module: str, run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SIGNAL_DURING_IMPORT, name, module, str(run_dir)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("name, status, word", [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted")])
def test_a_signal_while_torch_is_being_imported_is_one_line(run_copy, name, status, word):
    """The handler names the process's rank without importing torch again: a second import of a
    half-initialised torch fails with a traceback (and exit 1) instead of the verb's line."""
    proc = signal_during_import(name, "torch.nn", run_copy)
    assert proc.returncode == status, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and word in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    # evaluate trains nothing: what it leaves is intact files, with no run of its own to resume
    assert proc.stderr.strip().endswith("; what was written is intact"), proc.stderr


@pytest.mark.parametrize("name, status, word", [("SIGTERM", 143, "terminated (SIGTERM)"), ("SIGINT", 130, "interrupted")])
def test_a_signal_while_the_command_imports_is_one_line(run_copy, name, status, word):
    """The command's own modules take tenths of a second to import: a signal then ends it with
    the line and status of a later one, not a traceback of the import or a silent -15."""
    proc = signal_during_import(name, "vaekit.cli", run_copy)
    assert proc.returncode == status, proc.stderr
    assert proc.stderr == f"vaekit: {word} before it started; nothing was written\n"


WITHOUT_MODULE = """
import sys
sys.modules[sys.argv[1]] = None  # import fails as for a package that is not installed
sys.argv = ["vaekit", *sys.argv[2:]]
from vaekit.entry import run
run()
"""


@pytest.mark.parametrize("module, dist", [("numpy", "numpy"), ("safetensors", "safetensors"), ("PIL", "pillow"), ("sklearn", "scikit-learn")])
def test_a_missing_dependency_is_named_before_anything_is_written(tmp_path, module, dist):
    """An install without its dependencies (pip install --no-deps): the command names the
    package and how to install it in one line, exit 1, before it reads or writes anything; a
    run is not trained only to stop at its pictures."""
    run = tmp_path / "r"
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_MODULE, module, "train", "--data", "digits", "--epochs", "1", "--out", str(run)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == f"vaekit: error: the package {dist} (module {module}) is not installed; vaekit needs it: pip install {dist}\n"
    assert not run.exists()


def test_a_stub_module_without_a_spec_counts_as_installed(monkeypatch):
    """find_spec raises ValueError for a module imported already with no __spec__ (a stub a
    notebook or a test harness put there): that module is present, not missing."""
    import types

    from vaekit.entry import missing_requirement

    stub = types.ModuleType("tqdm")
    stub.__spec__ = None
    monkeypatch.setitem(sys.modules, "tqdm", stub)
    assert missing_requirement() is None and missing_requirement("tqdm") is None
    monkeypatch.setitem(sys.modules, "tqdm", None)
    assert missing_requirement() == "the package tqdm (module tqdm) is not installed; vaekit needs it: pip install tqdm"


def test_a_verb_does_not_write_over_the_runs_own_files(run_copy, capsys):
    """bubbles.npz (and the checkpoints) are the run's; sample and reconstruct may redraw their
    own pictures of it."""
    before = snapshot(run_copy)
    for argv in (["sample", "-n", "3"], ["encode", "--data", "digits"], ["reconstruct", "--data", "digits"]):
        code, out, err = cli(capsys, *argv[:1], run_copy, *argv[1:], "--out", run_copy / "bubbles.npz")
        assert_error(code, out, err, 2, f"--out {run_copy / 'bubbles.npz'}", "is a file of the run")
    # A verb redraws its own picture, never another's: a sample grid over the training curves
    # (or gaps' bound over the latent scatter) would replace a picture of another kind.
    for argv in (["sample", "-n", "3", "--out"], ["reconstruct", "--data", "digits", "--out"], ["gaps", "--k", "2", "--steps", "1", "--plot"]):
        for name in ("curves.png", "latent.png", "kl_per_dim.png", "samples.png" if argv[0] != "sample" else "reconstructions.png"):
            code, out, err = cli(capsys, argv[0], run_copy, *argv[1:], run_copy / name)
            assert_error(code, out, err, 2, f"{run_copy / name}: is the run's {name}, a picture of another kind")
    # gaps' pictures are the run's too (a later gaps would redraw them over a sample grid), and
    # gaps of one split does not draw over another split's, nor its bound over its bars.
    for argv, name in (
        (["sample", "-n", "3", "--out"], "gaps_test.png"),
        (["reconstruct", "--data", "digits", "--overwrite", "--out"], "gaps_valid_bars.png"),
        (["gaps", "--k", "2", "--steps", "1", "--split", "valid", "--plot"], "gaps_test.png"),
        (["gaps", "--k", "2", "--steps", "1", "--overwrite", "--plot"], "gaps_test_bars.png"),
    ):
        code, out, err = cli(capsys, argv[0], run_copy, *argv[1:], run_copy / name)
        assert_error(code, out, err, 2, f"{run_copy / name}: is the run's {name}, a picture of another kind")
    assert snapshot(run_copy) == before
    code, _, err = cli(capsys, "sample", run_copy, "-n", "4", "--out", run_copy / "samples.png")
    assert code == 0, err
    code, _, err = cli(capsys, "reconstruct", run_copy, "--data", "digits", "--out", run_copy / "reconstructions.png")
    assert code == 0, err


def test_a_verb_does_not_write_over_another_runs_files_or_pictures(run, run_copy, capsys):
    """The files and pictures of any run are its own, not only those of the run a verb reads:
    run A's reconstructions over B/latent.png, or its codes over B/bubbles.npz (which would
    break B's next resume), are refused alike; a file of another name in B is written."""
    before = snapshot(run_copy)
    cases = [
        (["reconstruct", "--data", "digits", "--out"], "latent.png"),
        (["sample", "-n", "3", "--out"], "samples.png"),  # A's own picture's name, but in B
        (["encode", "--data", "digits", "--out"], "bubbles.npz"),
        (["score", "--data", "digits", "--k", "2", "--out"], "model.safetensors"),
        (["gaps", "--k", "2", "--steps", "1", "--plot"], "gaps_test.png"),
    ]
    for argv, name in cases:
        code, out, err = cli(capsys, argv[0], run, *argv[1:], run_copy / name)
        assert_error(code, out, err, 2, f"{run_copy / name}: is a file of the run in {run_copy.resolve()}; name another file")
    # A link of another name is no way round: the file written is the link's target.
    link = run_copy.parent / "innocent.png"
    link.symlink_to(run_copy / "latent.png")
    code, out, err = cli(capsys, "sample", run, "-n", "3", "--out", link, "--overwrite")
    assert_error(code, out, err, 2, f"{link}: is a file of the run in {run_copy.resolve()}")
    assert snapshot(run_copy) == before
    code, _, err = cli(capsys, "sample", run, "-n", "3", "--out", run_copy / "from_the_other_run.png")
    assert code == 0 and (run_copy / "from_the_other_run.png").is_file(), err


@pytest.mark.parametrize(
    "argv, option, name",
    [
        (["sample", "-n", "3", "--out"], "--out", "x.npy"),
        (["encode", "--data", "digits", "--out"], "--out", "x.csv"),
        (["reconstruct", "--data", "digits", "--out"], "--out", "x.npz"),
        (["score", "--data", "digits", "--k", "2", "--out"], "--out", "x.npy"),
        (["gaps", "--k", "2", "--steps", "1", "--plot"], "--plot", "x.png"),
        (["gaps", "--k", "2", "--steps", "1", "--bars"], "--bars", "x.png"),
    ],
)
def test_an_output_that_exists_is_replaced_only_with_overwrite(run_copy, tmp_path, capsys, argv, option, name):
    """Every verb that writes a file refuses one that exists (a slip of --out must not replace
    the user's data or another result without a word), with exit 1 as train refuses a run in
    its --out, leaves it as it was, and replaces it with --overwrite."""
    out = tmp_path / name
    out.write_bytes(b"the user's")
    code, stdout, err = cli(capsys, argv[0], run_copy, *argv[1:], out)
    assert_error(code, stdout, err, 1, f"{option} {out}: exists; pass --overwrite to replace it, or name another file")
    assert out.read_bytes() == b"the user's"
    code, _, err = cli(capsys, argv[0], run_copy, *argv[1:], out, "--overwrite")
    assert code == 0 and out.read_bytes() != b"the user's", err


def test_a_verb_redraws_the_runs_own_picture_without_overwrite(run_copy, capsys):
    """The pictures a verb draws of its run by default (or by their own names) are redrawn:
    sample's samples.png, reconstruct's reconstructions.png and gaps' gaps_SPLIT.png, as often
    as the command is run."""
    for _ in range(2):
        assert cli(capsys, "sample", run_copy, "-n", "4", "--out", run_copy / "samples.png")[0] == 0
        assert cli(capsys, "reconstruct", run_copy, "--data", "digits", "--out", run_copy / "reconstructions.png")[0] == 0
        code, _, err = cli(capsys, "gaps", run_copy, "--k", "2", "--steps", "1")
        assert code == 0, err
    assert {"gaps_test.png", "gaps_test_bars.png"} <= {p.name for p in run_copy.iterdir()}
    # Named as they are by default, they are the same pictures.
    code, _, err = cli(capsys, "gaps", run_copy, "--k", "2", "--steps", "1", "--plot", run_copy / "gaps_test.png", "--bars", run_copy / "gaps_test_bars.png")
    assert code == 0, err


def test_an_out_that_cannot_be_created_is_one_line(tmp_path, capsys):
    """--out below a file: the run directory cannot be made; one line naming it, nothing made."""
    parent = tmp_path / "rows.npy"
    parent.write_bytes(b"not a directory")
    code, out, err = cli(capsys, "train", "--data", "digits", "--out", parent / "run", *SMALL)
    assert_error(code, out, err, 1, str(parent / "run"), "cannot create the run directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.npy"]


def test_a_file_system_refusal_while_training_is_one_line(run_copy, monkeypatch, capsys):
    """A full disk (or any OSError of the file system) while a checkpoint is written: one line
    naming the file, exit 1, and the run's files as they were (every write is atomic)."""
    import errno

    from vaekit import files

    def full(path, write):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    before = snapshot(run_copy)
    monkeypatch.setattr(files, "atomic_write", full)
    code, out, err = cli(capsys, "train", "--out", run_copy, "--resume", "--epochs", "5", "--quiet")
    assert_error(code, out, err, 1, str(run_copy), "No space left on device", "intact")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("verb", [["reconstruct"], ["encode"], ["score", "--k", "2"], ["sample", "--source", "aggregate"]])
def test_verbs_refuse_an_out_that_is_their_data_file(verb, run, digits_rows, tmp_path, capsys):
    """--out naming the --data file (as given, or found in --data-dir) would replace the data
    with the verb's output: refused before anything is read, and the file is left as it was."""
    np.save(tmp_path / "d.npy", digits_rows)
    before = (tmp_path / "d.npy").read_bytes()
    for data, extra in ((tmp_path / "d.npy", []), ("d.npy", ["--data-dir", tmp_path])):
        code, out, err = cli(capsys, verb[0], run, "--data", data, "--out", tmp_path / "d.npy", *verb[1:], *extra)
        assert_error(code, out, err, 2, "is a data file this reads")
        assert (tmp_path / "d.npy").read_bytes() == before


def test_verbs_refuse_an_out_that_is_the_runs_training_file(digits_rows, tmp_path, capsys):
    """The file a run was trained on is read by sample --source aggregate/gmm without --data
    (and by the run's later evaluations): no verb writes over it, whatever --data it reads, and it
    is left as it was."""
    np.save(tmp_path / "own.npy", digits_rows)
    np.save(tmp_path / "other.npy", digits_rows[:50])
    code, _, err = cli(capsys, "train", "--data", tmp_path / "own.npy", "--out", tmp_path / "r", "--epochs", "1", "--hidden", "8",
                       "--latent-dim", "2", "--quiet")  # fmt: skip
    assert code == 0, err
    before = (tmp_path / "own.npy").read_bytes()
    verbs = [["reconstruct"], ["encode"], ["score", "--k", "2"], ["sample", "--source", "prior"], ["sample", "--source", "aggregate"],
             ["sample", "--source", "gmm", "--components", "2"]]  # fmt: skip
    for verb in verbs:
        for data in ([], ["--data", tmp_path / "other.npy"]) if verb[0] == "sample" else (["--data", tmp_path / "other.npy"],):
            if verb[1:3] == ["--source", "prior"] and data:
                continue
            code, out, err = cli(capsys, verb[0], tmp_path / "r", "--out", tmp_path / "own.npy", *verb[1:], *data)
            assert_error(code, out, err, 2, "is a data file this reads or the run was trained on")
            assert (tmp_path / "own.npy").read_bytes() == before, verb


def test_evaluate_and_gaps_of_a_model_fitted_in_python_read_every_row_by_default(tmp_path, capsys):
    """A model fitted in Python held no test rows out (test_fraction 0), so the default split of
    a --data table is every row; the test split, asked for, is refused as empty, and a run that
    held rows out keeps test as its default."""
    x = np.random.default_rng(0).standard_normal((120, 5))
    vaekit.VAE(latent_dim=2, hidden=(8,), epochs=1, seed=0).fit(x).save(tmp_path / "py")
    np.savetxt(tmp_path / "new.csv", x[:40], delimiter=",")
    for verb in (["evaluate", "--k", "3"], ["gaps", "--k", "3", "--steps", "2"]):
        code, out, err = cli(capsys, verb[0], tmp_path / "py", "--data", tmp_path / "new.csv", "--json", *verb[1:])
        assert code == 0, err
        assert json.loads(out)["split"] == "all" and json.loads(out)["n"] == 40
        code, out, err = cli(capsys, verb[0], tmp_path / "py", "--data", tmp_path / "new.csv", "--split", "test", *verb[1:])
        assert_error(code, out, err, 1, "has no test rows", "--split all uses every row")
    np.save(tmp_path / "own.npy", x)
    code, _, err = cli(capsys, "train", "--data", tmp_path / "own.npy", "--out", tmp_path / "cli", "--epochs", "1", "--hidden", "8",
                       "--latent-dim", "2", "--quiet")  # fmt: skip
    assert code == 0, err
    code, out, err = cli(capsys, "evaluate", tmp_path / "cli", "--data", tmp_path / "own.npy", "--k", "3", "--json")
    assert code == 0 and json.loads(out)["split"] == "test" and json.loads(out)["n"] == 24, err


def test_a_verb_reading_the_runs_own_file_warns_where_it_changed_since_training(tmp_path, capsys):
    """evaluate and sample --source aggregate without --data read the file the run was trained
    on: unchanged, no warning; with other values in its training rows, one warning line naming
    it (the numbers are still given: the user may have meant it)."""
    x = np.random.default_rng(0).standard_normal((200, 5)) * 3 + 7
    np.save(tmp_path / "g.npy", x)
    code, _, err = cli(capsys, "train", "--data", tmp_path / "g.npy", "--out", tmp_path / "r", "--epochs", "1", "--hidden", "8",
                       "--latent-dim", "2", "--quiet")  # fmt: skip
    assert code == 0, err
    verbs = (["evaluate", "--k", "2"], ["sample", "--source", "aggregate", "--out", tmp_path / "s.npy", "--overwrite"])
    import warnings

    for verb in verbs:
        with warnings.catch_warnings():
            warnings.simplefilter("error", VaekitWarning)
            code, _, err = cli(capsys, verb[0], tmp_path / "r", *verb[1:])
        assert code == 0, err
    x[::7] += 1
    np.save(tmp_path / "g.npy", x)
    for verb in verbs:
        with pytest.warns(VaekitWarning, match=r"g\.npy: its training rows are not those .* \(the data changed since\)") as caught:
            code, _, err = cli(capsys, verb[0], tmp_path / "r", *verb[1:])
        assert code == 0 and len([w for w in caught if issubclass(w.category, VaekitWarning)]) == 1, err


def test_verbs_refuse_an_out_that_is_a_named_datasets_file(run, tmp_path, capsys, monkeypatch):
    """--data binarized_mnist reads binarized_mnist.npz from --data-dir: an --out naming that file is
    refused before anything is read, and the file is left as it was; a dataset of no files (digits)
    names none, and looking for the file never downloads it."""
    from vaekit.registry import DATASETS

    (tmp_path / "binarized_mnist.npz").write_bytes(b"the dataset")
    for verb in (["encode"], ["score", "--k", "2"], ["reconstruct"]):
        code, out, err = cli(capsys, verb[0], run, "--data", "binarized_mnist", "--data-dir", tmp_path, "--out", tmp_path / "binarized_mnist.npz", *verb[1:])
        assert_error(code, out, err, 2, "is a data file this reads")
    assert (tmp_path / "binarized_mnist.npz").read_bytes() == b"the dataset"
    assert DATASETS.get("binarized_mnist").files(str(tmp_path)) == (tmp_path / "binarized_mnist.npz",)
    assert DATASETS.get("digits").files(None) == ()
    monkeypatch.delenv("VAEKIT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    assert DATASETS.get("binarized_mnist").files(str(tmp_path / "nowhere")) == ()


def test_a_refused_rename_names_the_destination(run_copy, capsys):
    """A directory where the weights belong: the message names model.safetensors, not the
    temporary file that could not take its place, and nothing else of the run changes."""
    (run_copy / "model.safetensors").unlink()
    (run_copy / "model.safetensors").mkdir()
    before = snapshot(run_copy)
    code, out, err = cli(capsys, "train", "--out", run_copy, "--resume", "--epochs", "5", "--quiet")
    assert_error(code, out, err, 1, f"{run_copy / 'model.safetensors'}: Is a directory", "intact")
    assert ".tmp" not in err and snapshot(run_copy) == before


# -- 6. logs ------------------------------------------------------------------------------------

EPOCH_LINE = re.compile(
    r"^epoch +(\d+)/(\d+)  (\w+)  train +(-?\d+\.\d{3})  valid +(-?\d+\.\d{3})  kl +(-?\d+\.\d{3})  lr (\d\.\d\de[-+]\d\d) +(\d+\.\d) s +(\d+) img/s$"
)


def test_train_logs_one_line_per_epoch_on_stderr(trained):
    """Not a terminal (a pipe): one line per epoch whose numbers are metrics.jsonl's, then the
    evaluation's progress; no progress bar."""
    run, proc = trained
    lines = proc.stderr.splitlines()
    epochs = [EPOCH_LINE.match(line) for line in lines if line.startswith("epoch")]
    assert all(epochs), lines
    metrics = read_metrics(run)
    assert len(epochs) == len(metrics) == 3
    for m, r in zip(epochs, metrics):
        assert (int(m[1]), int(m[2]), m[3]) == (r["epoch"], 3, r["objective"])
        assert m[4] == f"{r['train_objective']:.3f}" and m[5] == f"{r['valid_score']:.3f}" and m[6] == f"{r['valid_kl']:.3f}"
        assert m[7] == f"{r['lr']:.2e}" and m[8] == f"{r['epoch_seconds']:.1f}" and int(m[9]) == round(r["images_per_second"])
    assert len({len(line) for line in lines if line.startswith("epoch")}) == 1  # aligned
    assert lines[-1].startswith(f"evaluating log p(x) (K=10): {DIGITS_TEST}/{DIGITS_TEST} rows, ")
    assert "\r" not in proc.stderr


@pytest.mark.parametrize("quiet", [False, True], ids=["logged", "quiet"])
def test_quiet_silences_the_logs(quiet, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = cli(capsys, "train", "--data", "digits", "--out", run, *SMALL, "--epochs", "2", *(["--quiet"] if quiet else []))
    assert code == 0 and out.startswith("run: ")
    if quiet:
        assert err == ""
    else:
        assert [bool(EPOCH_LINE.match(line)) for line in err.splitlines()] == [True, True, False]
    # Only what the run reports: it may change on resume.
    code, out, err = cli(capsys, "train", "--out", run, "--resume", "--epochs", "3", "--quiet" if not quiet else "--no-quiet")
    assert code == 0, err
    assert len([line for line in err.splitlines() if EPOCH_LINE.match(line)]) == (1 if quiet else 0)


def test_quiet_and_progress_contradict(tmp_path, capsys):
    code, out, err = cli(capsys, "train", "--data", "digits", "--out", tmp_path / "r", *SMALL, "--quiet", "--progress")
    assert_error(code, out, err, 2, "--quiet", "--progress")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("text, value", [("-1e-3", -1e-3), ("-2.5E+1", -25.0), ("-.5", -0.5), ("-6", -6.0)])
def test_negative_numbers_in_every_form_are_values(text, value):
    """argparse's own pattern of negative numbers has no exponent, so "-1e-3" was read as an
    option; each form is a value of the flag before it."""
    from vaekit.cli import build_parser

    args = build_parser().parse_args(["train", "--logvar-min", text, "--logvar-max", "2", "--lr", "1e-3", "--out", "run"])
    assert (args.logvar_min, args.logvar_max) == (value, 2.0)


def test_negative_infinity_reaches_the_finite_check(tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--epochs", "1", "--logvar-min", "-inf", "--out", tmp_path / "run")
    assert code != 0 and err.count("\n") == 1 and "finite" in err
    assert not (tmp_path / "run").exists()
    # An argument that is no number after a flag that takes none stays an error.
    code, _, err = cli(capsys, "train", "--mmap", "-1e-3", "--out", tmp_path / "run")
    assert code == 2 and err == "vaekit: error: unrecognized arguments: -1e-3 (see 'vaekit train --help')\n"
    # the verb's help lists the options it takes, the top-level one only the verbs
    code, _, err = cli(capsys, "evaluate", tmp_path / "run", "--bogus")
    assert code == 2 and err == "vaekit: error: unrecognized arguments: --bogus (see 'vaekit evaluate --help')\n"


@pytest.mark.parametrize("split", ["valid", "test"])
def test_auto_likelihood_reads_every_split(tmp_path, capsys, split):
    """0/1 rows with one 0.5 in a held-out split: "auto" sees it and chooses the continuous
    Bernoulli, where a choice from the training rows alone (Bernoulli) refused that split."""
    from vaekit.data.splits import split_rows

    rng = np.random.default_rng(0)
    x = (rng.random((200, 5)) > 0.5).astype(np.float32)
    x[split_rows(200, 0.1, 0.2, 0)[split][0], 0] = 0.5
    np.save(tmp_path / "x.npy", x)
    code, _, err = cli(capsys, "train", "--data", tmp_path / "x.npy", "--epochs", "1", "--latent-dim", "2", "--hidden", "8", "--eval-k", "5", "--out", tmp_path / "run")
    assert code == 0, err
    assert vaekit.load(tmp_path / "run").config_.model.likelihood == "continuous_bernoulli"


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["evaluate", "{run}", "--k", "2", "--data-dir", "{files}/absent"], 2, r"--data-dir .*absent: no such directory"),
        (["score", "{run}", "--k", "2", "--data", "digits", "--data-dir", "{files}/ten.csv", "--out", "{tmp}/s.npy"], 2, r"--data-dir .*ten\.csv: not a directory"),
        (["gaps", "{run}", "--k", "2", "--data-dir", ""], 2, r"--data-dir is empty: give a path"),
        (["train", "--data", "digits", "--data-dir", "{files}", "--out", "{tmp}/new", "--epochs", "1"], 2, r"--data-dir .*: digits is built in and reads no files; drop --data-dir"),
        (["score", "{run}", "--data", "swiss_roll", "--data-dir", "{files}", "--out", "{tmp}/s.npy"], 2, r"swiss_roll is built in and reads no files"),
        (["evaluate", "{run}", "--k", "2", "--data-dir", "{files}"], 2, r"--data-dir .*: the run's data, digits, is built in and reads no files; drop --data-dir$"),
        (["sample", "{run}", "-n", "2", "--source", "gmm", "--out", "{tmp}/s.npy", "--data-dir", "{files}"], 2, r"the run's data, digits, is built in"),
        (["train", "--out", "{run}", "--resume", "--epochs", "9", "--data-dir", "{files}"], 2, r"the run's data, digits, is built in"),
        (["train", "--out", "{tmp}/new", "--epochs", "1", "--data-dir", "{files}"], 2, r"digits \(the default --data\) is built in"),
        (["train", "--data", "{files}/ten.csv", "--out", "{tmp}/new", "--epochs", "1", "--data-dir", "{files}"], 2, r"ten\.csv is a file found without it; drop --data-dir"),
        (["encode", "{run}", "--data", "{files}/ten.csv", "--out", "{tmp}/s.npy", "--data-dir", "{tmp}"], 2, r"ten\.csv is a file found without it"),
        (["gaps", "{run}", "--k", "2", "--bars", ""], 2, r"--bars is empty: give a path"),
        (["evaluate", "{run}", "--k", "2", "--data", ""], 2, r"--data is empty: give a path"),
        (["train", "--out", "", "--epochs", "1"], 2, r"--out is empty: give a path"),
        (["evaluate", "", "--k", "2"], 2, r"RUN_DIR is empty: give a path"),
        (["train", "--out", "{tmp}/" + "r" * 300, "--epochs", "1"], 2, r"--out: the name r+… is 300 bytes, more than a file system allows \(255\)"),
        (["encode", "{run}", "--data", "digits", "--out", "{tmp}/" + "e" * 256 + ".npy"], 2, r"--out: the name e+… is 260 bytes"),
        (["encode", "", "--data", "digits", "--out", "{tmp}/e.npy"], 2, r"RUN_DIR is empty: give a path"),
        (["train", "--data", "", "--out", "{tmp}/new", "--epochs", "1"], 2, r"--data is empty: give a path"),
        (["train", "--out", "{tmp}/new", "--epochs", "1", "--data-dir", "{files}/absent"], 2, r"--data-dir .*absent: no such directory"),
        (["sample", "{run}", "-n", "2", "--out", "{tmp}/s.npy", "--data-dir", "{files}"], 2, r"^vaekit: error: --data-dir gives the rows of --source aggregate"),
        (["evaluate", "{files}/ten.csv"], 1, r"ten\.csv: not a run directory \(a file, not a directory\)"),
        (["train", "--out", "{files}/ten.csv", "--resume"], 1, r"nothing to resume \(a file, not a directory\)"),
        (["evaluate", "{run}", "--k", "500001"], 2, r"--k must be <= 500000, got 500001"),
        (["score", "{run}", "--data", "digits", "--k", "10000000", "--out", "{tmp}/s.npy"], 2, r"--k must be <= 500000"),
        (["train", "--out", "{tmp}/new", "--eval-k", "1000000000000"], 2, r"--eval-k must be <= 500000"),
        (["train", "--out", "{tmp}/new", "--objective", "iwae", "--k", "1000000000000"], 2, r"--k must be <= 500000"),
        (["train", "--out", "{tmp}/new", "--refine-steps", "1000000000000"], 2, r"--refine-steps must be <= 100000"),
        (["train", "--out", "{tmp}/new", "--inference", "vi", "--local-steps", "100001"], 2, r"--local-steps must be <= 100000"),
        (["gaps", "{run}", "--steps", "100001"], 2, r"--steps must be <= 100000, got 100001"),
    ],
)
def test_paths_and_sizes_that_cannot_work_are_refused(capsys, run, files, tmp_path, argv, code, message):
    """An empty path, a --data-dir that is no directory (needed or not) or that the data would
    not read (a built-in dataset, the run's own or the default; a file found as named), a file
    named as a run directory, a K no estimate finishes."""
    argv = [a.format(run=run, files=files, tmp=tmp_path) for a in argv]
    got, out, err = cli(capsys, *argv)
    assert (got, out) == (code, "")
    assert len(err.strip().splitlines()) == 1 and re.search(message, err.strip()), err
    assert not (tmp_path / "new").exists() and not (tmp_path / "s.npy").exists()


def test_a_damaged_config_names_line_and_column(run_copy, capsys):
    text = (run_copy / "config.json").read_text()
    (run_copy / "config.json").write_text(text[: len(text) // 2])
    code, _, err = cli(capsys, "evaluate", run_copy, "--k", "2")
    assert code == 1 and re.search(r"config\.json: not valid JSON \([A-Z][^()]*: line \d+ column \d+\)$", err.strip()), err


def test_progress_bars_of_evaluate_and_score_change_nothing_but_stderr(run, tmp_path, capsys):
    plain = cli(capsys, "evaluate", run, "--k", "5", "--json")
    shown = cli(capsys, "evaluate", run, "--k", "5", "--json", "--progress")
    assert plain[0] == shown[0] == 0 and plain[2] == ""
    assert json.loads(shown[1]) | {"seconds": 0} == json.loads(plain[1]) | {"seconds": 0}
    assert re.search(r"evaluating log p\(x\) \(K=5\).*\d+/\d+", shown[2])
    for name, extra in (("a.npy", []), ("b.npy", ["--progress"])):
        code, _, err = cli(capsys, "score", run, "--data", "digits", "--k", "5", "--out", tmp_path / name, *extra)
        assert code == 0, err
    assert "scoring (K=5)" in err
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


def test_resume_on_changed_data_is_refused_in_one_line(tmp_path, capsys):
    """A data file that lost a column, or gained rows, since the run began: the width is named
    before any input map is applied, the row counts against those the checkpoint kept."""
    x = np.random.default_rng(0).normal(size=(100, 6)).astype(np.float32)
    data, run = tmp_path / "x.npy", tmp_path / "run"
    np.save(data, x)
    args = ["--data", data, "--out", run, "--hidden", "8", "--latent-dim", "2", "--eval-k", "2", "--quiet"]
    assert cli(capsys, "train", *args, "--epochs", "1")[0] == 0
    before = (run / "last.safetensors").read_bytes()
    for changed, message in ((x[:, :5], r"has 5 features per row, but the model was trained on 6"),
                             (np.concatenate([x, x[:10]]), r"trained on 70 training and 10 validation rows, and its data now give 77 and 11")):  # fmt: skip
        np.save(data, changed)
        code, out, err = cli(capsys, "train", *args, "--epochs", "2", "--resume")
        assert (code, out) == (1, "") and len(err.strip().splitlines()) == 1 and re.search(message, err), err
        assert (run / "last.safetensors").read_bytes() == before
    from vaekit.data.splits import split_rows

    valid_row = split_rows(100, 0.1, 0.2, 0)["valid"][3]
    for changed, message in ((x + 1, r"the training rows hold other values than when the run began"),
                             (np.where(np.arange(100)[:, None] == valid_row, -x, x), r"the validation rows hold other values")):  # fmt: skip
        np.save(data, changed)
        code, out, err = cli(capsys, "train", *args, "--epochs", "2", "--resume")
        assert (code, out) == (1, "") and len(err.strip().splitlines()) == 1 and re.search(message, err), err
        assert (run / "last.safetensors").read_bytes() == before
    np.save(data, x.astype(np.float64))  # the same values in another dtype are the same data
    assert cli(capsys, "train", *args, "--epochs", "2", "--resume")[0] == 0


def test_a_header_name_with_a_comma_is_written_quoted_and_reads_back(tmp_path, capsys):
    rows = np.random.default_rng(0).normal(size=(40, 3))
    body = "\n".join(",".join(f"{v:.6f}" for v in r) for r in rows)
    (tmp_path / "h.csv").write_text('"x,1",b,"c ""q"""\n' + body + "\n")
    run = tmp_path / "run"
    assert cli(capsys, "train", "--data", tmp_path / "h.csv", "--out", run, "--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--eval-k", "2", "--quiet")[0] == 0
    for verb, extra in (("sample", ["-n", "3"]), ("reconstruct", ["--data", tmp_path / "h.csv"])):
        code, _, err = cli(capsys, verb, run, *extra, "--out", tmp_path / f"{verb}.csv")
        assert code == 0, err
        assert (tmp_path / f"{verb}.csv").read_text().splitlines()[0] == '"x,1",b,"c ""q"""'
        code, _, err = cli(capsys, "score", run, "--data", tmp_path / f"{verb}.csv", "--k", "2", "--out", tmp_path / f"{verb}.npy")
        assert code == 0, err


def test_an_output_directory_that_refuses_writes_is_found_before_the_work(run, tmp_path, capsys, monkeypatch):
    """The probe that check_out writes beside OUT fails as a read-only directory makes it (root
    ignores the mode bits, so the refusal is simulated); the verb stops before scoring."""
    import tempfile

    import vaekit.evaluate

    real = tempfile.NamedTemporaryFile

    def refused(*args, **kwargs):
        if str(kwargs.get("suffix", "")) == ".probe":
            raise PermissionError(13, "Permission denied")
        return real(*args, **kwargs)

    def never(*args, **kwargs):
        raise AssertionError("scored before the output was checked")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refused)
    monkeypatch.setattr(vaekit.evaluate, "log_px_per_point", never)
    code, out, err = cli(capsys, "score", run, "--data", "digits", "--k", "2", "--out", tmp_path / "s.npy")
    assert (code, out) == (1, "") and re.search(r"--out .*s\.npy: cannot write in .* \(Permission denied\)$", err.strip()), err
    assert list(tmp_path.iterdir()) == []


def test_a_killed_writers_temporary_beside_out_is_swept_by_the_next_write(run, tmp_path, capsys):
    """A verb killed between write and rename leaves .NAME.<pid><random>.tmp beside --out; the
    next write of that file deletes it once its writer has ended, never one still writing."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead = tmp_path / f".s.npy.{int(ended.stdout):08x}beef.tmp"
    live = tmp_path / f".s.npy.{os.getpid():08x}cafe.tmp"  # this process: still running
    other = tmp_path / f".t.npy.{int(ended.stdout):08x}beef.tmp"  # another output's
    for p in (dead, live, other):
        p.write_bytes(b"half")
    code, _, err = cli(capsys, "score", run, "--data", "digits", "--k", "2", "--out", tmp_path / "s.npy")
    assert code == 0, err
    assert not dead.exists() and live.exists() and other.exists()
    assert (tmp_path / "s.npy").is_file()


def test_one_row_is_one_row_in_every_report(run, digits_rows, tmp_path, capsys):
    """The verbs' summaries count a single row in the singular."""
    np.save(tmp_path / "one.npy", digits_rows[:1])
    for verb, out in (("encode", "e.npy"), ("reconstruct", "r.npy"), ("score", "s.npy")):
        code, text, err = cli(capsys, verb, run, "--data", tmp_path / "one.npy", "--k", "2", "--out", tmp_path / out) if verb == "score" else cli(
            capsys, verb, run, "--data", tmp_path / "one.npy", "--out", tmp_path / out
        )
        assert code == 0, err
        assert " of 1 row to " in text, text
    code, text, err = cli(capsys, "evaluate", run, "--data", tmp_path / "one.npy", "--split", "all", "--k", "2")
    assert code == 0 and "(1 row): ELBO" in text, (text, err)


@pytest.mark.parametrize(
    "loss,prior,why",
    [(["--inference", "autoencoder"], ["--prior", "mixture", "--components", "2"], "objective reconstruction"),
     (["--objective", "reconstruction"], ["--prior", "vampprior", "--pseudo-inputs", "3"], "objective reconstruction"),
     (["--beta", "0"], ["--prior", "mixture"], "--beta 0")],
)  # fmt: skip
def test_a_learned_prior_that_the_loss_never_reaches_is_refused(tmp_path, capsys, loss, prior, why):
    """Without the KL term in the loss the prior's parameters would keep their random start,
    and be evaluated and sampled so: refused in one line, and no run directory is left."""
    code, out, err = cli(capsys, "train", "--out", tmp_path / "run", *SMALL, *loss, *prior)
    assert_error(code, out, err, 2, why, "prior's parameters would never be trained")
    assert not (tmp_path / "run").exists()
    # The standard normal prior has nothing to train: the same loss runs.
    code, out, err = cli(capsys, "train", "--out", tmp_path / "ok", *SMALL, "--quiet", *loss)
    assert code == 0, err


def test_arrays_per_row_for_a_model_of_table_rows_are_refused(tmp_path, capsys):
    """A (n, 2, 2) array flattens to rows of the right width in an order nothing checks: refused
    for a model trained on table rows, as the Python API refuses it; (n, 4, 1) is rows already."""
    rng = np.random.default_rng(0)
    np.savetxt(tmp_path / "t.csv", rng.normal(size=(120, 4)), delimiter=",")
    code, _, err = cli(capsys, "train", "--data", tmp_path / "t.csv", "--out", tmp_path / "run", *SMALL, "--quiet")
    assert code == 0, err
    np.save(tmp_path / "cube.npy", rng.normal(size=(5, 2, 2)))
    np.save(tmp_path / "column.npy", rng.normal(size=(5, 4, 1)))
    for verb in (["score", "--out", tmp_path / "s.npy"], ["encode", "--out", tmp_path / "e.npy"], ["evaluate", "--k", "2"]):
        code, out, err = cli(capsys, verb[0], tmp_path / "run", "--data", tmp_path / "cube.npy", "--split", "all", *verb[1:])
        assert_error(code, out, err, 1, "cube.npy holds arrays of shape (2, 2) per row", "trained on table rows")
    code, _, err = cli(capsys, "score", tmp_path / "run", "--data", tmp_path / "column.npy", "--split", "all", "--out", tmp_path / "s.npy")
    assert code == 0, err
    assert np.load(tmp_path / "s.npy").shape == (5,)


def test_a_pipe_or_a_link_to_one_at_out_is_refused_and_kept(run, tmp_path, capsys):
    """Outputs are renamed into place: a FIFO (or a device behind a link) would be replaced by a
    regular file, so it is refused before anything is written, and stays what it was."""
    fifo = tmp_path / "f.npy"
    os.mkfifo(fifo)
    (tmp_path / "link.npy").symlink_to(fifo)
    for out in (fifo, tmp_path / "link.npy"):
        code, stdout, err = cli(capsys, "sample", run, "-n", "3", "--out", out)
        assert_error(code, stdout, err, 2, "is not a regular file")
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npy", "link.npy"]


def test_a_closed_stdout_a_vanished_directory_and_a_line_break_are_one_line(run, tmp_path):
    """Started with stdout closed, a verb's result would be lost with exit 0; run from a
    directory that was deleted, torch's import fails obscurely; a path holding a line break
    would split the message. Each is one line and a non-zero exit."""
    vaekit = f"{shlex.quote(sys.executable)} -m vaekit"
    closed = subprocess.run(["bash", "-c", f"{vaekit} evaluate {shlex.quote(str(run))} --k 2 >&-"], capture_output=True, text=True, timeout=300)
    assert_error(closed.returncode, "", closed.stderr, 2, "standard output is closed")
    gone = tmp_path / "gone"
    gone.mkdir()
    script = f"cd {shlex.quote(str(gone))} && rmdir {shlex.quote(str(gone))} && {vaekit} evaluate {shlex.quote(str(run))} --k 2"
    vanished = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300)
    assert_error(vanished.returncode, vanished.stdout, vanished.stderr, 1, "the current directory no longer exists")
    broken = vaekit_process("sample", run, "-n", "2", "--out", tmp_path / "no\nsuch" / "x.npy")
    assert_error(broken.returncode, broken.stdout, broken.stderr, 1, "no\\nsuch")


def test_a_closed_stderr_loses_the_log_not_the_run(tmp_path):
    """The epoch lines go to stderr; closed (2>&-) or full (2>/dev/full), training still ends
    with a whole run directory and exit 0."""
    vaekit = f"{shlex.quote(sys.executable)} -m vaekit"
    for redirect, name in (("2>&-", "closed"), ("2>/dev/full", "full")):
        out = tmp_path / name
        cmd = f"{vaekit} train --data digits --epochs 2 --eval-k 2 --hidden 8 --latent-dim 2 --out {shlex.quote(str(out))} >/dev/null {redirect}"
        proc = subprocess.run(["bash", "-c", cmd], timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert proc.returncode == 0, name
        assert {"config.json", "model.safetensors", "metrics.jsonl"} <= {p.name for p in out.iterdir()}


def test_main_restores_the_callers_warning_format(monkeypatch, capsys):
    """main() writes vaekit's warnings as one line while it runs, and gives back the format the
    caller had set (not Python's default) when it returns, whatever it returns."""
    import warnings

    from vaekit.cli import main as cli_main

    def mine(message, category, filename, lineno, line=None):
        return f"mine: {message}\n"

    monkeypatch.setattr(warnings, "formatwarning", mine)
    with pytest.raises(SystemExit):
        cli_main(["--no-such-flag"])
    assert warnings.formatwarning is mine
    assert cli_main(["sample", "no-such-run", "--out", "x.npy"]) != 0
    assert warnings.formatwarning is mine


def test_train_shows_each_data_warning_once(tmp_path, capsys):
    """The data are read to build the config and again to train: their warnings come once."""
    x = np.random.default_rng(0).random((40, 3)).astype(np.float32)
    np.savez(tmp_path / "t.npz", x=x, y=np.array(["a", "b"] * 20))
    with pytest.warns(VaekitWarning) as caught:
        code, _, err = cli(capsys, "train", "--data", tmp_path / "t.npz", "--out", tmp_path / "r", *SMALL, "--quiet")
    assert code == 0, err
    assert len([w for w in caught if "no integer class labels" in str(w.message)]) == 1


def test_images_of_another_size_for_a_table_model_are_named_by_their_width(tmp_path, capsys):
    """Flattening cannot mend 16 values a row for a model of 5 features: that comes first."""
    np.save(tmp_path / "t5.npy", np.random.default_rng(0).random((40, 5)).astype(np.float32))
    np.save(tmp_path / "img.npy", np.random.default_rng(1).random((10, 4, 4)).astype(np.float32))
    code, _, err = cli(capsys, "train", "--data", tmp_path / "t5.npy", "--out", tmp_path / "r", *SMALL, "--quiet")
    assert code == 0, err
    code, out, err = cli(capsys, "encode", tmp_path / "r", "--data", tmp_path / "img.npy", "--out", tmp_path / "z.npy")
    assert_error(code, out, err, 1, "img.npy holds arrays of shape (4, 4) per row (16 values), but the model was trained on table rows of 5 features")


def test_sample_refuses_a_picture_of_more_samples_than_it_can_show(run, tmp_path, capsys):
    code, out, err = cli(capsys, "sample", run, "-n", "10001", "--out", tmp_path / "s.png")
    assert_error(code, out, err, 2, "-n 10001: a .png shows at most 10000 samples (a 100x100 grid); write .npy, .npz or .csv for more")
    assert not (tmp_path / "s.png").exists()


def test_resume_without_its_checkpoint_after_epochs_says_it_was_removed(run_copy, capsys):
    (run_copy / "last.safetensors").unlink()
    done = len(read_metrics(run_copy))
    code, out, err = cli(capsys, "train", "--out", run_copy, "--resume")
    assert_error(code, out, err, 1, f"nothing to resume (no last.safetensors: it was removed after {done} epochs; the best model stays usable)")


def test_report_numbers_switch_to_scientific_notation_when_huge():
    """The text reports print nats with 3 decimals, and a value far off any model's scale (a
    row at 3e19 scores about -9e35) in scientific notation, not as 37 digits."""
    from vaekit.cli import _nats

    assert _nats(-87.1149) == "-87.115" and _nats(3.21519, 4) == "3.2152" and _nats(-999999999.0) == "-999999999.000"
    assert _nats(-9.17539321836734958e35) == "-9.17539e+35" and _nats(1.448e37, 4) == "1.448e+37"
    assert (_nats(float("-inf")), _nats(float("nan"))) == ("-inf", "nan")


@pytest.mark.parametrize("spelling", ["dotdot", "link"])
def test_verbs_refuse_an_out_that_is_their_data_file_under_another_name(spelling, run, digits_rows, tmp_path, capsys):
    """--out that names the --data file by another path (through "sub/..", or a link to it) is
    the same file: refused, and the data are left as they were."""
    np.save(tmp_path / "d.npy", digits_rows)
    before = (tmp_path / "d.npy").read_bytes()
    (tmp_path / "sub").mkdir()
    if spelling == "dotdot":
        out = tmp_path / "sub" / ".." / "d.npy"
    else:
        out = tmp_path / "sub" / "link.npy"
        out.symlink_to(tmp_path / "d.npy")
    code, stdout, err = cli(capsys, "encode", run, "--data", tmp_path / "d.npy", "--out", out)
    assert_error(code, stdout, err, 2, "is a data file this reads")
    assert (tmp_path / "d.npy").read_bytes() == before


@pytest.mark.parametrize("writer", ["array", "blocks"])
@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_an_output_is_replaced_whole_and_a_reader_of_the_old_one_keeps_it(writer, suffix, tmp_path):
    """The new file is written beside OUT and renamed over it: a reader that opened the old
    file reads the old bytes to the end (a write into the file itself would truncate them
    under it, and a failure halfway would leave neither file)."""
    out = tmp_path / f"x{suffix}"
    old, new = np.zeros((50, 3), np.float32), np.ones((40, 3), np.float32)
    write_array(out, old)
    before = out.read_bytes()
    with open(out, "rb") as reader:
        if writer == "array":
            write_array(out, new)
        else:
            write_blocks(out, iter([new[:20], new[20:]]), new.shape)
        assert reader.read() == before
    assert out.read_bytes() != before
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary left beside it
    assert os.stat(out).st_size > 0


def test_progress_and_quiet_contradict_each_other_on_a_new_run_and_on_resume(tmp_path, capsys):
    """--quiet silences the bars too, so a new run refuses both; a resumed run keeps its
    --quiet, so --progress alone is refused there, and --no-quiet --progress shows the bars."""
    run = tmp_path / "run"
    code, out, err = cli(capsys, "train", "--data", "digits", "--out", run, *SMALL, "--latent-dim", "2", "--quiet", "--progress")
    assert_error(code, out, err, 2, "--quiet and --progress contradict each other")
    assert not run.exists()
    code, _, err = cli(capsys, "train", "--data", "digits", "--out", run, *SMALL, "--latent-dim", "2", "--quiet")
    assert code == 0 and err == ""
    before = (run / "last.safetensors").read_bytes()
    code, out, err = cli(capsys, "train", "--out", run, "--resume", "--epochs", "2", "--progress")
    assert_error(code, out, err, 2, f"--progress: the run in {run} was trained with --quiet, which --resume keeps; add --no-quiet")
    assert (run / "last.safetensors").read_bytes() == before
    code, _, err = cli(capsys, "train", "--out", run, "--resume", "--epochs", "2", "--no-quiet", "--progress")
    assert code == 0, err
    assert "it/s" in err or "%|" in err  # tqdm's bars, not epoch lines
