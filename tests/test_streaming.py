"""Datasets larger than memory: ``--mmap`` streams a .npy file's rows instead of loading it.

The proof is a subprocess that caps its own data segment (RLIMIT_DATA: heap and anonymous
memory, not file-backed pages) below the size of the file, then trains. Without --mmap the
same command cannot even load the file; with it, training, checking and evaluation stay
within the cap.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from vaekit.data import MappedRows, containers, fingerprint
from vaekit.data.readers import open_mapped

resource = pytest.importorskip("resource")

ROWS, DIM = 1_300_000, 784  # 1.02 GB as uint8 (4.1 GB once read as float32)
# The cap above what the imports take (~235 MB): room for the transient tensors of a batch,
# an evaluation block and the allocator's arenas, and in all well below the file's size.
HEADROOM_MB = 400

RUNNER = textwrap.dedent(
    f"""
    import re, resource, sys
    import matplotlib, numpy, torch, vaekit.cli, vaekit.data, vaekit.plots, vaekit.train  # imports come first
    data_kb = int(re.search(r"VmData:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
    cap = (data_kb + {HEADROOM_MB} * 1000) * 1024
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    print("CAP", cap, file=sys.stderr)
    sys.exit(vaekit.cli.main(sys.argv[1:]))
    """
)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    import shutil

    folder = tmp_path_factory.mktemp("big")
    if shutil.disk_usage(folder).free < 3 * ROWS * DIM:
        pytest.skip(f"needs {3 * ROWS * DIM / 1e9:.1f} GB free on the temporary disk for the 1 GB test file")
    path = folder / "big.npy"
    a = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(ROWS, DIM))
    rng = np.random.default_rng(0)
    for start in range(0, ROWS, 50_000):
        block = rng.random((min(50_000, ROWS - start), DIM)) < 0.13
        a[start : start + len(block)] = block
    a.flush()
    del a
    return path


def _cap(stderr: str) -> int:
    import re

    return int(re.search(r"CAP (\d+)", stderr).group(1))


def _train(path, out, *extra):
    args = ["train", "--data", str(path), "--out", str(out), "--epochs", "1", "--batch-size", "1024",
            "--valid-fraction", "0.02", "--test-fraction", "0.02",
            "--hidden", "16", "--latent-dim", "2", "--likelihood", "bernoulli", "--eval-k", "2", "--json", *extra]
    return subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and RLIMIT_DATA semantics of Linux")
def test_mmap_trains_on_a_file_larger_than_the_memory_cap(big_file, tmp_path):
    proc = _train(big_file, tmp_path / "run", "--mmap")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert big_file.stat().st_size > _cap(proc.stderr)  # the whole file could not fit under the cap
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["test"]["n"] == round(ROWS * 0.02)
    # Pixels are Bernoulli(0.13) and independent: a fitted model cannot beat their entropy,
    # 784·H(0.13) = 784 × 0.3874 nats = 303.7 nats, and one epoch gets close to it.
    entropy = -DIM * (0.13 * np.log(0.13) + 0.87 * np.log(0.87))
    assert -summary["test"]["elbo"] == pytest.approx(entropy, rel=0.02)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and RLIMIT_DATA semantics of Linux")
def test_the_same_run_without_mmap_exceeds_the_cap(big_file, tmp_path):
    proc = _train(big_file, tmp_path / "run")
    assert proc.returncode != 0
    assert "MemoryError" in proc.stderr or "Unable to allocate" in proc.stderr or "memory" in proc.stderr.lower()


def test_mapped_rows_read_the_rows_asked_for(tmp_path):
    from vaekit.config import DataConfig
    from vaekit.data import MappedRows, check_data, load_dataset

    x = np.random.default_rng(1).random((50, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ds = load_dataset(DataConfig(source=str(tmp_path / "x.npy"), mmap=True, valid_fraction=0.2, test_fraction=0.2))
    assert all(isinstance(getattr(ds, s), MappedRows) for s in ("train", "valid", "test"))
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (30, 10, 10)
    # The same rows as the in-memory loader puts in each split.
    eager = load_dataset(DataConfig(source=str(tmp_path / "x.npy"), valid_fraction=0.2, test_fraction=0.2))
    for split in ("train", "valid", "test", "all"):  # and in the same order
        np.testing.assert_array_equal(ds.split(split)[:], eager.split(split))
    np.testing.assert_array_equal(ds.train.rows(np.array([4, 0, 4])), eager.train[[4, 0, 4]])
    assert sum(len(c) for c in ds.split("all").chunks(7)) == 50
    assert check_data(ds.train, what="x") is ds.train


def test_fortran_order_images_are_refused_for_mmap_and_read_in_memory(tmp_path):
    """Flattening a Fortran-order (n, H, W) map copies the whole file: refused, with the fix;
    a Fortran-order table streams (its rows are views), and in memory both read as C order."""
    from vaekit.config import DataConfig
    from vaekit.data import load_dataset
    from vaekit.errors import DataError

    images = np.random.default_rng(0).random((20, 4, 4)).astype(np.float32)
    np.save(tmp_path / "f.npy", np.asfortranarray(images))
    with pytest.raises(DataError, match=r"Fortran order.*numpy\.ascontiguousarray.*or drop --mmap"):
        load_dataset(DataConfig(source=str(tmp_path / "f.npy"), mmap=True))
    whole = load_dataset(DataConfig(source=str(tmp_path / "f.npy"), test_fraction=0.0, valid_fraction=0.0))
    np.testing.assert_array_equal(whole.split("all"), images.reshape(20, -1))
    np.save(tmp_path / "t.npy", np.asfortranarray(images.reshape(20, -1)))
    table = load_dataset(DataConfig(source=str(tmp_path / "t.npy"), mmap=True, test_fraction=0.0, valid_fraction=0.0))
    np.testing.assert_array_equal(np.asarray(table.split("all")[:]), images.reshape(20, -1))


def test_mapped_rows_are_checked_block_by_block(tmp_path, monkeypatch):
    import vaekit.data as data
    from vaekit.config import DataConfig
    from vaekit.errors import ConfigError, DataError

    x = np.zeros((40, 3), dtype=np.float32)
    x[37, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    monkeypatch.setattr(data.containers, "CHUNK_ROWS", 8)  # read where it is defined
    with pytest.raises(DataError, match=r"NaN \(first at row 38, column 2\)"):
        data.load_dataset(DataConfig(source=str(tmp_path / "x.npy"), mmap=True, valid_fraction=0.0, test_fraction=0.0))
    # Split and shuffled, the row is still named by its number in the file.
    with pytest.raises(DataError, match=r"split\) contains NaN \(first at row 38, column 2\)"):
        data.load_dataset(DataConfig(source=str(tmp_path / "x.npy"), mmap=True, valid_fraction=0.3, test_fraction=0.3))
    big = np.zeros((40, 3))
    big[21, 2] = 1e300  # the input map's variance would overflow: named as the value stored
    np.save(tmp_path / "big.npy", big)
    with pytest.raises(DataError, match=r"beyond ±1e\+150, where float64 arithmetic overflows \(first at row 22, column 3: 1e\+300\)"):
        data.load_dataset(DataConfig(source=str(tmp_path / "big.npy"), mmap=True, valid_fraction=0.0, test_fraction=0.0))
    np.savetxt(tmp_path / "x.csv", np.zeros((5, 2)))
    with pytest.raises(ConfigError, match=r"mmap streams a \.npy file; .*x\.csv is a \.csv"):  # a usage error
        data.load_dataset(DataConfig(source=str(tmp_path / "x.csv"), mmap=True))


@pytest.mark.parametrize("inference", ["amortized", "autoencoder", "vi", "map"])
def test_streamed_training_equals_in_memory_training(tmp_path, inference):
    """The same rows reach the same steps whether they come from a memory-mapped file or an
    array, for every inference method (their validation needs differ: a tensor of the first
    rows for methods without an encoder or without an ELBO objective, the mapped split else)."""
    import torch

    from vaekit.config import DataConfig, ModelConfig, TrainConfig
    from vaekit.data import MappedRows, load_dataset
    from vaekit.model import VAEModel
    from vaekit.train import fit

    x = (np.random.default_rng(2).random((300, 6)) < 0.4).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ds = load_dataset(DataConfig(source=str(tmp_path / "x.npy"), mmap=True, valid_fraction=0.2, test_fraction=0.0))
    assert isinstance(ds.train, MappedRows) and isinstance(ds.valid, MappedRows)
    histories = []
    for train, valid in ((ds.train, ds.valid), (ds.train[:], ds.valid[:])):
        torch.manual_seed(0)
        n_points = len(train) if inference in ("vi", "map") else 0
        model = VAEModel(ModelConfig(input_dim=6, latent_dim=2, hidden=(8,), likelihood="bernoulli", inference=inference, n_points=n_points, local_steps=3))
        history = fit(model, train, valid, TrainConfig(epochs=2, batch_size=32))
        histories.append([{k: v for k, v in r.items() if not k.endswith(("_seconds", "_per_second"))} for r in history])
    assert histories[0] == histories[1]
    assert all(np.isfinite(r["valid_score"]) for r in histories[0])


def test_cli_run_with_mmap_equals_the_in_memory_run(tmp_path, capsys):
    """`vaekit train --mmap` and the same command without it: the same validation values every
    epoch, the same best epoch and test numbers, and encode of the test split row for row."""
    from vaekit.cli import main

    x = (np.random.default_rng(3).random((400, 10)) < 0.3).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    summaries, histories = [], []
    for name, extra in (("mem", []), ("mmap", ["--mmap"])):
        args = ["train", "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / name), "--epochs", "3",
                "--hidden", "8", "--latent-dim", "2", "--eval-k", "5", "--json", *extra]  # fmt: skip
        assert main(args) == 0
        summary = json.loads(capsys.readouterr().out)
        summary.pop("run_dir")
        summaries.append(summary)
        lines = [json.loads(s) for s in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        histories.append([{k: v for k, v in r.items() if not k.endswith(("_seconds", "_per_second"))} for r in lines])
        data = ["--data", str(tmp_path / "x.npy"), "--split", "test", *extra]
        assert main(["encode", str(tmp_path / name), *data, "--out", str(tmp_path / f"{name}.npy")]) == 0
        capsys.readouterr()
    assert histories[0] == histories[1] and summaries[0] == summaries[1]
    np.testing.assert_array_equal(np.load(tmp_path / "mem.npy"), np.load(tmp_path / "mmap.npy"))
    # A run trained with --mmap read in memory (--no-mmap): the same rows, the same numbers.
    assert main(["encode", str(tmp_path / "mmap"), "--data", str(tmp_path / "x.npy"), "--split", "test", "--no-mmap",
                 "--out", str(tmp_path / "in_memory.npy")]) == 0  # fmt: skip
    np.testing.assert_array_equal(np.load(tmp_path / "in_memory.npy"), np.load(tmp_path / "mmap.npy"))


# -- the likelihood ``auto`` chooses, on rows that stay mapped -----------------------------------


@pytest.mark.parametrize(
    "values, likelihood",
    [
        (lambda rng: (rng.random((120, 6)) < 0.3).astype(np.uint8), "bernoulli"),
        (lambda rng: rng.random((120, 6)).astype(np.float32), "continuous_bernoulli"),
        (lambda rng: rng.normal(size=(120, 6)), "gaussian"),
    ],
    ids=["0/1", "[0, 1]", "real"],
)
def test_mmap_train_with_auto_likelihood(tmp_path, capsys, values, likelihood):
    """``vaekit train --mmap`` with the default ``--likelihood auto`` chooses from the mapped
    rows, as it does from an array (0/1 -> Bernoulli, [0, 1] -> continuous Bernoulli, else
    Gaussian), and trains; it used to end in a traceback (np.isin on MappedRows)."""
    from vaekit.cli import main

    np.save(tmp_path / "x.npy", values(np.random.default_rng(0)))
    code = main(["train", "--data", str(tmp_path / "x.npy"), "--mmap", "--out", str(tmp_path / "run"),
                 "--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--eval-k", "2"])  # fmt: skip
    assert code == 0, capsys.readouterr().err[-2000:]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["likelihood"] == likelihood
    assert config["data"]["mmap"] is True


def test_estimator_fits_mapped_rows_with_auto_likelihood(tmp_path):
    from vaekit.data import load_array
    from vaekit.estimator import VAE

    x = (np.random.default_rng(3).random((90, 5)) < 0.5).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    mapped, _, _ = load_array(str(tmp_path / "x.npy"), mmap=True)
    vae = VAE(latent_dim=2, hidden=(8,), epochs=1).fit(mapped)
    assert vae.config_.model.likelihood == "bernoulli"
    np.save(tmp_path / "g.npy", x * 2.5 - 1.0)
    mapped, _, _ = load_array(str(tmp_path / "g.npy"), mmap=True)
    assert VAE(latent_dim=2, hidden=(8,), epochs=1).fit(mapped).config_.model.likelihood == "gaussian"


@pytest.mark.parametrize("given_valid", [False, True], ids=["held out", "X_valid"])
def test_estimator_fit_on_mapped_rows_equals_the_fit_in_memory(tmp_path, monkeypatch, given_valid):
    """fit streams mapped rows and trains the model it trains on the same rows in memory:
    float64 values keep their precision until the input map (1e5 ± 1e-3 would round
    to steps of 0.008 in float32), and the rows are never read whole."""
    import vaekit.data.containers as containers
    from vaekit.data import MappedRows, load_array
    from vaekit.estimator import VAE

    rng = np.random.default_rng(5)
    x = 1e5 + 1e-3 * rng.standard_normal((120, 3))
    np.save(tmp_path / "x.npy", x)
    valid = {"X_valid": 1e5 + 1e-3 * rng.standard_normal((30, 3))} if given_valid else {}
    mapped, _, _ = load_array(str(tmp_path / "x.npy"), mmap=True)
    largest = []
    rows = MappedRows.rows
    monkeypatch.setattr(MappedRows, "rows", lambda self, positions: largest.append(len(positions)) or rows(self, positions))
    monkeypatch.setattr(containers, "CHUNK_ROWS", 16)
    streamed = VAE(latent_dim=2, hidden=(8,), epochs=2, batch_size=16).fit(mapped, **valid)
    assert largest and max(largest) <= 32  # batches and blocks (of 16 rows, validation's of 32), never a whole split
    monkeypatch.undo()
    in_memory = VAE(latent_dim=2, hidden=(8,), epochs=2, batch_size=16).fit(x, **valid)
    assert streamed.config_.model.standardize == "on"
    # Equal up to the order of float64 sums: the blocks add up in another order than one array.
    for name in ("input_shift", "input_scale"):
        np.testing.assert_allclose(getattr(streamed.config_.model, name), getattr(in_memory.config_.model, name), rtol=1e-7)
    np.testing.assert_allclose([h["valid_elbo"] for h in streamed.history_], [h["valid_elbo"] for h in in_memory.history_], rtol=1e-5)
    np.testing.assert_allclose(streamed.transform(x), in_memory.transform(x), atol=1e-5)


def test_estimator_checks_mapped_rows_against_the_likelihood_beside_x_valid(tmp_path):
    from vaekit.data import load_array
    from vaekit.errors import DataError
    from vaekit.estimator import VAE

    rng = np.random.default_rng(6)
    x = (rng.random((60, 4)) < 0.5).astype(np.float32)
    x[7, 2] = 0.5
    np.save(tmp_path / "x.npy", x)
    mapped, _, _ = load_array(str(tmp_path / "x.npy"), mmap=True)
    valid = (rng.random((20, 4)) < 0.5).astype(np.float32)
    with pytest.raises(DataError, match=r"X has values outside the support of the bernoulli likelihood.*e\.g\. 0\.5"):
        VAE(latent_dim=2, hidden=(8,), epochs=1, likelihood="bernoulli").fit(mapped, X_valid=valid)
    np.save(tmp_path / "v.npy", valid * 0.5)
    mapped_valid, _, _ = load_array(str(tmp_path / "v.npy"), mmap=True)
    with pytest.raises(DataError, match=r"X_valid has values outside the support of the bernoulli"):
        VAE(latent_dim=2, hidden=(8,), epochs=1, likelihood="bernoulli").fit(np.round(x), X_valid=mapped_valid)


def test_a_refit_on_mapped_rows_forgets_the_column_names_of_a_dataframe(tmp_path):
    """As scikit-learn's fit does for an array after a DataFrame: the new rows have no column
    names, so none are recorded (the old ones, of another width, would not fit them)."""
    import pandas as pd

    from vaekit.data import load_array
    from vaekit.estimator import VAE

    rng = np.random.default_rng(4)
    vae = VAE(latent_dim=2, hidden=(4,), epochs=1).fit(pd.DataFrame(rng.random((30, 3)), columns=list("abc")))
    assert list(vae.feature_names_in_) == ["a", "b", "c"] and vae.config_.data.feature_names == ("a", "b", "c")
    np.save(tmp_path / "m.npy", rng.random((40, 5)))
    mapped, _, _ = load_array(str(tmp_path / "m.npy"), mmap=True)
    vae.fit(mapped)
    assert not hasattr(vae, "feature_names_in_") and vae.config_.data.feature_names is None and vae.n_features_in_ == 5


@pytest.mark.parametrize(
    "values",
    [lambda rng: (rng.random((50, 3)) < 0.5).astype(np.uint8), lambda rng: rng.normal(size=(50, 3))],
    ids=["0/1 uint8", "normal float64"],
)
def test_summary_of_mapped_rows_is_read_block_by_block(tmp_path, monkeypatch, values):
    """The summary ``choose`` reads is numpy's over the whole split, computed from blocks of
    at most CHUNK_ROWS rows, for each split (the permuted train split included)."""
    import vaekit.data as data
    from vaekit.config import DataConfig
    from vaekit.data import MappedRows, summarize

    np.save(tmp_path / "x.npy", values(np.random.default_rng(4)))
    ds = data.load_dataset(DataConfig(source=str(tmp_path / "x.npy"), mmap=True, valid_fraction=0.2, test_fraction=0.0))
    read_sizes = []
    rows = MappedRows.rows

    def counted(self, positions):
        read_sizes.append(len(np.asarray(positions)))
        return rows(self, positions)

    monkeypatch.setattr(data.containers, "CHUNK_ROWS", 8)  # read where it is defined
    monkeypatch.setattr(MappedRows, "rows", counted)
    for split in ("train", "valid", "all"):
        read_sizes.clear()
        s = summarize(ds.split(split))
        assert read_sizes and max(read_sizes) <= 8
        whole = ds.split(split).exact()[:]  # as the rows in memory hold them (float64 for float64 data)
        assert (s.binary, s.min, s.max) == (bool(np.isin(whole, (0, 1)).all()), whole.min(), whole.max())
    assert summarize(np.zeros((0, 3))) == data.ValueSummary(binary=True, min=np.inf, max=-np.inf)


@pytest.mark.parametrize("top", [1.0 + 2**-52, 1.0], ids=["just past 1", "1"])
def test_streaming_chooses_the_likelihood_that_the_rows_in_memory_get(tmp_path, top):
    """float64 values a rounding past 1 are outside [0, 1] in memory, and so when streamed
    (float32 would read them as 1 and choose the continuous Bernoulli)."""
    from vaekit.config import DataConfig
    from vaekit.data import load_dataset
    from vaekit.likelihoods import choose

    x = np.random.default_rng(7).random((40, 3))
    x[3, 1] = top
    np.save(tmp_path / "x.npy", x)
    chosen = []
    for mmap in (False, True):
        ds = load_dataset(DataConfig(source=str(tmp_path / "x.npy"), mmap=mmap, valid_fraction=0.2, test_fraction=0.2))
        chosen.append(choose(tuple(ds.split(s) for s in ("train", "valid", "test"))))
    assert chosen == (["gaussian"] * 2 if top > 1 else ["continuous_bernoulli"] * 2)


def test_choose_reads_only_the_split_it_is_given(tmp_path):
    from vaekit.config import DataConfig
    from vaekit.data import load_dataset
    from vaekit.likelihoods import choose

    x = (np.random.default_rng(5).random((50, 3)) < 0.5).astype(np.float64)
    np.save(tmp_path / "x.npy", x)
    ds = load_dataset(DataConfig(source=str(tmp_path / "x.npy"), mmap=True, valid_fraction=0.2, test_fraction=0.0))
    x[ds.train.index[:3], 0] = 0.5  # grey levels in train only
    np.save(tmp_path / "x.npy", x)
    ds = load_dataset(DataConfig(source=str(tmp_path / "x.npy"), mmap=True, valid_fraction=0.2, test_fraction=0.0))
    assert (choose(ds.train), choose(ds.valid)) == ("continuous_bernoulli", "bernoulli")
    x[ds.valid.index[0], 1] = -0.5
    np.save(tmp_path / "x.npy", x)
    ds = load_dataset(DataConfig(source=str(tmp_path / "x.npy"), mmap=True, valid_fraction=0.2, test_fraction=0.0))
    assert (choose(ds.train), choose(ds.valid)) == ("continuous_bernoulli", "gaussian")
    # a run's choice reads its splits together: streamed and in memory alike
    assert choose((ds.train, ds.valid)) == choose((ds.train[:], ds.valid[:])) == choose(x) == "gaussian"


CHOOSE_RUNNER = textwrap.dedent(
    f"""
    import re, resource, sys
    import numpy, vaekit.data, vaekit.likelihoods  # imports come first
    from vaekit.config import DataConfig
    data_kb = int(re.search(r"VmData:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
    cap = (data_kb + {HEADROOM_MB} * 1000) * 1024
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    print("CAP", cap, file=sys.stderr)
    ds = vaekit.data.load_dataset(DataConfig(source=sys.argv[1], mmap=True))
    print(vaekit.likelihoods.choose(ds.train))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and RLIMIT_DATA semantics of Linux")
def test_auto_likelihood_on_a_file_larger_than_the_memory_cap(big_file):
    proc = subprocess.run([sys.executable, "-c", CHOOSE_RUNNER, str(big_file)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert big_file.stat().st_size > _cap(proc.stderr)
    assert proc.stdout.split() == ["bernoulli"]  # the file holds 0/1 pixels


@pytest.mark.parametrize(
    "content, culprit",
    [
        (lambda path: path.write_bytes(b""), "could not be read as a .npy array"),
        (lambda path: np.savez(open(path, "wb"), x=np.zeros((4, 3))), "is an .npz archive, not a .npy array"),
        (lambda path: np.save(path, np.zeros(5, dtype=[("a", "<f4"), ("b", "<f4")])), "expected numbers (bool, int or float)"),
        (lambda path: np.save(path, np.zeros((5, 3), dtype=np.complex64)), "Complex data not supported"),
    ],
)
def test_mapping_a_file_that_holds_no_array_is_one_line(tmp_path, capsys, content, culprit):
    """An empty file, an archive named .npy, records: the streamed reader says what the
    in-memory one says, for train and for the reading verbs."""
    from cli_helpers import cli

    path = tmp_path / "x.npy"
    content(path)
    for mmap in ("--mmap", "--no-mmap"):
        code, out, err = cli(capsys, "train", "--data", path, "--out", tmp_path / "run", "--epochs", "1", mmap)
        assert code == 1 and out == "" and len(err.strip().splitlines()) == 1 and culprit in err, err
        assert not (tmp_path / "run").exists()


def test_a_streamed_file_cut_short_is_an_error_not_sigbus(tmp_path):
    """Rows read from a memory-mapped file that was truncated since it was opened: a DataError
    naming both sizes (reading past its end would kill the process with SIGBUS); a file removed,
    or replaced by a short one under its name, leaves the mapped pages readable."""
    import os

    from vaekit.data import MappedRows
    from vaekit.data.readers import open_mapped
    from vaekit.errors import DataError

    x = np.arange(4000 * 8, dtype=np.float32).reshape(4000, 8)
    path = tmp_path / "x.npy"
    np.save(path, x)
    rows = MappedRows(open_mapped(path)[0])
    np.testing.assert_array_equal(rows.rows(np.array([3999, 0])), x[[3999, 0]])
    os.truncate(path, 1000)
    with pytest.raises(DataError, match=r"x\.npy is 1000 bytes now, 128128 when it was opened: the file changed"):
        rows.rows(np.array([0]))
    with pytest.raises(DataError, match="the file changed"):
        next(rows.chunks())
    np.save(path, x)
    rows = MappedRows(open_mapped(path)[0]).mapped(None, np.float64)
    np.save(tmp_path / "y.npy", x[:2])
    os.replace(tmp_path / "y.npy", path)  # a new file under the name; the old one stays mapped
    np.testing.assert_array_equal(rows.rows(np.array([3999])), x[[3999]].astype(np.float64))
    os.remove(path)
    np.testing.assert_array_equal(rows[:2], x[:2])
    assert MappedRows(x).rows(np.array([1]))[0, 0] == 8  # an in-memory array has no file to check


def test_a_fingerprint_tells_rows_apart_and_reads_a_streamed_split_only_in_part(tmp_path, monkeypatch):
    """data.fingerprint: equal for the same rows (an array, or the same split of a file mapped
    twice), different for one value changed by one ulp, for another dtype or shape, and for
    another split or row order of the same file; a streamed split reads FINGERPRINT_ROWS rows,
    not the whole file."""
    from vaekit.data import MappedRows, fingerprint
    from vaekit.data import containers
    from vaekit.data.readers import open_mapped

    x = np.random.default_rng(0).random((3000, 5)).astype(np.float32)
    y = x.copy()
    y[1234, 4] = np.nextafter(y[1234, 4], np.float32(2))
    assert fingerprint(x) == fingerprint(x.copy()) != fingerprint(y)
    assert fingerprint(x) not in (fingerprint(x.astype(np.float64)), fingerprint(x.reshape(5, 3000)), fingerprint(x[:-1]))
    assert fingerprint(np.asfortranarray(x)) == fingerprint(x)  # the values, not the memory layout
    np.save(tmp_path / "x.npy", x)
    whole = [MappedRows(open_mapped(tmp_path / "x.npy")[0]) for _ in range(2)]
    assert fingerprint(whole[0]) == fingerprint(whole[1])
    rows = np.arange(3000)
    assert fingerprint(MappedRows(whole[0].array, rows[::-1].copy())) != fingerprint(whole[0])
    assert fingerprint(MappedRows(whole[0].array, rows[:2000])) != fingerprint(MappedRows(whole[0].array, rows[1000:]))
    read = []
    original = MappedRows.rows
    monkeypatch.setattr(MappedRows, "rows", lambda self, positions: read.append(len(positions)) or original(self, positions))
    monkeypatch.setattr(containers, "FINGERPRINT_ROWS", 100)
    fingerprint(whole[0])
    assert read == [100]
    # A changed value among the rows read shows in a streamed split too.
    np.save(tmp_path / "y.npy", np.where(np.arange(3000)[:, None] == 0, x + 1, x))
    assert fingerprint(MappedRows(open_mapped(tmp_path / "y.npy")[0])) != fingerprint(whole[0])


@pytest.mark.parametrize("seed", [0, 3])
def test_mapped_split_follows_the_split_seed_as_the_in_memory_one(tmp_path, seed):
    """--mmap puts the same rows in each split as the in-memory loader, for any --split-seed."""
    from vaekit.config import DataConfig
    from vaekit.data import load_dataset

    x = np.random.default_rng(1).random((50, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    kw = dict(source=str(tmp_path / "x.npy"), valid_fraction=0.2, test_fraction=0.2, split_seed=seed)
    mapped, eager = load_dataset(DataConfig(mmap=True, **kw)), load_dataset(DataConfig(**kw))
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(mapped.split(split)[:], eager.split(split))


def test_a_streamed_splits_fingerprint_sees_a_row_it_does_not_read(tmp_path):
    """Two splits of one file that differ in a single row, at a position the fingerprint does
    not read (it reads FINGERPRINT_ROWS spread rows): their row numbers in the file tell them
    apart, as the docstring says (shape, row numbers, and the rows read)."""
    x = np.random.default_rng(0).random((3001, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    array = open_mapped(tmp_path / "x.npy")[0]
    a = np.arange(3000)
    read = set(np.unique(np.linspace(0, len(a) - 1, containers.FINGERPRINT_ROWS).astype(np.int64)).tolist())
    unread = next(i for i in range(len(a)) if i not in read)
    b = a.copy()
    b[unread] = 3000  # another row of the file in a position that is not read
    assert fingerprint(MappedRows(array, a)) != fingerprint(MappedRows(array, b))
