"""bench/methods.py: its tables are the ones written from its JSON (the README's included, once
results exist), each regime reports its own epochs, and a run capped before early stopping
says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_helpers import documented_table, load_bench

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def methods():
    return load_bench("methods")


def _row(method, regime, stopped_early=True, ll=-90.0):
    fields = ("elbo", "elbo_optimal", "approximation_gap", "approximation_gap_se", "amortization_gap", "amortization_gap_se")
    row = {"method": method, "regime": regime, "epochs_run": 120, "best_epoch": 110, "stopped_early": stopped_early,
           "budget_epochs_run": 30, "budget_best_epoch": 29, "inference_seconds_per_1000": 0.0042,
           "test_log_likelihood": ll, "train_log_likelihood": ll + 5}  # fmt: skip
    for split in ("test", "train"):
        row.update({f"{split}_{f}": 1.25 for f in fields})
    return row


def test_each_regime_gets_its_own_rows_and_epochs(methods, tmp_path):
    results = tmp_path / "methods.json"
    rows = [_row("vi", "converged"), _row("vi", "budget", ll=-100.5), _row("map", "converged", stopped_early=False), _row("map", "budget")]
    results.write_text(json.dumps({"results": rows}))
    converged = methods.table("converged", results).splitlines()
    budget = methods.table("budget", results).splitlines()
    assert len(converged) == len(budget) == 4  # header, rule, two methods
    assert converged[2].startswith("| vi | 120 (110) | −90.00 |") and "| 1.25 ± 1.25 |" in converged[2]
    assert converged[3].startswith("| map | 120 (110), cap |")  # stopped by --max-epochs, not converged
    assert budget[2] == "| vi | 30 (29) | −100.50 | 1.25 | −95.50 | 1.25 | 0.004 |"
    assert converged[2].endswith("| 0.004 |")
    assert len(converged[0].split("|")) == len(converged[1].split("|")) and len(budget[0].split("|")) == len(budget[1].split("|"))


def test_write_table_replaces_only_its_regimes_block(methods, tmp_path):
    doc = tmp_path / "doc.md"
    blocks = {}
    for regime in methods.REGIMES:
        start, end = methods.markers(regime)
        blocks[regime] = f"{start}\nold {regime}\n{end}"
    doc.write_text(f"a\n{blocks['converged']}\nb\n{blocks['budget']}\nc\n")
    methods.write_table(doc, "| new |", "budget")
    text = doc.read_text()
    assert "old converged" in text and "old budget" not in text and "| new |" in text
    (tmp_path / "bare.md").write_text("none\n")
    with pytest.raises(SystemExit, match="no table markers"):
        methods.write_table(tmp_path / "bare.md", "| new |", "converged")


def test_documented_tables_are_generated_from_the_results(methods):
    """README.md and docs/road.md hold the tables the JSON gives (a typed table fails here)."""
    for doc, regime in ((ROOT / "README.md", "converged"), (ROOT / "docs" / "road.md", "converged"), (ROOT / "docs" / "road.md", "budget")):
        block = documented_table(doc, methods.markers(regime))
        assert block is not None, f"{doc.name} has no {regime} methods table"
        assert block == methods.table(regime), f"run: python bench/methods.py --table {regime} --write {doc.name}"


def test_refinement_shares_the_amortized_training(methods):
    """amortized+refine differs from amortized only at evaluation, so it is not trained twice."""
    a, r = (methods._training_key(methods.model_config(m, 100)) for m in ("amortized", "amortized+refine"))
    assert a == r
    assert methods._training_key(methods.model_config("vi", 100)) != methods._training_key(methods.model_config("vi+local", 100))
