"""vaekit.hardware: whether bfloat16 is fast here, --amp auto, and the warning where it is slow."""

from __future__ import annotations

import subprocess
import sys

import pytest

from train_helpers import digits_split, small_model
from vaekit import hardware
from vaekit.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from vaekit.errors import ConfigError, VaekitWarning
from vaekit.train import fit

# Flags lines as /proc/cpuinfo writes them (abridged): a Sapphire Rapids Xeon and an AMD EPYC.
XEON = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
EPYC = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n"
OLD = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"


@pytest.mark.parametrize(
    "cpuinfo, fast, amp, why",
    [(XEON, True, "bf16", "AMX bfloat16 tiles"), (EPYC, False, "off", "no AMX"), (OLD, False, "off", "without bfloat16"), ("", False, "off", "without bfloat16")],
)
def test_detection_from_cpu_flags(cpuinfo, fast, amp, why):
    flags = hardware.cpu_flags(cpuinfo)
    assert ("amx_bf16" in flags) == (cpuinfo is XEON)
    assert hardware.bf16_is_fast("cpu", flags)[0] is fast and why in hardware.bf16_is_fast("cpu", flags)[1]
    assert hardware.resolve_amp("auto", "cpu", flags) == amp
    assert hardware.resolve_amp("bf16", "cpu", flags) == "bf16" and hardware.resolve_amp("off", "cpu", flags) == "off"


def test_warning_names_the_slowdown():
    assert hardware.amp_warning("bf16", "cpu", hardware.cpu_flags(XEON)) is None
    assert hardware.amp_warning("off", "cpu", hardware.cpu_flags(EPYC)) is None
    assert hardware.amp_warning("bf16", "cpu", hardware.cpu_flags(EPYC)) == (
        "--amp bf16 on a CPU with AVX-512 bfloat16 instructions but no AMX matrix units: the training step ran at "
        "0.74x to 2.17x the float32 speed on such a CPU (median 1.08x), sometimes slower; --amp auto (or off) trains in float32 here"
    )
    assert "emulated, expect it slower than float32" in hardware.amp_warning("bf16", "cpu", hardware.cpu_flags(OLD))


@pytest.mark.skipif("amx_bf16" in hardware.cpu_flags(), reason="this CPU has AMX: bf16 is fast here")
def test_this_machine_without_amx_warns():
    assert hardware.amp_warning("bf16", "cpu") is not None
    assert hardware.resolve_amp("auto", "cpu") == "off"


def _cpuinfo(monkeypatch, tmp_path, text: str) -> None:
    """This process sees a CPU that /proc/cpuinfo ``text`` describes."""
    (tmp_path / "cpuinfo").write_text(text)
    monkeypatch.setattr(hardware, "CPUINFO", tmp_path / "cpuinfo")


@pytest.mark.parametrize("cpuinfo, recorded", [(XEON, "bf16"), (EPYC, "off")])
def test_auto_is_recorded_as_what_runs(monkeypatch, tmp_path, cpuinfo, recorded):
    _cpuinfo(monkeypatch, tmp_path, cpuinfo)
    config = RunConfig(model=ModelConfig(input_dim=64), train=TrainConfig(amp="auto"), data=DataConfig())
    assert config.train.amp == recorded and config.to_dict()["train"]["amp"] == recorded
    # float64 parameters never run under bf16 autocast
    assert RunConfig(model=ModelConfig(input_dim=64), train=TrainConfig(amp="auto", dtype="float64")).train.amp == "off"


def test_fit_with_bf16_where_it_is_slow_warns(monkeypatch, tmp_path):
    _cpuinfo(monkeypatch, tmp_path, EPYC)
    x_train, x_valid = digits_split()
    with pytest.warns(VaekitWarning, match=r"^--amp bf16 on a CPU with AVX-512 bfloat16 instructions but no AMX"):
        fit(small_model(), x_train[:128], x_valid[:64], TrainConfig(epochs=1, batch_size=64, amp="bf16"))


def test_cli_warning_is_one_stderr_line(tmp_path):
    """``vaekit train --amp bf16 --quiet`` on a CPU without AMX: one line on stderr, and the run goes on."""
    (tmp_path / "cpuinfo").write_text(EPYC)
    code = (
        "import sys; from pathlib import Path; from vaekit import hardware, cli; "
        f"hardware.CPUINFO = Path({str(tmp_path / 'cpuinfo')!r}); sys.exit(cli.main(sys.argv[1:]))"
    )
    argv = ["train", "--data", "digits", "--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--eval-k", "1", "--amp", "bf16", "--quiet", "--out", str(tmp_path / "r")]
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "vaekit: warning: --amp bf16 on a CPU with AVX-512 bfloat16 instructions but no AMX matrix units: the training step ran at "
        "0.74x to 2.17x the float32 speed on such a CPU (median 1.08x), sometimes slower; --amp auto (or off) trains in float32 here"
    ]


# -- threads -----------------------------------------------------------------------------------

LOADER = "import os\nos.nice(19)\nwhile True: pass"  # a busy loop that yields to the test itself


def test_threads_recorded_and_restored():
    import torch

    assert RunConfig(model=ModelConfig(input_dim=64)).train.threads == torch.get_num_threads()
    assert RunConfig(model=ModelConfig(input_dim=64), train=TrainConfig(threads=1)).to_dict()["train"]["threads"] == 1
    before = torch.get_num_threads()
    seen = []
    with hardware.fixed_threads(1):
        seen.append(torch.get_num_threads())
    assert seen == [1] and torch.get_num_threads() == before


@pytest.mark.skipif(hardware.omp_dynamic() is None, reason="no OpenMP runtime found")
def test_training_under_load_is_bit_exact():
    """A training, then two while other processes keep every core busy, those two started with
    OpenMP's dynamic mode on, as OMP_DYNAMIC=true leaves it. That mode sizes each parallel team
    from the load average, so on a loaded machine a sum would run on fewer threads and round
    differently (a sum of 81 920 numbers splits among the threads: 2 threads and 1 differ). All
    three trainings end with the same bits, and the sum keeps its 2-thread value."""
    import ctypes
    import os

    import torch

    set_dynamic = hardware._runtime(("libgomp*.so*", "libiomp5.so", "libomp.so", "libgomp.so.1"), "omp_set_dynamic")
    x_train, x_valid = digits_split()
    x_train, x_valid = x_train[:512], x_valid[:128]
    config = TrainConfig(epochs=2, batch_size=128, lr=3e-3, threads=2)
    big = torch.randn(1280, 64, generator=torch.Generator().manual_seed(0))

    def train(dynamic: bool) -> tuple[dict, torch.Tensor]:
        set_dynamic(ctypes.c_int(int(dynamic)))
        model = small_model(0)
        fit(model, x_train, x_valid, config)
        assert hardware.omp_dynamic() is False  # training turned it off
        set_dynamic(ctypes.c_int(int(dynamic)))
        with hardware.fixed_threads(2):
            total = big.sum()
        return {k: v.clone() for k, v in model.state_dict().items()}, total

    states = [train(dynamic=False)]
    loaders = [subprocess.Popen([sys.executable, "-c", LOADER]) for _ in range(min(os.cpu_count() or 2, 4))]
    try:
        states += [train(dynamic=True), train(dynamic=True)]
    finally:
        for p in loaders:
            p.kill()
            p.wait()
    (ref, ref_total), others = states[0], states[1:]
    for state, total in others:
        assert all(torch.equal(ref[k], state[k]) for k in ref)
        assert torch.equal(total, ref_total)


# -- memory: a model that cannot be trained at all is refused before it is allocated -----------


def test_available_memory_reads_memavailable():
    text = "MemTotal:       24731184 kB\nMemFree:        22443248 kB\nMemAvailable:   23180572 kB\n"
    assert hardware.available_memory("cpu", meminfo=text) == 23180572 * 1024
    assert hardware.available_memory("cpu", meminfo="MemTotal: 10 kB\n") is None


def test_parameter_count_is_the_built_models_for_every_registered_model():
    """Every net × prior × inference × likelihood, one and two latent groups (the combinations a
    config accepts): counted on the meta device, as many as the model built for real has, and
    no random number drawn."""
    import itertools

    import torch

    from vaekit.errors import VaekitError
    from vaekit.model import VAEModel
    from vaekit.registry import INFERENCE, LIKELIHOODS, NETS, PRIORS

    built = 0
    for net, prior, inference, likelihood, latent in itertools.product(
        NETS.names(), PRIORS.names(), INFERENCE.names(), LIKELIHOODS.names(), (3, (3, 2))
    ):
        options = dict(input_dim=64, hidden=(16,), latent_dim=latent, net=net, prior=prior, inference=inference, likelihood=likelihood)
        options.update({"image_shape": (1, 8, 8)} if net == "conv" else {})
        options.update({"prior_from": "unread"} if prior == "aggregate" else {})  # read only by train
        options.update({"n_points": 10} if inference in ("vi", "map") else {})
        try:
            config = ModelConfig(**options)
            model = VAEModel(config)
        except VaekitError:  # a combination the configuration refuses
            continue
        state = torch.get_rng_state()
        assert hardware.parameter_count(config) == sum(p.numel() for p in model.parameters()), options
        assert torch.equal(torch.get_rng_state(), state)  # the initial weights stay the seed's
        built += 1
    assert built > 250  # measured: 297 of the 432 combinations are valid
    assert not torch.empty(1).is_meta  # the default device is the CPU again


def test_a_model_whose_training_state_exceeds_the_memory_is_refused():
    """Weights, gradients and two Adam moments: 4 copies of n parameters of 4 (8) bytes."""
    config = ModelConfig(input_dim=12, hidden=(16,), latent_dim=3)
    n = hardware.parameter_count(config)
    hardware.check_model_fits(config, "float32", available=16 * n)  # exactly enough
    with pytest.raises(ConfigError, match=rf"the model has {n:,} parameters; training them in float32 needs"):
        hardware.check_model_fits(config, "float32", available=16 * n - 1)
    hardware.check_model_fits(config, "float64", available=32 * n)
    with pytest.raises(ConfigError, match="in float64 needs"):
        hardware.check_model_fits(config, "float64", available=32 * n - 1)


def test_a_model_too_large_for_the_machine_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """With 16 GiB free, 10⁸ hidden units (283 GiB of training state) are refused before
    anything is built, where building them would end in the kernel's out-of-memory kill; the
    CLI says so in one line and writes nothing, the estimator stays unfitted. Where the system
    does not say how much memory is free, nothing is refused."""
    import numpy as np

    import vaekit
    from cli_helpers import cli

    monkeypatch.setattr(hardware, "available_memory", lambda device="cpu": 16 * 2**30)
    out = tmp_path / "run"
    code, stdout, err = cli(capsys, "train", "--data", "digits", "--hidden", "100000000", "--epochs", "1", "--out", out)
    assert code == 2 and stdout == "" and len(err.splitlines()) == 1, err
    assert err.startswith("vaekit: error: the model has 19,000,000,104 parameters; training them in float32 needs 283.1 GiB")
    assert "cpu has 16.0 GiB free" in err and not out.exists()
    est = vaekit.VAE(hidden=(100_000_000,), latent_dim=2, epochs=1)
    with pytest.raises(ConfigError, match="ask for smaller hidden widths"):
        est.fit(np.random.default_rng(0).random((20, 4)))
    assert not hasattr(est, "model_")
    monkeypatch.setattr(hardware, "available_memory", lambda device="cpu": None)
    config = ModelConfig(input_dim=784, hidden=(100_000_000,), latent_dim=2)
    hardware.check_model_fits(config)  # unknown memory: no refusal (and nothing built)


@pytest.mark.parametrize("field", ["hidden", "latent_dim"])
@pytest.mark.parametrize("size", [2**60, 2**63, 10**30])
def test_sizes_past_what_a_tensor_can_describe_are_refused(tmp_path, capsys, monkeypatch, field, size):
    """Widths whose byte counts overflow 64 bits (2^60) or that do not fit a C long (2^63):
    torch fails to describe the tensors even on the meta device; refused as too large, in one
    line, before anything is written, and from a config.json edited to them."""
    import json

    import vaekit
    from cli_helpers import cli
    from vaekit.errors import CheckpointError

    flag = "--" + field.replace("_", "-")
    out = tmp_path / "new"
    code, stdout, err = cli(capsys, "train", "--data", "digits", flag, size, "--epochs", "1", "--out", out)
    assert code == 2 and stdout == "" and err == (
        "vaekit: error: a size of the model (a width, latent size, channel count, pseudo-input or component count) is too large for any tensor to hold: ask for a smaller one\n"
    )
    assert not out.exists()
    run = tmp_path / "run"
    assert cli(capsys, "train", "--data", "digits", "--hidden", "8", "--latent-dim", "2", "--epochs", "1", "--eval-k", "2", "--out", run)[0] == 0
    config = json.loads((run / "config.json").read_text())
    config["model"][field] = [size]
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: a size of the model .* is too large for any tensor"):
        vaekit.load(run)
    # Where the system does not say how much memory is free (no /proc/meminfo) too.
    monkeypatch.setattr(hardware, "available_memory", lambda device="cpu": None)
    with pytest.raises(ConfigError, match="too large for any tensor to hold"):
        hardware.check_model_fits(ModelConfig(input_dim=4, **{field: (size,)}))
    code, stdout, err = cli(capsys, "evaluate", run, "--k", "2")
    assert code == 1 and stdout == "" and len(err.splitlines()) == 1 and "too large for any tensor" in err


def test_a_config_edited_to_a_model_no_machine_holds_is_refused_on_load(tmp_path, monkeypatch, capsys):
    """config.json edited to 10⁹ hidden units: loading would allocate the weights (one copy)
    before finding that the file's tensors disagree; refused first, naming config.json, in
    the verbs (one line) and in vaekit.load."""
    import json

    import vaekit
    from cli_helpers import cli
    from vaekit.errors import CheckpointError

    run = tmp_path / "run"
    assert cli(capsys, "train", "--data", "digits", "--hidden", "16", "--latent-dim", "2", "--epochs", "1", "--eval-k", "2", "--out", run)[0] == 0
    config = json.loads((run / "config.json").read_text())
    config["model"]["hidden"] = [1_000_000_000]
    (run / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(hardware, "available_memory", lambda device="cpu": 16 * 2**30)
    with pytest.raises(CheckpointError, match=r"config\.json: the model has [\d,]+ parameters; holding them in float32 needs .* \(the weights\)"):
        vaekit.load(run)
    code, out, err = cli(capsys, "evaluate", run, "--k", "2")
    assert code == 1 and out == "" and len(err.splitlines()) == 1 and "holding them in float32" in err


def test_more_threads_than_usable_cores_warns(monkeypatch):
    """Threads beyond the CPUs the process may run on (its affinity, which taskset and containers
    narrow) wait on each other: a warning, and the run goes on at that count as asked."""
    import os
    import warnings

    import torch

    from vaekit.errors import VaekitWarning
    from vaekit.hardware import fixed_threads, usable_cores

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert usable_cores() == 1
    with pytest.warns(VaekitWarning, match=r"^threads 2 is more than the 1 core this process may use: PyTorch's threads then wait"):
        with fixed_threads(2):
            assert torch.get_num_threads() == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fixed_threads(1):
            assert torch.get_num_threads() == 1
        before = torch.get_num_threads()
        with fixed_threads(0):  # as many as PyTorch uses: not the user's count
            assert torch.get_num_threads() == before



@pytest.mark.parametrize("name", ["cuda:abc", "cuda:", "cuda0", "gpu", "cuda:1:2", "CPU"])
def test_a_device_string_of_another_form_is_refused_by_the_config(name):
    from vaekit.config import TrainConfig
    from vaekit.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"^device must be cpu or cuda\[:N\], got '{name}'$"):
        TrainConfig(device=name)
    for fine in ("cpu", "cuda", "cuda:0", "cuda:12"):
        assert TrainConfig(device=fine).device == fine


def test_a_gpu_index_past_the_machines_is_one_line_before_any_work(monkeypatch):
    """On a machine with two GPUs, cuda:2 is named with the devices there are, by the device
    check of training and by amp auto's look at the GPU (torch would say "invalid device
    ordinal" deep in a model's move, or fail an assertion)."""
    import torch

    from vaekit.errors import ConfigError
    from vaekit.hardware import bf16_is_fast, check_device
    from vaekit.train import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    said = r"^--device cuda:2: this machine has 2 CUDA devices \(cuda:0 to cuda:1\)$"
    for check in (check_device, resolve_device, bf16_is_fast):
        with pytest.raises(ConfigError, match=said):
            check("cuda:2")
    check_device("cuda:1")
    check_device("cuda")
    check_device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
