"""Named datasets: ``vaekit train --data NAME``, a registry (``vaekit.registry.DATASETS``).

A new named dataset is one new module in this package whose class subclasses
``NamedDataset`` and is decorated ``@DATASETS.register("name")``; ``load_dataset`` finds it
by name (``DATASETS.names()`` reads the names from the source, without importing) and
nothing else is edited.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ...registry import DATASETS

if TYPE_CHECKING:
    from ...config import DataConfig
    from ..containers import Dataset


class NamedDataset:
    """One dataset known by name. ``load`` returns its splits; ``load_dataset`` then checks
    every split (``check_data``), whatever the source, so ``load`` need not."""

    name: str  # set by DATASETS.register
    # Whether loading may fetch files from the network. Lists of the named datasets show
    # those that need no download first.
    downloads: bool = False
    # Whether ``load`` reads ``config.data_dir``: --data-dir beside a dataset that reads no
    # files would do nothing, so the CLI refuses it.
    reads_data_dir: bool = False
    # (shift, scale): the map x' = (x − shift)/scale from the raw values ``load`` returns to
    # the values its models see; the model stores it, so that it takes the raw values
    # everywhere (the CLI's verbs, the Python API). None: the raw values are the model's.
    scaling: tuple[float, float] | None = None

    @classmethod
    def files(cls, data_dir: str | None) -> tuple[Path, ...]:
        """The files ``load`` would read with ``data_dir``, as found now (nothing is fetched):
        the verbs refuse to write their output over them. None for a dataset of no files."""
        return ()

    @classmethod
    def load(cls, config: DataConfig) -> Dataset:  # pragma: no cover - interface
        """The dataset's train/valid/test splits as ``config`` asks (fractions, seed,
        ``data_dir``); a dataset with fixed splits ignores the fractions."""
        raise NotImplementedError


def listed() -> tuple[str, ...]:
    """The names of the named datasets as messages list them: those that need no download
    first, then by name."""
    entries = DATASETS.loaded()
    return tuple(sorted(entries, key=lambda name: (entries[name].downloads, name)))
