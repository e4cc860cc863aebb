"""bench/literature.py: the README's table is the one written from the JSON files, unfinished
rows are reported as unfinished, and every row's command is one that vaekit accepts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench_helpers import documented_table, load_bench

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def literature():
    return load_bench("literature")


def test_readme_table_is_generated_from_the_results(literature):
    """A table typed into README.md, or results added without rewriting it, fails here."""
    block = documented_table(ROOT / "README.md", literature.MARKERS)
    assert block == literature.table(), "run: python bench/literature.py --table --write README.md"


def _result(row, finished, nll, amp=False):
    command = f"vaekit train --data binarized_mnist{' --amp bf16' if amp else ''} --out runs/{row} --json"
    return {"row": row, "command": command, "finished": finished, "test_nll": nll, "test_neg_elbo": nll + 4.0, "k": 5000, "active_units": 17,
            "latent_size": 40, "epochs_run": 211, "best_epoch": 209, "train_seconds": 7200.0,
            "median_epoch_seconds": 27.25}  # fmt: skip


def _lines(literature, results) -> dict[tuple[str, str], str]:
    """{(row, training precision): table line}."""
    return {tuple(c.strip() for c in line.split(" | ")[:3:2]): line for line in literature.table(results).splitlines()[2:]}


def test_unfinished_rows_say_so_and_finished_rows_do_not(literature, tmp_path):
    (tmp_path / "vae.json").write_text(json.dumps(_result("vae", False, 90.123)))
    (tmp_path / "hvae.json").write_text(json.dumps(_result("hvae", True, 85.4)))
    lines = _lines(literature, tmp_path)
    assert set(lines) == {("| vae", "float32"), ("| hvae", "float32")} | {("| " + r, "–") for r in literature.ROWS if r not in ("vae", "hvae")}
    vae, hvae = lines["| vae", "float32"], lines["| hvae", "float32"]
    assert "so far 90.12 (K = 5000)" in vae and "unfinished: 211 of at most 2000 (best 209)" in vae
    assert "| 85.40 (K = 5000) | 89.40 | 17/40 | 211 (best 209) | 27.2 |" in hvae
    assert "unfinished" not in hvae and "so far" not in hvae
    assert "not run yet" in lines["| iwae", "–"]


def test_a_bf16_run_adds_its_own_line(literature, tmp_path):
    """ROW-bf16.json is shown beside the float32 row, never in its place; a row trained in bf16
    alone has its bf16 line only."""
    (tmp_path / "vae.json").write_text(json.dumps(_result("vae", True, 87.64)))
    (tmp_path / "vae-bf16.json").write_text(json.dumps(_result("vae", True, 87.7, amp=True)))
    (tmp_path / "hvae-bf16.json").write_text(json.dumps(_result("hvae", False, 86.0, amp=True)))
    lines = _lines(literature, tmp_path)
    assert len(lines) == len(literature.ROWS) + 1
    assert "| 87.64 (K = 5000) |" in lines["| vae", "float32"] and "| 87.70 (K = 5000) |" in lines["| vae", "bf16 autocast"]
    assert ("| hvae", "float32") not in lines and ("| hvae", "–") not in lines
    assert "so far 86.00" in lines["| hvae", "bf16 autocast"]


def test_a_run_with_further_flags_is_a_variant_of_its_own(literature, tmp_path):
    """--flags names its run and JSON ROW[-bf16]-<flags>, passes the flags to vaekit train, and
    its result gets a line of its own, after the plain float32 and bf16 ones."""
    import numpy as np

    flags = ["--normalized-grad", "--init", "he"]
    assert literature.run_name("hvae", "bf16", flags) == "hvae-bf16-normalized-grad-init-he"
    assert literature.run_name("hvae") == "hvae" and literature.run_name("hvae", "bf16") == "hvae-bf16"
    plain = literature.row_config("hvae-vampprior", np.zeros((4, 784), np.float32))
    varied = literature.row_config("hvae-vampprior", np.zeros((4, 784), np.float32), ["--amp", "bf16", *flags])
    assert (plain.train.normalized_grad, plain.model.init) == (False, "default")
    assert (varied.train.normalized_grad, varied.model.init, varied.train.amp) == (True, "he", "bf16")

    def write(name, nll, finished, amp, flags=()):
        r = {**_result("hvae", finished, nll), "flags": list(flags),
             "command": " ".join(literature.command("hvae", tmp_path / name, tmp_path, (["--amp", "bf16"] if amp else []) + list(flags)))}
        (tmp_path / f"{name}.json").write_text(json.dumps(r))

    write("hvae-bf16-normalized-grad-init-he", 85.1, False, True, flags)
    write("hvae-bf16", 86.19, True, True)
    write("hvae", 86.3, True, False)
    rows = [line for line in literature.table(tmp_path).splitlines() if line.startswith("| hvae |")]
    assert [line.split(" | ")[2] for line in rows] == ["float32", "bf16 autocast", "bf16 autocast; --normalized-grad --init he"]
    assert "so far 85.10" in rows[2] and "| 86.19 (K = 5000) |" in rows[1]


def test_median_epoch_time_ignores_a_paused_stretch(literature):
    assert literature._median([3.0, 2.9, 950.0, 3.1, 3.2]) == 3.1
    assert literature._median([]) is None


def test_write_table_replaces_only_the_block(literature, tmp_path):
    start, end = literature.MARKERS
    doc = tmp_path / "doc.md"
    doc.write_text(f"before\n{start}\nold table\n{end}\nafter\n")
    literature.write_table(doc, "| new |")
    assert doc.read_text() == f"before\n{start}\n| new |\n{end}\nafter\n"
    (tmp_path / "bare.md").write_text("no markers\n")
    with pytest.raises(SystemExit, match="no table markers"):
        literature.write_table(tmp_path / "bare.md", "| new |")


@pytest.mark.parametrize("row", ["vae", "mixture", "vampprior", "hvae", "hvae-vampprior", "iwae"])
def test_every_row_is_a_valid_train_command(literature, row, tmp_path):
    """Each row's flags parse and build a run config, component options checked (no data read,
    no training): a renamed option or a refused combination fails here."""
    import numpy as np

    argv = literature.command(row, tmp_path / row, tmp_path, [])
    assert argv[:2] == ["vaekit", "train"] and "--resume" not in argv
    config = literature.row_config(row, np.zeros((4, 784), np.float32))
    model = config.model
    assert config.train.lr == 5e-4 and config.train.batch_size == 100 and config.train.epochs == 2000
    assert config.train.patience == 50 and config.train.eval_k == 5000
    if "vampprior" in row:
        assert model.prior == "vampprior" and model.pseudo_inputs == 500
    if row.startswith("hvae"):
        assert model.latent_dim == (40, 40) and model.inference == "topdown" and model.decoder_input == "all"


def test_step_time_measures_both_precisions(literature):
    """One round of one step of the VampPrior row (its pseudo-inputs started from training rows)
    in float32 and under bf16 autocast: positive times and their ratio."""
    out = literature.step_time("vampprior", None, rounds=1, steps=1)
    assert out["float32_ms"] > 0 and out["bf16_ms"] > 0
    assert out["bf16_speedup"] == pytest.approx(out["float32_ms"] / out["bf16_ms"])
    assert "compile_speedup" not in out


def test_step_time_measures_the_compiled_step(literature):
    """With compile, the iwae row's bf16 step under torch.compile is timed beside the eager ones."""
    out = literature.step_time("iwae", None, rounds=1, steps=1, compile=True)
    assert out["bf16_compile_ms"] > 0
    assert out["compile_speedup"] == pytest.approx(out["bf16_ms"] / out["bf16_compile_ms"])


def test_status_without_a_row_lists_every_run(tmp_path):
    """--status alone: one line per run directory of a row (float32 and bf16, and smoke tests
    under RUNS_DIR/smoke), none for rows never run."""
    import subprocess
    import sys

    for name, scores in (("vae", [-99.0, -97.5, -98.0]), ("hvae-bf16", [-101.0]), ("smoke/vae", [-120.0, -110.0])):
        (tmp_path / name).mkdir(parents=True)
        lines = [{"epoch": i + 1, "valid_score": v, "valid_elbo": v, "epoch_seconds": 2.0 + i} for i, v in enumerate(scores)]
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "literature.py"), "--status", "--runs-dir", str(tmp_path)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    runs = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["run"], r["row"], r["epochs_run"], r["best_epoch"]) for r in runs] == [("hvae-bf16", "hvae", 1, 1), ("vae", "vae", 3, 2),
                                                                                      ("smoke/vae", "vae", 2, 2)]  # fmt: skip
    assert runs[1]["best_valid_elbo"] == -97.5 and runs[1]["median_epoch_seconds"] == 3.0


def test_threads_change_the_speed_not_the_run(literature, tmp_path):
    """--threads reaches vaekit train after the row's flags (so it wins) without renaming the run,
    and the result's machine line names the training's thread count from its config.json."""
    import numpy as np

    extra = ["--amp", "bf16", "--lr-schedule", "plateau", *literature.speed_and_smoke_flags(threads=2)]
    argv = literature.command("vae", tmp_path / "vae", tmp_path, extra)
    assert argv[argv.index("--threads") + 1] == "2" and argv.index("--threads") > argv.index("--lr-schedule")
    assert literature.row_config("vae", np.zeros((4, 784), np.float32), extra).train.threads == 2
    assert literature.run_name("vae", "bf16", ["--lr-schedule", "plateau"]) == "vae-bf16-lr-schedule-plateau"
    assert literature.speed_and_smoke_flags(None, 3, 10) == ["--epochs", "3", "--eval-k", "10"]
    (tmp_path / "config.json").write_text(json.dumps({"train": {"threads": 3}}))
    assert literature._machine(tmp_path).endswith(", 3 threads")


def test_a_shorter_setting_replaces_the_published_value_in_the_command(literature, tmp_path):
    """A smoke test's --epochs and --eval-k, and a variant's own --hidden, stand where the published
    values stood: each option once in the recorded command, with the value training used."""
    import numpy as np

    extra = ["--hidden", "400,400", *literature.speed_and_smoke_flags(threads=1, max_epochs=3, eval_k=10)]
    argv = literature.command("vae", tmp_path / "vae", tmp_path, extra)
    for option, value in (("--epochs", "3"), ("--eval-k", "10"), ("--hidden", "400,400"), ("--threads", "1"), ("--lr", "5e-4")):
        assert argv.count(option) == 1 and argv[argv.index(option) + 1] == value, option
    assert argv.index("--epochs") < argv.index("--net") < argv.index("--threads")
    config = literature.row_config("vae", np.zeros((4, 784), np.float32), extra)
    assert config.train.epochs == 3 and config.train.eval_k == 10 and config.model.hidden == (400, 400)
    assert literature.command("vae", tmp_path / "vae", tmp_path, []).count("--epochs") == 1


def test_device_changes_the_speed_not_the_run(literature, tmp_path):
    """--device, like --threads, reaches vaekit train after the row's flags without renaming the
    run (a run trained on a GPU continues on the CPU under the same name), may not hide in
    --flags, and the machine line names the GPU a run last trained on."""
    import numpy as np

    extra = ["--amp", "bf16", "--ema", "0.999", *literature.speed_and_smoke_flags(threads=2, device="cpu")]
    argv = literature.command("iwae", tmp_path / "iwae", tmp_path, extra)
    assert argv[argv.index("--device") + 1] == "cpu" and argv.index("--device") > argv.index("--ema")
    assert literature.row_config("iwae", np.zeros((4, 784), np.float32), extra).train.device == "cpu"
    assert literature.speed_and_smoke_flags(device="cuda:1") == ["--device", "cuda:1"]
    (tmp_path / "config.json").write_text(json.dumps({"train": {"threads": 2, "device": "cpu"}}))
    assert literature._machine(tmp_path).endswith(", 2 threads")
    (tmp_path / "config.json").write_text(json.dumps({"train": {"threads": 2, "device": "cuda:0"}}))
    assert ", 2 threads, cuda:0 (" in literature._machine(tmp_path)
    script = [sys.executable, str(ROOT / "bench" / "literature.py")]
    for args, message in [(["iwae", "--flags", "--device cpu"], "--device is set by the script"),
                          (["--table", "--device", "cpu"], "--device has no effect with --table"),
                          (["iwae", "--device", "gpu"], "'gpu' is not a device")]:  # fmt: skip
        done = subprocess.run([*script, *args, "--runs-dir", str(tmp_path)], capture_output=True, text=True, check=False)
        assert done.returncode == 2 and message in done.stderr.strip().splitlines()[-1], done.stderr


def test_compile_changes_the_speed_not_the_run(literature, tmp_path):
    """--compile, like --threads, reaches vaekit train without renaming the run, may not hide in
    --flags, and is refused where nothing trains."""
    import numpy as np

    assert literature.speed_and_smoke_flags(compile=True) == ["--compile"]
    extra = ["--amp", "bf16", *literature.speed_and_smoke_flags(threads=1, compile=True)]
    assert literature.row_config("iwae", np.zeros((4, 784), np.float32), extra).train.compile is True
    assert literature.row_config("iwae", np.zeros((4, 784), np.float32), ["--amp", "bf16"]).train.compile is False
    script = [sys.executable, str(ROOT / "bench" / "literature.py")]
    for args, message in [(["iwae", "--flags", "--compile"], "--compile is set by the script"),
                          (["--table", "--compile"], "--compile has no effect with --table"),
                          (["iwae", "--snapshot", "--compile"], "--compile has no effect with --snapshot")]:  # fmt: skip
        done = subprocess.run([*script, *args, "--runs-dir", str(tmp_path)], capture_output=True, text=True, check=False)
        assert done.returncode == 2 and message in done.stderr.strip().splitlines()[-1], done.stderr
    assert not any(tmp_path.iterdir())


def test_a_variant_has_one_name_however_its_options_are_spelled(literature, tmp_path):
    """A unique prefix of a vaekit train option and ``--opt=value`` name the same run as the
    option written out; a word that names no option (or several) is refused before anything runs."""
    full = literature.split_flags("--normalized-grad --ema 0.9 --init he")
    for spelled in ("--normalized --ema=0.9 --init he", "--normalized-g --em 0.9 --ini=he"):
        assert literature.split_flags(spelled) == full
        assert literature.run_name("vae", "bf16", literature.split_flags(spelled)) == "vae-bf16-normalized-grad-ema-0.9-init-he"
    # a number has one spelling too: the value, not how it was written, names the run
    for spelled, canonical in [("--ema 0.90", "--ema 0.9"), ("--adam-eps 0.0001", "--adam-eps 1e-4"),
                               ("--adam-eps 1.0E-04", "--adam-eps 1e-4"), ("--logvar-min -6.0", "--logvar-min -6"),
                               ("--lr 0.0025", "--lr 2.5e-3"), ("--hidden 0600,300", "--hidden 600,300"),
                               ("--epochs 05", "--epochs 5"), ("--beta 4.0", "--beta 4"), ("--free-bits 1e5", "--free-bits 1e5")]:  # fmt: skip
        assert literature.split_flags(spelled) == canonical.split(), spelled
    # words that are no numbers (or take none) are kept as written, so vaekit train still judges them
    for kept in ("--init he", "--lr nan", "--ema abc", "--data-dir /runs/001", "--seed 2"):
        assert literature.split_flags(kept) == kept.split()
    script = [sys.executable, str(ROOT / "bench" / "literature.py")]
    for flags, message in [("--bogus 1", "--flags: --bogus is not a vaekit train option"),
                           ("--lr 1e-3 --l 2", "--flags: --l is not a vaekit train option (or a prefix of several)")]:  # fmt: skip
        done = subprocess.run([*script, "vae", "--flags", flags, "--runs-dir", str(tmp_path)], capture_output=True, text=True, check=False)
        assert done.returncode == 2 and message in done.stderr.strip().splitlines()[-1], done.stderr
    assert not any(tmp_path.iterdir())
    done = subprocess.run([*script, "--status", "--runs-dir", str(tmp_path / "none")], capture_output=True, text=True, check=False)
    assert done.returncode == 1 and done.stderr.strip() == f"literature.py: --runs-dir {tmp_path / 'none'}: no such directory"


def test_a_variant_objective_replaces_the_rows(literature, tmp_path):
    """--flags naming --objective train the row's model on that objective: the row's warm-up (an
    ELBO option vaekit refuses for the IWAE bound) and its own --objective/--k are left out."""
    import numpy as np

    x = np.zeros((4, 784), np.float32)
    iw = ["--objective", "iwae", "--k", "5"]
    argv = literature.command("hvae-vampprior", tmp_path / "h", tmp_path, iw)
    assert "--warmup" not in argv and argv.count("--objective") == 1
    config = literature.row_config("hvae-vampprior", x, iw)
    assert config.train.objective == "iwae" and config.train.k == 5 and config.train.warmup == 0
    assert config.model.prior == "vampprior" and config.model.latent_dim == (40, 40)
    config = literature.row_config("iwae", x, ["--objective", "elbo", "--warmup", "10"])
    assert config.train.objective == "elbo" and config.train.warmup == 10 and config.model.latent_dim == 50
    assert literature.row_args("hvae-vampprior", ["--lr-schedule", "plateau"])[-2:] == ["--warmup", "100"]


def test_the_timed_step_is_the_runs_step(monkeypatch):
    """bench/step.py's fit_step, which --step-time times, steps as train.fit does: Adam on
    normalized gradients under --normalized-grad, with the run's ε, then the weights' average
    under --ema: two timed steps move the weights as two such steps written out here, and
    update the average twice."""
    import torch
    from bench_helpers import load_bench

    from vaekit.config import ModelConfig, TrainConfig
    from vaekit.model import VAEModel
    from vaekit.optim import NormalizedAdam, WeightAverage
    from vaekit.train import make_objective, make_optimizers

    updates = []
    real_update = WeightAverage.update
    monkeypatch.setattr(WeightAverage, "update", lambda self: (updates.append(self.decay), real_update(self))[1])
    config = TrainConfig(lr=1e-2, normalized_grad=True, adam_eps=1e-4, ema=0.5, batch_size=8)
    x = torch.rand(8, 6).round()

    def model():
        torch.manual_seed(0)
        return VAEModel(ModelConfig(input_dim=6, latent_dim=2, hidden=(5,), likelihood="bernoulli")).train()

    timed = model()
    step = load_bench("step").fit_step(timed, config, x)
    torch.manual_seed(1)
    step(), step()
    assert updates == [0.5, 0.5]
    ref = model()
    objective = make_objective(ref, config)
    (opt,) = make_optimizers(ref, config.lr, normalized_grad=True, eps=1e-4)
    assert isinstance(opt, NormalizedAdam) and opt.param_groups[0]["eps"] == 1e-4
    torch.manual_seed(1)
    for _ in range(2):
        loss, _ = ref(objective, x, None, torch.randn(1, 8, ref.noise_size), 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for (name, a), b in zip(timed.named_parameters(), ref.parameters()):
        assert torch.equal(a, b), name
