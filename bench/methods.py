"""The notes' inference methods side by side on binarized MNIST: same decoder, each trained until
its validation objective stops improving, compared at convergence and at equal training time.

For each method (autoencoder, map, vi, amortized, amortized with refinement; on request also
map-noprior, every z_i free without the prior, and the local-step variants) this trains the
decoder 20-400-784 (Bernoulli) with Adam (θ at 1e-3; the per-point tables of map and vi at
their own ``point_lr``, since a row steps once per epoch), batch 128, until ``--patience``
epochs pass without a better validation objective (at most ``--max-epochs``). Two states of
each run are evaluated:

- ``converged``: the best epoch by validation, each method at its own pace;
- ``budget``: the best epoch by validation among those finished within ``--budget`` seconds
  of training steps (the same for every method), what a user with that much time would have.

On held-out test rows and on training rows it measures log p(x) (IWAE with q* as proposal, K
importance samples), the ELBO of the method's q (for training rows of map and vi, the q_i it
learned), the ELBO of the best per-point Gaussian q*, the approximation and amortization gaps
(Cremer et al. 2018) with their standard errors across rows, and the cost of test-time
inference (seconds per 1000 new images to produce q). amortized+refine is the amortized run's
weights with 20 refinement steps at evaluation, so it is not trained twice.

    python bench/methods.py [--max-epochs 300] [--patience 10] [--budget 60] [--k 1000] [--rows 1000]

Trained states, and the measurements of each, are kept in ``--out`` (default
~/vaekit-runs/methods), so a second call with the same settings neither trains nor measures
again: methods can run in separate processes (``--methods vi``, ``--methods map``, ...) side by
side, and one call with all of them assembles the JSON. Writes bench/results/methods.json (after
each method) and methods_bound.png; ``--table converged|budget [--write FILE]`` prints a
table from the JSON, or writes it between its markers in FILE.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vaekit import checkpoint as ckpt
from vaekit.config import GAP_STEPS, ModelConfig, TrainConfig
from vaekit.evaluate import elbo_per_point, gaps, log_px_per_point
from vaekit.model import VAEModel, build_model
from vaekit.plots import bound_bars_plot
from vaekit.train import fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_data_dir, count, description, documented, mnist_dataset, positive_float, positive_int, run, table_options, writable_dir, write_json  # noqa: E402
from tables import results_file, table_of, write_between  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "methods.json"
METHODS = {
    "autoencoder": dict(inference="autoencoder"),
    "map": dict(inference="map"),
    # The notes' decoder-only estimation without a prior: max Σ_i log p(x_i|z_i) over θ and Z.
    "map-noprior": dict(inference="map", objective="reconstruction"),
    "vi": dict(inference="vi"),
    # Stochastic VI's local step: each batch's per-point parameters first take 10 steps with θ fixed.
    "map+local": dict(inference="map", local_steps_per_batch=10),
    "vi+local": dict(inference="vi", local_steps_per_batch=10),
    "amortized": dict(inference="amortized"),
    "amortized+refine": dict(inference="amortized", refine_steps=20),
}
DEFAULT_METHODS = ["autoencoder", "map", "vi", "amortized", "amortized+refine"]
REGIMES = ("converged", "budget")
# Validation rows of the early-stopping rule (the per-point methods fit each one's q anew).
VALID_ROWS = 1000
# Options that act at evaluation only: runs that differ in them share their training.
EVALUATION_ONLY = ("refine_steps",)


def model_config(name: str, n_train: int) -> ModelConfig:
    kw = dict(METHODS[name])
    kw.pop("objective", None)  # the training config's (_train_config)
    per_point = kw["inference"] in ("map", "vi")
    return ModelConfig(
        input_dim=784, latent_dim=20, hidden=(400,), likelihood="bernoulli", image_shape=(28, 28),
        n_points=n_train if per_point else 0, **kw,
    )  # fmt: skip


def _training_key(config: ModelConfig) -> str:
    """What decides a run's training: the config less its evaluation-only options."""
    d = dataclasses.asdict(config)
    for name in EVALUATION_ONLY:
        d.pop(name, None)
    return json.dumps(d, sort_keys=True)


def train(name: str, data, args) -> tuple[dict[str, dict], dict]:
    """({regime: state}, facts of the run): the run trained until early stopping, with the best
    state within the training-time budget kept on the way, or both read from ``args.out``."""
    key = _run_key(name, data, args)
    where = Path(args.out).expanduser() / _slug(key)
    files = {regime: where / f"{regime}.safetensors" for regime in REGIMES}
    if all(f.is_file() for f in files.values()) and not args.retrain:
        states = {}
        for regime, f in files.items():
            states[regime], facts = ckpt.load_tensors(f)
        print(f"{name}: trained states read from {where}", flush=True)
        return states, facts["run"]
    config = model_config(name, len(data.train))
    torch.manual_seed(args.seed)
    model = VAEModel(config)
    spent, within = 0.0, {"score": -np.inf, "epoch": 0, "state": None, "epochs": 0}

    def on_epoch(record: dict) -> None:
        nonlocal spent
        spent += record["train_seconds"]
        if spent <= args.budget:
            within["epochs"] = record["epoch"]
            if record["valid_score"] > within["score"]:
                within.update(score=record["valid_score"], epoch=record["epoch"], state=copy.deepcopy(model.state_dict()))

    t0 = time.perf_counter()
    history = fit(model, data.train, data.valid[:VALID_ROWS], _train_config(args, name), on_epoch=on_epoch)
    best = int(np.argmax([r["valid_score"] for r in history]))
    if within["state"] is None:  # not one epoch within the budget: the start is what there is
        torch.manual_seed(args.seed)
        within.update(epoch=0, state=VAEModel(config).state_dict())
    facts = {
        "epochs_run": len(history),
        "best_epoch": history[best]["epoch"],
        "stopped_early": len(history) < args.max_epochs,
        "train_seconds": float(sum(r["train_seconds"] for r in history)),
        "wall_seconds": time.perf_counter() - t0,
        "images_per_second": float(np.median([r["images_per_second"] for r in history])),
        "valid_elbo_at_best": history[best]["valid_elbo"],
        "budget_epochs_run": within["epochs"],
        "budget_best_epoch": within["epoch"],
    }
    states = {"converged": model.state_dict(), "budget": within["state"]}
    where.mkdir(parents=True, exist_ok=True)
    for regime, f in files.items():
        ckpt.save_tensors(f, states[regime], {"run": facts, "method": name, "regime": regime})
    (where / "key.json").write_text(key + "\n")
    return states, facts


def _train_config(args, name: str) -> TrainConfig:
    objective = METHODS[name].get("objective", "auto")
    return TrainConfig(objective=objective, epochs=args.max_epochs, patience=args.patience, seed=args.seed, threads=args.threads, quiet=True)


def _run_key(name: str, data, args) -> str:
    """What decides a trained state: model, training and budget (not the evaluation)."""
    config = model_config(name, len(data.train))
    return json.dumps({"model": _training_key(config), "train": dataclasses.asdict(_train_config(args, name)), "budget": args.budget})


def _run_dir(name: str, data, args) -> Path:
    return Path(args.out).expanduser() / _slug(_run_key(name, data, args))


def _slug(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def evaluate(name: str, state: dict, data, args, full: bool) -> dict:
    """The measurements of one trained state (see the module docstring). ``full``: with q* and
    the gap split; otherwise log p(x) (IWAE with the method's q as proposal) and the ELBO alone,
    which is what the equal-time comparison needs at a fraction of the cost."""
    # With the run's objective: new rows' codes are fitted as the training rows' were.
    model = build_model(model_config(name, len(data.train)), _train_config(args, name))
    model.load_state_dict(state)
    model.eval()
    x_test, x_train = data.test[: args.rows], data.train[: args.rows]
    train_idx = np.arange(len(x_train))  # training rows 0..rows-1: per-point methods use their q_i
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(x_test), 256):
            model.evaluation_posterior(torch.as_tensor(x_test[start : start + 256]))
    out = {"inference_seconds_per_1000": (time.perf_counter() - t0) / len(x_test) * 1000}
    if not full:
        for split, x, idx in (("test", x_test, None), ("train", x_train, train_idx)):
            out[f"{split}_log_likelihood"] = float(log_px_per_point(model, x, k=args.k, seed=args.seed, idx=idx).mean())
            out[f"{split}_elbo"] = float(elbo_per_point(model, x, seed=args.seed, idx=idx)["elbo"].mean())
        return out
    test = gaps(model, x_test, k=args.k, steps=args.gap_steps, seed=args.seed)
    train_rows = gaps(model, x_train, k=args.k, steps=args.gap_steps, seed=args.seed, idx=train_idx)
    train_rows.pop("per_point")
    out["per_point"] = {k: v.tolist() for k, v in test.pop("per_point").items()}
    for split, r in (("test", test), ("train", train_rows)):
        for field in ("log_likelihood", "elbo", "elbo_optimal", "approximation_gap", "approximation_gap_se", "amortization_gap", "amortization_gap_se"):
            out[f"{split}_{field}"] = r[field]
    return out


def measured(name: str, regime: str, state: dict, data, args) -> dict:
    """evaluate()'s result for ``name``'s ``regime`` state, kept in the run's directory beside
    the states, so that several processes can evaluate methods side by side and one assembles
    the JSON."""
    settings = {"method": name, "regime": regime, **{k: getattr(args, k) for k in ("k", "rows", "gap_steps", "seed")}}
    path = _run_dir(name, data, args) / f"{_slug(json.dumps(settings, sort_keys=True))}.json"
    if path.is_file() and not args.retrain:
        return json.loads(path.read_text())
    r = evaluate(name, state, data, args, full=regime == "converged")
    write_json(path, r)
    return r


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description(__doc__))
    ap.add_argument("--max-epochs", type=positive_int, default=300)
    ap.add_argument("--patience", type=positive_int, default=10, help="epochs without a better validation objective before a method stops")
    ap.add_argument("--budget", type=positive_float, default=60.0, help="seconds of training steps for the equal-time comparison")
    ap.add_argument("--k", type=positive_int, default=1000, help="importance samples per row")
    ap.add_argument("--rows", type=positive_int, default=1000, help="test and training rows evaluated")
    ap.add_argument("--gap-steps", type=positive_int, default=GAP_STEPS, help="cap on q*'s Adam steps (it stops when its ELBO stops improving)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=count, default=0, help="CPU threads of training (0: PyTorch's count)")
    ap.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    add_data_dir(ap)
    ap.add_argument("--out", default="~/vaekit-runs/methods", help="where trained states are kept")
    ap.add_argument("--retrain", action="store_true", help="train again even where states are kept")
    ap.add_argument("--results", type=Path, help="the JSON written (and read by --table); default bench/results/methods.json "
                    "for the documented settings, OUT/methods.json for any other")
    ap.add_argument("--table", choices=REGIMES, nargs="?", const="converged", help="print a table from the results JSON")
    ap.add_argument("--write", type=Path, help="with --table: write it between the methods-table markers of this file")
    return ap


def results_path(ap: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    """--results, or by default bench/results/methods.json for the documented settings (and for
    --table), OUT/methods.json for any other: a smoke test never replaces the measured results."""
    if args.results is not None:
        return args.results
    speed = ("threads", "methods", "out", "retrain", "results", "table", "write", "data_dir")
    return RESULTS if args.table or documented(ap, args, speed) else Path(args.out).expanduser() / "methods.json"


def main() -> None:
    ap = parser()
    args = ap.parse_args()
    table_options(ap, args, ("results",))
    args.results = results_path(ap, args)
    if args.table:
        text = table(args.table, args.results)
        if args.write:
            write_table(args.write, text, args.table)
        else:
            print(text)
        return
    writable_dir(Path(args.out), "--out")
    writable_dir(args.results.parent, "--results")
    data = mnist_dataset(args.data_dir)
    settings = {k: getattr(args, k) for k in ("max_epochs", "patience", "budget", "k", "rows", "gap_steps", "seed")}
    result = {
        "bench": "methods",
        "command": "python bench/methods.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        **settings,
        "results": [],
    }
    bound = {}
    print(f"{'method':18s} {'regime':9s} {'epochs':>9s} {'test LL':>9s} {'test ELBO':>9s} {'approx':>7s} {'amort':>7s} {'train LL':>9s} {'train ELBO':>10s} {'s/1000':>7s}", flush=True)
    for name in args.methods:
        states, facts = train(name, data, args)
        for regime in REGIMES:
            r = dict(measured(name, regime, states[regime], data, args))
            if "per_point" in r:
                bound[name] = {k: np.asarray(v) for k, v in r.pop("per_point").items()}
            epochs = f"{facts['best_epoch']}/{facts['epochs_run']}" if regime == "converged" else f"{facts['budget_best_epoch']}/{facts['budget_epochs_run']}"
            result["results"].append({"method": name, "regime": regime, **facts, **r})
            gap = lambda key: f"{r[key]:7.2f}" if key in r else f"{'–':>7s}"  # noqa: E731
            print(
                f"{name:18s} {regime:9s} {epochs:>9s} {r['test_log_likelihood']:9.2f} {r['test_elbo']:9.2f} "
                f"{gap('test_approximation_gap')} {gap('test_amortization_gap')} {r['train_log_likelihood']:9.2f} "
                f"{r['train_elbo']:10.2f} {r['inference_seconds_per_1000']:7.3f}",
                flush=True,
            )
        write_json(args.results, result)
    print(json.dumps(result))
    # The bound beneath the evidence for the first test rows, one panel per method.
    bound_bars_plot(bound, args.results.with_name(args.results.stem + "_bound.png"))


def _num(v: float, digits: int = 2) -> str:
    """A table number with a typographic minus and thin thousands spacing."""
    text = f"{abs(v):,.{digits}f}".replace(",", " ")
    return ("−" if v < 0 else "") + text


def table(regime: str = "converged", results: Path = RESULTS) -> str:
    """A table of one regime from bench/results/methods.json (never typed by hand): at
    convergence with the gap split, at equal training time without it."""
    result = results_file(results, "methods.py", ("results",))
    return table_of(results, "methods.py", lambda: _table(regime, result["results"]))


def _table(regime: str, results: list[dict]) -> str:
    if regime == "converged":
        head = ["method", "epochs (best)", "test log p(x)", "test ELBO", "approximation gap", "amortization gap",
                "train log p(x)", "train ELBO", "train amortization gap", "s per 1000 new images"]  # fmt: skip
    else:
        head = ["method", "epochs within the budget (best)", "test log p(x)", "test ELBO", "train log p(x)", "train ELBO",
                "s per 1000 new images"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in results:
        if r["regime"] != regime:
            continue
        if regime == "converged":
            epochs = f"{r['epochs_run']} ({r['best_epoch']})" + ("" if r["stopped_early"] else ", cap")
            cells = [
                r["method"], epochs, _num(r["test_log_likelihood"]), _num(r["test_elbo"]),
                f"{_num(r['test_approximation_gap'])} ± {r['test_approximation_gap_se']:.2f}",
                f"{_num(r['test_amortization_gap'])} ± {r['test_amortization_gap_se']:.2f}",
                _num(r["train_log_likelihood"]), _num(r["train_elbo"]),
                f"{_num(r['train_amortization_gap'])} ± {r['train_amortization_gap_se']:.2f}",
                f"{r['inference_seconds_per_1000']:.3f}",
            ]  # fmt: skip
        else:
            cells = [
                r["method"], f"{r['budget_epochs_run']} ({r['budget_best_epoch']})", _num(r["test_log_likelihood"]),
                _num(r["test_elbo"]), _num(r["train_log_likelihood"]), _num(r["train_elbo"]),
                f"{r['inference_seconds_per_1000']:.3f}",
            ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markers(regime: str) -> tuple[str, str]:
    """The marker lines of ``regime``'s table in a document."""
    return (f"<!-- methods table ({regime}): generated by bench/methods.py --table --write -->", f"<!-- end of methods table ({regime}) -->")


def write_table(path: Path, text: str, regime: str) -> None:
    """Replace what lies between the methods-table markers of ``path`` (for ``regime``)."""
    write_between(path, markers(regime), text, "methods.py")


if __name__ == "__main__":
    run(main, "methods.py")
