"""The scripts of bench/ as modules, for the tests of their tables and options."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_bench(name: str) -> ModuleType:
    """bench/NAME.py imported under the name bench_NAME (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documented_table(doc: Path, markers: tuple[str, str]) -> str | None:
    """The table a document holds between ``markers`` (bench/tables.py's reading of it)."""
    return load_bench("tables").block(doc, markers)
