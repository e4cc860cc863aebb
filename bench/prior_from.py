"""The posterior as the new prior (the notes' last step), measured on the 8x8 digits.

A first run learns from digits 0-4 alone. A second run then learns from all ten digits, with
the standard normal prior, with a learned mixture prior (``--prior mixture``, as flexible but
taught by the second data alone), and with the first run's aggregate posterior
(1/N) Σ_i q(z|x_i) as its prior (``--prior aggregate --prior-from``). The second runs have
the same data, epochs and seed; the table gives their test log p(x) (IWAE, K importance
samples) on all test digits, on the test digits 0-4 the prior has seen, and on 5-9, which it
has not. A fourth run takes a diagonal Gaussian mixture fitted to that aggregate posterior
(``--prior-mixture``) as its prior.

    python bench/prior_from.py [--epochs 50] [--first-epochs 50] [--k 1000] [--out ~/vaekit-runs/prior_from]

Splits: scikit-learn's digits (x/16) permuted with seed 0, 70% train, 10% valid, 20% test;
the first run's data are the rows of digits 0-4 of the same train and valid splits.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import count, description, positive_int, run, writable_dir  # noqa: E402


def _splits(out: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target
    perm = np.random.default_rng(0).permutation(len(x))
    a, b = int(0.7 * len(x)), int(0.8 * len(x))
    parts = {"train": perm[:a], "valid": perm[a:b], "test": perm[b:]}
    out.mkdir(parents=True, exist_ok=True)
    every, first = out / "all.npz", out / "first.npz"
    np.savez(every, **{s: x[i] for s, i in parts.items()})
    np.savez(first, **{s: x[i][y[i] < 5] for s, i in parts.items()})
    test = x[parts["test"]]
    seen = y[parts["test"]] < 5
    return every, first, {"all": test, "0-4": test[seen], "5-9": test[~seen]}


def _train(run: Path, data: Path, epochs: int, *more: str) -> None:
    cmd = [sys.executable, "-m", "vaekit", "train", "--data", str(data), "--out", str(run), "--epochs", str(epochs),
           "--batch-size", "64", "--eval-k", "10", "--overwrite", *more]  # fmt: skip
    print("$ python", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=description(__doc__))
    ap.add_argument("--epochs", type=positive_int, default=50, help="epochs of the second runs (all digits)")
    ap.add_argument("--first-epochs", type=positive_int, default=50, help="epochs of the first run (digits 0-4)")
    ap.add_argument("--k", type=positive_int, default=1000, help="importance samples per test row")
    ap.add_argument("--components", type=positive_int, default=1000, help="--prior-components of the aggregate prior")
    ap.add_argument("--fit-components", type=positive_int, default=10, help="--prior-mixture of the mixture fitted to the aggregate")
    ap.add_argument("--seed", type=count, default=0)
    ap.add_argument("--out", type=Path, default=Path.home() / "vaekit-runs" / "prior_from", help="where the runs and their data go")
    args = ap.parse_args()
    if args.fit_components > args.components:  # vaekit would refuse it only after four trainings
        ap.error(f"--fit-components {args.fit_components} must be at most --components {args.components}")

    import vaekit

    out = writable_dir(args.out, "--out")
    every, first, tests = _splits(out)
    seed = ["--seed", str(args.seed)]
    _train(out / "first", first, args.first_epochs, *seed)
    runs = {"standard normal": out / "standard", "mixture, learned": out / "mixture", "aggregate of 0-4": out / "aggregate",
            "mixture fitted to it": out / "fitted"}  # fmt: skip
    _train(runs["standard normal"], every, args.epochs, *seed)
    # A control: a prior as flexible, learned from the same data alone, not from the first run.
    _train(runs["mixture, learned"], every, args.epochs, *seed, "--prior", "mixture")
    _train(runs["aggregate of 0-4"], every, args.epochs, *seed, "--prior", "aggregate", "--prior-from", str(out / "first"),
           "--prior-components", str(args.components))  # fmt: skip
    # The same aggregate smoothed into a few components (EM on draws from it).
    _train(runs["mixture fitted to it"], every, args.epochs, *seed, "--prior", "aggregate", "--prior-from", str(out / "first"),
           "--prior-components", str(args.components), "--prior-mixture", str(args.fit_components))  # fmt: skip
    rows = []
    for name, run_dir in runs.items():
        est = vaekit.load(run_dir)
        scores = {part: float(est.score_samples(x, k=args.k).mean()) for part, x in tests.items()}
        rows.append({"prior": name, **{f"test log p(x) {part}": v for part, v in scores.items()}})
    print(f"\nsecond run on all digits, {args.epochs} epochs; test log p(x) in nats (IWAE, K={args.k})")
    width = max(len(name) for name in runs)
    print(f"{'prior':{width}s} {'all':>9s} {'0-4':>9s} {'5-9':>9s}")
    for r in rows:
        print(f"{r['prior']:{width}s} " + " ".join(f"{r[f'test log p(x) {p}']:9.2f}" for p in ("all", "0-4", "5-9")))
    print(json.dumps({"bench": "prior_from", "epochs": args.epochs, "first_epochs": args.first_epochs, "k": args.k,
                      "components": args.components, "fit_components": args.fit_components, "seed": args.seed, "rows": rows}))  # fmt: skip


if __name__ == "__main__":
    run(main, "prior_from.py")
