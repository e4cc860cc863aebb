"""The files the verbs write: arrays as .npy, .npz or .csv, atomically (a failure leaves the
previous file), and row blocks streamed into one array so the output need not fit in memory.
No torch import here."""

from __future__ import annotations

import io
import os
from pathlib import Path

from .errors import ConfigError, DataError, VaekitError


def check_out(
    out: Path, suffixes: tuple[str, ...], option: str = "--out", run_dir: str | Path | None = None, data: tuple[Path, ...] = (),
    redraws: str | None = None, overwrite: bool | None = None,
) -> None:
    """Refuse, before any work is done, an output path ``option`` names that could not be
    written: a file type the verb does not write, a missing directory, a directory, one of
    the files of the run ``run_dir`` that the verb reads, a picture of that run other than
    the one the verb ``redraws``, a file or picture of another run, or the ``data`` file it
    reads; and, where ``overwrite`` is False, a file that exists (other than the picture the
    verb redraws), so that a slip of --out never replaces work without a word."""
    from .files import CONFIG_FILE, RUN_FILES, of_a_run, run_picture

    target = out.resolve()  # what is written: through a link, its target
    holder = target.parent
    own = run_dir is not None and holder == Path(run_dir).resolve()
    if own and target.name in RUN_FILES:
        raise ConfigError(f"{option} {out}: is a file of the run {run_dir}; name another file")
    # A verb may redraw its own picture of the run (``redraws``), not put its picture in place
    # of another (a sample grid over the training curves).
    if own and run_picture(target.name) and target.name != redraws:
        raise ConfigError(f"{option} {out}: is the run's {target.name}, a picture of another kind; name another file")
    # Another run's files and pictures are as much its own: a verb of run A writing B/latent.png
    # or B/bubbles.npz would replace B's picture or break B's next resume.
    if not own and (holder / CONFIG_FILE).is_file() and of_a_run(target.name):
        raise ConfigError(f"{option} {out}: is a file of the run in {holder}; name another file")
    if any(path.is_file() and target == path.resolve() for path in data):
        raise ConfigError(f"{option} {out}: is a data file this reads or the run was trained on; name another file")
    if overwrite is False and out.is_file() and not (own and target.name == redraws):
        raise VaekitError(f"{option} {out}: exists; pass --overwrite to replace it, or name another file")  # as a run in --out: exit 1
    if out.is_dir():  # whatever its name: "unsupported file type" would miss the point
        raise DataError(f"{option} {out}: is a directory; name a file")
    if out.suffix.lower() not in suffixes:
        raise ConfigError(f"{option} {out}: unsupported file type; use {', '.join(suffixes)}")
    parent = Path(os.path.realpath(out)).parent if out.is_symlink() else out.parent  # a link's target is written
    if not parent.exists():
        raise DataError(f"{option} {out}: directory {parent} does not exist")
    if not parent.is_dir():
        raise DataError(f"{option} {out}: {parent} is a file, not a directory")
    # The write goes through a temporary beside OUT (atomic rename): a directory that refuses
    # it is found now, not after the work.
    import tempfile

    try:
        tempfile.NamedTemporaryFile(dir=parent, prefix=f".{out.name}.", suffix=".probe").close()  # deleted on close
    except OSError as e:
        raise DataError(f"{option} {out}: cannot write in {parent} ({e.strerror or e})") from None


def check_room(out: Path, nbytes: int, option: str = "--out") -> None:
    """Refuse, before any work, an output of at least ``nbytes`` that the file system holding
    ``out`` has no room for: the write would otherwise fail only at its end (the previous file
    stays either way). Where the file system does not say, nothing is refused."""
    import shutil

    try:
        free = shutil.disk_usage(out.parent).free
    except OSError:
        return
    if nbytes > free:
        raise DataError(f"{option} {out}: the output needs at least {nbytes / 2**30:.3g} GiB and {out.parent} has {free / 2**30:.3g} GiB free")


def header_line(names: list[str]) -> str:
    """A CSV header of ``names``, quoted where a name holds a comma, quote or line break, so
    that the file reads back with as many names as columns."""
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(names)
    return buf.getvalue()


def write_array(out: Path, arr, header: list[str] | None = None, arrays: dict | None = None) -> None:
    import numpy as np

    from .files import atomic_write_bytes, sweep_temporaries

    buf = io.BytesIO()
    suffix = out.suffix.lower()
    if suffix == ".npy":
        np.save(buf, arr)
    elif suffix == ".npz":
        np.savez(buf, **(arrays or {"x": arr}))
    else:
        a = arr.reshape(len(arr), -1)
        np.savetxt(buf, a, delimiter=",", header=header_line(header) if header else "", comments="", fmt=csv_format(a.dtype))
    try:
        atomic_write_bytes(out, buf.getvalue())
    except OSError as e:
        raise DataError(f"--out {out}: cannot write ({e.strerror})") from None
    sweep_temporaries(out)  # those of earlier writes of OUT that were killed


def csv_format(dtype) -> str:
    """The printf format that writes a value of ``dtype`` so that it reads back as the same
    value: 9 significant digits for float32, 17 for float64."""
    return "%.17g" if getattr(dtype, "itemsize", 8) > 4 else "%.9g"


def write_blocks(out: Path, blocks, shape: tuple[int, int], header: list[str] | None = None) -> None:
    """Write consecutive row blocks as one (n, d) array to .npy, .npz (key "x") or .csv (its
    first line ``header``, when given), atomically, holding one block in memory at a time;
    the array has the blocks' dtype."""
    import itertools
    import zipfile

    import numpy as np

    from .files import atomic_write, sweep_temporaries

    def npy(f) -> None:
        first = next(blocks, np.empty((0, shape[1]), np.float32))  # its dtype (the model's) goes into the header
        header = {"descr": np.lib.format.dtype_to_descr(first.dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(f, header)
        for block in itertools.chain([first], blocks):
            f.write(np.ascontiguousarray(block).tobytes())

    blocks = iter(blocks)

    def write(f) -> None:
        suffix = out.suffix.lower()
        if suffix == ".npy":
            npy(f)
        elif suffix == ".npz":
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z, z.open("x.npy", "w", force_zip64=True) as member:
                npy(member)
        else:
            if header:
                f.write((header_line(header) + "\n").encode())
            for block in blocks:
                np.savetxt(f, block, delimiter=",", fmt=csv_format(block.dtype))

    try:
        atomic_write(out, write)
    except OSError as e:
        raise DataError(f"--out {out}: cannot write ({e.strerror})") from None
    sweep_temporaries(out)  # those of earlier writes of OUT that were killed
