"""What the benchmark scripts share on their command lines: argument types that refuse values
no measurement can use, the device check, the description taken from a script's docstring, and
a wrapper of ``main`` that ends a bad input in one line and a non-zero exit, as vaekit's own
commands do."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable


# The pip name of a peer where it differs from its module's.
PACKAGES = {"pyro": "pyro-ppl"}


def description(doc: str | None) -> str:
    """The first paragraph of a docstring as one line of ``--help``."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _number(kind: type, low: float, what: str) -> Callable[[str], int | float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not value >= low:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{text!r}: expected {what}")
        return value

    return parse


positive_int = _number(int, 1, "an integer >= 1")
count = _number(int, 0, "an integer >= 0")
positive_float = _number(float, float.fromhex("0x1p-1074"), "a number > 0")


def number_list(text: str) -> list[float]:
    """'0.1,1,4' → [0.1, 1.0, 4.0]: comma-separated numbers, each > 0."""
    return [positive_float(part.strip()) for part in text.split(",")]


def device(text: str) -> str:
    """A torch device this machine has: cpu, cuda or cuda:N (checked before anything runs)."""
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: this PyTorch build sees no CUDA device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: there are {torch.cuda.device_count()} CUDA devices")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text!r}: the benchmarks run on cpu or cuda")
    return text


def documented(parser: argparse.ArgumentParser, args: argparse.Namespace, speed: tuple[str, ...]) -> bool:
    """Whether ``args`` measure what the documents show: every option at its default except the
    ones in ``speed`` (threads, which methods run in this process, where states are kept,
    output paths), which change how fast or where, not what. Other settings are a smoke test or
    an experiment, whose results stay out of the repository unless a path says otherwise."""
    defaults = vars(parser.parse_args([]))
    return all(value == defaults[key] for key, value in vars(args).items() if key not in speed)


def table_options(parser: argparse.ArgumentParser, args: argparse.Namespace, reads: tuple[str, ...] | None = None) -> None:
    """``--write FILE`` writes the table ``--table`` prints: alone it would be dropped. With
    ``--table``, which prints results measured before, an option that would change a
    measurement is refused, not ignored; ``reads``: the options that say where the results are
    (None: the script checks its options against its modes itself)."""
    if args.write and not args.table:
        parser.error("--write goes with --table")
    if args.table and reads is not None:
        defaults = vars(parser.parse_args([]))
        for key, value in vars(args).items():
            if key not in ("table", "write", *reads) and value != defaults.get(key, value):
                parser.error(f"--{key.replace('_', '-')} does not go with --table, which prints the results measured before")


def write_json(path: Path, result: Any) -> None:
    """A results file, indented, replaced atomically: an interrupted run leaves the old one."""
    from vaekit.files import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(result, indent=2) + "\n").encode())


# Where the benchmarks look for binarized MNIST first: the data folder beside the repository.
SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "binarized_mnist"


def existing_dir(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such directory")
    return path


def mnist_dir(given: Path | str | None) -> str | None:
    """The binarized-MNIST folder a benchmark reads: ``--data-dir`` when given, else
    ../shared/data/binarized_mnist beside the repository where it exists, else None, which
    leaves the lookup to vaekit ($VAEKIT_DATA, then the cache, then a download)."""
    if given is not None:
        return str(given)
    return str(SHARED_MNIST) if SHARED_MNIST.is_dir() else None


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """``--data-dir``: the folder of binarized_mnist.npz, read as :func:`mnist_dir` says."""
    parser.add_argument("--data-dir", type=existing_dir, help="the folder of binarized_mnist.npz (default: ../shared/data/binarized_mnist "
                        "beside the repository where it exists, else vaekit's lookup: $VAEKIT_DATA, then the cache)")


def mnist_file(given: Path | str | None) -> Path:
    """binarized_mnist.npz, found as ``vaekit train --data binarized_mnist`` finds it, starting
    from :func:`mnist_dir`."""
    from vaekit.data.named.binarized_mnist import find_binarized_mnist

    return find_binarized_mnist(mnist_dir(given))


def mnist_dataset(given: Path | str | None):
    """binarized MNIST as ``vaekit train --data binarized_mnist`` reads it (found as
    :func:`mnist_dir` says, its checksum and arrays checked): a ``Dataset`` of float32 splits."""
    from vaekit.config import DataConfig
    from vaekit.data import load_dataset

    return load_dataset(DataConfig(source="binarized_mnist", data_dir=mnist_dir(given)))


def first_rows(x, rows: int, script: str, option: str = "--rows"):
    """The first ``rows`` rows of ``x``: more than it holds is refused, not cut to what there is
    (the results would name a count that was not measured)."""
    if rows > len(x):
        sys.exit(f"{script}: {option} {rows}: the test split has {len(x)} images")
    return x[:rows]


def writable_dir(path: Path, option: str) -> Path:
    """``path`` made if need be and found writable, before any training: the results of an hour
    are not lost to a folder that cannot take them. An OSError that says so in one line."""
    import tempfile

    path = Path(path).expanduser()
    there = next((p for p in (path, *path.parents) if p.exists()), None)
    if there is not None and not there.is_dir():
        raise OSError(f"{option} {path}: {there} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as e:
        raise OSError(f"{option} {path}: cannot write there ({e.strerror or e})") from None
    return path


def existing_file(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return path


def png_file(text: str) -> Path:
    """A picture's path: a .png, as vaekit's own --plot takes (another suffix would get PNG bytes)."""
    path = Path(text).expanduser()
    if path.suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"{text}: the picture is a PNG, give a path ending in .png")
    return path


def run(main: Callable[[], object], script: str) -> None:
    """Call ``main``; vaekit's errors, missing or unwritable files, a failed vaekit command and a
    missing peer end the script with one line on stderr (exit 1; Ctrl-C: 130)."""
    from vaekit.errors import VaekitError

    try:
        main()
        sys.stdout.flush()  # here, where a closed stdout is caught, not at the interpreter's exit
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # stdout closed by its reader (`| head`): quiet, as vaekit's own verbs
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except ModuleNotFoundError as e:
        name = (e.name or "a module").split(".")[0]
        sys.exit(f"{script}: needs {name}, which is not installed (pip install {PACKAGES.get(name, name)})")
    except (VaekitError, OSError) as e:
        sys.exit(f"{script}: {e}")
    except subprocess.CalledProcessError as e:
        sys.exit(f"{script}: {' '.join(map(str, e.cmd))} failed (exit {e.returncode})")
