"""Markdown tables that documents carry between two marker lines, rewritten from results files
by the benchmark scripts (``--table --write FILE``), never typed."""

from __future__ import annotations

from pathlib import Path


def write_between(path: Path, markers: tuple[str, str], text: str, script: str) -> None:
    """Replace what lies between the two ``markers`` lines of ``path`` with ``text``."""
    start, end = markers
    doc = Path(path).read_text()
    if start not in doc or end not in doc:
        raise SystemExit(f"{script}: {path} has no table markers ({start!r} ... {end!r})")
    head, rest = doc.split(start, 1)
    _, tail = rest.split(end, 1)
    Path(path).write_text(f"{head}{start}\n{text}\n{end}{tail}")


def block(path: Path, markers: tuple[str, str]) -> str | None:
    """The text between the markers of ``path``, stripped; None where it has none."""
    start, end = markers
    doc = Path(path).read_text()
    if start not in doc or end not in doc:
        return None
    return doc.split(start, 1)[1].split(end, 1)[0].strip()
