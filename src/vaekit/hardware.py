"""What the machine offers a run: whether bfloat16 products are fast (``--amp``), and a fixed
number of CPU threads that neither the load nor the libraries change (``--threads``).

bfloat16 autocast pays for sure only where matrix units multiply bfloat16 faster than float32:
NVIDIA GPUs from compute capability 8.0 (Ampere) on, and CPUs with AMX tiles (Intel Sapphire
Rapids and later). A CPU with AVX-512 bfloat16 instructions but no AMX (an AMD EPYC, measured)
multiplies large bfloat16 matrices about 4x as fast as float32 ones, but the VAE's small products
gain little after autocast's casts: the whole step ranges from slower to faster than float32 with
the load (``BF16_NO_AMX_STEP``). Without bfloat16 instructions the products are emulated."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import os
from pathlib import Path

# bench/step.py's step (MNIST MLP, batch 128), float32 against bf16 autocast, in 40 short
# interleaved rounds on a busy AMD EPYC with avx512_bf16 and no AMX: the quartiles of the
# bf16/float32 speed ratio (the median round was 1.08x, a quarter of them below 0.74x).
BF16_NO_AMX_STEP = (0.74, 1.08, 2.17)
CPUINFO = Path("/proc/cpuinfo")
MEMINFO = Path("/proc/meminfo")
# Training with Adam holds four copies of the parameters: the weights, their gradients and the
# two moment estimates.
TRAINING_COPIES = 4


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags, from the first ``flags`` line of /proc/cpuinfo (or of the text
    ``cpuinfo``); empty where there is no such file (macOS, Windows)."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def check_device(name: str) -> None:
    """ConfigError where ``name`` (cpu, cuda or cuda:N) names no device of this machine: torch
    would fail later, deep in a model's move, with "invalid device ordinal"."""
    if not name.startswith("cuda"):
        return
    import torch

    from .errors import ConfigError, count

    if not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    index, devices = torch.device(name).index, torch.cuda.device_count()
    if index is not None and index >= devices:
        raise ConfigError(f"--device {name}: this machine has {count(devices, 'CUDA device')} (cuda:0 to cuda:{devices - 1})")


def bf16_is_fast(device: str = "cpu", flags: set[str] | None = None) -> tuple[bool, str]:
    """(whether bfloat16 autocast speeds training up on ``device``, the reason in words).
    ``flags`` stand in for the CPU's own (tests)."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return False, "CUDA is not available"
        check_device(device)
        index = torch.device(device).index or 0
        major, minor = torch.cuda.get_device_capability(index)
        if major >= 8 and torch.cuda.is_bf16_supported():
            return True, f"a GPU of compute capability {major}.{minor} with bfloat16 tensor cores"
        return False, f"a GPU of compute capability {major}.{minor}, without bfloat16 tensor cores"
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return True, "a CPU with AMX bfloat16 tiles"
    if "avx512_bf16" in flags:
        return False, "a CPU with AVX-512 bfloat16 instructions but no AMX matrix units"
    return False, "a CPU without bfloat16 matrix units"


def resolve_amp(amp: str, device: str = "cpu", flags: set[str] | None = None) -> str:
    """``amp`` with "auto" made concrete: "bf16" where bfloat16 is fast on ``device``, else "off"."""
    if amp != "auto":
        return amp
    return "bf16" if bf16_is_fast(device, flags)[0] else "off"


def amp_warning(amp: str, device: str = "cpu", flags: set[str] | None = None) -> str | None:
    """One line for a user who asked for bf16 where it is slow, else None."""
    if amp != "bf16":
        return None
    cpu = not device.startswith("cuda")
    flags = cpu_flags() if flags is None and cpu else flags
    fast, why = bf16_is_fast(device, flags)
    if fast:
        return None
    if cpu and "avx512_bf16" in flags:
        low, median, high = BF16_NO_AMX_STEP
        speed = f"the training step ran at {low:.2f}x to {high:.2f}x the float32 speed on such a CPU (median {median:.2f}x), sometimes slower"
    else:
        speed = "bfloat16 products are emulated, expect it slower than float32"
    return f"--amp bf16 on {why}: {speed}; --amp auto (or off) trains in float32 here"


# -- threads ---------------------------------------------------------------------------------
#
# On the CPU a reduction (a matrix product's inner sums, a sum over the batch) is split among
# the threads, so its rounding depends on how many take part. PyTorch fixes the count at start
# (torch.get_num_threads()), but two runtimes may still choose fewer at each call when they
# judge it better: MKL, whose dynamic mode is on by default (MKL_VERBOSE prints "Dyn:1"), and
# OpenMP under OMP_DYNAMIC=true, which sizes each team from the load average. Intel's condition
# for run-to-run reproducible results is a fixed thread count with both dynamic modes off.


@functools.cache
def _runtime(names: tuple[str, ...], symbol: str):
    """``symbol`` from the first of the shared libraries ``names`` (globs under torch/lib, or
    sonames) that has it, or None (a build without MKL, or without that OpenMP)."""
    import torch

    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    for name in names:
        for path in sorted(glob.glob(os.path.join(lib, name))) or [name]:
            try:
                return getattr(ctypes.CDLL(path), symbol)
            except (OSError, AttributeError):
                continue
    return None


def dynamic_threads_off() -> dict[str, bool]:
    """Turn MKL's and OpenMP's dynamic thread counts off in this thread; which runtimes were
    found ({"mkl": True, "openmp": True} with PyTorch's x86 wheels)."""
    mkl = _runtime(("libtorch_cpu.so", "libmkl_rt.so*"), "MKL_Set_Dynamic")
    omp = _runtime(("libgomp*.so*", "libiomp5.so", "libomp.so", "libgomp.so.1"), "omp_set_dynamic")
    for f in (mkl, omp):
        if f is not None:
            f(ctypes.c_int(0))
    return {"mkl": mkl is not None, "openmp": omp is not None}


def omp_dynamic() -> bool | None:
    """OpenMP's dynamic mode in this thread (None where no OpenMP runtime is found)."""
    f = _runtime(("libgomp*.so*", "libiomp5.so", "libomp.so", "libgomp.so.1"), "omp_get_dynamic")
    return None if f is None else bool(f())


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask, which taskset and container limits
    narrow), or all the machine's where the system does not say."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@contextlib.contextmanager
def fixed_threads(threads: int):
    """Run the block on exactly ``threads`` intra-op threads (0: as many as now), with MKL's and
    OpenMP's dynamic modes off; the thread count is restored afterwards (the dynamic modes stay
    off: nothing in PyTorch relies on them)."""
    import torch

    if threads and threads > (cores := usable_cores()):
        import warnings

        from .errors import VaekitWarning, count

        warnings.warn(
            f"threads {threads} is more than the {count(cores, 'core')} this process may use: "
            "PyTorch's threads then wait for each other at every operation, which makes it slower, not faster",
            VaekitWarning,
            stacklevel=3,
        )
    before = torch.get_num_threads()
    dynamic_threads_off()
    if threads and threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextlib.contextmanager
def no_autocast():
    """Run the block with ``torch.autocast`` off on the CPU and on CUDA: a caller's autocast
    region would otherwise run vaekit's float32 model in bfloat16 (and train a different
    model from the same seed). Precision is an option of vaekit's own (``amp``); an autocast
    nested inside this block, the training step's under ``amp="bf16"``, still applies."""
    import torch

    with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
        yield


def available_memory(device: str = "cpu", meminfo: str | None = None) -> int | None:
    """Bytes that new tensors can take: the free memory of a CUDA device, or the kernel's
    MemAvailable (Linux; from the text ``meminfo`` when given). None where unknown."""
    if device.startswith("cuda"):
        import torch

        try:
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except (RuntimeError, AssertionError, ValueError):  # no such device, or no CUDA build
            return None
    if meminfo is None:
        try:
            meminfo = MEMINFO.read_text()
        except OSError:
            return None
    for line in meminfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "MemAvailable":
            return int(value.split()[0]) * 1024  # kB
    return None


def parameter_count(config) -> int:
    """The number of parameters of ``VAEModel(config)``, counted on the meta device: nothing is
    allocated and no random number drawn (every registered model builds there; tested). Sizes
    whose tensors torch cannot even describe (a width of 2^60, 2^63) are refused with ConfigError."""
    import torch

    from .errors import ConfigError
    from .model import VAEModel

    try:
        with torch.device("meta"):
            model = VAEModel(config)
    except (RuntimeError, TypeError, OverflowError) as e:
        # torch's words for a size past 64-bit byte counts ("Storage size calculation
        # overflowed") or past a C long ("Overflow when unpacking long long").
        if "overflow" not in str(e).lower():
            raise
        raise ConfigError("a size of the model (a width, latent size, channel count, pseudo-input or component count) is too large for any tensor to hold: ask for a smaller one") from None
    return sum(p.numel() for p in model.parameters())


def check_model_fits(config, dtype: str = "float32", device: str = "cpu", available: int | None = None, copies: int = TRAINING_COPIES) -> None:
    """Refuse, before any allocation, a model whose training state alone (``copies`` of its
    parameters in ``dtype``: ``TRAINING_COPIES`` to train, 1 to load) exceeds the memory ``available`` on ``device`` (default:
    what the machine reports): the allocation would otherwise end in the kernel's out-of-memory
    kill, which no error message survives. Activations are not counted: this catches sizes that
    cannot work at all, not every run that will not fit."""
    import torch

    from .errors import ConfigError

    n = parameter_count(config)  # sizes no tensor can describe are refused even where memory is unknown
    available = available_memory(device) if available is None else available
    if available is None:  # the system does not say (no /proc/meminfo): nothing to compare with
        return
    need = n * (torch.finfo(getattr(torch, dtype)).bits // 8) * copies
    if need > available:
        what = "training them" if copies == TRAINING_COPIES else "holding them"
        held = "(weights, gradients and Adam's two moments)" if copies == TRAINING_COPIES else "(the weights)"
        raise ConfigError(
            f"the model has {n:,} parameters; {what} in {dtype} needs {need / 2**30:.1f} GiB "
            f"{held} and {device} has {available / 2**30:.1f} GiB free: "
            "ask for smaller hidden widths or latent sizes"
        )
