"""Data-parallel training (vaekit.train with ``torchrun``, DistributedDataParallel over gloo).

Every test launches real processes: ``torchrun --nproc-per-node 2 -m vaekit train`` against
``python -m vaekit train`` as the reference, all with OMP_NUM_THREADS=1 so that both do the
same arithmetic. Each rank takes a contiguous shard of every global batch and all ranks draw
the noise of the whole batch from identical streams, so two processes must reproduce one
process on the same global batch up to the order of floating-point sums (the gradient of the
global mean is assembled from two half-batch sums and an all-reduce). Measured on the CPU
(2 epochs, 22 steps): float64 max |Δ| ≈ 7e-16 on every weight and ≤ 7e-16 relative on the
metrics; float32 max |Δ| ≈ 9e-8 (1.5 ulp at the largest weights, |w| ≈ 0.5) and ≤ 1.2e-7
relative on the metrics.

--batch-size 125 on the 1258 digits training rows gives 62/63-row shards in the 10 full
batches and 4/4 in the last: unequal shares, so a wrong per-rank weighting of the loss (the
plain mean of the two rank means) shows. Measured with train.py patched that way: float32
weights 3.6e-3 apart, metrics 1e-5..4e-4 relative, far outside the tolerances below. (The
default 128 would split every batch evenly and hide that bug.)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vaekit
from vaekit import checkpoint as ckpt

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)

COMMON = ("--data", "digits", "--hidden", "32", "--latent-dim", "4", "--eval-k", "5", "--batch-size", "125")
# Variables torchrun sets in its children; a reference run must not inherit them (it would
# think it was one rank of a group).
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
# float64: measured ≈ 7e-16; 1e-10 still rejects any real difference in the training
# (a wrongly weighted shard, different noise, a skipped step) by many orders of magnitude.
TOL64 = 1e-10
# float32: measured 9e-8 = 1.5 ulp of the largest weights. Different summation orders change
# each gradient by ~1e-7 relative and Adam's normalised step (≈ lr·m/√v, lr = 1e-3) passes
# such a perturbation on without growth over 22 steps; 1e-5 leaves >100x headroom for other
# BLAS builds while a real bug (see the module docstring) moved weights by 3.6e-3.
TOL32 = 1e-5
METRIC_KEYS = ("train_loss", "train_elbo", "valid_elbo", "valid_recon", "valid_kl")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vaekit_train(*argv, nproc: int = 1, cwd: Path) -> subprocess.CompletedProcess:
    """``vaekit train ARGV`` in one process, or under ``torchrun`` with ``nproc`` processes."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env["OMP_NUM_THREADS"] = "1"
    if nproc == 1:
        launcher = [sys.executable, "-m", "vaekit"]
    else:
        launcher = [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "vaekit",
        ]  # fmt: skip
    return subprocess.run(
        [*launcher, "train", *map(str, argv)], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc


def model_tensors(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    """The model's tensors of a checkpoint (for last.safetensors: its ``model.`` part)."""
    tensors, _ = ckpt.load_tensors(run_dir / name)
    if name == ckpt.LAST_FILE:
        return {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    return tensors


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / ckpt.METRICS_FILE).read_text().splitlines()]


def assert_same_run(run: Path, ref: Path, dtype: torch.dtype, tol: float, rtol: float) -> None:
    """Weights of the best and the last model within ``tol``, metrics within ``rtol``, and the
    random stream left where the reference left it."""
    for name in (ckpt.MODEL_FILE, ckpt.LAST_FILE):
        a, b = model_tensors(run, name), model_tensors(ref, name)
        assert all(t.dtype == dtype for t in a.values() if t.is_floating_point()), name
        diff = max_abs_diff(a, b)
        assert diff <= tol, f"{name}: max |Δ| = {diff:.3g} > {tol:g}"
    rng_a, rng_b = (ckpt.load_tensors(d / ckpt.LAST_FILE)[0]["rng.cpu"] for d in (run, ref))
    assert torch.equal(rng_a, rng_b), "the runs consumed different amounts of randomness"
    got, want = metrics(run), metrics(ref)
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    for r, s in zip(got, want):
        for key in METRIC_KEYS:
            assert r[key] == pytest.approx(s[key], rel=rtol), (r["epoch"], key)


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def runs64(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Uninterrupted 2-epoch float64 runs: one process and two, with --json and --progress."""
    d = tmp_path_factory.mktemp("dist64")
    out = {}
    for label, nproc in (("single", 1), ("ddp", 2)):
        run = d / label
        proc = ok(vaekit_train(*COMMON, "--dtype", "float64", "--epochs", 2, "--json", "--progress", "--out", run, nproc=nproc, cwd=d))
        out[label] = (run, proc)
    return out


# ---- equality with one process -----------------------------------------------------------------


def test_two_processes_match_one_in_float64(runs64):
    (single, p1), (ddp, p2) = runs64["single"], runs64["ddp"]
    assert_same_run(ddp, single, torch.float64, TOL64, rtol=1e-12)
    # The final evaluation on rank 0 sees the same model, so the same test numbers.
    (s1,), (s2,) = json_lines(p1.stdout), json_lines(p2.stdout)
    for key in ("elbo", "recon", "kl", "log_likelihood"):
        assert s2["test"][key] == pytest.approx(s1["test"][key], rel=1e-12), key


@pytest.mark.parametrize("ema", [None, "0.9"])
def test_two_processes_match_one_in_float32(tmp_path, ema):
    """Also with the weights' average (--ema), which every rank updates from the same weights:
    the average of last.safetensors matches too."""
    runs, extra = {}, ["--ema", ema] if ema else []
    for label, nproc in (("single", 1), ("ddp", 2)):
        runs[label] = tmp_path / label
        ok(vaekit_train(*COMMON, *extra, "--epochs", 2, "--out", runs[label], nproc=nproc, cwd=tmp_path))
    assert_same_run(runs["ddp"], runs["single"], torch.float32, TOL32, rtol=1e-6)
    if ema:
        a, b = ({k: v for k, v in ckpt.load_tensors(d / ckpt.LAST_FILE)[0].items() if k.startswith("average.")} for d in runs.values())
        assert a and a.keys() == b.keys() and max_abs_diff(a, b) <= TOL32


# ---- rank 0 alone writes and reports -----------------------------------------------------------


def test_only_rank_zero_writes_and_prints(runs64):
    (single, _), (ddp, proc) = runs64["single"], runs64["ddp"]
    # The same files as a one-process run: one metrics.jsonl, no second copy, no leftovers
    # of an interrupted atomic write.
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())
    assert [p.name for p in ddp.iterdir() if "metrics" in p.name] == [ckpt.METRICS_FILE]
    assert not [p.name for p in ddp.iterdir() if p.name.endswith(".tmp")]
    assert [r["epoch"] for r in metrics(ddp)] == [1, 2]
    (summary,) = json_lines(proc.stdout)  # one JSON line, not one per rank
    assert summary["run_dir"] == str(ddp) and summary["epochs"] == 2


def progress_losses(stderr: str) -> dict[int, str]:
    """The last ``loss=`` each epoch's progress bar showed (tqdm redraws with \\r)."""
    shown = {}
    for segment in re.split(r"[\r\n]", stderr):
        m = re.search(r"epoch (\d+)/\d+.*loss=(-?\d+\.\d+)", segment)
        if m:
            shown[int(m.group(1))] = m.group(2)
    return shown


def test_progress_bar_shows_the_epoch_loss_with_one_process(runs64):
    # The reference for the test below: the bar's final value is the epoch's train_loss.
    run, proc = runs64["single"]
    assert progress_losses(proc.stderr) == {r["epoch"]: f"{r['train_loss']:.3f}" for r in metrics(run)}


def test_progress_bar_shows_the_global_loss_with_two_processes(runs64):
    run, proc = runs64["ddp"]
    assert progress_losses(proc.stderr) == {r["epoch"]: f"{r['train_loss']:.3f}" for r in metrics(run)}


# ---- resume across world sizes -----------------------------------------------------------------


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)], ids=["2procs-then-1", "1proc-then-2"])
def test_resume_across_world_sizes(runs64, tmp_path, first, then):
    run = tmp_path / "run"
    ok(vaekit_train(*COMMON, "--dtype", "float64", "--epochs", 1, "--out", run, nproc=first, cwd=tmp_path))
    assert [r["epoch"] for r in metrics(run)] == [1]
    ok(vaekit_train("--resume", "--epochs", 2, "--out", run, nproc=then, cwd=tmp_path))
    single, _ = runs64["single"]
    assert_same_run(run, single, torch.float64, TOL64, rtol=1e-12)


# ---- refused configurations --------------------------------------------------------------------


def test_per_point_inference_is_refused(tmp_path):
    run = tmp_path / "run"
    proc = vaekit_train(*COMMON, "--epochs", 2, "--inference", "vi", "--out", run, nproc=2, cwd=tmp_path)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    errors = [line for line in output.splitlines() if line.startswith("vaekit: error:")]
    assert errors, output
    # Each rank says the same single line; it names the method and why it cannot be split.
    for line in errors:
        assert "per-point tables" in line and "'vi'" in line, line
    # torchrun adds its own report, but no frame of vaekit: a user error, not a crash.
    assert str(Path(vaekit.__file__).parent) not in output
    # Refused before anything was written, so the same --out can be used again.
    assert not (run / ckpt.CONFIG_FILE).exists()


def test_a_torchrun_process_exits_with_the_verbs_status_and_all_its_output(tmp_path):
    """Under torchrun (WORLD_SIZE > 1) ``vaekit`` leaves by os._exit, skipping the teardown in
    which gloo's threads can abort a finished process: its status is still the verb's, and
    what it printed on stdout and stderr arrives whole."""
    from vaekit.cli import main

    assert main(["train", *COMMON, "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    env = {**{k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}, "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "vaekit", "evaluate", str(tmp_path / "run"), "--k", "5", "--json"],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["k"] == 5
    bad = subprocess.run([sys.executable, "-m", "vaekit", "evaluate", str(tmp_path / "none")], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip().endswith("not a run directory (no such directory)")


def test_a_rank_above_zero_never_empties_the_run_directory(tmp_path, monkeypatch):
    """Only rank 0 takes the run's lock, so only rank 0 may empty it under --overwrite: a rank
    above 0 that emptied it could wipe a run another process holds."""
    from vaekit import runs
    from vaekit.cli import main

    run = tmp_path / "victim"
    assert main(["train", *COMMON, "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    before = sorted(p.name for p in run.iterdir())
    cleared = []
    monkeypatch.setattr(ckpt, "clear_run", lambda d: cleared.append(d))
    monkeypatch.setattr(runs, "train_run", lambda *a, **k: {"run_dir": str(run), "rank": 1})
    monkeypatch.setenv("RANK", "1")
    assert main(["train", *COMMON, "--epochs", "1", "--out", str(run), "--overwrite", "--quiet"]) == 0
    assert cleared == [] and sorted(p.name for p in run.iterdir()) == before


@pytest.mark.parametrize("rank", [0, 1])
def test_only_rank_zero_empties_the_run_directory_and_only_after_the_checks(tmp_path, monkeypatch, rank):
    """train_run under overwrite: rank 0 sets the old run aside once data and model have passed
    their checks (just before training); a rank above 0 never touches it."""
    from vaekit import runs
    from vaekit.cli import main

    run = tmp_path / "victim"
    assert main(["train", *COMMON, "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    config = vaekit.load(run).config_
    cleared = []

    class Stop(Exception):
        """Raised where training would start: what train_run did before it is the question."""

    def fit(*a, **k):
        raise Stop

    monkeypatch.setattr(ckpt, "set_aside", lambda d: cleared.append(Path(d)))
    monkeypatch.setattr(runs, "rank_world", lambda: (rank, 2))
    monkeypatch.setattr(runs, "fit", fit)
    with pytest.raises(Stop):
        runs.train_run(config, run, overwrite=True)
    assert cleared == ([run] if rank == 0 else [])


def test_torchrun_on_cuda_without_cuda_is_one_line_before_the_process_group(monkeypatch):
    """No CUDA means no NCCL: the device is refused as one process refuses it, before the
    process group would fail on its backend."""
    import torch.distributed as dist

    from vaekit.errors import ConfigError
    from vaekit.train import init_distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    joined = []
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: joined.append(a))
    with pytest.raises(ConfigError, match=r"^--device cuda: CUDA is not available on this machine$"):
        init_distributed("cuda")
    assert joined == []


def test_a_batch_with_fewer_rows_than_processes_is_refused(tmp_path):
    """digits' 1258 training rows in batches of 419 end with a batch of one row, which two
    processes cannot share: one line naming the batch, before any step, nothing left behind.
    One process trains the same command."""
    from vaekit.train import check_shards

    check_shards(1258, 419, 1)
    check_shards(1258, 2, 2)  # 629 batches of 2
    with pytest.raises(vaekit.errors.ConfigError, match=r"^1258 training rows in batches of 419 include a batch of 1 row\(s\), fewer than the 2 processes"):
        check_shards(1258, 419, 2)
    with pytest.raises(vaekit.errors.ConfigError, match="a batch of 1 row"):
        check_shards(1258, 1, 2)
    run = tmp_path / "run"
    argv = ("--data", "digits", "--hidden", "16", "--latent-dim", "2", "--eval-k", "2", "--epochs", "1", "--batch-size", "419", "--out", run)
    proc = vaekit_train(*argv, nproc=2, cwd=tmp_path)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("vaekit: error:")]
    # Every process refuses before joining the group, and rank 0 alone says so: one line, no
    # broken group, no word of torchrun stopping the other process.
    assert len(errors) == 1 and "fewer than the 2 processes" in errors[0] and "--batch-size" in errors[0], proc.stderr
    assert "terminated" not in proc.stderr and "rank 1" not in proc.stderr, proc.stderr
    assert not (run / ckpt.CONFIG_FILE).exists()
    ok(vaekit_train(*argv, nproc=1, cwd=tmp_path))
    # Resumed, the run keeps its batch size: the advice is about the processes.
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    proc = vaekit_train("--out", run, "--resume", "--epochs", "2", nproc=2, cwd=tmp_path)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("vaekit: error:")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr
    assert errors[0].endswith("resume it on at most 1 process(es) (its --batch-size stays)"), errors
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def rank_1_also_gets(tmp_path: Path, *extra: str) -> Path:
    """An executable for ``torchrun --no-python`` that runs ``vaekit train ARGS`` in every
    process, with ``extra`` options appended in the process of rank 1 (the last one wins)."""
    script = tmp_path / "rank_1_also_gets.sh"
    rank_1 = " ".join(extra)
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$RANK" = 1 ]; then exec {sys.executable} -m vaekit train "$@" {rank_1}; fi\n'
        f'exec {sys.executable} -m vaekit train "$@"\n'
    )
    script.chmod(0o755)
    return script


@pytest.mark.parametrize(
    "extra, named",
    [
        (("--seed", "7"), r"--seed: rank 0 0, rank 1 7"),  # would train other weights, silently
        (("--batch-size", "100"), r"--batch-size: rank 0 125, rank 1 100"),  # would wait forever
        (("--hidden", "16"), r"--hidden: rank 0 \[32\], rank 1 \[16\]"),  # DDP's own traceback
    ],
)
def test_processes_given_other_options_are_refused_in_one_line(tmp_path, extra, named):
    """A torchrun group whose processes got different options is refused by every process,
    right after they join and before any step, in one line (rank 0's) that names the option
    and both values; the run directory is left as it was (not created)."""
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env["OMP_NUM_THREADS"] = "1"
    launcher = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
        "--master-port", str(free_port()), "--no-python", str(rank_1_also_gets(tmp_path, *extra)),
    ]  # fmt: skip
    argv = [*COMMON, "--epochs", "1", "--out", str(run)]
    proc = subprocess.run([*launcher, *argv], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("vaekit: error:")]
    assert len(errors) == 1, proc.stderr
    assert re.search(r"^vaekit: error: the processes of this torchrun group were given different " + named, errors[0]), errors
    assert errors[0].endswith("every process must run the same command on the same data")
    # The one traceback is torchrun's own report of the failed processes (ChildFailedError).
    assert proc.stderr.count("Traceback") == proc.stderr.count("ChildFailedError: ") <= 1, proc.stderr
    assert not run.exists()


def test_the_first_difference_from_rank_0_is_named(monkeypatch):
    """check_same_setup on gathered setups (all_gather_object replaced): equal setups pass; the
    first differing entry, in rank 0's order, is named with both values and the rank; an entry
    one rank lacks reads "nothing"."""
    import torch.distributed as dist

    from vaekit.train import check_same_setup

    def gathered(*setups):
        def all_gather_object(out, mine):
            out[:] = setups

        monkeypatch.setattr(dist, "get_world_size", lambda: len(setups))
        monkeypatch.setattr(dist, "all_gather_object", all_gather_object)

    a = {"--data": '"x.npy"', "train rows": "10x2 with digest 00", "--seed": "0"}
    gathered(a, dict(a), dict(a))
    check_same_setup(a)
    gathered(a, dict(a), {**a, "train rows": "10x2 with digest 11", "--seed": "3"})
    with pytest.raises(vaekit.errors.ConfigError, match=r"^the processes of this torchrun group were given different train rows: "
                       r"rank 0 10x2 with digest 00, rank 2 10x2 with digest 11; every process"):  # fmt: skip
        check_same_setup(a)
    gathered(a, {k: v for k, v in a.items() if k != "--seed"})
    with pytest.raises(vaekit.errors.ConfigError, match=r"different --seed: rank 0 0, rank 1 nothing;"):
        check_same_setup(a)


def test_the_setup_compares_the_rows_and_every_option_a_process_shares(tmp_path):
    """runs._setup: the data's rows by digest (a changed value changes it), every option a
    user gives by its flag, except those each process may set for itself; the device by its
    kind, not its index."""
    import numpy as np

    from vaekit.config import FROM_DATA, RunConfig, section_options
    from vaekit.runs import PER_PROCESS, _setup

    config = RunConfig(model=vaekit.ModelConfig(input_dim=3), train=vaekit.TrainConfig(device="cpu"))
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    splits = {"train": x, "valid": x[:2], "test": x[2:]}
    setup = _setup(config, tmp_path, False, splits)
    assert list(setup)[:4] == ["--data", "train rows", "valid rows", "test rows"]
    flags = {"--" + n.replace("_", "-") for s in ("data", "model", "train") for n in section_options(s) if n not in PER_PROCESS | FROM_DATA}
    assert set(setup) == {"--data", "train rows", "valid rows", "test rows", "--out", "--resume"} | (flags - {"--source"})
    y = x.copy()
    y[3, 2] = np.nextafter(y[3, 2], np.inf)
    assert _setup(config, tmp_path, False, {**splits, "train": y})["train rows"] != setup["train rows"]
    assert _setup(config, tmp_path, True, splits)["--resume"] != setup["--resume"]
    cuda = [RunConfig(model=config.model, train=vaekit.TrainConfig(device=d)) for d in ("cuda:0", "cuda:1")]
    assert _setup(cuda[0], tmp_path, False, splits) == _setup(cuda[1], tmp_path, False, splits)
    assert _setup(cuda[0], tmp_path, False, splits)["--device"] != setup["--device"]


def test_other_ranks_read_a_run_once_rank_0_has_recovered_it(tmp_path, monkeypatch):
    """Under torchrun, the processes other than rank 0 wait for the folder a stopped
    --overwrite left to go (rank 0 recovers it under the lock) before reading the run."""
    import threading
    import time

    from vaekit import checkpoint as ckpt
    from vaekit import cli as cli_mod

    (tmp_path / ckpt.REPLACED_DIR).mkdir()
    timer = threading.Timer(0.3, (tmp_path / ckpt.REPLACED_DIR).rmdir)
    timer.start()
    t0 = time.monotonic()
    cli_mod._await_recovery(tmp_path)
    assert 0.25 < time.monotonic() - t0 < 5 and not (tmp_path / ckpt.REPLACED_DIR).exists()
    # Rank 0 never recovers (another writer holds the lock): the wait ends, rank 0 says why.
    (tmp_path / ckpt.REPLACED_DIR).mkdir()
    monkeypatch.setattr(cli_mod, "RECOVERY_WAIT_S", 0.2)
    t0 = time.monotonic()
    cli_mod._await_recovery(tmp_path)
    assert time.monotonic() - t0 < 2


def test_a_refusal_in_another_rank_is_left_to_rank_0(monkeypatch, capsys, tmp_path):
    """Under torchrun every process refuses a bad command alike; rank 0 alone says so. Another
    rank waits for torchrun to stop it once rank 0 has left, and then says nothing (nor of the
    stop); one whose wait runs out (the refusal was its own) says it, naming its rank."""
    from vaekit import cli as cli_mod

    argv = ["train", "--data", "digits", "--epochs", "0", "--out", str(tmp_path / "run")]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")

    def stopped(seconds):
        raise cli_mod.Terminated

    monkeypatch.setattr(cli_mod.time, "sleep", stopped)
    assert cli_mod.main(argv) == 2
    assert capsys.readouterr().err == ""
    waited = []
    monkeypatch.setattr(cli_mod.time, "sleep", waited.append)
    assert cli_mod.main(argv) == 2
    err = capsys.readouterr().err
    assert waited == [cli_mod.RANK_0_REPORT_WAIT]
    assert err.startswith("vaekit: error: (process of rank 1) --epochs must be an integer >= 1, got 0") and err.count("\n") == 1, err
    monkeypatch.setenv("RANK", "0")
    assert cli_mod.main(argv) == 2
    assert capsys.readouterr().err.startswith("vaekit: error: --epochs must be an integer >= 1, got 0")
    assert len(waited) == 1
    # torchrun's SIGTERM before the wait began, its Terminated caught by a clean-up on the way:
    # the stop is still seen, and the process leaves at once, silent.
    monkeypatch.setenv("RANK", "1")
    check_paths = cli_mod._check_paths

    caught = []

    def swallowed(args):
        try:
            cli_mod._terminate(15, None)
        except cli_mod.Terminated as e:
            caught.append(e)
        check_paths(args)

    monkeypatch.setattr(cli_mod, "_check_paths", swallowed)
    assert cli_mod.main(argv) == 2
    assert len(caught) == 1 and capsys.readouterr().err == "" and len(waited) == 1
    monkeypatch.setattr(cli_mod, "_check_paths", check_paths)
    # argparse's refusals too.
    monkeypatch.setattr(cli_mod.time, "sleep", stopped)
    with pytest.raises(SystemExit) as stop:
        cli_mod.main(["train", "--no-such-option"])
    assert stop.value.code == 2 and capsys.readouterr().err == ""
    monkeypatch.setattr(cli_mod.time, "sleep", waited.append)
    with pytest.raises(SystemExit):
        cli_mod.main(["train", "--no-such-option"])
    assert capsys.readouterr().err.startswith("vaekit: error: (process of rank 1) the following arguments are required: --out")


# ---- the other verbs: rank 0 alone ---------------------------------------------------------------

# Every verb but train, with arguments that write (where it writes) into "{tmp}" or, for gaps'
# default pictures, into the run directory; rank 0 runs each as one process does.
VERB_ARGV = {
    "evaluate": ["--k", "2", "--json"],
    "gaps": ["--k", "2", "--steps", "1", "--json"],
    "sample": ["-n", "3", "--source", "aggregate", "--out", "{tmp}/s.png"],
    "encode": ["--data", "digits", "--out", "{tmp}/e.npy"],
    "reconstruct": ["--data", "digits", "--out", "{tmp}/r.png"],
    "score": ["--data", "digits", "--k", "2", "--out", "{tmp}/s.npy"],
}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    from vaekit.cli import main

    run = tmp_path_factory.mktemp("verbs") / "run"
    argv = ["train", "--data", "digits", "--hidden", "8", "--latent-dim", "2", "--epochs", "1", "--eval-k", "2", "--out", str(run), "--quiet"]
    assert main(argv) == 0
    return run


def launched_env(rank: int, world: int = 2) -> dict[str, str]:
    """The variables torchrun gives the process of ``rank`` in a group of ``world`` on one node."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), GROUP_RANK="0",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1")  # fmt: skip
    return env


def files_under(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def verb_argv(verb: str, run: Path, tmp: Path) -> list[str]:
    return [verb, str(run), *(a.format(tmp=tmp) for a in VERB_ARGV[verb])]


def test_every_verb_but_train_is_covered_below():
    from vaekit.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) - {"train"} == set(VERB_ARGV)


def test_a_process_above_rank_0_leaves_a_verb_to_rank_0(small_run, tmp_path):
    """Under torchrun (WORLD_SIZE > 1) a verb that does not split its work runs on rank 0: the
    others exit 0 at once, printing nothing and writing nothing (not even gaps' pictures into
    the run directory)."""
    before = files_under(small_run)
    out = tmp_path / "out"
    out.mkdir()
    for verb in VERB_ARGV:
        proc = subprocess.run([sys.executable, "-m", "vaekit", *verb_argv(verb, small_run, out)],
                              capture_output=True, text=True, env=launched_env(1), timeout=120)  # fmt: skip
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), (verb, proc.stderr)
    assert list(out.iterdir()) == []
    assert files_under(small_run) == before


def test_rank_0_runs_every_verb_as_one_process_does(small_run, tmp_path, monkeypatch, capsys):
    from cli_helpers import cli
    from vaekit.errors import VaekitWarning

    for name, value in launched_env(0).items():
        monkeypatch.setenv(name, value)
    for verb in VERB_ARGV:
        with pytest.warns(VaekitWarning, match=rf"^{verb} runs in one process: rank 0 does the work, and the other 1 process\(es\) torchrun started exit at once$"):
            code, out, err = cli(capsys, *verb_argv(verb, small_run, tmp_path))
        assert code == 0 and out.strip(), (verb, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npy", "r.png", "s.npy", "s.png"]
    assert (small_run / "gaps_test.png").is_file() and (small_run / "gaps_test_bars.png").is_file()


def test_evaluate_json_under_torchrun_is_one_json_object(small_run, tmp_path):
    """``torchrun --nproc-per-node 2 -m vaekit evaluate --json``: one JSON object on stdout
    (the numbers of one process) and one line on stderr saying that one process did the work."""
    from vaekit.cli import main

    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env["OMP_NUM_THREADS"] = "1"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    proc = ok(subprocess.run([*launcher, "-m", "vaekit", "evaluate", str(small_run), "--k", "5", "--json"],
                             capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300))  # fmt: skip
    result = json.loads(proc.stdout)  # the whole of stdout: one object
    assert [line for line in proc.stderr.splitlines() if line.startswith("vaekit:")] == [
        "vaekit: warning: evaluate runs in one process: rank 0 does the work, and the other 1 process(es) torchrun started exit at once"
    ]
    alone = io.StringIO()
    with contextlib.redirect_stdout(alone):
        assert main(["evaluate", str(small_run), "--k", "5", "--json"]) == 0
    expected = json.loads(alone.getvalue())
    for key in ("elbo", "recon", "kl", "log_likelihood", "n", "k", "split"):
        assert result[key] == expected[key], key
