"""Atomic file writes, shared by checkpoints, metrics, outputs, pictures and the data cache.

No torch import here: ``vaekit.plots`` and ``vaekit.data`` use it and must stay light.
"""

from __future__ import annotations

import glob
import json
import os
import re
import secrets
from pathlib import Path
from typing import Callable, IO

# The files training writes into a run directory (read by vaekit.checkpoint and vaekit.bubbles).
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
LAST_FILE = "last.safetensors"
METRICS_FILE = "metrics.jsonl"
BUBBLES_FILE = "bubbles.npz"
RUN_FILES = (CONFIG_FILE, MODEL_FILE, LAST_FILE, METRICS_FILE, BUBBLES_FILE)
# The pictures training draws there; `sample` and `reconstruct` may redraw their own.
PICTURES = ("samples.png", "reconstructions.png", "curves.png", "latent.png", "kl_per_dim.png", "latent_grid.png", "bubbles.png", "spaces.png")


def run_picture(name: str) -> bool:
    """Whether a file of this name in a run directory is one of the run's pictures: training's,
    or those `gaps` draws there by default (gaps_SPLIT.png, gaps_SPLIT_bars.png)."""
    import re

    return name in PICTURES or re.fullmatch(r"gaps_\w+?(_bars)?\.png", name) is not None


def of_a_run(name: str) -> bool:
    """Whether a file of this name in a run directory is the run's own: a file training
    writes, or one of its pictures."""
    return name in RUN_FILES or run_picture(name)


def json_loads(text: str | bytes):
    """json.loads, with input nested deeper than the parser's recursion limit (a damaged or
    hostile config.json or metrics line) raised as the json.JSONDecodeError that every reader
    handles, not as a RecursionError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text if isinstance(text, str) else "", 0) from None


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Run ``write(fileobj)`` on a temporary file beside ``path``, flush it to disk, then rename
    it over ``path``: a crash at any moment leaves either the old file or the whole new one, and
    on an error the temporary file is removed and ``path`` is untouched.

    The temporary file is ``.NAME.<pid><random>.tmp`` (``checkpoint.remove_stale_temporaries`` relies
    on that), created with mode 0666 so the umask decides, as for ``open`` (``tempfile.mkstemp``
    would make every output 0600). A ``path`` that is a symbolic link gets its target
    replaced, as ``open`` would write it, and the link stays."""
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file() and not path.is_dir():
        # The rename would put a regular file in place of a FIFO or a device node (behind a
        # link, /dev/null itself): refused before anything is written.
        from .errors import ConfigError

        raise ConfigError(f"{path} is not a regular file (a pipe, socket or device); outputs are written whole and renamed into place, give a file's path")
    tmp = _temporary(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_together(contents: dict[Path, bytes]) -> None:
    """Write several files that belong together (a model's config.json and its weights) so
    that a failure while writing, a full disk say, changes none of them: every temporary file
    is written and flushed first, and only then each is renamed over its file."""
    written: list[tuple[Path, Path]] = []
    try:
        for path, data in contents.items():
            written.append((_temporary(Path(path), lambda f, data=data: f.write(data)), Path(path)))
        for tmp, path in written:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
        raise


def _temporary(path: Path, write: Callable[[IO[bytes]], object]) -> Path:
    """``.NAME.<pid><random>.tmp`` beside ``path``, holding what ``write`` wrote, flushed to disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{_token()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno is not None and e.filename is None:
            e.filename = str(path)  # a write on a descriptor (a full disk) names no file
        raise
    return tmp


def _token() -> str:
    """The 12 hex digits of a temporary's name: the writer's PID (8) and 4 random ones, so
    that a later write of the same file can tell one whose writer is gone (sweep_temporaries)."""
    return f"{os.getpid() & 0xFFFFFFFF:08x}{secrets.token_hex(2)}"


def sweep_temporaries(path: str | Path) -> None:
    """Delete the temporaries of ``path`` (``.NAME.<pid><random>.tmp``) whose writer process
    has ended: what a kill between write and rename left. One whose writer still runs, or
    whose writer cannot be told (another system's PIDs, no POSIX signals), stays."""
    path = Path(path)
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        match = re.fullmatch(r"([0-9a-f]{8})[0-9a-f]{4}", tmp.name[len(path.name) + 2 : -len(".tmp")])
        if match and not _running(int(match.group(1), 16)):
            tmp.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    if os.name != "posix" or pid == os.getpid():  # os.kill on Windows would end the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process: it runs
        return True
    return True
