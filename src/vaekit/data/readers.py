"""Readers of user files: .npy, .npz, .csv, .tsv, .txt (and .npy memory-mapped), each to raw
arrays, and ``flatten`` of image arrays to ``(n, D)`` rows.

User ``.npz`` files follow one of two conventions:

- explicit splits: arrays ``train`` and ``test`` (``valid`` optional; when absent it is
  split from ``train`` by ``valid_fraction``), optional labels ``train_labels``,
  ``valid_labels``, ``test_labels`` (given for every split present, or for none);
  other arrays are ignored, with a warning for those of the other convention;
- one data array: the array named ``x``, ``X`` or ``data``, or else the only array in the
  file, with optional labels in ``y`` or ``labels``; split by fractions.

Text tables (.csv comma-, .tsv tab-, .txt whitespace- or comma-separated) hold numbers only,
no labels; a first row with a non-numeric cell is a header; lines starting with ``#``
are comments (``np.savetxt`` writes its header that way).
"""

from __future__ import annotations

import csv
import math
import re
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError, VaekitWarning
from .checks import check_data, check_finite, not_2d
from .containers import SPLIT_NAMES

SUFFIXES = (".npy", ".npz", ".csv", ".tsv", ".txt")
TABLES = (".csv", ".tsv", ".txt")  # read as text tables


def read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray | None]]:
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
    if suffix in TABLES:
        return {"x": _read_table(path)}, {"x": None}
    from .named import listed  # the named datasets, for the message only

    raise DataError(
        f"{path}: unsupported file type {path.suffix or '(no extension)'!r}; "
        f"expected one of {', '.join(SUFFIXES)} or a dataset name ({', '.join(listed())})"
    )


def open_mapped(path: Path) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """(the (N, D) memory map of a .npy file, the image shape of its rows or None)."""
    if path.suffix.lower() != ".npy":
        # An option that does not fit the file, as --mmap with a named dataset: a usage error.
        raise ConfigError(f"mmap streams a .npy file; {path} is a {path.suffix or 'file without extension'}, read into memory (drop --mmap)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except _READ_ERRORS as e:  # an empty file is an EOFError
        raise DataError(f"{path}: could not be read as a .npy array ({_reason(e)})") from None
    if not isinstance(array, np.ndarray):  # numpy opens an .npz archive whatever its name
        array.close()
        raise DataError(
            f"{path}: is an .npz archive, not a .npy array, and memory-mapping reads .npy files only: "
            "save its array with numpy.save, or rename it to .npz and read it without --mmap"
        )
    # As the in-memory reader says it (vaekit.data.check_data).
    if array.dtype.kind == "c":
        raise DataError(f"{path}: Complex data not supported (dtype {array.dtype}); expected real numbers")
    if array.dtype.kind not in "biuf":
        raise DataError(f"{path} has dtype {array.dtype}; expected numbers (bool, int or float)")
    image_shape = None
    if array.ndim in (3, 4):
        if not array.flags.c_contiguous and len(array) > 1:
            # Flattening each image of a Fortran-order file would copy the whole file to memory.
            raise DataError(
                f"{path}: its images are stored in Fortran order, which memory-mapping cannot read row by row: "
                "save them with numpy.save(path, numpy.ascontiguousarray(x)), or drop --mmap"
            )
        image_shape = tuple(int(v) for v in array.shape[1:])
        array = array.reshape(len(array), math.prod(image_shape))
    elif array.ndim != 2:
        raise DataError(f"{path}: {not_2d(array)}")
    return array, image_shape


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
                return {k: _member(loaded, k) for k in loaded.files}
    except _READ_ERRORS as e:
        raise DataError(f"{path}: could not be read as {reading_as} ({_reason(e)})") from None


class Unreadable:
    """An .npz member that holds Python objects, not loaded for safety: an error only if the
    data are read from it (an archive's other arrays are ignored)."""

    def __init__(self, reason: str):
        self.reason = reason


def _member(archive, name: str) -> np.ndarray | Unreadable:
    try:
        return archive[name]
    except ValueError as e:
        if "pickle" not in str(e).lower():
            raise
        return Unreadable(_reason(e))


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


def open_npz(path: Path, reading_as: str, objects: bool = False) -> dict[str, np.ndarray]:
    """Every array of an .npz archive, read eagerly; DataError saying it could not be read
    as ``reading_as`` otherwise. With ``objects``, a member of Python objects is an
    ``Unreadable`` for the caller to ignore or refuse; without, it refuses the archive."""
    z = _np_load(path, reading_as)
    if isinstance(z, np.ndarray):
        raise DataError(f"{path}: is a .npy array, not an .npz archive; rename it to .npy")
    bad = [k for k, v in z.items() if isinstance(v, Unreadable)]
    if bad and not objects:
        raise DataError(f"{path}: could not be read as {reading_as} (array {bad[0]!r}: {z[bad[0]].reason})")
    return z


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray | None]]:
    contents = open_npz(path, "an .npz archive", objects=True)
    unreadable = {k: v for k, v in contents.items() if isinstance(v, Unreadable)}
    contents = {k: v for k, v in contents.items() if k not in unreadable}
    label_names = ("y", "labels", *(f"{s}_labels" for s in SPLIT_NAMES))
    objects = [k for k in unreadable if k in label_names]
    if objects:
        # Labels only colour and stratify pictures: text labels saved as Python objects go, as
        # text labels do (``_labels``), and the other labels with them, all or none.
        warnings.warn(f"{path}: labels {objects[0]!r} could not be read ({unreadable[objects[0]].reason}); read without labels",
                      VaekitWarning, stacklevel=2)  # fmt: skip
        contents = {k: v for k, v in contents.items() if k not in label_names}
        unreadable = {k: v for k, v in unreadable.items() if k not in label_names}
    read = (*SPLIT_NAMES, "x", "X", "data")
    for name in [k for k in unreadable if k in read] or ([] if contents else list(unreadable)[:1]):
        raise DataError(f"{path}: array {name!r} could not be read ({unreadable[name].reason})")
    if not contents:
        raise DataError(f"{path}: contains no arrays")

    if "train" in contents or "test" in contents:
        missing = [s for s in ("train", "test") if s not in contents]
        if missing:
            raise DataError(
                f"{path}: has arrays {', '.join(sorted(contents))}; with explicit splits both "
                f"'train' and 'test' are needed ('valid' is optional), missing {', '.join(missing)}"
            )
        names = [s for s in SPLIT_NAMES if s in contents]
        arrays = {s: contents[s] for s in names}
        for other in [k for k in ("y", "labels", "x", "X", "data") if k in contents]:
            # The other convention's names beside explicit splits: a mix-up worth a word.
            kind = "labels" if other in ("y", "labels") else "rows"
            fix = "the splits' labels are train_labels, valid_labels, test_labels" if kind == "labels" else "the rows are train, valid and test"
            warnings.warn(f"{path}: array {other!r} is ignored ({kind} of one data array); with explicit splits {fix}", VaekitWarning, stacklevel=2)
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
        if any(y is None for y in labels.values()):  # one split's dropped: all or none, as above
            labels = dict.fromkeys(names)
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


def _labels(y: np.ndarray, n: int, what: str) -> np.ndarray | None:
    """Integer class labels, one per row; None, with a warning, for labels that are no integer
    classes (text, fractions): they only colour and stratify pictures, and no verb needs them."""
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
    warnings.warn(f"{what}: labels of dtype {y.dtype} are no integer class labels; read without them", VaekitWarning, stacklevel=2)
    return None


def _splitter(suffix: str, first: str):
    """How the lines of a table split into cells, as its suffix and first line say: a .txt
    without commas by whitespace; a .tsv by tabs; else by commas, or by ';' when the first line
    has ';' and no ',' (spreadsheets in many locales; a decimal comma is not read)."""
    if suffix == ".txt" and "," not in first:
        return lambda line: line.split()
    delimiter = "\t" if suffix == ".tsv" else (";" if ";" in first and "," not in first else ",")
    return lambda line: [c.strip() for cells in csv.reader([line], delimiter=delimiter) for c in cells]


def _number(cell: str) -> float | None:
    """The number a cell spells, or None: Python's float() but without its '1_000' (digit
    grouping is no number in a CSV file, and spreadsheets never write it)."""
    if "_" in cell:
        return None
    try:
        return float(cell)
    except ValueError:
        return None


# How tables spell a missing value (pandas' na_values, spreadsheets' #N/A): such a cell in a
# first row of numbers makes a data row with a gap, not a header.
MISSING = frozenset({"na", "n/a", "#n/a", "null", "none", "nil", "?", "-", "--", "missing"})
# Integers from this size on are not all exact in float64.
EXACT_INTEGERS = 2**53
_INTEGER = re.compile(r"[+-]?\d+")


# Digit grouping as spreadsheets write it, quoted in a CSV: "1,234", "-12,345.5".
_GROUPED = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?")


def _is_header(cells: list[str]) -> bool:
    """A first row with a cell that is no number names the columns; a cell that only digit
    grouping keeps from being one ('1_000', '1,234') makes a data row, refused where it is
    read, and so does a missing value among numbers ('NA')."""
    text = [c for c in cells if c and _number(c.replace("_", "")) is None and not _GROUPED.fullmatch(c)]
    return bool(text) and not (len(text) < len(cells) and all(c.lower() in MISSING for c in text))


def _looks_like_numbered_columns(cells: list[str]) -> bool:
    """A first row 0, 1, …, D−1 (or 1, …, D) of three or more: the column numbers pandas
    writes as a header by default, which no header test can tell from data."""
    if len(cells) < 3 or not all(_INTEGER.fullmatch(c) for c in cells):
        return False
    numbers = [int(c) for c in cells]
    return numbers in (list(range(len(cells))), list(range(1, len(cells) + 1)))


def _unnamed_first_column(cells: list[str]) -> bool:
    """A header whose first cell alone is empty: the row index that DataFrame.to_csv writes by
    default (pandas reads it back as 'Unnamed: 0'), no feature of the data."""
    return len(cells) > 1 and cells[0] == "" and all(cells[1:])


def table_header(path: Path) -> tuple[str, ...] | None:
    """The column names of a .csv/.tsv/.txt table's header row, read from its first line
    (that is neither blank nor a # comment); None when the first row is numbers, or the file
    is no table."""
    path = Path(path)
    if path.suffix.lower() not in TABLES or not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8-sig") as f:
            first = next((line.rstrip("\r\n") for line in f if line.strip() and not line.lstrip().startswith("#")), None)
    except (OSError, UnicodeDecodeError):
        return None
    if first is None:
        return None
    cells = _splitter(path.suffix.lower(), first)(first)
    if not _is_header(cells):
        return None
    return tuple(cells[1:]) if _unnamed_first_column(cells) else tuple(cells)


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
    split = _splitter(suffix, lines[0][1])
    rows = [(n, split(line)) for n, line in lines]
    first_no, first = rows[0]
    for j, cell in enumerate(first):
        # "1,5;2": numbers with decimal commas between semicolons, not a header.
        if ";" in cell and all(_number(part) is not None for part in cell.split(";")):
            raise DataError(
                f"{path}: row {first_no}, column {j + 1} is {cell!r}; expected a number"
                " (cells are separated by ',' or, throughout, by ';'; the decimal point is '.')"
            )
        if suffix != ".tsv" and "\t" in cell and all(_number(part) is not None for part in cell.split("\t")):
            raise DataError(f"{path}: row {first_no} holds numbers separated by tabs, which a {suffix} file does not split on; name it .tsv")
        parts = cell.split()
        if suffix != ".txt" and len(parts) > 1 and all(_number(part) is not None for part in parts):
            raise DataError(
                f"{path}: row {first_no} holds numbers separated by spaces, which a {suffix} file does not split on; "
                "name it .txt (cells split at whitespace) or separate them by commas"
            )
    if _looks_like_numbered_columns(first) and len(rows) > 1 and not all(_INTEGER.fullmatch(c) for c in rows[1][1]):
        warnings.warn(
            f"{path}: row {first_no} reads {', '.join(first[:3])}, … {first[-1]}, the column numbers pandas writes as a header; "
            "it is read as data: if it is a header, remove it (DataFrame.to_csv(path, index=False, header=False))",
            VaekitWarning,
            stacklevel=2,
        )
    skip = 0  # leading columns that are no data: pandas' row index
    if _is_header(first):
        header_cols = len(first)
        unnamed = _unnamed_first_column(first)
        texts = len(rows) > 1 and _is_header(rows[1][1][int(unnamed):])
        if unnamed and not texts:
            skip = 1
            warnings.warn(
                f"{path}: column 1 has no name in the header (row {first_no}): it is read as the row index that "
                "DataFrame.to_csv writes by default and left out; to train on it, give it a name",
                VaekitWarning,
                stacklevel=2,
            )
        elif "" in first and not texts:
            raise DataError(f"{path}: the header (row {first_no}) gives column {first.index('') + 1} no name; name every column")
        seen: dict[str, int] = {}
        # A second row that is no numbers either (texts): a table of text cells (true/false, say),
        # whose first row is no header; its cells are refused below as no numbers.
        for j, name in enumerate(first):
            # A run keeps the names: a DataFrame that repeats one matches no fitted estimator.
            if name in seen and not texts:
                raise DataError(
                    f"{path}: the header (row {first_no}) names columns {seen[name] + 1} and {j + 1} both {name!r}; "
                    "give each column a name of its own"
                )
            seen[name] = j
        rows = rows[1:]
        if not rows:
            raise DataError(f"{path}: has a header (row {first_no}) but no data rows")
        if len(rows[0][1]) != header_cols:
            raise DataError(
                f"{path}: row {rows[0][0]} has {len(rows[0][1])} columns, but the header (row {first_no}) has {header_cols}"
            )
    width = len(rows[0][1])
    values = np.zeros((len(rows), width), dtype=np.float64)  # columns as the file numbers them
    text_of = dict(lines)
    for i, (line_no, cells) in enumerate(rows):
        if len(cells) != width:
            # An odd number of quotes: a quoted cell goes on past the line's end.
            spans = " (a quoted cell holds a line break, which a table of numbers cannot)" if text_of[line_no].count('"') % 2 else ""
            raise DataError(
                f"{path}: row {line_no} has {len(cells)} columns, but row {rows[0][0]} has {width}{spans}"
            )
        for j, cell in enumerate(cells[skip:], start=skip):
            v = _number(cell)
            if v is None:
                if not cell:
                    raise DataError(f"{path}: row {line_no}, column {j + 1} is empty; expected a number")
                hint = " (cells are separated by ',' or, throughout, by ';'; the decimal point is '.')" if ";" in cell else ""
                if cell.lower() in ("true", "false"):
                    hint = " (write truth values as 1 and 0)"
                if cell.lower() in MISSING:
                    hint = " (a missing value: every cell needs a number; drop or fill in such rows first)"
                if _GROUPED.fullmatch(cell) or _number(cell.replace("_", "")) is not None:
                    hint = f" (digits grouped by ',' or '_' are no number here: write {cell.replace(',', '').replace('_', '')})"
                raise DataError(f"{path}: row {line_no}, column {j + 1} is {cell!r}; expected a number{hint}")
            if math.isinf(v) and "inf" not in cell.lower():
                raise DataError(f"{path}: row {line_no}, column {j + 1} is {cell!r}, beyond float64's range (about 1.8e308)")
            if abs(v) >= EXACT_INTEGERS and _INTEGER.fullmatch(cell) and abs(int(cell)) > EXACT_INTEGERS:
                raise DataError(
                    f"{path}: row {line_no}, column {j + 1} is {cell}, an integer beyond ±2^53, which float64 rounds; "
                    "subtract an offset, e.g. the column's smallest value, first"
                )
            values[i, j] = v
    check_finite(values, str(path), rows=[n for n, _ in rows])
    return np.ascontiguousarray(values[:, skip:]) if skip else values


def flatten(a: np.ndarray, what: str, min_rows: int = 1) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """(n, H, W) -> (n, H*W) with image shape (H, W); (n, C, H, W) -> (C, H, W); 2-D as is."""
    if a.ndim in (3, 4) and a.dtype.kind in "biuf":
        image_shape = tuple(int(s) for s in a.shape[1:])
        # (n, D) spelled out: reshape(0, -1) cannot infer D for an empty split.
        a = a.reshape(len(a), math.prod(image_shape))
    elif a.ndim > 4:
        raise DataError(
            f"{what}: expected 2-D (n, D), 3-D (n, H, W) or 4-D (n, C, H, W), got {a.ndim}-D array of shape {a.shape}"
        )
    else:
        image_shape = None
    return check_data(a, what=what, dtype=None, min_rows=min_rows), image_shape


def flatten_all(
    arrays: dict[str, np.ndarray], path: Path
) -> tuple[dict[str, np.ndarray], tuple[int, ...] | None]:
    """``flatten`` each array of a file; the splits of one file must share their row shape. A
    file's valid or test array may be empty (a file without test rows); its x or train may not."""
    flat, shapes = {}, {}
    for k, a in arrays.items():
        flat[k], shapes[k] = flatten(a, str(path) if k == "x" else f"{path} [{k}]", min_rows=0 if k in ("valid", "test") else 1)
    row_shapes = {k: tuple(a.shape[1:]) for k, a in arrays.items()}
    if len(set(row_shapes.values())) > 1:
        shown = ", ".join(f"{k} {v}" for k, v in row_shapes.items())
        raise DataError(f"{path}: splits have different shapes per row ({shown}); expected one shape")
    return flat, next(iter(shapes.values()))
