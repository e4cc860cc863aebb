"""Datasets and the one input check shared by the Python API and the CLI.

``load_dataset(DataConfig)`` returns a ``Dataset`` with float32 ``(n, D)`` train/valid/test
splits, from a named dataset (``NAMED``) or a user file (.npy, .npz, .csv, .tsv, .txt).
``check_data`` is the single validation gate for arrays (scikit-learn's ``check_array``
habit): every message says what was expected and what was found, and names the culprit.

Named datasets:

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, pixels 0..16,
  scaled to [0, 1]), split by fractions with a seeded permutation.
- ``binarized_mnist``: the statically binarized MNIST of Larochelle & Murray (2011), with
  its fixed 50000/10000/10000 train/valid/test splits, verified by a content checksum.

User ``.npz`` files follow one of two conventions:

- explicit splits: arrays ``train`` and ``test`` (``valid`` optional; when absent it is
  split from ``train`` by ``valid_fraction``), optional labels ``train_labels``,
  ``valid_labels``, ``test_labels`` (given for every split present, or for none);
  other arrays are ignored;
- one data array: the array named ``x``, ``X`` or ``data``, or else the only array in the
  file, with optional labels in ``y`` or ``labels``; split by fractions.

Text tables (.csv comma-, .tsv tab-, .txt whitespace- or comma-separated) hold numbers only,
no labels; a first row with a non-numeric cell is a header; lines starting with ``#``
are comments (``np.savetxt`` writes its header that way).

The library raises ``DataError`` and never prints or exits.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import math
import os
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import DataConfig
from .errors import DataError
from .files import atomic_write

SPLITS = ("train", "valid", "test", "all")
NAMED = ("digits", "binarized_mnist")
SUFFIXES = (".npy", ".npz", ".csv", ".tsv", ".txt")

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

_SPLIT_NAMES = SPLITS[:3]


@dataclass
class Dataset:
    """Train/valid/test splits as float32 ``(n, D)`` C-contiguous arrays, with optional labels."""

    name: str
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    # (H, W) or (C, H, W) for images, so samples can be drawn as pictures; None otherwise.
    image_shape: tuple[int, ...] | None = None
    labels: dict[str, np.ndarray | None] = field(
        default_factory=lambda: {"train": None, "valid": None, "test": None}
    )

    def split(self, name: str) -> np.ndarray:
        """One split; ``'all'`` is train, valid and test concatenated in that order."""
        _check_split(name)
        if name == "all":
            if isinstance(self.train, MappedRows):
                return MappedRows(self.train.array, np.concatenate([p.index for p in (self.train, self.valid, self.test)]))
            return np.concatenate([self.train, self.valid, self.test], axis=0)
        return getattr(self, name)

    def split_labels(self, name: str) -> np.ndarray | None:
        """Labels of one split, aligned with ``split(name)``; None when the data has none."""
        _check_split(name)
        if name == "all":
            parts = [self.labels.get(s) for s in _SPLIT_NAMES]
            if any(p is None for p in parts):
                return None
            return np.concatenate(parts)
        return self.labels.get(name)

    @property
    def dim(self) -> int:
        """D, the number of features per datapoint."""
        return int(self.train.shape[1])


class MappedRows:
    """The rows of one split of a memory-mapped .npy file, read only when asked for.

    Datasets larger than memory stream through it: training reads one batch of rows at a
    time, checks and evaluation read ``CHUNK_ROWS`` rows at a time, and the operating system
    keeps in memory only the pages in use (file-backed pages, which it can drop again).
    """

    def __init__(self, array: np.ndarray, rows: np.ndarray | None = None):
        self.array = array  # (N, D) memmap, any numeric dtype
        self.index = np.arange(len(array)) if rows is None else np.asarray(rows)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.index), int(self.array.shape[1]))

    ndim = 2
    dtype = np.dtype(np.float32)

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """float32 copies of the rows at ``positions`` of this split, in that order; the file
        is read in ascending row order, which the page cache serves best."""
        file_rows = self.index[np.asarray(positions)]
        order = np.argsort(file_rows, kind="stable")
        out = np.empty((len(file_rows), self.shape[1]), dtype=np.float32)
        out[order] = self.array[file_rows[order]]
        return out

    def __getitem__(self, key) -> np.ndarray:
        return self.rows(np.arange(len(self))[key])

    def chunks(self, size: int | None = None):
        """float32 blocks of consecutive rows of this split, in order."""
        size = size or CHUNK_ROWS
        for start in range(0, len(self), size):
            yield self.rows(np.arange(start, min(start + size, len(self))))


# Rows per block when a mapped split is checked or evaluated: bounds memory, keeps matrices large.
CHUNK_ROWS = 8192


def _check_mapped(x: MappedRows, what: str, min_rows: int, input_dim: int | None, likelihood: Any) -> MappedRows:
    if len(x) < min_rows:
        raise DataError(f"{what} has {len(x)} rows (shape={x.shape}); at least {min_rows} {'is' if min_rows == 1 else 'are'} needed")
    if x.array.dtype.kind not in "biuf":
        raise DataError(f"{what} has dtype {x.array.dtype}; expected numbers (bool, int or float)")
    for i, chunk in enumerate(x.chunks()):
        start = i * CHUNK_ROWS
        try:
            check_data(chunk, what=what, input_dim=input_dim, likelihood=likelihood)
        except DataError as e:
            raise DataError(f"{e} [in rows {start + 1}-{start + len(chunk)} of the split]") from None
    return x


def _open_mapped(path: Path) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """(the (N, D) memory map of a .npy file, the image shape of its rows or None)."""
    if path.suffix.lower() != ".npy":
        raise DataError(f"{path}: memory-mapping needs a .npy file")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: cannot be read as a .npy array ({_reason(e)})") from None
    image_shape = None
    if array.ndim in (3, 4):
        image_shape = tuple(int(v) for v in array.shape[1:])
        array = array.reshape(len(array), -1)
    elif array.ndim != 2:
        raise DataError(f"{path}: {_not_2d(array)}")
    return array, image_shape


def _load_mapped(path: Path, config: DataConfig) -> Dataset:
    """A .npy file memory-mapped rather than read, split by fractions into ``MappedRows``."""
    array, image_shape = _open_mapped(path)
    n = len(array)
    if not _split_ok(n, config.valid_fraction, config.test_fraction):
        raise DataError(f"{path}: dataset has {n} rows; too few for valid_fraction={config.valid_fraction:g} and test_fraction={config.test_fraction:g}")
    n_train, n_valid, _ = _split_sizes(n, config.valid_fraction, config.test_fraction)
    perm = np.random.default_rng(config.split_seed).permutation(n)
    parts = {"train": perm[:n_train], "valid": perm[n_train:n_train + n_valid], "test": perm[n_train + n_valid:]}
    return Dataset(
        name=str(path),
        image_shape=image_shape,
        **{s: MappedRows(array, np.sort(rows) if s != "train" else rows) for s, rows in parts.items()},
    )


def _check_split(name: str) -> None:
    if name not in SPLITS:
        raise DataError(f"unknown split {name!r}; choose one of: {', '.join(SPLITS)}")


# --------------------------------------------------------------------------------------
# The validation gate
# --------------------------------------------------------------------------------------


def check_data(
    x: Any,
    *,
    what: str = "data",
    min_rows: int = 1,
    input_dim: int | None = None,
    likelihood: Any = None,
) -> np.ndarray:
    """Validate ``x`` and return it as a C-contiguous float32 ``(n, D)`` array (a view when
    it already is one, else a copy).

    Checks, in order: numeric dtype; 2-D; at least ``min_rows`` rows; at least one column;
    all values finite; ``D == input_dim`` when given; ``likelihood.check(x, what)`` (the
    likelihood's support) when a likelihood is given. Accepts lists, numpy arrays and torch
    tensors. Raises ``DataError`` naming ``what``, the expected and the found. A
    ``MappedRows`` is checked block by block and returned as it is (never read whole).
    """
    if isinstance(x, MappedRows):
        return _check_mapped(x, what, min_rows, input_dim, likelihood)
    x = _as_numpy(x, what)
    if x.dtype.kind not in "biuf":
        raise DataError(f"{what} has dtype {x.dtype}; expected numbers (bool, int or float)")
    if x.ndim != 2:
        raise DataError(f"{what}: {_not_2d(x)}")
    if x.shape[0] < min_rows:
        raise DataError(
            f"{what} has {x.shape[0]} rows (shape={x.shape}); at least {min_rows} "
            f"{'is' if min_rows == 1 else 'are'} needed"
        )
    if x.shape[1] < 1:
        raise DataError(f"{what} has 0 columns (shape={x.shape}); at least 1 feature is needed")
    if x.dtype.kind == "f":
        _check_finite(x, what)
    with np.errstate(over="ignore"):  # overflow is reported below, by position
        x32 = np.ascontiguousarray(x, dtype=np.float32)
    if x.dtype.kind == "f" and x.dtype.itemsize > 4:
        # float64 values beyond ~3.4e38 become inf in float32; name them rather than
        # letting training fail later on an Inf nobody wrote.
        bad = ~np.isfinite(x32)
        if bad.any():
            r, c = np.unravel_index(int(np.flatnonzero(bad)[0]), x.shape)
            raise DataError(
                f"{what} has values too large for float32 (first at row {r + 1}, column {c + 1}: "
                f"{x[r, c]:g}); expected |x| < {np.finfo(np.float32).max:g}"
            )
    if input_dim is not None and x32.shape[1] != input_dim:
        raise DataError(
            f"{what} has {x32.shape[1]} features per row, but the model was trained on {input_dim}"
        )
    if likelihood is not None:
        likelihood.check(x32, what)
    return x32


def _as_numpy(x: Any, what: str) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "toarray") and not hasattr(x, "__array__"):
        raise DataError(f"{what} is a sparse matrix; expected a dense array (pass x.toarray())")
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        # A torch tensor: leave the graph and the device without importing torch here.
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            x = x.float()
    try:
        return np.asarray(x)
    except (ValueError, TypeError, RuntimeError) as e:
        raise DataError(
            f"{what} could not be converted to an array ({e}); expected a 2-D table of numbers"
        ) from None


def _not_2d(x: np.ndarray) -> str:
    if x.ndim == 0:
        return "expected a 2-D array (rows = datapoints), got a scalar"
    if x.ndim == 1:
        return (
            f"expected a 2-D array (rows = datapoints), got 1-D array of shape {x.shape}; "
            "reshape with x.reshape(-1, 1) for one feature or x.reshape(1, -1) for one datapoint"
        )
    return (
        f"expected a 2-D array (rows = datapoints), got {x.ndim}-D array of shape {x.shape}; "
        "flatten with x.reshape(len(x), -1)"
    )


def _check_finite(x: np.ndarray, what: str, rows: list[int] | None = None) -> None:
    finite = np.isfinite(x)
    if finite.all():
        return
    r, c = np.unravel_index(int(np.flatnonzero(~finite)[0]), x.shape)
    kind = "NaN" if np.isnan(x[r, c]) else "Inf"
    row = rows[r] if rows is not None else r + 1
    raise DataError(f"{what} contains {kind} (first at row {row}, column {c + 1}); expected finite numbers")


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def load_dataset(config: DataConfig) -> Dataset:
    """Load the dataset that ``config.source`` names (one of ``NAMED``, or a file path) and
    split it as ``config`` says. Every split passes ``check_data`` (train >= 2 rows; valid and
    test >= 1 row unless their fraction is 0)."""
    source = config.source
    if source == "digits":
        ds = _load_digits(config)
    elif source == "binarized_mnist":
        ds = _load_binarized_mnist(config)
    elif config.mmap:
        ds = _load_mapped(_resolve(source, config.data_dir), config)
    else:
        ds = _load_user_file(_resolve(source, config.data_dir), config)
    for s in _SPLIT_NAMES:
        min_rows = 2 if s == "train" else (1 if len(getattr(ds, s)) or _wanted(s, config) else 0)
        setattr(ds, s, check_data(getattr(ds, s), what=f"{ds.name} ({s} split)", min_rows=min_rows))
    return ds


def _wanted(split: str, config: DataConfig) -> bool:
    return (config.valid_fraction if split == "valid" else config.test_fraction) > 0


def load_array(
    source: str, data_dir: str | None = None, mmap: bool = False
) -> tuple[np.ndarray, np.ndarray | None, tuple[int, ...] | None]:
    """Read a user file into ``(x, labels, image_shape)``: ``x`` float32 ``(n, D)``, checked by
    ``check_data``; labels int64 ``(n,)`` or None. A relative path not found as given is
    looked up in ``data_dir``. An .npz with train/valid/test arrays gives them concatenated
    in that order (as ``Dataset.split('all')``). With ``mmap`` a .npy file is memory-mapped
    and ``x`` is its rows in file order as ``MappedRows``, read block by block when used."""
    path = _resolve(source, data_dir)
    if mmap:
        array, image_shape = _open_mapped(path)
        return MappedRows(array), None, image_shape
    arrays, labels = _read(path)
    flat, image_shape = _flatten_all(arrays, path)
    keys = [k for k in ("x", *_SPLIT_NAMES) if k in flat]
    x = flat[keys[0]] if len(keys) == 1 else np.concatenate([flat[k] for k in keys], axis=0)
    y = None if labels[keys[0]] is None else np.concatenate([labels[k] for k in keys])
    return x, y, image_shape


def _resolve(source: str, data_dir: str | None) -> Path:
    path = Path(source).expanduser()
    if path.exists():
        return path
    if data_dir is not None and not path.is_absolute():
        candidate = Path(data_dir).expanduser() / path
        if candidate.exists():
            return candidate
    # Something that looks like a path is a missing file; a bare word is a misspelt name.
    if path.suffix or "/" in source or os.sep in source:
        raise DataError(f"{source}: no such file")
    raise DataError(f"unknown dataset {source!r}: not a file, and not one of {', '.join(NAMED)}")


def _load_user_file(path: Path, config: DataConfig) -> Dataset:
    arrays, labels = _read(path)
    flat, image_shape = _flatten_all(arrays, path)
    if "x" in flat:
        parts = _split_by_fractions(
            flat["x"], labels["x"], str(path), config.valid_fraction, config.test_fraction, config.split_seed
        )
    else:
        parts = {"test": (flat["test"], labels["test"])}
        if "valid" in flat:
            parts["train"] = (flat["train"], labels["train"])
            parts["valid"] = (flat["valid"], labels["valid"])
        else:
            # Only valid is carved from train: test was fixed by whoever made the file.
            carved = _split_by_fractions(
                flat["train"], labels["train"], f"{path} [train]",
                config.valid_fraction, 0.0, config.split_seed,
            )
            parts["train"], parts["valid"] = carved["train"], carved["valid"]
    return Dataset(
        name=str(path),
        train=parts["train"][0],
        valid=parts["valid"][0],
        test=parts["test"][0],
        image_shape=image_shape,
        labels={s: parts[s][1] for s in _SPLIT_NAMES},
    )


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray | None]]:
    """Raw arrays of a file: either ``{'x'}`` or ``{'train', 'test'[, 'valid']}``, with labels
    under the same keys (validated, int64, or None)."""
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected a data file ({', '.join(SUFFIXES)})")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        x = _read_npy(path)
        return {"x": x}, {"x": None}
    if suffix == ".npz":
        return _read_npz(path)
    if suffix in (".csv", ".tsv", ".txt"):
        return {"x": _read_table(path)}, {"x": None}
    raise DataError(
        f"{path}: unsupported file type {path.suffix or '(no extension)'!r}; "
        f"expected one of {', '.join(SUFFIXES)} or a dataset name ({', '.join(NAMED)})"
    )


# Exceptions numpy raises on a truncated or foreign file; anything else is a bug.
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def _np_load(path: Path, reading_as: str) -> np.ndarray | dict[str, np.ndarray]:
    """``np.load`` without pickle, every array read eagerly (so a corrupt .npz member fails
    here, not later). We own the file handle because numpy leaks it when a zip is broken."""
    try:
        with open(path, "rb") as f:
            loaded = np.load(f, allow_pickle=False)
            if isinstance(loaded, np.ndarray):
                return loaded
            with loaded:
                return {k: loaded[k] for k in loaded.files}
    except _READ_ERRORS as e:
        raise DataError(f"{path}: could not be read as {reading_as} ({_reason(e)})") from None


def _read_npy(path: Path) -> np.ndarray:
    x = _np_load(path, "a .npy array")
    if not isinstance(x, np.ndarray):
        raise DataError(f"{path}: is an .npz archive, not a .npy array; rename it to .npz")
    return x


def _reason(e: Exception) -> str:
    if isinstance(e, ValueError) and "pickle" in str(e).lower():
        # numpy's fallback for unrecognised bytes is pickle, which allow_pickle=False refuses.
        return "not a numpy file, or it holds Python objects, which are not loaded for safety"
    return str(e) or type(e).__name__


def _open_npz(path: Path, reading_as: str) -> dict[str, np.ndarray]:
    z = _np_load(path, reading_as)
    if isinstance(z, np.ndarray):
        raise DataError(f"{path}: is a .npy array, not an .npz archive; rename it to .npy")
    return z


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray | None]]:
    contents = _open_npz(path, "an .npz archive")
    if not contents:
        raise DataError(f"{path}: contains no arrays")

    if "train" in contents or "test" in contents:
        missing = [s for s in ("train", "test") if s not in contents]
        if missing:
            raise DataError(
                f"{path}: has arrays {', '.join(sorted(contents))}; with explicit splits both "
                f"'train' and 'test' are needed ('valid' is optional), missing {', '.join(missing)}"
            )
        names = [s for s in _SPLIT_NAMES if s in contents]
        arrays = {s: contents[s] for s in names}
        given = [s for s in names if f"{s}_labels" in contents]
        if given and len(given) != len(names):
            absent = [f"{s}_labels" for s in names if s not in given]
            raise DataError(
                f"{path}: has {', '.join(f'{s}_labels' for s in given)} but not {', '.join(absent)}; "
                "give labels for every split or for none"
            )
        labels = {
            s: (_labels(contents[f"{s}_labels"], len(arrays[s]), f"{path} [{s}_labels]") if given else None)
            for s in names
        }
        return arrays, labels

    label_keys = [k for k in ("y", "labels") if k in contents]
    if len(label_keys) > 1:
        raise DataError(f"{path}: has both 'y' and 'labels'; keep one array of labels")
    named = [k for k in ("x", "X", "data") if k in contents]
    candidates = [k for k in contents if k not in label_keys]
    if len(named) > 1:
        raise DataError(f"{path}: has arrays {', '.join(named)}; expected only one data array")
    if named:
        key = named[0]
    elif len(candidates) == 1:
        key = candidates[0]
    else:
        raise DataError(
            f"{path}: cannot tell which array holds the data (found {', '.join(sorted(candidates)) or 'only labels'}); "
            "name it 'x', or save arrays 'train', 'valid', 'test'"
        )
    x = contents[key]
    y = _labels(contents[label_keys[0]], len(x) if x.ndim else 0, f"{path} [{label_keys[0]}]") if label_keys else None
    return {"x": x}, {"x": y}


def _labels(y: np.ndarray, n: int, what: str) -> np.ndarray:
    """Integer class labels, one per row."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{what}: expected a 1-D array of labels, got shape {y.shape}")
    if len(y) != n:
        raise DataError(f"{what}: has {len(y)} labels, but the data has {n} rows")
    if y.dtype.kind in "biu":
        return y.astype(np.int64)
    if y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
        return y.astype(np.int64)
    raise DataError(f"{what}: expected integer class labels, got dtype {y.dtype}")


def _read_table(path: Path) -> np.ndarray:
    """A numeric text table. Rows and columns in messages are 1-based, as in an editor."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets prepend a BOM
    except UnicodeDecodeError:
        raise DataError(f"{path}: could not be read as text (not UTF-8); expected a table of numbers") from None
    except OSError as e:
        raise DataError(f"{path}: could not be read ({e.strerror or e})") from None

    suffix = path.suffix.lower()
    lines = [(i + 1, line) for i, line in enumerate(text.splitlines())
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise DataError(f"{path}: contains no rows; expected a table of numbers")
    if suffix == ".txt" and "," not in lines[0][1]:
        rows = [(n, line.split()) for n, line in lines]
    else:
        delimiter = "\t" if suffix == ".tsv" else ","
        rows = [(n, [c.strip() for c in cells])
                for n, line in lines for cells in csv.reader([line], delimiter=delimiter)]

    def number(cell: str) -> float | None:
        try:
            return float(cell)
        except ValueError:
            return None

    first_no, first = rows[0]
    if any(c and number(c) is None for c in first):
        header_cols = len(first)
        rows = rows[1:]
        if not rows:
            raise DataError(f"{path}: has a header (row {first_no}) but no data rows")
        if len(rows[0][1]) != header_cols:
            raise DataError(
                f"{path}: row {rows[0][0]} has {len(rows[0][1])} columns, but the header (row {first_no}) has {header_cols}"
            )
    width = len(rows[0][1])
    values = np.empty((len(rows), width), dtype=np.float64)
    for i, (line_no, cells) in enumerate(rows):
        if len(cells) != width:
            raise DataError(
                f"{path}: row {line_no} has {len(cells)} columns, but row {rows[0][0]} has {width}"
            )
        for j, cell in enumerate(cells):
            v = number(cell)
            if v is None:
                if not cell:
                    raise DataError(f"{path}: row {line_no}, column {j + 1} is empty; expected a number")
                raise DataError(f"{path}: row {line_no}, column {j + 1} is {cell!r}; expected a number")
            values[i, j] = v
    _check_finite(values, str(path), rows=[n for n, _ in rows])
    return values


def _flatten(a: np.ndarray, what: str) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """(n, H, W) -> (n, H*W) with image shape (H, W); (n, C, H, W) -> (C, H, W); 2-D as is."""
    if a.ndim in (3, 4) and a.dtype.kind in "biuf":
        image_shape = tuple(int(s) for s in a.shape[1:])
        a = a.reshape(len(a), -1)
    elif a.ndim > 4:
        raise DataError(
            f"{what}: expected 2-D (n, D), 3-D (n, H, W) or 4-D (n, C, H, W), got {a.ndim}-D array of shape {a.shape}"
        )
    else:
        image_shape = None
    return check_data(a, what=what), image_shape


def _flatten_all(
    arrays: dict[str, np.ndarray], path: Path
) -> tuple[dict[str, np.ndarray], tuple[int, ...] | None]:
    """``_flatten`` each array of a file; the splits of one file must share their row shape."""
    flat, shapes = {}, {}
    for k, a in arrays.items():
        flat[k], shapes[k] = _flatten(a, str(path) if k == "x" else f"{path} [{k}]")
    row_shapes = {k: tuple(a.shape[1:]) for k, a in arrays.items()}
    if len(set(row_shapes.values())) > 1:
        shown = ", ".join(f"{k} {v}" for k, v in row_shapes.items())
        raise DataError(f"{path}: splits have different shapes per row ({shown}); expected one shape")
    return flat, next(iter(shapes.values()))


def _round_half_up(v: float) -> int:
    # Not round(): banker's rounding would make 2.5 -> 2 but 3.5 -> 4.
    return int(math.floor(v + 0.5))


def _split_sizes(n: int, valid_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    n_valid, n_test = _round_half_up(n * valid_fraction), _round_half_up(n * test_fraction)
    if n >= 3:
        if valid_fraction > 0:
            n_valid = max(n_valid, 1)
        if test_fraction > 0:
            n_test = max(n_test, 1)
    return n - n_valid - n_test, n_valid, n_test


def _split_ok(n: int, vf: float, tf: float) -> bool:
    n_train, n_valid, n_test = _split_sizes(n, vf, tf)
    return n_train >= 2 and (vf == 0 or n_valid >= 1) and (tf == 0 or n_test >= 1)


def _split_by_fractions(
    x: np.ndarray, y: np.ndarray | None, what: str, vf: float, tf: float, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Rows permuted by ``np.random.default_rng(split_seed).permutation(n)``; the first
    n_train go to train, the next n_valid to valid, the last n_test to test.
    n_valid = round(n·valid_fraction), n_test = round(n·test_fraction) (half up), each at
    least 1 when its fraction is > 0 and n >= 3; train keeps at least 2 rows."""
    n = len(x)
    if not _split_ok(n, vf, tf):
        need = next(m for m in range(max(n, 2), 10**9) if _split_ok(m, vf, tf))
        raise DataError(
            f"{what}: dataset has {n} rows; at least {need} needed for valid_fraction={vf:g} and "
            f"test_fraction={tf:g} (train >= 2 rows, valid and test >= 1 row each when their fraction is > 0)"
        )
    n_train, n_valid, _ = _split_sizes(n, vf, tf)
    perm = np.random.default_rng(seed).permutation(n)
    idx = {"train": perm[:n_train], "valid": perm[n_train:n_train + n_valid], "test": perm[n_train + n_valid:]}
    return {s: (np.ascontiguousarray(x[i]), None if y is None else y[i]) for s, i in idx.items()}


# --------------------------------------------------------------------------------------
# Named datasets
# --------------------------------------------------------------------------------------


def _load_digits(config: DataConfig) -> Dataset:
    """scikit-learn's 8x8 digits (UCI optdigits test set, bundled): pixels 0..16 -> x/16 in [0, 1]."""
    from sklearn.datasets import load_digits  # lazy: sklearn is slow to import

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    parts = _split_by_fractions(
        x, digits.target.astype(np.int64), "digits", config.valid_fraction, config.test_fraction, config.split_seed
    )
    return Dataset(
        name="digits",
        train=parts["train"][0],
        valid=parts["valid"][0],
        test=parts["test"][0],
        image_shape=(8, 8),
        labels={s: parts[s][1] for s in _SPLIT_NAMES},
    )


def _load_binarized_mnist(config: DataConfig) -> Dataset:
    """Binarized MNIST (Larochelle & Murray 2011) with its fixed splits; fractions do not apply."""
    path = find_binarized_mnist(config.data_dir)
    arrays = _read_binarized_mnist(path)
    return Dataset(
        name="binarized_mnist",
        train=arrays["train"].astype(np.float32),
        valid=arrays["valid"].astype(np.float32),
        test=arrays["test"].astype(np.float32),
        image_shape=(28, 28),
        labels={s: None for s in _SPLIT_NAMES},
    )


def _content_sha256(train: np.ndarray, valid: np.ndarray, test: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (train, valid, test):
        h.update(np.ascontiguousarray(a, dtype=np.uint8).tobytes())
    return h.hexdigest()


def _read_binarized_mnist(path: Path) -> dict[str, np.ndarray]:
    """The three uint8 splits of a binarized_mnist.npz, checked against BINARIZED_MNIST_SHA256."""
    contents = _open_npz(path, "binarized MNIST")
    missing = [s for s in _SPLIT_NAMES if s not in contents]
    if missing:
        raise DataError(f"{path}: expected arrays train, valid, test, missing {', '.join(missing)}")
    arrays = {s: contents[s] for s in _SPLIT_NAMES}
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


def find_binarized_mnist(data_dir: str | None = None) -> Path:
    """Path of binarized_mnist.npz: looked up in ``data_dir``, then ``$VAEKIT_DATA``, then the
    cache (``$XDG_CACHE_HOME/vaekit`` or ``~/.cache/vaekit``), as ``binarized_mnist.npz`` or
    ``binarized_mnist/binarized_mnist.npz``; if absent, downloaded into the cache. Raises
    DataError saying where it looked when the download fails."""
    cache = _cache_dir()
    roots = [Path(r).expanduser() for r in (data_dir, os.environ.get("VAEKIT_DATA")) if r]
    roots.append(cache)
    for root in roots:
        for candidate in _candidates(root):
            if candidate.is_file():
                return candidate
    try:
        return download_binarized_mnist(cache)
    except DataError as e:
        looked = ", ".join(str(r) for r in roots)
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
    for split in _SPLIT_NAMES:
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
