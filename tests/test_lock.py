"""vaekit.lock: one writer per run directory; the kernel releases the lock when its holder dies."""

from __future__ import annotations

import os
import re

import pytest

from lock_helpers import holding, kill9
from vaekit.errors import RunLockedError
from vaekit.lock import LOCK_FILE, RunLock
from vaekit import lock as lock_mod

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the holder is killed with SIGKILL")


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    with holding(run) as holder:
        before = sorted(p.name for p in run.iterdir())
        with pytest.raises(RunLockedError, match=rf"^run directory {re.escape(str(run))} is being written by another process \(pid {holder.pid}\)$"):
            RunLock(run).acquire()
        assert sorted(p.name for p in run.iterdir()) == before == [LOCK_FILE]
        assert (run / LOCK_FILE).read_text().strip() == str(holder.pid)


def test_two_locks_in_one_process_exclude_each_other(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLockedError, match=rf"\(pid {os.getpid()}\)"):
            RunLock(tmp_path).acquire()


def test_the_lock_dies_with_a_holder_killed_by_sigkill(tmp_path):
    run = tmp_path / "run"
    with holding(run) as holder:
        kill9(holder)
        # The killed holder could not remove its file; a file that nobody holds blocks nobody.
        assert (run / LOCK_FILE).read_text().strip() == str(holder.pid)
        with RunLock(run) as lock:
            assert lock.held and (run / LOCK_FILE).read_text().strip() == str(os.getpid())
    assert not (run / LOCK_FILE).exists()


def test_release_leaves_no_lock_file_and_no_empty_directory_it_made(tmp_path):
    with RunLock(tmp_path / "new" / "a" / "run"):
        assert (tmp_path / "new" / "a" / "run" / LOCK_FILE).is_file()
    assert not (tmp_path / "new").exists()  # nor the parents it made for it
    (tmp_path / "shared").mkdir()
    with RunLock(tmp_path / "shared" / "a" / "run"):
        (tmp_path / "shared" / "other").write_text("x")  # a parent made by the lock but used by another
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["other"]
    with RunLock(tmp_path / "shared" / "b" / "run"):
        (tmp_path / "shared" / "b" / "beside").write_text("x")
    assert sorted(p.name for p in (tmp_path / "shared" / "b").iterdir()) == ["beside"]
    (tmp_path / "old").mkdir()
    with RunLock(tmp_path / "old"):
        (tmp_path / "old" / "kept").write_text("x")
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["kept"]
    with RunLock(tmp_path / "old"):  # taken again once released
        pass


def test_a_symbolic_link_at_the_lock_path_is_refused_and_its_target_kept(tmp_path):
    """The lock writes its holder's pid into the lock file: through a link it would overwrite
    whatever file the link names."""
    from vaekit.errors import VaekitError

    target = tmp_path / "precious.txt"
    target.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).symlink_to(target)
    with pytest.raises(VaekitError, match="is a symbolic link"):
        RunLock(run).acquire()
    assert target.read_text() == "precious\n" and (run / LOCK_FILE).is_symlink()


def test_a_lock_file_that_cannot_be_written_is_one_error_and_leaves_nothing(tmp_path, monkeypatch):
    """A full disk (the pid cannot be written) or a directory where files cannot be made: a
    VaekitError naming the lock file, and no lock file or directory of this attempt left."""
    import errno

    from vaekit.errors import VaekitError

    run = tmp_path / "run"
    real_write = os.write

    def full(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(LOCK_FILE):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(VaekitError, match=rf"{re.escape(str(run / LOCK_FILE))}: cannot write the lock file \(No space left on device\)"):
        RunLock(run).acquire()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    real_open = os.open

    def refused(path, flags, mode=0o777):
        if str(path).endswith(LOCK_FILE):
            raise PermissionError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", refused)
    with pytest.raises(VaekitError, match=r"cannot create the lock file \(Read-only file system\)"):
        RunLock(run).acquire()
    assert list(tmp_path.iterdir()) == []


def test_a_stale_longer_pid_is_overwritten_whole(tmp_path):
    """A holder killed by SIGKILL leaves its lock file with its pid; the next holder's pid
    replaces it whole (the file is cut to it), so that a refused writer is told that pid and
    not a mix of the two."""
    (tmp_path / LOCK_FILE).write_text("9" * 12 + "\n")
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        fd = os.open(tmp_path / LOCK_FILE, os.O_RDONLY)
        try:
            assert lock_mod._read_pid(fd) == os.getpid()
        finally:
            os.close(fd)


def test_a_lock_file_removed_between_open_and_lock_is_opened_again(tmp_path, monkeypatch):
    """The holder removes the lock file as it releases; a writer that opened the old file and
    then got its lock holds a lock nobody else will ever ask for: it must start over on the
    file now at the path, and end holding that one (with its pid in it)."""
    real = lock_mod._try_lock
    calls = []

    def released_meanwhile(fd):
        calls.append(fd)
        if len(calls) == 1:  # what the previous holder's release does just then
            os.unlink(tmp_path / LOCK_FILE)
        return real(fd)

    monkeypatch.setattr(lock_mod, "_try_lock", released_meanwhile)
    with RunLock(tmp_path) as held:
        assert len(calls) == 2
        st, own = os.stat(tmp_path / LOCK_FILE), os.fstat(held._fd)
        assert (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
