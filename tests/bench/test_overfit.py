"""bench/overfit.py: the table in docs/road.md is the one its results file gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_helpers import documented_table, load_bench

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def overfit():
    return load_bench("overfit")


def test_the_documented_table_is_generated_from_the_results(overfit):
    result = json.loads((overfit.RESULTS / "overfit.json").read_text())
    assert documented_table(ROOT / "docs" / "road.md", overfit.MARKERS) == overfit.table(result["rows"]), (
        "run: python bench/overfit.py --table --write docs/road.md"
    )
    # The per-point tables' rate is part of what was measured.
    assert "point_lr" in result["settings"]


def test_the_table_has_one_line_per_run(overfit):
    rows = [{"method": m, "width": w, "train_log_px": 10.0, "test_log_px": 8.5, "gap": 1.5, "epochs": 40, "best_epoch": 10}
            for w in (16, 64) for m in ("map", "vi")]  # fmt: skip
    lines = overfit.table(rows).splitlines()
    assert len(lines) == 2 + 4 and lines[2] == "| map | 16 | 10.00 | 8.50 | 1.50 | 40 (10) |"
