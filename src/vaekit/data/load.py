"""``load_dataset`` and ``load_array``: a named dataset (the ``DATASETS`` registry) or a user
file, read, split and checked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError, DataError, count
from ..registry import DATASETS
from .checks import check_data
from .containers import SPLIT_NAMES, Dataset, MappedRows
from .readers import flatten_all, open_mapped, read
from .splits import split_by_fractions, split_ok, split_rows

if TYPE_CHECKING:
    from ..config import DataConfig


def load_dataset(config: DataConfig) -> Dataset:
    """Load the dataset that ``config.source`` names (a name in ``DATASETS``, or a file path)
    and split it as ``config`` says. Every split passes ``check_data`` (train >= 2 rows; valid
    and test >= 1 row unless their fraction is 0) and keeps its precision (``dtype=None``)."""
    source = config.source
    if source in DATASETS:
        if config.mmap:
            raise ConfigError(f"mmap streams a .npy file; {source} is a built-in dataset, read into memory (drop --mmap)")
        named = DATASETS.get(source)
        ds = named.load(config)
        ds.scaling = named.scaling
    elif config.mmap:
        ds = _load_mapped(resolve_path(source, config.data_dir), config)
    else:
        ds = _load_user_file(resolve_path(source, config.data_dir), config)
    for s in SPLIT_NAMES:
        min_rows = 2 if s == "train" else (1 if len(getattr(ds, s)) or _wanted(s, config, ds) else 0)
        setattr(ds, s, check_data(getattr(ds, s), what=f"{ds.name} ({s} split)", min_rows=min_rows, dtype=None))
    return ds


def _wanted(split: str, config: DataConfig, ds: Dataset) -> bool:
    """Whether the split must have rows: one the fractions carve (> 0), not one a file fixed
    (an .npz whose test array is empty has no test rows, as --test-fraction 0 gives none)."""
    return (config.valid_fraction if split == "valid" else config.test_fraction) > 0 and split not in ds.fixed


def load_array(
    source: str, data_dir: str | None = None, mmap: bool = False
) -> tuple[np.ndarray, np.ndarray | None, tuple[int, ...] | None]:
    """Read a user file into ``(x, labels, image_shape)``: ``x`` ``(n, D)``, checked by
    ``check_data`` (float32, or float64 for float64 data); labels int64 ``(n,)`` or None. A relative path not found as given is
    looked up in ``data_dir``. An .npz with train/valid/test arrays gives them concatenated
    in that order (as ``Dataset.split('all')``). With ``mmap`` a .npy file is memory-mapped
    and ``x`` is its rows in file order as ``MappedRows``, read block by block when used."""
    path = resolve_path(source, data_dir)
    if mmap:
        array, image_shape = open_mapped(path)
        return MappedRows(array), None, image_shape
    arrays, labels = read(path)
    flat, image_shape = flatten_all(arrays, path)
    keys = [k for k in ("x", *SPLIT_NAMES) if k in flat]
    x = flat[keys[0]] if len(keys) == 1 else np.concatenate([flat[k] for k in keys], axis=0)
    y = None if labels[keys[0]] is None else np.concatenate([labels[k] for k in keys])
    return x, y, image_shape


def resolve_path(source: str, data_dir: str | None) -> Path:
    """The file ``source`` names: as given (relative to the working directory), else, for a
    relative path, under ``data_dir``, then under ``$VAEKIT_DATA`` (where named datasets' files
    are looked for too). DataError naming the places looked in if none holds it."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    places = [] if path.is_absolute() else [(d, f"{d} ({name})") for d, name in ((data_dir, "the data directory"), (os.environ.get("VAEKIT_DATA"), "$VAEKIT_DATA")) if d]
    candidates = [Path(d).expanduser() / path for d, _ in places]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    for link in (path, *candidates):
        if link.is_symlink():
            raise DataError(f"{link}: a symbolic link to nothing (its target is missing, or it loops)")
    # Something that looks like a path is a missing file; a bare word is a misspelt name.
    if path.suffix or "/" in source or os.sep in source:
        where = f" (looked for in the working directory and in {' and '.join(shown for _, shown in places)})" if places else ""
        raise DataError(f"{source}: no such file{where}")
    from .named import listed

    raise DataError(f"unknown dataset {source!r}: not a file, and not one of {', '.join(listed())}")


def _load_user_file(path: Path, config: DataConfig) -> Dataset:
    arrays, labels = read(path)
    flat, image_shape = flatten_all(arrays, path)
    rows = None
    if "x" in flat:
        parts = split_by_fractions(
            flat["x"], labels["x"], str(path), config.valid_fraction, config.test_fraction, config.split_seed
        )
        rows = {s: parts[s][2] for s in SPLIT_NAMES}
    else:
        parts = {"test": (flat["test"], labels["test"])}
        if "valid" in flat:
            parts["train"] = (flat["train"], labels["train"])
            parts["valid"] = (flat["valid"], labels["valid"])
        else:
            # Only valid is carved from train: test was fixed by whoever made the file.
            carved = split_by_fractions(
                flat["train"], labels["train"], f"{path} [train]",
                config.valid_fraction, 0.0, config.split_seed,
            )
            parts["train"], parts["valid"] = carved["train"], carved["valid"]
            # The file's order: its train array (carved into train and valid), then test.
            n_train = len(flat["train"])
            rows = {"train": carved["train"][2], "valid": carved["valid"][2], "test": n_train + np.arange(len(flat["test"]))}
    return Dataset(
        name=str(path),
        train=parts["train"][0],
        valid=parts["valid"][0],
        test=parts["test"][0],
        image_shape=image_shape,
        labels={s: parts[s][1] for s in SPLIT_NAMES},
        rows=rows,
        fixed=tuple(s for s in ("valid", "test") if s in flat),
    )


def _load_mapped(path: Path, config: DataConfig) -> Dataset:
    """A .npy file memory-mapped rather than read, split by fractions into ``MappedRows``: the
    same rows in each split, in the same order, as ``_load_user_file`` gives, so that a streamed
    run validates and evaluates as the in-memory one does (``MappedRows`` reads each block in
    file order whatever the rows' order)."""
    array, image_shape = open_mapped(path)
    n = len(array)
    if not split_ok(n, config.valid_fraction, config.test_fraction):
        raise DataError(f"{path}: dataset has {count(n, 'row')}; too few for valid_fraction={config.valid_fraction:g} and test_fraction={config.test_fraction:g}")
    parts = split_rows(n, config.valid_fraction, config.test_fraction, config.split_seed)
    return Dataset(
        name=str(path),
        image_shape=image_shape,
        **{s: MappedRows(array, rows) for s, rows in parts.items()},
    )
