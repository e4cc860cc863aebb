"""The benchmark scripts' command lines: bad arguments end in one line and a non-zero exit, the
table writer never mangles a document, literature.py keeps variants apart and never replaces a
finished result with a snapshot, and smoke tests keep out of the repository's results."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bench_helpers import load_bench

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def common():
    return load_bench("common")


@pytest.fixture(scope="module")
def tables():
    return load_bench("tables")


@pytest.fixture(scope="module")
def literature():
    return load_bench("literature")


def _script(name: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize(
    "script, args, says",
    [
        ("compare", ["--epochs", "0"], "--epochs: '0': expected an integer >= 1"),
        ("compare", ["--data", "/nonexistent/mnist.npz"], "/nonexistent/mnist.npz: no such file"),
        ("step", ["--steps", "0"], "--steps: '0': expected an integer >= 1"),
        ("eval_iwae", ["--k", "0"], "--k: '0': expected an integer >= 1"),
        ("eval_iwae", ["--rows", "-9990"], "--rows: '-9990': expected an integer >= 1"),
        ("train_mnist", ["--amp", "fp8"], "invalid choice: 'fp8'"),
        ("vampprior", ["--rounds", "0"], "--rounds: '0': expected an integer >= 1"),
        ("bubbles", ["--betas", "1,abc"], "--betas: 'abc' is not a number"),
        ("methods", ["--rows", "-45"], "--rows: '-45': expected an integer >= 1"),
        ("methods", ["--write", "x.md"], "--write goes with --table"),
        ("overfit", ["--rows", "0"], "--rows: '0': expected an integer >= 1"),
        ("prior_from", ["--epochs", "-1"], "--epochs: '-1': expected an integer >= 1"),
        ("literature", ["vae", "--max-epochs", "0"], "--max-epochs: '0': expected an integer >= 1"),
        ("literature", ["vae", "--write", "README.md"], "--write goes with --table"),
        ("literature", ["vae", "--status", "--snapshot"], "not allowed with argument"),
        ("literature", ["--table", "--amp", "bf16"], "--amp has no effect with --table"),
        ("literature", ["vae", "--step-time", "--amp", "bf16"], "--amp has no effect with --step-time (it times float32 and bf16 both)"),
        ("literature", ["vae", "--snapshot", "--max-epochs", "3"], "--max-epochs has no effect with --snapshot"),
        ("literature", ["vae", "--rounds", "3"], "--rounds goes with --step-time"),
        ("literature", ["vae", "--status", "--steps", "3"], "--steps goes with --step-time"),
        ("literature", ["vae", "--flags", "--epochs 1"], "--flags: --epochs is set by the script (the published 2000; --max-epochs N"),
        ("literature", ["vae", "--flags", "--init he --eval-k=10"], "--flags: --eval-k is set by the script"),
        ("literature", ["vae", "--flags", "--epoch 3"], "--flags: --epoch is --epochs, set by the script"),
        ("literature", ["vae", "--flags", "--eval-=9"], "--flags: --eval- is --eval-k, set by the script"),
        ("literature", ["--table", "--flags", "--init he"], "--flags has no effect with --table"),
        ("literature", ["vae", "--snapshot", "--amp", "bf16", "--threads", "2"], "--threads has no effect with --snapshot"),
        ("literature", ["--status", "--amp", "bf16"], "--amp picks a run of a row; --status without a row lists every run"),
        ("literature", ["--status", "--flags", "--init he"], "--flags picks a run of a row"),
        ("literature", ["--status", "--eval-k", "9"], "--eval-k picks a run of a row"),
        ("literature", ["vae", "--data-dir", "/nonexistent/mnist"], "/nonexistent/mnist: no such directory"),
        ("eval_iwae", ["--data-dir", "/nonexistent/mnist"], "/nonexistent/mnist: no such directory"),
        ("overfit", ["--data-dir", "/"], "--data-dir: digits is built in and reads no files"),
        ("prior_from", ["--fit-components", "20", "--components", "10"], "--fit-components 20 must be at most --components 10"),
        ("prior_from", ["--seed", "-1"], "--seed: '-1': expected an integer >= 0"),
        ("bubbles", ["--out", "figure.txt"], "figure.txt: the picture is a PNG, give a path ending in .png"),
        ("train_mnist", ["--compile-mode", "max-autotune"], "--compile-mode goes with --compile"),
        ("step", ["--profile", "3", "--variants", "bf16"], "--variants does not go with --profile"),
        ("step", ["--profile", "3", "--rounds", "2"], "--rounds does not go with --profile"),
        ("methods", ["--table", "--max-epochs", "3"], "--max-epochs does not go with --table, which prints the results measured before"),
        ("overfit", ["--table", "--epochs", "3"], "--epochs does not go with --table"),
    ],
)
def test_a_bad_argument_is_one_line_and_exit_2(script, args, says, monkeypatch, capsys):
    module = load_bench(script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *args])
    with pytest.raises(SystemExit) as stop:
        module.main()
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    assert says in err.splitlines()[-1]


@pytest.mark.parametrize("script", ["eval_iwae", "vampprior"])
def test_more_test_rows_than_there_are_is_refused_not_cut(script, monkeypatch):
    """A result would name a count it did not measure: refused before any training."""
    from types import SimpleNamespace

    if script == "vampprior":
        pytest.importorskip("pythae", reason="vampprior.py compares with pythae, installed for the benchmarks only")
    module = load_bench(script)
    monkeypatch.setattr(module, "mnist_dataset", lambda given: SimpleNamespace(train=np.zeros((20, 784), np.float32), test=np.zeros((7, 784), np.float32)))
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--rows", "8"])
    with pytest.raises(SystemExit, match=rf"^{script}.py: --rows 8: the test split has 7 images$"):
        module.main()


def test_a_closed_stdout_ends_a_script_quietly():
    """`literature.py --table | head -1`: exit 141 and nothing on stderr, as vaekit's verbs."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "literature.py"), "--table"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the script has written a byte: its first write finds no reader
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err


def test_a_missing_file_or_run_is_one_line_and_exit_1(tmp_path, common, monkeypatch, capsys):
    """What the scripts' ``run`` wrapper makes of errors past the arguments (no traceback)."""
    methods, literature = load_bench("methods"), load_bench("literature")
    monkeypatch.setattr(sys, "argv", ["methods.py", "--table", "--results", str(tmp_path / "none.json")])
    with pytest.raises(SystemExit) as stop:
        common.run(methods.main, "methods.py")
    assert str(stop.value.code).startswith("methods.py: ") and "none.json" in str(stop.value.code)
    monkeypatch.setattr(sys, "argv", ["literature.py", "vae", "--status", "--runs-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        common.run(literature.main, "literature.py")
    assert stop.value.code == f"literature.py: vae: no run at {tmp_path / 'vae'}"

    def missing_peer():
        import pythae_not_installed  # noqa: F401

    with pytest.raises(SystemExit, match="needs pythae_not_installed, which is not installed"):
        common.run(missing_peer, "x.py")


def test_compare_refuses_a_damaged_data_file_before_any_contestant(tmp_path):
    """The file every contestant reads is checked once: one line, exit 1, nothing measured."""
    bad = tmp_path / "mnist.npz"
    bad.write_bytes(b"not an npz")
    done = _script("compare", "--epochs", "1", "--repeats", "1", "--contestants", "products", "--data", str(bad))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [f"compare.py: {bad}: could not be read as an .npz archive (not a numpy file, or it holds Python objects, which are not loaded for safety)"]


def test_compare_fails_when_its_own_contestant_fails(monkeypatch, capsys):
    """A vaekit-side contestant that cannot run is a failed benchmark (exit 1), not an empty
    table with exit 0."""
    module = load_bench("compare")
    monkeypatch.setattr(module, "matmul_peak", lambda **kw: 1.0)
    monkeypatch.setattr(module, "_check_data", lambda path: None)
    monkeypatch.setattr(module.subprocess, "run", lambda cmd, **kw: _Failed())
    monkeypatch.setattr(sys, "argv", ["compare.py", "--epochs", "1", "--repeats", "1", "--contestants", "products", "--data", __file__])
    with pytest.raises(SystemExit, match="^compare.py: products failed$"):
        module.main()
    assert "products: failed" in capsys.readouterr().out


def test_argument_types(common):
    assert common.positive_int("3") == 3 and common.count("0") == 0
    for parse, text in ((common.positive_int, "0"), (common.positive_int, "2.5"), (common.count, "-1"), (common.positive_float, "nan"),
                        (common.positive_float, "0"), (common.device, "bogus"), (common.device, "tpu")):  # fmt: skip
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
    assert common.number_list("0.1, 1,4") == [0.1, 1.0, 4.0]
    assert common.device("cpu") == "cpu"
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(argparse.ArgumentTypeError, match="no CUDA device"):
            common.device("cuda:0")


def test_description_is_the_whole_first_paragraph(common):
    doc = '"""The first line,\n  wrapped onto a second.\n\nMore."""'.strip('"')
    assert common.description(doc) == "The first line, wrapped onto a second."
    help_text = " ".join(_script("step", "--help").stdout.split())
    assert common.description(load_bench("step").__doc__) in help_text and help_text.count("alone, under each speed setting")


def test_documented_settings(common):
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    assert common.documented(p, p.parse_args(["--threads", "1"]), ("threads",))
    assert not common.documented(p, p.parse_args(["--epochs", "1"]), ("threads",))


# -- the table writer --------------------------------------------------------------------------
MARKS = ("<!-- s -->", "<!-- e -->")


def test_a_marker_quoted_in_the_text_is_not_a_marker(tables, tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("see `<!-- s -->` in the text\n\n<!-- s -->\nold\n<!-- e -->\nafter\n")
    tables.write_between(doc, MARKS, "NEW", "t.py")
    assert doc.read_text() == "see `<!-- s -->` in the text\n\n<!-- s -->\nNEW\n<!-- e -->\nafter\n"
    assert tables.block(doc, MARKS) == "NEW"


@pytest.mark.parametrize(
    "text, says",
    [
        ("<!-- s -->\na\n<!-- e -->\n<!-- s -->\nb\n<!-- e -->\n", "more than once"),
        ("<!-- e -->\na\n<!-- s -->\n", "end marker '<!-- e -->' before the start"),
        ("text `<!-- s -->` and `<!-- e -->`\n", "no table markers"),
    ],
)
def test_a_document_the_writer_cannot_read_is_left_as_it_was(tables, tmp_path, text, says):
    doc = tmp_path / "doc.md"
    doc.write_text(text)
    with pytest.raises(SystemExit, match=says):
        tables.write_between(doc, MARKS, "NEW", "t.py")
    assert doc.read_text() == text and [p.name for p in tmp_path.iterdir()] == ["doc.md"]
    with pytest.raises(SystemExit, match="cannot read"):
        tables.write_between(tmp_path / "none.md", MARKS, "NEW", "t.py")


# -- literature.py ------------------------------------------------------------------------------
def test_variant_names_keep_values_apart(literature):
    name = literature.run_name
    assert name("hvae", "bf16", ["--logvar-min", "-6"]) != name("hvae", "bf16", ["--logvar-min", "6"])
    assert name("hvae", None, ["--logvar-min", "-6", "--logvar-max", "2"]) == "hvae-logvar-min--6-logvar-max-2"
    assert "/" not in name("vae", None, ["--prior-from", "/tmp/a/b"])
    assert literature.split_flags("--init=he --normalized-grad") == ["--init", "he", "--normalized-grad"]
    assert name("vae", None, literature.split_flags("--init=he")) == name("vae", None, ["--init", "he"]) == "vae-init-he"
    assert literature._flags_joined(["hvae", "--flags", "--normalized-grad", "--amp", "bf16"]) == ["hvae", "--flags=--normalized-grad", "--amp", "bf16"]


def test_results_are_not_replaced_by_other_flags_or_by_a_snapshot(literature, tmp_path):
    path = tmp_path / "vae.json"
    path.write_text(json.dumps({"row": "vae", "flags": ["--init", "he"], "finished": True}))
    literature._unchanged(path, ["--init", "he"], snapshot=False)  # the same run evaluated again
    with pytest.raises(SystemExit, match="finished run's result"):
        literature._unchanged(path, ["--init", "he"], snapshot=True)
    with pytest.raises(SystemExit, match="holds the result of flags '--init he', not ''"):
        literature._unchanged(path, [], snapshot=False)
    path.write_text(json.dumps({"row": "vae", "flags": [], "finished": False}))
    literature._unchanged(path, [], snapshot=True)
    # a run started again under the same name does not replace the further run's snapshot
    path.write_text(json.dumps({"row": "vae", "flags": [], "finished": False, "epochs_run": 881}))
    literature._unchanged(path, [], snapshot=True, epochs_run=881)
    literature._unchanged(path, [], snapshot=False, epochs_run=12)  # finishing writes its own result
    with pytest.raises(SystemExit, match="holds a snapshot after 881 epochs and this run has 12; move it away first"):
        literature._unchanged(path, [], snapshot=True, epochs_run=12)


def test_a_snapshot_reads_the_real_run_and_a_smoke_run_keeps_apart(literature, tmp_path, monkeypatch):
    """--snapshot evaluates the real run into the results, and at fewer samples than the
    published 5000 beside the smoke results; --max-epochs trains under RUNS_DIR/smoke and writes
    its JSON there."""
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    results = tmp_path / "results"
    monkeypatch.setattr(literature, "RESULTS", results)
    seen = {}
    monkeypatch.setattr(literature, "snapshot", lambda row, run_dir, data_dir, k, results, **kw: seen.update(run_dir=run_dir, k=k, results=results) or {})
    monkeypatch.setattr(literature, "run_row", lambda row, run_dir, data_dir, extra, results, name, flags, smoke: seen.update(
        trained=run_dir, into=results, smoke=smoke, epochs=extra[extra.index("--epochs") + 1]) or {})  # fmt: skip
    literature.main(["vae", "--snapshot", "--runs-dir", str(tmp_path)])
    assert seen == {"run_dir": tmp_path / "vae", "k": 5000, "results": results}
    literature.main(["vae", "--snapshot", "--eval-k", "5", "--runs-dir", str(tmp_path)])
    assert seen == {"run_dir": tmp_path / "vae", "k": 5, "results": tmp_path / "smoke" / "results"}
    literature.main(["vae", "--max-epochs", "2", "--runs-dir", str(tmp_path)])
    assert (seen["trained"], seen["into"], seen["smoke"], seen["epochs"]) == (tmp_path / "smoke" / "vae", tmp_path / "smoke" / "results", True, "2")
    (results / "vae.json").parent.mkdir()
    (results / "vae.json").write_text(json.dumps({"row": "vae", "flags": [], "finished": True}))
    with pytest.raises(SystemExit, match="finished run's result"):
        literature.main(["vae", "--snapshot", "--runs-dir", str(tmp_path)])


def test_methods_and_overfit_smoke_runs_keep_out_of_the_results(tmp_path):
    """Only the documented settings write into bench/results; others go beside their runs unless
    a path is given, and --table reads the measured results."""
    methods, overfit = load_bench("methods"), load_bench("overfit")
    ap = methods.parser()

    def where(*argv):
        return methods.results_path(ap, ap.parse_args(list(argv)))

    assert where() == where("--threads", "1", "--methods", "vi") == methods.RESULTS
    assert where("--rows", "5", "--out", str(tmp_path)) == tmp_path / "methods.json"
    assert where("--max-epochs", "1", "--results", str(tmp_path / "r.json")) == tmp_path / "r.json"
    assert where("--table", "budget", "--rows", "5") == methods.RESULTS
    p = overfit.parser()

    def out(*argv):
        return overfit.out_dir(p, p.parse_args(list(argv)))

    assert out() == out("--table") == overfit.RESULTS
    assert out("--widths", "8", "--epochs", "1") == Path.home() / "vaekit-runs" / "overfit"
    assert out("--epochs", "1", "--out", str(tmp_path)) == tmp_path


def test_a_snapshot_names_the_epoch_of_the_weights_it_evaluated(literature, tmp_path):
    """The snapshot evaluates a copy of the best model, and reports that model's own epoch,
    not a later best that lands while it evaluates."""
    from vaekit.checkpoint import read_meta

    run = tmp_path / "vae"
    subprocess.run([sys.executable, "-m", "vaekit", "train", "--data", "digits", "--out", str(run), "--epochs", "3", "--hidden", "8",
                    "--latent-dim", "2", "--eval-k", "2", "--quiet"], check=True, capture_output=True, timeout=300)  # fmt: skip
    epoch = read_meta(run / "model.safetensors")["epoch"]
    # A later, better epoch in the metrics than the weights hold (as while training goes on).
    lines = (run / "metrics.jsonl").read_text().splitlines()
    extra = {**json.loads(lines[-1]), "epoch": 4, "valid_score": 1e9, "valid_elbo": 1e9}
    (run / "metrics.jsonl").write_text("\n".join([*lines, json.dumps(extra)]) + "\n")
    before = sorted(p.name for p in run.iterdir())
    result = literature.snapshot("vae", run, tmp_path, 2, tmp_path / "results", name="vae")
    assert result["best_epoch"] == epoch and result["epochs_run"] == 4 and result["finished"] is False
    assert json.loads((tmp_path / "results" / "vae.json").read_text())["best_epoch"] == epoch
    assert sorted(p.name for p in run.iterdir()) == before  # the copy was evaluated, nothing written beside the run


@pytest.mark.parametrize("text, says", [('{"row": "vae", "command": "x"', "Expecting ','"), ('{"row": "vae", "command": "vaekit train"}', "no test_nll"),
                                        ("[1, 2]", "(not a JSON object)"), (b"\xff\xfe", "")])  # fmt: skip
def test_a_damaged_result_file_is_one_line_naming_it(literature, tmp_path, text, says):
    """--table over a results folder with a file that is not a result: one line naming it."""
    path = tmp_path / "zz.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(SystemExit) as stop:
        literature.table(tmp_path)
    assert str(stop.value.code).startswith(f"literature.py: {path} is not a results file (") and says in str(stop.value.code)


def test_table_skips_other_rows_and_names_a_bad_value(literature, tmp_path):
    """A JSON of a row the script does not know is not its result (skipped, whatever else it
    lacks); a result whose value is of the wrong kind is one line naming the file."""
    (tmp_path / "other.json").write_text('{"row": "not-a-row"}')
    assert "not run yet" in literature.table(tmp_path)
    good = {"row": "vae", "command": "vaekit train", "test_nll": 87.5, "test_neg_elbo": 93.0, "k": 5000, "epochs_run": 9,
            "best_epoch": 4, "finished": True, "flags": []}  # fmt: skip
    (tmp_path / "vae.json").write_text(json.dumps(good))
    assert "| 87.50 (K = 5000) | 93.00 |" in literature.table(tmp_path)
    (tmp_path / "vae.json").write_text(json.dumps({**good, "test_nll": "87.5"}))
    with pytest.raises(SystemExit) as stop:
        literature.table(tmp_path)
    assert str(stop.value.code).startswith(f"literature.py: {tmp_path / 'vae.json'} is not a results file (a bad value: ")


def test_methods_and_overfit_tables_of_damaged_files_are_one_line(tmp_path, monkeypatch, capsys):
    methods, overfit = load_bench("methods"), load_bench("overfit")
    bad = tmp_path / "methods.json"
    for text, says in (("{", "(Expecting property name"), ("{}", "(no results)"),
                       ('{"results": [{"regime": "converged"}]}', "(a result without 'epochs_run')")):  # fmt: skip
        bad.write_text(text)
        with pytest.raises(SystemExit) as stop:
            methods.table("converged", bad)
        assert str(stop.value.code).startswith(f"methods.py: {bad} is not a results file {says}")
    (tmp_path / "overfit.json").write_text('{"rows": [{"method": "map"}]}')
    monkeypatch.setattr(sys, "argv", ["overfit.py", "--table", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        overfit.main()
    assert stop.value.code == f"overfit.py: {tmp_path / 'overfit.json'} is not a results file (a result without 'width')"


def test_the_mnist_folder_is_the_given_one_then_shared_then_vaekits_lookup(common, tmp_path, monkeypatch):
    """--data-dir wins; else ../shared beside the repository where it exists; else None, which
    leaves vaekit's own lookup ($VAEKIT_DATA, the cache)."""
    assert common.mnist_dir(tmp_path) == str(tmp_path)
    monkeypatch.setattr(common, "SHARED_MNIST", tmp_path)
    assert common.mnist_dir(None) == str(tmp_path)
    monkeypatch.setattr(common, "SHARED_MNIST", tmp_path / "absent")
    assert common.mnist_dir(None) is None
    import numpy as np

    (tmp_path / "v").mkdir()
    np.savez(tmp_path / "v" / "binarized_mnist.npz", train=np.zeros((2, 784), np.uint8))
    monkeypatch.setenv("VAEKIT_DATA", str(tmp_path / "v"))
    assert common.mnist_file(None) == tmp_path / "v" / "binarized_mnist.npz"


def test_step_time_times_the_variant(literature, monkeypatch):
    """--step-time builds the row with the variant's --flags, in each precision."""
    seen = []

    def config(row, x_train, extra=None):
        seen.append(list(extra))
        raise SystemExit("stop")

    monkeypatch.setattr(literature, "row_config", config)
    with pytest.raises(SystemExit):
        literature.step_time("vae", None, 1, 1, flags=["--hidden", "64,64"])
    assert seen == [["--hidden", "64,64", "--amp", "off"]]


def test_step_time_steps_on_the_variants_batch_in_its_dtype(literature, monkeypatch):
    """A variant's --batch-size is the batch timed, and its --dtype the model's and the batch's
    (float64: no bf16 autocast over it, so the bf16 setting is refused as a run would be)."""
    import types

    import torch

    x = (np.random.default_rng(0).random((1000, 784)) < 0.5).astype(np.float32)
    monkeypatch.setattr(literature, "mnist_dataset", lambda data_dir: types.SimpleNamespace(train=x))
    timed = []

    def fit_step(model, config, batch):
        timed.append((tuple(batch.shape), batch.dtype, next(model.parameters()).dtype, config.amp))
        return lambda: None

    monkeypatch.setitem(sys.modules, "step", types.SimpleNamespace(fit_step=fit_step))
    out = literature.step_time("vae", None, 1, 1, flags=["--batch-size", "20"])
    assert timed == [((20, 784), torch.float32, torch.float32, "off"), ((20, 784), torch.float32, torch.float32, "bf16")]
    assert out["flags"] == ["--batch-size", "20"]
    timed.clear()
    with pytest.raises(Exception, match="amp=bf16 needs dtype float32"):
        literature.step_time("vae", None, 1, 1, flags=["--dtype", "float64"])
    assert timed == [((100, 784), torch.float64, torch.float64, "off")]


SHARED_MNIST = Path(__file__).resolve().parents[3] / "shared/data/binarized_mnist"


@pytest.mark.skipif(not (SHARED_MNIST / "binarized_mnist.npz").is_file(), reason="needs ../shared/data/binarized_mnist")
def test_overfit_reads_a_named_dataset_from_its_data_dir(tmp_path, monkeypatch, capsys):
    """--data-dir reaches the loader for a dataset that reads files (binarized MNIST)."""
    overfit = load_bench("overfit")
    argv = ["overfit.py", "--data", "binarized_mnist", "--data-dir", str(SHARED_MNIST), "--widths", "4", "--methods", "map",
            "--rows", "20", "--eval-rows", "10", "--epochs", "1", "--k", "2", "--out", str(tmp_path)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    overfit.main()
    rows = json.loads((tmp_path / "overfit.json").read_text())["rows"]
    assert [(r["method"], r["width"]) for r in rows] == [("map", 4)]
    assert rows[0]["train_log_px"] < 0 and "| map | 4 |" in capsys.readouterr().out


def test_compare_leaves_emulated_bf16_out_of_its_defaults(monkeypatch, capsys):
    """Without bfloat16 instructions the bf16 contestant (and its matmul peak, minutes of
    emulated products) is left out of the defaults and said so; asked for, it runs."""
    module = load_bench("compare")
    seen = []
    monkeypatch.setattr(module, "matmul_peak", lambda **kw: seen.append(kw.get("dtype")) or 1.0)
    monkeypatch.setattr(module, "_check_data", lambda path: None)
    monkeypatch.setattr(module.subprocess, "run", lambda cmd, **kw: seen.append(cmd[cmd.index("--child") + 1]) or _Failed())
    for flags, asked, bf16 in ((set(), None, False), ({"amx_bf16"}, None, True), (set(), ["vaekit", "vaekit-bf16"], True)):
        seen.clear()
        monkeypatch.setattr(module, "cpu_flags", lambda: flags)
        argv = ["compare.py", "--repeats", "1", "--data", __file__] + (["--contestants", *asked] if asked else [])
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit):  # every child "failed": vaekit's failure exits non-zero
            module.main()
        out = capsys.readouterr().out
        assert ("vaekit-bf16" in seen) == bf16, (flags, seen)
        assert ("vaekit-bf16 left out" in out) == (not bf16 and asked is None), out


class _Failed:
    stdout, stderr, returncode = "", "boom", 1


def test_matmul_peak_stops_at_a_size_whose_one_product_overruns_the_budget(monkeypatch):
    """A product slower than the time budget (emulated bfloat16: minutes at 3072) is timed once
    and the larger sizes are not tried."""
    module = load_bench("compare")
    import torch

    sizes = []
    real_mm = torch.mm
    clock = iter(range(0, 10**6, 100))  # every perf_counter call: 100 s later

    def mm(a, b):
        sizes.append(a.shape[0])
        return real_mm(a[:2, :2], b[:2, :2])

    monkeypatch.setattr(torch, "mm", mm)
    monkeypatch.setattr(torch, "randn", lambda n, m, **kw: torch.empty(n, m))  # no 3072² draws
    monkeypatch.setattr(module.time, "perf_counter", lambda: next(clock))
    peak = module.matmul_peak(seconds=3.0)
    assert sizes == [1024] and peak == pytest.approx(2 * 1024**3 / 100 / 1e9)


def test_an_output_folder_that_cannot_take_the_results_is_named_before_training(tmp_path, common, monkeypatch):
    """writable_dir makes the folder or says in one line why it cannot, and the scripts ask it
    before they train (overfit.py here: nothing trained, one line, exit 1)."""
    assert common.writable_dir(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match=rf"^--out {tmp_path}/file/x: {tmp_path}/file is a file, not a folder$"):
        common.writable_dir(tmp_path / "file" / "x", "--out")
    overfit = load_bench("overfit")
    monkeypatch.setattr(overfit, "train_one", lambda *a: pytest.fail("trained before the output was checked"))
    monkeypatch.setattr(sys, "argv", ["overfit.py", "--epochs", "1", "--out", str(tmp_path / "file")])
    with pytest.raises(SystemExit) as stop:
        common.run(overfit.main, "overfit.py")
    assert stop.value.code == f"overfit.py: --out {tmp_path / 'file'}: {tmp_path / 'file'} is a file, not a folder"
