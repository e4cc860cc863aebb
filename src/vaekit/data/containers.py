"""The containers of data: ``Dataset`` (train/valid/test splits) and ``MappedRows`` (the rows
of a memory-mapped .npy file, read block by block, for datasets larger than memory)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError

SPLITS = ("train", "valid", "test", "all")
SPLIT_NAMES = SPLITS[:3]

# Rows per block when a mapped split is checked, summarised or evaluated: bounds memory, keeps
# matrices large.
CHUNK_ROWS = 8192


def wide(dtype: np.dtype) -> bool:
    """Whether float32 may round values of ``dtype``: float64, integers wider than 16 bits."""
    return dtype.itemsize > 4 or (dtype.kind in "iu" and dtype.itemsize > 2)


def kept_dtype(dtype: np.dtype) -> np.dtype:
    """The float dtype that holds every value of ``dtype`` (as far as float64 can)."""
    return np.dtype(np.float64 if wide(dtype) else np.float32)


@dataclass
class Dataset:
    """Train/valid/test splits as C-contiguous ``(n, D)`` float arrays, with optional labels:
    float32, or float64 for float64 (or wide integer) data, which keep their precision until a
    model's input map (``check_data(dtype=None)``)."""

    name: str
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    # (H, W) or (C, H, W) for images, so samples can be drawn as pictures; None otherwise.
    image_shape: tuple[int, ...] | None = None
    labels: dict[str, np.ndarray | None] = field(
        default_factory=lambda: {"train": None, "valid": None, "test": None}
    )
    # (shift, scale): a named dataset's map from its raw values to the ones its models see,
    # x' = (x − shift)/scale (digits: (0, 16)); None for none. The splits hold raw values.
    scaling: tuple[float, float] | None = None
    # Each split's row numbers in the source it was split from, so that split("all") gives the
    # rows in the source's order (row i of "all" is row i of load_digits().data, say); None
    # where the source came split (its splits in train, valid, test order).
    rows: dict[str, np.ndarray] | None = None
    # The valid/test splits the source gave as arrays of their own (an .npz's "test"), which
    # may be empty; those carved by fractions must have rows when their fraction is > 0.
    fixed: tuple[str, ...] = ()

    def split(self, name: str) -> np.ndarray:
        """One split; ``'all'`` is every row in the source's order (``rows``), or, where the
        source came split, train, valid and test concatenated in that order."""
        _check_split(name)
        if name == "all":
            if isinstance(self.train, MappedRows):  # its rows are the file's: in the file's order
                rows = np.sort(np.concatenate([p.index for p in (self.train, self.valid, self.test)]))
                return MappedRows(self.train.array, rows, self.train.scaling, self.train.dtype)
            return np.concatenate([self.train, self.valid, self.test], axis=0)[self._source_order()]
        return getattr(self, name)

    def split_labels(self, name: str) -> np.ndarray | None:
        """Labels of one split, aligned with ``split(name)``; None when the data has none."""
        _check_split(name)
        if name == "all":
            parts = [self.labels.get(s) for s in SPLIT_NAMES]
            if any(p is None for p in parts):
                return None
            return np.concatenate(parts)[self._source_order()]
        return self.labels.get(name)

    def _source_order(self) -> slice | np.ndarray:
        """The positions in train + valid + test that put the rows in the source's order."""
        if self.rows is None:
            return slice(None)
        return np.argsort(np.concatenate([self.rows[s] for s in SPLIT_NAMES]), kind="stable")

    @property
    def dim(self) -> int:
        """D, the number of features per datapoint."""
        return int(self.train.shape[1])


def _check_split(name: str) -> None:
    if name not in SPLITS:
        raise DataError(f"unknown split {name!r}; choose one of: {', '.join(SPLITS)}")


class MappedRows:
    """The rows of one split of a memory-mapped .npy file, read only when asked for.

    Datasets larger than memory stream through it: training reads one batch of rows at a
    time, checks and evaluation read ``CHUNK_ROWS`` rows at a time, and the operating system
    keeps in memory only the pages in use (file-backed pages, which it can drop again).
    """

    def __init__(self, array: np.ndarray, rows: np.ndarray | None = None, scaling=None, dtype=np.float32):
        self.array = array  # (N, D) memmap, any numeric dtype
        self.index = np.arange(len(array)) if rows is None else np.asarray(rows)
        # A model's input map (vaekit.scaling.Scaling), applied to every row read; None: as stored.
        self.scaling = scaling
        self.dtype = np.dtype(dtype)  # of the rows read (a float32 or float64 model's)

    def mapped(self, scaling, dtype=np.float32) -> "MappedRows":
        """The same rows, read through ``scaling`` (None: as stored) as ``dtype``."""
        if self.scaling is not None:
            raise ValueError("these rows are already mapped")
        return MappedRows(self.array, self.index, scaling, dtype)

    def exact(self) -> "MappedRows":
        """The same rows read as stored, as float64 where float32 would round them (for
        statistics such as the standardisation's, which the rows' own dtype may not hold)."""
        if self.scaling is not None:
            raise ValueError("these rows are mapped")
        return MappedRows(self.array, self.index, None, kept_dtype(self.array.dtype))

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.index), int(self.array.shape[1]))

    ndim = 2

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """Copies (of ``dtype``) of the rows at ``positions`` of this split, in that order; the
        file is read in ascending row order, which the page cache serves best."""
        file_rows = self.index[np.asarray(positions)]
        order = np.argsort(file_rows, kind="stable")
        self._check_length()
        # Values still to be mapped keep their precision until the map (see check_data).
        read_as = self.dtype if self.scaling is None else kept_dtype(self.array.dtype)
        out = np.empty((len(file_rows), self.shape[1]), dtype=read_as)
        out[order] = self.array[file_rows[order]]
        return out if self.scaling is None else self.scaling.to_model(out, self.dtype)

    def __getitem__(self, key) -> np.ndarray:
        return self.rows(np.arange(len(self))[key])

    def _check_length(self) -> None:
        """DataError if the mapped file is now shorter than its array: reading a page past the
        end would kill the process with SIGBUS, without a word (the file truncated, or rewritten
        in place, while a verb reads it). The size is the mapped file's own (numpy's mmap holds
        its descriptor), so a file replaced or removed under the same name, whose old pages stay
        readable, is not taken for it. One fstat per read; a truncation between it and the
        read is not caught."""
        mm = getattr(self.array, "_mmap", None)  # numpy.memmap's; None for in-memory arrays
        if mm is None:
            return
        end = int(self.array.offset) + int(self.array.nbytes)
        try:
            size = mm.size()
        except (OSError, ValueError) as e:
            raise DataError(f"{self.array.filename}: could not be read while streaming it ({e})") from None
        if size < end:
            raise DataError(f"{self.array.filename} is {size} bytes now, {end} when it was opened: the file changed while "
                            "it was read; keep a streamed file unchanged until the command ends")  # fmt: skip

    def chunks(self, size: int | None = None):
        """Blocks of consecutive rows of this split, in order."""
        size = size or CHUNK_ROWS
        for start in range(0, len(self), size):
            yield self.rows(np.arange(start, min(start + size, len(self))))


# Rows of a streamed split that its fingerprint reads: spread over the split, so another file
# or another split of the same file shows, without a second pass over data larger than memory.
FINGERPRINT_ROWS = 1024


def fingerprint(x) -> str:
    """A short digest of the rows ``x`` (an array, or ``MappedRows``): equal rows give equal
    digests, in any process. An array is hashed whole (one pass at memory speed); a streamed
    split by its shape, its row numbers in the file and ``FINGERPRINT_ROWS`` rows spread over it."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    if isinstance(x, MappedRows):
        h.update(repr((x.shape, str(x.dtype))).encode())
        h.update(np.ascontiguousarray(x.index, dtype=np.int64).data)
        if len(x):
            h.update(np.ascontiguousarray(x.rows(np.unique(np.linspace(0, len(x) - 1, FINGERPRINT_ROWS).astype(np.int64)))).data)
    else:
        x = np.ascontiguousarray(x)
        h.update(repr((x.shape, str(x.dtype))).encode())
        h.update(x.reshape(-1).view(np.uint8).data)
    return h.hexdigest()
