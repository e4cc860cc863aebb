"""The published binarized-MNIST rows, one command each: train (resumable), then the test
negative log-likelihood with K = 5000 importance samples in float32, written to
bench/results/literature/ROW.json; ``--table`` prints the README table from those files.

    python bench/literature.py vae                 # train or continue, then evaluate
    python bench/literature.py vae --status        # where a run stands, without training
    python bench/literature.py --table             # the markdown table from the JSON files

Settings follow Tomczak & Welling (2018) and their code (jmtomczak/vae_vampprior): Adam with
learning rate 5e-4, batch 100, at most 2000 epochs, early stopping after 50 epochs without a
better validation ELBO, KL warm-up over 100 epochs, gated MLP layers of 300 units, z of 40,
500 pseudo-inputs. The iwae row is Burda et al. (2016)'s one-layer model trained on the
50-sample bound (tanh MLP 200-200, z of 50). Run directories live outside the repository
(default ~/vaekit-runs/literature/ROW), so a row can be continued later with the same command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "literature"
DATA_DIR = ROOT.parent / "shared" / "data" / "binarized_mnist"

COMMON = ["--data", "binarized_mnist", "--lr", "5e-4", "--batch-size", "100", "--epochs", "2000",
          "--patience", "50", "--eval-k", "5000"]  # fmt: skip
GATED = ["--net", "gated", "--hidden", "300,300"]
ELBO = ["--warmup", "100"]
ROWS: dict[str, dict] = {
    "vae": {"model": "one stochastic layer (z 40), standard normal prior", "published": 88.56, "goal": 88.0,
            "args": [*GATED, "--latent-dim", "40", *ELBO]},
    "mixture": {"model": "one layer, mixture-of-Gaussians prior (500 components)", "published": None, "goal": None,
                "args": [*GATED, "--latent-dim", "40", "--prior", "mixture", "--components", "500", *ELBO]},
    "vampprior": {"model": "one layer, VampPrior (500 pseudo-inputs)", "published": 85.57, "goal": 85.0,
                  "args": [*GATED, "--latent-dim", "40", "--prior", "vampprior", "--pseudo-inputs", "500", *ELBO]},
    "hvae": {"model": "two layers (40, 40), standard prior, p(x\\|z1)", "published": 86.05, "goal": 85.5,
             "args": [*GATED, "--latent-dim", "40,40", *ELBO]},
    "iwae": {"model": "one layer (z 50), trained on the IWAE bound, K = 50", "published": 87.10, "goal": 87.0,
             "args": ["--net", "mlp", "--hidden", "200,200", "--activation", "tanh", "--latent-dim", "50",
                      "--objective", "iwae", "--k", "50"]},
}  # fmt: skip


def _machine() -> str:
    import torch

    return f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def command(row: str, run_dir: Path, data_dir: Path, extra: list[str]) -> list[str]:
    args = ["vaekit", "train", *COMMON, "--data-dir", str(data_dir), *ROWS[row]["args"], *extra, "--out", str(run_dir), "--json"]
    if (run_dir / "config.json").is_file():
        args.append("--resume")
    return args


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
    }


def run_row(row: str, run_dir: Path, data_dir: Path, extra: list[str], results: Path = RESULTS) -> dict:
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
        "finished": True,
        "this_invocation_seconds": time.time() - t0,
        "machine": _machine(),
        "test_nll": -test["log_likelihood"],
        "test_neg_elbo": -test["elbo"],
        "k": test["k"],
        "active_units": test.get("active_units"),
        "latent_size": test.get("latent_size"),
    }
    result.pop("args")
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{row}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def table() -> str:
    lines = [
        "| row | model | published test NLL | vaekit test NLL (K = 5000) | test −ELBO | active units | epochs | train hours |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row, spec in ROWS.items():
        path = RESULTS / f"{row}.json"
        published = "–" if spec["published"] is None else f"{spec['published']:.2f}"
        if not path.is_file():
            lines.append(f"| {row} | {spec['model']} | {published} | not run yet | | | | |")
            continue
        r = json.loads(path.read_text())
        units = f"{r['active_units']}/{r['latent_size']}" if r.get("active_units") is not None else "–"
        lines.append(
            f"| {row} | {spec['model']} | {published} | {r['test_nll']:.2f} | {r['test_neg_elbo']:.2f} | {units} | "
            f"{r['epochs_run']} (best {r['best_epoch']}) | {r['train_seconds'] / 3600:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("row", nargs="?", choices=sorted(ROWS))
    p.add_argument("--runs-dir", type=Path, default=Path.home() / "vaekit-runs" / "literature")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--status", action="store_true", help="report where the row's run stands; train nothing")
    p.add_argument("--table", action="store_true", help="print the README table from bench/results/literature/*.json")
    p.add_argument("--amp", choices=("off", "bf16"), help="bf16 autocast for training (evaluation stays float32)")
    p.add_argument("--max-epochs", type=int, help="fewer epochs than the published 2000 (a smoke test; the JSON says so)")
    p.add_argument("--eval-k", type=int, help="fewer importance samples than the published 5000 (a smoke test)")
    args = p.parse_args()
    if args.table:
        print(table())
        return
    if args.row is None:
        p.error("name a row, or pass --table")
    run_dir = args.runs_dir / args.row
    if args.status:
        print(json.dumps(status(args.row, run_dir)))
        return
    extra = ["--amp", args.amp] if args.amp else []
    # Later flags win in argparse: these override COMMON's published values.
    extra += ["--epochs", str(args.max_epochs)] if args.max_epochs else []
    extra += ["--eval-k", str(args.eval_k)] if args.eval_k else []
    results = RESULTS if not (args.max_epochs or args.eval_k) else args.runs_dir / "results"
    print(json.dumps(run_row(args.row, run_dir, args.data_dir, extra, results)))


if __name__ == "__main__":
    main()
