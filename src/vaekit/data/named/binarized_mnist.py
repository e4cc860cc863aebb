"""``binarized_mnist``: the statically binarized MNIST of Larochelle & Murray (2011), with its
fixed 50000/10000/10000 train/valid/test splits, verified by a content checksum: found in
``data_dir``, ``$VAEKIT_DATA`` or the cache, else downloaded (the .amat files) into the cache."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import DataError
from ...files import atomic_write
from ...registry import DATASETS
from ..containers import SPLIT_NAMES, Dataset
from ..readers import open_npz
from . import NamedDataset

if TYPE_CHECKING:
    from ...config import DataConfig

BINARIZED_MNIST_FILE = "binarized_mnist.npz"
BINARIZED_MNIST_URL = (
    "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{split}.amat"
)
# sha256 of train.tobytes() + valid.tobytes() + test.tobytes() (uint8, C order): it pins
# the content whatever the container (compression, key order), so a re-saved copy still passes.
BINARIZED_MNIST_SHA256 = "07ad6da6ba6894a550cb68ae290ff3deb006a01f6b6ce1b3123edec502f1fce8"
BINARIZED_MNIST_DIM = 784
# Long enough for a slow mirror, short enough that an offline machine fails in reasonable time.
DOWNLOAD_TIMEOUT_S = 30.0


@DATASETS.register("binarized_mnist")
class BinarizedMNIST(NamedDataset):
    """Binarized MNIST (Larochelle & Murray 2011) with its fixed splits; fractions do not apply."""

    downloads = True
    reads_data_dir = True

    @classmethod
    def files(cls, data_dir: str | None) -> tuple[Path, ...]:
        found = _found(data_dir)
        return (found,) if found is not None else ()

    @classmethod
    def load(cls, config: DataConfig) -> Dataset:
        path = find_binarized_mnist(config.data_dir)
        arrays = _read_binarized_mnist(path)
        return Dataset(
            name="binarized_mnist",
            train=arrays["train"].astype(np.float32),
            valid=arrays["valid"].astype(np.float32),
            test=arrays["test"].astype(np.float32),
            image_shape=(28, 28),
            labels={s: None for s in SPLIT_NAMES},
            fixed=("valid", "test"),
        )


def _content_sha256(train: np.ndarray, valid: np.ndarray, test: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (train, valid, test):
        h.update(np.ascontiguousarray(a, dtype=np.uint8).tobytes())
    return h.hexdigest()


def _read_binarized_mnist(path: Path) -> dict[str, np.ndarray]:
    """The three uint8 splits of a binarized_mnist.npz, checked against BINARIZED_MNIST_SHA256."""
    contents = open_npz(path, "binarized MNIST")
    missing = [s for s in SPLIT_NAMES if s not in contents]
    if missing:
        raise DataError(f"{path}: expected arrays train, valid, test, missing {', '.join(missing)}")
    arrays = {s: contents[s] for s in SPLIT_NAMES}
    for s, a in arrays.items():
        if a.ndim != 2 or a.shape[1] != BINARIZED_MNIST_DIM:
            raise DataError(f"{path}: {s} has shape {a.shape}; expected (n, {BINARIZED_MNIST_DIM})")
        if a.dtype != np.uint8:
            if a.dtype.kind not in "biuf" or not np.isin(a, (0, 1)).all():
                raise DataError(f"{path}: {s} has values other than 0 and 1 (dtype {a.dtype})")
            arrays[s] = a.astype(np.uint8)
    digest = _content_sha256(arrays["train"], arrays["valid"], arrays["test"])
    if digest != BINARIZED_MNIST_SHA256:
        raise DataError(
            f"{path}: content checksum sha256 {digest[:12]}… does not match binarized MNIST "
            f"({BINARIZED_MNIST_SHA256[:12]}…); the file is corrupt or a different dataset"
        )
    return arrays


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vaekit"


def _candidates(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return [root / BINARIZED_MNIST_FILE, root / "binarized_mnist" / BINARIZED_MNIST_FILE]


def _roots(data_dir: str | None) -> list[Path]:
    """Where the file is looked for, in order: ``data_dir``, ``$VAEKIT_DATA``, the cache."""
    return [*(Path(r).expanduser() for r in (data_dir, os.environ.get("VAEKIT_DATA")) if r), _cache_dir()]


def _found(data_dir: str | None) -> Path | None:
    """The first binarized_mnist.npz found under ``_roots``, or None."""
    return next((c for root in _roots(data_dir) for c in _candidates(root) if c.is_file()), None)


def find_binarized_mnist(data_dir: str | None = None) -> Path:
    """Path of binarized_mnist.npz: looked up in ``data_dir``, then ``$VAEKIT_DATA``, then the
    cache (``$XDG_CACHE_HOME/vaekit`` or ``~/.cache/vaekit``), as ``binarized_mnist.npz`` or
    ``binarized_mnist/binarized_mnist.npz``; if absent, downloaded into the cache. Raises
    DataError saying where it looked when the download fails."""
    found = _found(data_dir)
    if found is not None:
        return found
    try:
        return download_binarized_mnist(_cache_dir())
    except DataError as e:
        looked = ", ".join(str(r) for r in _roots(data_dir))
        raise DataError(
            f"{BINARIZED_MNIST_FILE} not found (looked in {looked}) and {e}; pass --data-dir DIR "
            f"or set VAEKIT_DATA=DIR for a directory containing {BINARIZED_MNIST_FILE}"
        ) from None


def download_binarized_mnist(cache_dir: Path) -> Path:
    """Fetch the three .amat files of Larochelle & Murray (2011), check the content sha256,
    and write ``cache_dir/binarized_mnist.npz`` atomically (temp file, then ``os.replace``),
    so an interrupted download never leaves a half-written file that looks valid."""
    cache_dir = Path(cache_dir)
    arrays = {}
    for split in SPLIT_NAMES:
        url = BINARIZED_MNIST_URL.format(split=split)
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                raw = response.read()
        except (OSError, http.client.HTTPException, ValueError) as e:
            # URLError and timeouts are OSErrors; HTTPException covers truncated responses.
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            raise DataError(f"the download from {url} failed ({reason})") from None
        arrays[split] = _parse_amat(raw, url)
    digest = _content_sha256(arrays["train"], arrays["valid"], arrays["test"])
    if digest != BINARIZED_MNIST_SHA256:
        raise DataError(
            f"the download from {BINARIZED_MNIST_URL.format(split='*')} failed (content sha256 "
            f"{digest[:12]}…, expected {BINARIZED_MNIST_SHA256[:12]}…)"
        )
    target = cache_dir / BINARIZED_MNIST_FILE
    try:
        atomic_write(target, lambda f: np.savez_compressed(f, **arrays))
    except OSError as e:
        raise DataError(f"the download could not be saved to {target} ({e.strerror or e})") from None
    return target


def _parse_amat(raw: bytes, url: str) -> np.ndarray:
    """One image per line, 784 space-separated 0/1 values -> uint8 (n, 784)."""
    b = np.frombuffer(raw, dtype=np.uint8)
    digit = (b == ord("0")) | (b == ord("1"))
    space = (b == ord(" ")) | (b == ord("\t")) | (b == ord("\r"))
    newline = b == ord("\n")
    if not (digit | space | newline).all() or (digit[:-1] & digit[1:]).any():
        raise DataError(f"the download from {url} failed (not a table of single 0/1 values)")
    # Digits per line: cumulative count at each line end, differenced.
    ends = np.flatnonzero(newline)
    if len(b) and not newline[-1]:
        ends = np.append(ends, len(b) - 1)
    counts = np.diff(np.concatenate([[0], np.cumsum(digit)[ends]]))
    counts = counts[counts > 0]  # blank lines
    if len(counts) == 0 or (counts != BINARIZED_MNIST_DIM).any():
        raise DataError(
            f"the download from {url} failed (expected {BINARIZED_MNIST_DIM} values per line)"
        )
    return (b[digit] - ord("0")).reshape(-1, BINARIZED_MNIST_DIM)
