"""The allocator setting: freed step buffers are reused instead of faulted in again."""

import platform
import subprocess
import sys
import textwrap

import pytest

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)

# One "step": the MNIST model's activation and gradient sizes, made, touched and freed.
_STEPS = textwrap.dedent(
    """
    import resource, sys, torch
    if sys.argv[1] == "keep":
        from vaekit.runtime import keep_freed_memory
        assert keep_freed_memory()
    def step():
        ts = [torch.ones(n) for n in (100_352, 100_352, 51_200, 51_200, 313_600, 313_600, 5_120)]
        return sum(float(t[0]) for t in ts)
    for _ in range(10):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        step()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 50)
    """
)


def _faults_per_step(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _STEPS, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


@glibc
def test_freed_buffers_are_reused_not_faulted_in_again():
    # Without the setting the same loop faults its pages in on every step (about 150 per step
    # on this machine kind); with it, the step's memory stays in the process.
    assert _faults_per_step("default") > 20
    assert _faults_per_step("keep") < 2


@glibc
def test_keep_freed_memory_is_set_once_and_reports_it():
    from vaekit.runtime import keep_freed_memory

    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # cached: mallopt is not called again


def test_other_platforms_are_left_alone(monkeypatch):
    from vaekit import runtime

    monkeypatch.setattr(runtime.sys, "platform", "darwin")
    runtime.keep_freed_memory.cache_clear()
    try:
        assert runtime.keep_freed_memory() is False
    finally:
        runtime.keep_freed_memory.cache_clear()
