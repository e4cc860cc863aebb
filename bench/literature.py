"""The published binarized-MNIST rows, one command each: train (resumable), then the test
negative log-likelihood with K = 5000 importance samples in float32, written to
bench/results/literature/ROW.json; ``--table`` prints the README table from those files.

    python bench/literature.py vae                 # train or continue, then evaluate
    python bench/literature.py vae --status        # where a run stands, without training
    python bench/literature.py --status            # ... every run there is
    python bench/literature.py vae --snapshot      # an unfinished run's best epoch so far, evaluated
    python bench/literature.py --table             # the markdown table from the JSON files
    python bench/literature.py --table --write README.md   # ... written between the table markers

Settings follow Tomczak & Welling (2018) and their code (jmtomczak/vae_vampprior): Adam with
learning rate 5e-4, batch 100, at most 2000 epochs, early stopping after 50 epochs without a
better validation ELBO, KL warm-up over 100 epochs, gated MLP layers of 300 units, z of 40,
500 pseudo-inputs; the two-layer rows use their q(z2|x) q(z1|x, z2) and p(x|z1, z2). The iwae row is Burda et al. (2016)'s one-layer model trained on the
50-sample bound (tanh MLP 200-200, z of 50). Run directories live outside the repository
(default ~/vaekit-runs/literature/ROW), so a row can be continued later with the same command.
"""

from __future__ import annotations

import argparse
import decimal
import functools
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_data_dir, description, device, mnist_dataset, mnist_dir, positive_int, run, table_options, write_json  # noqa: E402
from tables import holding, results_file, table_of, write_between  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "literature"

# The published evaluation: the test log-likelihood with K = 5000 importance samples.
PUBLISHED_K = 5000
COMMON = ["--data", "binarized_mnist", "--lr", "5e-4", "--batch-size", "100", "--epochs", "2000",
          "--patience", "50", "--eval-k", str(PUBLISHED_K)]  # fmt: skip
GATED = ["--net", "gated", "--hidden", "300,300"]
ELBO = ["--warmup", "100"]
# Tomczak & Welling's two-layer model: q(z2|x) q(z1|x, z2), p(z2) p(z1|z2) p(x|z1, z2).
TWO_LAYERS = ["--latent-dim", "40,40", "--inference", "topdown", "--decoder-input", "all"]
ROWS: dict[str, dict] = {
    "vae": {"model": "one stochastic layer (z 40), standard normal prior", "published": 88.56, "goal": 88.0,
            "args": [*GATED, "--latent-dim", "40", *ELBO]},
    "mixture": {"model": "one layer, mixture-of-Gaussians prior (500 components)", "published": None, "goal": None,
                "args": [*GATED, "--latent-dim", "40", "--prior", "mixture", "--components", "500", *ELBO]},
    "vampprior": {"model": "one layer, VampPrior (500 pseudo-inputs)", "published": 85.57, "goal": 85.0,
                  "args": [*GATED, "--latent-dim", "40", "--prior", "vampprior", "--pseudo-inputs", "500", *ELBO]},
    "hvae": {"model": "two layers (40, 40), standard prior: q(z2\\|x) q(z1\\|x,z2), p(x\\|z1,z2)", "published": 86.05,
             "goal": 85.5, "args": [*GATED, *TWO_LAYERS, *ELBO]},
    "hvae-vampprior": {"model": "two layers (40, 40), VampPrior (500 pseudo-inputs) on z2", "published": 83.19,
                       "goal": 83.0, "args": [*GATED, *TWO_LAYERS, "--prior", "vampprior", "--pseudo-inputs", "500", *ELBO]},
    "iwae": {"model": "one layer (z 50), trained on the IWAE bound, K = 50", "published": 87.10, "goal": 87.0,
             "args": ["--net", "mlp", "--hidden", "200,200", "--activation", "tanh", "--latent-dim", "50",
                      "--objective", "iwae", "--k", "50"]},
}  # fmt: skip


def split_flags(text: str) -> list[str]:
    """The words of ``--flags``, ``--opt=value`` taken as ``--opt value``, a unique prefix of a
    ``vaekit train`` option (``--norm``) as the option itself and a number in one spelling
    (``0.90`` → ``0.9``, ``0.0001`` → ``1e-4``): the same training has one name however its
    options are spelled."""
    words: list[str] = []
    for word in _words(text):
        option = _full_option(word) if word.startswith("--") else None
        after = words[-1] if words else None
        words.append(option or word if word.startswith("--") else _canonical_value(after, word))
    return words


def _canonical_value(option: str | None, word: str) -> str:
    """``word`` as the value of ``option`` in one spelling where the option takes numbers (each of
    a comma list of widths); any other word, or one that is no number, as written."""
    kind = _train_types().get(option) if option else None
    if kind not in ("int", "float", "widths"):
        return word
    try:
        if kind == "float":
            return _canonical_float(float(word)) if math.isfinite(float(word)) else word
        return ",".join(str(int(part)) for part in word.split(",")) if word else word
    except ValueError:
        return word


def _canonical_float(v: float) -> str:
    """A float's name: a whole number as an integer (-6, 2), a small or large one in short
    scientific notation from its shortest round-trip digits (1e-4, 2.5e-3), else its repr (0.9995)."""
    if v == int(v) and abs(v) < 1e5:
        return str(int(v))
    if abs(v) >= 1e-2 and abs(v) < 1e5:
        return repr(v)
    sign, digits, exponent = decimal.Decimal(repr(v)).normalize().as_tuple()
    mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{exponent + len(digits) - 1}"


def _words(text: str) -> list[str]:
    """The words of ``--flags`` as given, ``--opt=value`` split in two."""
    words: list[str] = []
    for word in text.split():
        words += word.split("=", 1) if word.startswith("--") and "=" in word else [word]
    return words


def run_name(row: str, amp: str | None = None, flags: list[str] | tuple[str, ...] = ()) -> str:
    """ROW, ROW-bf16, ROW[-bf16]-<flags>: each variant of a row (bf16 autocast, further vaekit
    train flags) trains in its own run directory, writes its own JSON and has its own line.

    Options lose their dashes (``--init he`` → ``init-he``); a negative value keeps its sign
    (``--logvar-min -6`` → ``logvar-min--6``, apart from ``--logvar-min 6``); a ``/`` in a
    value (a path) becomes ``_``, so that the name stays one directory."""
    return _joined(row, amp, [w[2:] if w.startswith("--") else w.replace("/", "_") for w in flags])


def _joined(row: str, amp: str | None, words: list[str]) -> str:
    return "-".join([row, *(["bf16"] if amp == "bf16" else []), *words])


def speed_and_smoke_flags(threads: int | None = None, max_epochs: int | None = None, eval_k: int | None = None,
                          device: str | None = None, compile: bool = False) -> list[str]:
    """vaekit train flags that are not part of a variant's name: the thread count, the device and
    torch.compile (speed only, and resumable) and a smoke test's shorter settings, which
    ``command`` puts in place of COMMON's published values."""
    return ((["--threads", str(threads)] if threads else []) + (["--device", device] if device else [])
            + (["--compile"] if compile else [])
            + (["--epochs", str(max_epochs)] if max_epochs else []) + (["--eval-k", str(eval_k)] if eval_k else []))  # fmt: skip


def training_words(result: dict) -> str:
    """The table's "training" cell of a result: its precision and any further flags."""
    amp = "bf16 autocast" if "--amp bf16" in result["command"] else "float32"
    return "; ".join([amp, " ".join(result.get("flags", []))]) if result.get("flags") else amp


def _machine(run_dir: Path) -> str:
    """The machine and the training's thread count (and its GPU, where it last trained on one), as
    the run's config.json records it."""
    import torch

    train = json.loads((run_dir / "config.json").read_text())["train"]
    where = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {train['threads']} threads"
    device = train.get("device", "cpu")
    if device == "cpu":
        return where
    name = torch.cuda.get_device_name(torch.device(device)) if torch.cuda.is_available() else "a GPU"
    return f"{where}, {device} ({name})"


# The options that belong to a row's training objective: a variant that names its own
# --objective trains without them (vaekit refuses warm-up for the IWAE bound, and --k for the ELBO).
OBJECTIVE_OPTIONS = ("--objective", "--k", "--warmup")


def row_args(row: str, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The row's own vaekit train flags; when the variant's flags ``extra`` name an objective, the
    row's objective options are left out, so that ``--flags "--objective iwae --k 5"`` trains the
    same model on the importance-weighted bound."""
    args = list(ROWS[row]["args"])
    if "--objective" not in extra:
        return args
    kept: list[str] = []
    i = 0
    while i < len(args):
        if args[i] in OBJECTIVE_OPTIONS:
            i += 2
            continue
        kept.append(args[i])
        i += 1
    return kept


def _where(data_dir: str | None) -> list[str]:
    """``--data-dir DATA_DIR``, or nothing: vaekit's own lookup ($VAEKIT_DATA, the cache)."""
    return [] if data_dir is None else ["--data-dir", str(data_dir)]


def command(row: str, run_dir: Path, data_dir: str | None, extra: list[str]) -> list[str]:
    base, extra = _overridden([*COMMON, *_where(data_dir), *row_args(row, extra)], list(extra))
    args = ["vaekit", "train", *base, *extra, "--out", str(run_dir), "--json"]
    if (run_dir / "config.json").is_file():
        args.append("--resume")
    return args


def _overridden(base: list[str], extra: list[str]) -> tuple[list[str], list[str]]:
    """The published ``--opt value`` pairs ``base`` with the values that ``extra`` gives the same
    options put in their place, and the rest of ``extra``: a smoke test's ``--epochs 3`` or a
    variant's ``--hidden`` reads once in the recorded command, as the value argparse would take."""
    base = list(base)
    at = {word: i for i, word in enumerate(base) if word.startswith("--")}
    rest: list[str] = []
    i = 0
    while i < len(extra):
        if extra[i] in at and i + 1 < len(extra):
            base[at[extra[i]] + 1] = extra[i + 1]
            i += 2
        else:
            rest.append(extra[i])
            i += 1
    return base, rest


def status(row: str, run_dir: Path) -> dict:
    from vaekit.checkpoint import read_metrics

    history = read_metrics(run_dir)
    best = max(history, key=lambda r: r["valid_score"]) if history else None
    return {
        "row": row,
        "run_dir": str(run_dir),
        "epochs_run": len(history),
        "best_epoch": best["epoch"] if best else None,
        "best_valid_elbo": best["valid_elbo"] if best else None,
        "train_seconds": sum(r.get("epoch_seconds", 0.0) for r in history),
        "median_epoch_seconds": _median([r["epoch_seconds"] for r in history if "epoch_seconds" in r]),
    }


def _median(values: list[float]) -> float | None:
    """The median epoch time (training and validation): a run paused, or sharing its core, for a
    while shows in a few epochs' times (and in train_seconds), not in the median."""
    import statistics

    return statistics.median(values) if values else None


def run_row(
    row: str, run_dir: Path, data_dir: str | None, extra: list[str], results: Path = RESULTS, name: str | None = None, flags: list[str] | None = None,
    smoke: bool = False,
) -> dict:
    argv = command(row, run_dir, data_dir, extra)
    t0 = time.time()
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"literature.py: {row}: vaekit train failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    test = summary["test"]
    result = {
        **ROWS[row],
        **status(row, run_dir),
        "command": " ".join(argv),
        "flags": flags or [],
        "finished": True,
        **({"smoke": True} if smoke else {}),
        "this_invocation_seconds": time.time() - t0,
        "machine": _machine(run_dir),
        "test_nll": -test["log_likelihood"],
        "test_neg_elbo": -test["elbo"],
        "k": test["k"],
        "active_units": test.get("active_units"),
        "latent_size": test.get("latent_size"),
    }
    result.pop("args")
    write_json(results / f"{name or row}.json", result)
    return result


def _data_dir_flag(run_dir: Path, data_dir: str | None) -> list[str]:
    """``--data-dir DATA_DIR`` for a run whose dataset is read from a directory (binarized_mnist,
    wherever it is now); none for data that reads none (vaekit refuses it there)."""
    from vaekit.files import CONFIG_FILE
    from vaekit.registry import DATASETS

    source = json.loads((run_dir / CONFIG_FILE).read_text())["data"]["source"]
    return _where(data_dir) if source in DATASETS and DATASETS.get(source).reads_data_dir else []


def snapshot(
    row: str, run_dir: Path, data_dir: str | None, k: int, results: Path = RESULTS, name: str | None = None, extra: list[str] | None = None,
    flags: list[str] | None = None,
) -> dict:
    """Evaluate the best epoch so far of a run that has not finished (test log-likelihood with K
    importance samples) and write ROW.json marked unfinished, so the table reports where the row
    stands, never as done. Safe while the run trains: the best model and config.json are copied
    first (each is replaced atomically), and the result names the epoch of the weights evaluated,
    which a better epoch arriving during the evaluation does not change."""
    import shutil
    import tempfile

    from vaekit.checkpoint import read_meta
    from vaekit.files import CONFIG_FILE, MODEL_FILE

    if not (run_dir / MODEL_FILE).is_file():
        sys.exit(f"literature.py: {row}: no run at {run_dir}")
    argv = ["vaekit", "evaluate", str(run_dir), *_data_dir_flag(run_dir, data_dir), "--k", str(k), "--json"]
    with tempfile.TemporaryDirectory(prefix="vaekit-snapshot-") as tmp:
        for file in (MODEL_FILE, CONFIG_FILE):
            shutil.copyfile(run_dir / file, Path(tmp) / file)
        where = status(row, run_dir)
        epoch = read_meta(Path(tmp) / MODEL_FILE).get("epoch")
        done = subprocess.run([*argv[:2], tmp, *argv[3:]], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"literature.py: {row}: vaekit evaluate failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    if epoch is not None:  # the weights' own epoch (a run from before best models recorded it: the metrics' best)
        from vaekit.checkpoint import read_metrics

        valid = {r["epoch"]: r["valid_elbo"] for r in read_metrics(run_dir)}
        where.update(best_epoch=epoch, best_valid_elbo=valid.get(epoch, where["best_valid_elbo"]))
    test = json.loads(done.stdout.strip().splitlines()[-1])
    result = {**ROWS[row], **where, "command": " ".join(command(row, run_dir, data_dir, extra or [])),
              "flags": flags or [], "finished": False, "evaluation": " ".join(argv), "machine": _machine(run_dir), "test_nll": -test["log_likelihood"],
              "test_neg_elbo": -test["elbo"], "k": test["k"], "active_units": test.get("active_units"),
              "latent_size": test.get("latent_size")}  # fmt: skip
    result.pop("args")
    write_json(results / f"{name or row}.json", result)
    return result


def row_config(row: str, x_train, extra: list[str] | None = None):
    """The RunConfig that ``vaekit train`` builds from the row's command for training rows
    ``x_train``, without reading data or training; an option of a component the row does not
    use is refused, as the CLI refuses it."""
    from vaekit.cli import build_parser, given_options, run_config

    argv = command(row, Path("unused"), Path("unused"), extra or [])
    return run_config(given_options(build_parser().parse_args(argv[1:])), x_train, (28, 28))


def step_time(row: str, data_dir: str | None, rounds: int = 5, steps: int = 20, threads: int | None = None, flags: list[str] | None = None,
              device: str = "cpu", compile: bool = False) -> dict:
    """Milliseconds of the row's training step (one batch of the row's batch size, 100
    training images unless the flags say otherwise: loss, gradient, Adam, in the run's dtype
    and matmul precision) in float32 and under bf16 autocast, and with ``compile`` also the bf16 step
    under torch.compile, in interleaved rounds on ``threads`` threads (default: PyTorch's count)
    or on a GPU, with a variant's further ``flags``: the ratios that decide whether a row trains
    in bf16, and compiled, on this machine."""
    import statistics

    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(threads)
    from step import fit_step

    from vaekit.model import VAEModel

    x_train = np.asarray(mnist_dataset(data_dir).train[:1000], dtype=np.float32)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)  # a GPU's clock stops when its work has run
    timers = {}
    settings = {"off": ["--amp", "off"], "bf16": ["--amp", "bf16"], **({"bf16-compile": ["--amp", "bf16", "--compile"]} if compile else {})}
    for name, setting in settings.items():
        config = row_config(row, x_train, [*(flags or []), *setting])
        dtype = getattr(torch, config.train.dtype)
        x = torch.as_tensor(x_train[: config.train.batch_size], dtype=dtype, device=device)  # one batch, as the run steps on
        torch.manual_seed(0)
        model = VAEModel(config.model).train()
        model.prior.init_from_data(x_train, np.random.default_rng(0))
        timers[name] = fit_step(model.to(device=device, dtype=dtype), config.train, x)
        for _ in range(2):  # compilation (and the first steps' allocations) before any timing
            timers[name]()
    ms: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(rounds):
        for amp, step in timers.items():
            step()  # warm
            sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            sync()
            ms[amp].append(1e3 * (time.perf_counter() - t0) / steps)
    med = {amp: statistics.median(v) for amp, v in ms.items()}
    compiled = {"bf16_compile_ms": med["bf16-compile"], "compile_speedup": med["bf16"] / med["bf16-compile"]} if compile else {}
    return {"row": row, "flags": flags or [], "device": str(x.device), "threads": torch.get_num_threads(), "rounds": rounds, "steps": steps, "float32_ms": med["off"],
            "bf16_ms": med["bf16"], "bf16_speedup": med["off"] / med["bf16"], **compiled}  # fmt: skip


MARKERS = ("<!-- literature table: generated by bench/literature.py --table --write -->", "<!-- end of literature table -->")
MAX_EPOCHS = int(COMMON[COMMON.index("--epochs") + 1])


def table(results: Path = RESULTS) -> str:
    """A line per result of each row: trained in float32 (ROW.json), under bf16 autocast
    (ROW-bf16.json), or with further flags (ROW[-bf16]-<flags>.json), the test NLL always
    evaluated in float32; "not run yet" for a row with none."""
    lines = [
        "| row | model | training | published test NLL | vaekit test NLL | test −ELBO | active units | epochs | s / epoch |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    results_of: dict[str, list[tuple[Path, dict]]] = {row: [] for row in ROWS}
    for path in sorted(results.glob("*.json")):
        r = results_file(path, "literature.py", ("row",))
        if isinstance(r["row"], str) and r["row"] in results_of:  # another script's JSON is not read
            results_of[r["row"]].append((path, holding(r, path, "literature.py", RESULT_KEYS)))
    for row, spec in ROWS.items():
        published = "–" if spec["published"] is None else f"{spec['published']:.2f}"
        # Plain Adam first, float32 before bf16, then the variants with further flags.
        found = sorted(results_of[row], key=lambda pr: (bool(pr[1].get("flags")), "--amp bf16" in str(pr[1]["command"]), pr[1].get("flags", [])))
        if not found:
            lines.append(f"| {row} | {spec['model']} | – | {published} | not run yet | | | | |")
        for path, r in found:
            lines.append(table_of(path, "literature.py", lambda: _line(row, spec, published, r)))
    return "\n".join(lines)


def _line(row: str, spec: dict, published: str, r: dict) -> str:
    """The table line of one result."""
    precision = training_words(r)
    units = f"{r['active_units']}/{r['latent_size']}" if r.get("active_units") is not None else "–"
    nll = f"{r['test_nll']:.2f} (K = {r['k']})"
    epochs = f"{r['epochs_run']} (best {r['best_epoch']})"
    if not r.get("finished"):
        nll = f"so far {nll}"
        epochs = f"unfinished: {r['epochs_run']} of at most {MAX_EPOCHS} (best {r['best_epoch']})"
    seconds = r.get("median_epoch_seconds")
    return (
        f"| {row} | {spec['model']} | {precision} | {published} | {nll} | {r['test_neg_elbo']:.2f} | {units} | "
        f"{epochs} | {'–' if seconds is None else f'{seconds:.1f}'} |"
    )


# What a table line reads from a result file.
RESULT_KEYS = ("row", "command", "test_nll", "test_neg_elbo", "k", "epochs_run", "best_epoch")


def write_table(path: Path, text: str) -> None:
    """Replace what lies between the two MARKERS lines of ``path`` with ``text``."""
    write_between(path, MARKERS, text, "literature.py")


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description(__doc__))
    p.add_argument("row", nargs="?", choices=sorted(ROWS))
    p.add_argument("--runs-dir", type=Path, default=Path.home() / "vaekit-runs" / "literature")
    add_data_dir(p)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--status", action="store_true", help="report where the row's run stands (every run's, without a row); train nothing")
    what.add_argument("--table", action="store_true", help="print the README table from bench/results/literature/*.json")
    what.add_argument("--snapshot", action="store_true", help="evaluate an unfinished run's best epoch so far into ROW.json")
    what.add_argument("--step-time", action="store_true", help="time the row's training step in float32 and bf16 autocast; train nothing")
    p.add_argument("--write", type=Path, help="with --table: write it between the table markers of this file")
    p.add_argument("--rounds", type=positive_int, help="with --step-time: interleaved rounds (default 5)")
    p.add_argument("--steps", type=positive_int, help="with --step-time: steps timed per round (default 20)")
    p.add_argument("--amp", choices=("off", "bf16"), help="bf16 autocast for training (evaluation stays float32)")
    p.add_argument("--flags", default="", help="further vaekit train flags for a variant of the row, e.g. '--normalized-grad --init he' (its own run directory, JSON and table line)")
    p.add_argument("--threads", type=positive_int, help="CPU threads of training and of --step-time (a speed setting: the run keeps its name, and --resume may change it)")
    p.add_argument("--device", type=device, help="cpu or cuda[:N]: where training and --step-time run (a speed setting like --threads; a run last trained on a GPU continues on the CPU with --device cpu)")
    p.add_argument("--compile", action="store_true", default=None, help="train with torch.compile (a speed setting like --threads: the run keeps its name, and --resume may change it); with --step-time, also time the compiled bf16 step")
    p.add_argument("--max-epochs", type=positive_int, help="fewer epochs than the published 2000 (a smoke test: run and JSON, marked smoke, under RUNS_DIR/smoke)")
    p.add_argument("--eval-k", type=positive_int, help="fewer importance samples than the published 5000: a smoke test (JSON, marked smoke, under RUNS_DIR/smoke), or with --snapshot a quicker look (its JSON under RUNS_DIR/smoke/results)")
    return _checked(p, p.parse_args(_flags_joined(argv)))


def _flags_joined(argv: list[str]) -> list[str]:
    """``--flags VALUE`` as ``--flags=VALUE``: argparse reads a lone value that starts with "--"
    (``--flags "--normalized-grad"``) as an option of its own."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--flags" and i + 1 < len(argv):
            out.append(f"--flags={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _checked(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    table_options(p, args)
    if args.row is None and not (args.table or args.status):
        p.error("name a row, or pass --table (or --status for every run)")
    if args.table and args.row:
        p.error("--table prints every row; it takes no row")
    # An option the chosen mode would not use is refused rather than dropped without a word.
    unused = {
        "--table": ("amp", "flags", "threads", "device", "compile", "max_epochs", "eval_k", "data_dir", "rounds", "steps"),
        "--status": ("threads", "device", "compile", "rounds", "steps", "data_dir"),
        "--snapshot": ("threads", "device", "compile", "max_epochs", "rounds", "steps"),
        "--step-time": ("amp", "max_epochs", "eval_k"),
    }
    mode = next((m for m in unused if getattr(args, m[2:].replace("-", "_"))), None)
    for key in unused.get(mode, ()) if mode else ("rounds", "steps"):
        if getattr(args, key) not in (None, ""):
            option = "--" + key.replace("_", "-")
            p.error(f"{option} goes with --step-time" if key in ("rounds", "steps") and mode != "--step-time"
                    else f"{option} has no effect with {mode}" + (" (it times float32 and bf16 both)" if key == "amp" and mode == "--step-time" else ""))
    if args.status and args.row is None:
        for key in ("amp", "flags", "max_epochs", "eval_k"):
            if getattr(args, key) not in (None, ""):
                p.error(f"--{key.replace('_', '-')} picks a run of a row; --status without a row lists every run")
    for word in _words(args.flags):
        if word.startswith("--") and _full_option(word) is None:
            p.error(f"--flags: {word} is not a vaekit train option (or a prefix of several)")
        if (own := _own_option(word)) is not None:
            p.error(f"--flags: {word} is {own}, set by the script ({OWN_OPTIONS[own]})" if own != word
                    else f"--flags: {own} is set by the script ({OWN_OPTIONS[own]})")
    args.data_dir = mnist_dir(args.data_dir)
    args.rounds, args.steps = args.rounds or 5, args.steps or 20
    return args


# vaekit train options that literature.py sets itself: a variant's --flags may not change them.
OWN_OPTIONS = {
    "--epochs": "the published 2000; --max-epochs N for a smoke test", "--eval-k": "the published 5000; --eval-k K for a smoke test",
    "--data": "binarized_mnist", "--data-dir": "its own --data-dir", "--out": "RUNS_DIR/NAME", "--resume": "a run found is continued",
    "--overwrite": "a run found is continued", "--json": "its summary is read", "--amp": "its own --amp", "--threads": "its own --threads",
    "--device": "its own --device", "--compile": "its own --compile",
}  # fmt: skip


def _own_option(word: str) -> str | None:
    """The script-set option that ``word`` names to ``vaekit train``, whose parser also takes
    a unique prefix (``--epoch``) and ``--option=value``; None for any other word."""
    if not word.startswith("--"):
        return None
    name = _full_option(word.split("=", 1)[0]) or word.split("=", 1)[0]
    return name if name in OWN_OPTIONS else None


def _full_option(word: str) -> str | None:
    """The ``vaekit train`` option that ``word`` names, itself or as a unique prefix, as that
    parser reads it; None where it names none (or several)."""
    options = _train_options()
    if word in options:
        return word
    matches = [o for o in options if o.startswith(word)]
    return matches[0] if len(matches) == 1 else None


def _train_options() -> tuple[str, ...]:
    """Every option string of ``vaekit train``."""
    return tuple(_train_actions())


def _train_types() -> dict[str, str]:
    """The kind of value each ``vaekit train`` option takes where it is a number (int, float) or
    a comma list of widths."""
    kinds = {int: "int", float: "float"}
    return {o: kinds.get(a.type, "widths" if "widths" in getattr(a.type, "__name__", "") else "other")
            for o, a in _train_actions().items()}  # fmt: skip


@functools.cache
def _train_actions() -> dict[str, argparse.Action]:
    """Every option string of ``vaekit train`` and its parser action."""
    from vaekit.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {o: a for o, a in sub.choices["train"]._option_string_actions.items() if o.startswith("--")}


def _variant(args: argparse.Namespace, smoke: bool) -> tuple[str, Path, list[str]]:
    """The variant's name, run directory and flags."""
    flags = split_flags(args.flags)
    name = run_name(args.row, args.amp, flags)
    return name, args.runs_dir / ("smoke" if smoke else "") / name, flags


def _unchanged(path: Path, flags: list[str], snapshot: bool, epochs_run: int | None = None) -> None:
    """Refuse to replace a result of other flags under the same name, a finished result by a
    snapshot, or a snapshot by one of a run with fewer epochs (``epochs_run``): a run started
    again from epoch 1 under the same name would take the place of the further one's result."""
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"literature.py: {path} is not a result file ({e}); move it away first")
    if split_flags(" ".join(old.get("flags", []))) != flags:
        sys.exit(f"literature.py: {path} holds the result of flags {' '.join(old.get('flags', []))!r}, not {' '.join(flags)!r}; move it away first")
    if snapshot and old.get("finished"):
        sys.exit(f"literature.py: {path} holds the finished run's result; a snapshot would replace it")
    if snapshot and epochs_run is not None and epochs_run < old.get("epochs_run", 0):
        sys.exit(f"literature.py: {path} holds a snapshot after {old['epochs_run']} epochs and this run has {epochs_run}; move it away first")


def main(argv: list[str] | None = None) -> None:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.table:
        if args.write:
            write_table(args.write, table())
        else:
            print(table())
        return
    if args.row is None:  # --status of every run there is, of every variant, under the row whose name begins its own
        if not args.runs_dir.is_dir():
            sys.exit(f"literature.py: --runs-dir {args.runs_dir}: no such directory")
        found = sorted(args.runs_dir.glob("*/metrics.jsonl")) + sorted(args.runs_dir.glob("smoke/*/metrics.jsonl"))
        for run_dir in found:
            name = run_dir.parent.relative_to(args.runs_dir).as_posix()
            bare = run_dir.parent.name
            row = max((r for r in ROWS if bare == r or bare.startswith(f"{r}-")), key=len, default=None)
            if row is not None:
                print(json.dumps({"run": name, **status(row, run_dir.parent)}))
        if not found:
            print(f"literature.py: no runs under {args.runs_dir}", file=sys.stderr)
        return
    if args.step_time:
        print(json.dumps(step_time(args.row, args.data_dir, args.rounds, args.steps, args.threads, split_flags(args.flags), args.device or "cpu", bool(args.compile))))
        return
    # A shortened run never continues (or disturbs) the published-settings run, and its JSON
    # stays beside it, out of the repository's results. A snapshot is of the real run, but one at
    # fewer samples than the published K is a quick look, written beside the smoke results too.
    smoke = bool(args.max_epochs or args.eval_k) and not args.snapshot
    quick = args.snapshot and args.eval_k not in (None, PUBLISHED_K)
    name, run_dir, flags = _variant(args, smoke)
    results = args.runs_dir / "smoke" / "results" if smoke or quick else RESULTS
    if args.status or args.snapshot:
        if not (run_dir / "config.json").is_file():
            sys.exit(f"literature.py: {args.row}: no run at {run_dir}")
    if args.status:
        print(json.dumps(status(args.row, run_dir)))
        return
    _unchanged(results / f"{name}.json", flags, args.snapshot, status(args.row, run_dir)["epochs_run"] if args.snapshot else None)
    extra = (["--amp", args.amp] if args.amp else []) + flags
    if args.snapshot:
        print(json.dumps(snapshot(args.row, run_dir, args.data_dir, args.eval_k or PUBLISHED_K, results, name=name, extra=extra, flags=flags)))
        return
    extra += speed_and_smoke_flags(args.threads, args.max_epochs, args.eval_k, args.device, bool(args.compile))
    print(json.dumps(run_row(args.row, run_dir, args.data_dir, extra, results, name, flags, smoke)))


if __name__ == "__main__":
    run(main, "literature.py")
