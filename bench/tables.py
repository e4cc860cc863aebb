"""Markdown tables that documents carry between two marker lines, rewritten from results files
by the benchmark scripts (``--table --write FILE``), never typed.

A marker counts only as a whole line of its own, so a document may quote a marker in its text;
each must appear once, the start before the end. The document is replaced atomically: an
interrupted write leaves the old one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vaekit.files import atomic_write_bytes


def _split(doc: str, markers: tuple[str, str]) -> tuple[str, str, str] | str:
    """(head up to and with the start line, the block, the end line and the rest), or why not."""
    lines = doc.splitlines(keepends=True)
    where = {m: [i for i, line in enumerate(lines) if line.strip() == m] for m in markers}
    start, end = markers
    if not where[start] or not where[end]:
        return f"has no table markers ({start!r} ... {end!r}), each on a line of its own"
    if len(where[start]) > 1 or len(where[end]) > 1:
        return f"has the table markers more than once ({start!r} ... {end!r})"
    i, j = where[start][0], where[end][0]
    if j < i:
        return f"has the end marker {end!r} before the start marker"
    return "".join(lines[: i + 1]), "".join(lines[i + 1 : j]), "".join(lines[j:])


def _read(path: Path, script: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as e:
        raise SystemExit(f"{script}: cannot read {path}: {e.strerror or e}") from None


def results_file(path: Path, script: str, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """A results JSON holding ``keys``; a file that is missing, not JSON or without them ends
    the script in one line naming it."""
    try:
        data = json.loads(Path(path).read_bytes())
    except OSError as e:
        raise SystemExit(f"{script}: cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise SystemExit(f"{script}: {path} is not a results file ({e})") from None
    if not isinstance(data, dict):
        raise SystemExit(f"{script}: {path} is not a results file (not a JSON object)")
    return holding(data, path, script, keys)


def holding(data: dict[str, Any], path: Path, script: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """``data``, a result read from ``path``, if it holds ``keys``; else one line naming the file."""
    missing = [k for k in keys if k not in data]
    if missing:
        raise SystemExit(f"{script}: {path} is not a results file (no {', '.join(missing)})")
    return data


def table_of(path: Path, script: str, build) -> str:
    """``build()``, the table of the results in ``path``; a result in it without a column's
    value, or with a value of the wrong kind, ends the script in one line naming the file."""
    try:
        return build()
    except KeyError as e:
        raise SystemExit(f"{script}: {path} is not a results file (a result without {e})") from None
    except (TypeError, ValueError) as e:
        raise SystemExit(f"{script}: {path} is not a results file (a bad value: {e})") from None


def write_between(path: Path, markers: tuple[str, str], text: str, script: str) -> None:
    """Replace what lies between the two ``markers`` lines of ``path`` with ``text``."""
    parts = _split(_read(path, script), markers)
    if isinstance(parts, str):
        raise SystemExit(f"{script}: {path} {parts}")
    head, _, tail = parts
    head = head if head.endswith("\n") else head + "\n"
    try:
        atomic_write_bytes(Path(path), f"{head}{text.strip(chr(10))}\n{tail}".encode())
    except OSError as e:
        raise SystemExit(f"{script}: cannot write {path}: {e.strerror or e}") from None


def block(path: Path, markers: tuple[str, str]) -> str | None:
    """The text between the markers of ``path``, stripped; None where it has none."""
    parts = _split(Path(path).read_text(), markers)
    return None if isinstance(parts, str) else parts[1].strip()
