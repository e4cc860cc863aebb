"""Processes that hold a run directory's lock, for the one-writer tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from vaekit.lock import LOCK_FILE

HOLD = "import sys, time; from vaekit.lock import RunLock; RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)"


@contextlib.contextmanager
def holding(run_dir: Path):
    """A separate process that holds RUN_DIR's lock for the block (yields its Popen); it is
    killed with SIGKILL afterwards, if the block has not done so."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held", "the holder never took the lock"
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()


def wait_until_locked_by(run_dir: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Until ``proc`` holds RUN_DIR's lock (its pid is in the lock file: written once it holds it)."""
    deadline = time.monotonic() + timeout
    path = Path(run_dir) / LOCK_FILE
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the process ended (exit {proc.returncode}) before it held the lock"
        try:
            if path.read_text().strip() == str(proc.pid):
                return
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{proc.pid} did not take the lock of {run_dir} within {timeout} s")


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
