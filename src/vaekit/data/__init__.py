"""Datasets and the one input check shared by the Python API and the CLI.

``load_dataset(DataConfig)`` returns a ``Dataset`` with ``(n, D)`` train/valid/test splits
(float32, or float64 where the data are, until a model's input map), from a named dataset (the ``DATASETS`` registry: ``named/``) or a user file (.npy,
.npz, .csv, .tsv, .txt: ``readers``). ``check_data`` is the single validation gate for
arrays (``checks``). One concern per module:

- ``containers``: ``Dataset``, and ``MappedRows`` that stream a memory-mapped .npy file;
- ``checks``: ``check_data``;
- ``readers``: the file formats, and flattening images to rows;
- ``splits``: train/valid/test by fractions, with a seeded permutation;
- ``summary``: the values of a dataset read block by block (``vaekit.likelihoods.choose``);
- ``load``: ``load_dataset`` and ``load_array``;
- ``named/``: one module per named dataset (``digits``, ``binarized_mnist``, ...).

The library raises ``DataError`` and never prints or exits. No torch import here.
"""

from __future__ import annotations

from .checks import check_data
from .containers import CHUNK_ROWS, SPLITS, Dataset, MappedRows, fingerprint
from .load import load_array, load_dataset
from .named.binarized_mnist import (
    BINARIZED_MNIST_DIM,
    BINARIZED_MNIST_FILE,
    BINARIZED_MNIST_SHA256,
    BINARIZED_MNIST_URL,
    DOWNLOAD_TIMEOUT_S,
    download_binarized_mnist,
    find_binarized_mnist,
)
from .readers import SUFFIXES
from .summary import ValueSummary, summarize

__all__ = [
    "BINARIZED_MNIST_DIM",
    "BINARIZED_MNIST_FILE",
    "BINARIZED_MNIST_SHA256",
    "BINARIZED_MNIST_URL",
    "CHUNK_ROWS",
    "DOWNLOAD_TIMEOUT_S",
    "NAMED",
    "SPLITS",
    "SUFFIXES",
    "Dataset",
    "MappedRows",
    "ValueSummary",
    "check_data",
    "download_binarized_mnist",
    "find_binarized_mnist",
    "fingerprint",
    "load_array",
    "load_dataset",
    "summarize",
]


def __getattr__(name: str):
    if name == "NAMED":
        # The named datasets, derived from the registry (importing its modules) when asked for.
        from .named import listed

        return listed()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
