"""One writer per run directory: a lock on RUN_DIR/.vaekit.lock, held by ``vaekit train`` and
``VAE.save`` for as long as they write.

The lock is the kernel's (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows), so it dies
with its holder: a process killed with SIGKILL leaves at most the lock file, and a lock file
that nobody holds blocks nobody. The holder writes its pid into the file, for the message a
second writer gets. On POSIX the holder removes the file when it is done, so a finished run
directory holds no trace of it; on Windows an open file cannot be removed and it stays.

The lock is advisory: it orders vaekit's own writers, not other programs. Like every
``flock``, it may not hold across machines on a network file system that does not support it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import RunLockedError, VaekitError

LOCK_FILE = ".vaekit.lock"
# Windows locks byte ranges; the lock is on a byte past the pid, so that a second writer can
# still read the pid (a locked range cannot be read there).
_WINDOWS_LOCK_OFFSET = 1 << 20

if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


class RunLock:
    """The lock of one run directory, as a context manager: ``with RunLock(run_dir): ...``.
    The directory is created if need be, and removed again on release if it is still empty.
    Raises ``RunLockedError`` at once, without waiting and without touching anything else in
    the directory, when another process holds it."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self._created: list[Path] = []  # the directories acquire made, deepest first

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        while True:
            if not self.run_dir.is_dir():
                missing = [d for d in (self.run_dir, *self.run_dir.parents) if not d.exists()]
                try:
                    self.run_dir.mkdir(parents=True, exist_ok=True)
                except OSError as e:  # a parent that is a file, or not writable
                    if self.run_dir.exists():
                        raise VaekitError(f"{self.run_dir} is a file, not a run directory") from None
                    raise VaekitError(f"{self.run_dir}: cannot create the run directory ({e.strerror or e})") from None
                self._created = missing
            try:
                # O_NOFOLLOW: the pid written here must not land in whatever file a link names.
                flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
                fd = os.open(self.path, flags, 0o666)
            except FileNotFoundError:  # the directory's creator removed it again, empty
                continue
            except OSError as e:
                if self.path.is_symlink():
                    raise VaekitError(f"{self.path} is a symbolic link, not a vaekit lock file; remove it") from None
                self._remove_created()
                raise VaekitError(f"{self.path}: cannot create the lock file ({e.strerror or e})") from None
            if not _try_lock(fd):
                pid = _read_pid(fd)
                os.close(fd)
                holder = f" (pid {pid})" if pid is not None else ""
                raise RunLockedError(f"run directory {self.run_dir} is being written by another process{holder}")
            if _names_file(self.path, fd):
                break
            # The holder removed the file between our open and our lock: the lock we hold is
            # on a file nobody else will open again. Start over on the path's current file.
            os.close(fd)
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.ftruncate(fd, len(f"{os.getpid()}\n"))
        except OSError as e:  # a full disk: nothing of this attempt stays behind
            self._fd = fd
            self.release()
            raise VaekitError(f"{self.path}: cannot write the lock file ({e.strerror or e})") from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if os.name != "nt":
            # Removed while still held: whoever opened it meanwhile finds, once it holds the
            # lock, that the path no longer names that file (``_names_file``), and starts over.
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        os.close(fd)  # closing the descriptor releases the lock
        self._remove_created()

    def _remove_created(self) -> None:
        # A writer that failed before writing anything leaves no empty directory behind: not
        # the run directory, nor the parents it made for it.
        for directory in self._created:
            try:
                directory.rmdir()
            except OSError:  # not empty: the run is in it, or another run beside it
                break
        self._created = []

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _names_file(path: Path, fd: int) -> bool:
    if os.name == "nt":  # pragma: no cover - the file is never removed there
        return True
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _read_pid(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 32).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None
