"""The notes' overfitting claim, measured: "we could always increase the likelihood by
increasing the capacity of the decoder" when every training point has its own free z_i.

For each decoder width and each method (MAP estimation of every latent, per-point VI, the
amortized encoder), train the same model family on the training rows until the validation
objective has not improved for ``--patience`` epochs (at most ``--epochs``), then estimate
log p(x) by importance sampling (K samples, the method's own evaluation q as proposal) on
training rows and on test rows. The train − test difference is the generalisation gap.

    python bench/overfit.py                                   # digits, widths 16 64 256 1024
    python bench/overfit.py --data binarized_mnist --rows 2000 --widths 50 200 800 3200

Writes bench/results/overfit.json and bench/results/overfit.png (train and test log p(x) per
width, one line per method), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from vaekit.config import DataConfig, ModelConfig, TrainConfig
from vaekit.data import load_dataset
from vaekit.scaling import named_values
from vaekit.evaluate import log_px_per_point
from vaekit.model import VAEModel
from vaekit.train import fit

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("map", "vi", "amortized")


def run(method: str, width: int, data, args) -> dict:
    torch.manual_seed(args.seed)
    x_train = data.train[: args.rows] if args.rows else data.train
    config = ModelConfig(
        input_dim=x_train.shape[1], latent_dim=args.latent_dim, hidden=(args.encoder_width,), decoder_hidden=(width,),
        likelihood=args.likelihood, inference=method, n_points=len(x_train) if method != "amortized" else 0,
        **({"point_lr": args.point_lr} if method != "amortized" else {}),
    )
    model = VAEModel(config)
    t0 = time.perf_counter()
    history = fit(model, x_train, data.valid, TrainConfig(epochs=args.epochs, patience=args.patience, seed=args.seed, lr=args.lr))
    seconds = time.perf_counter() - t0
    n = args.eval_rows
    train_ll = float(log_px_per_point(model, x_train[:n], k=args.k, seed=1).mean())
    test_ll = float(log_px_per_point(model, data.test[:n], k=args.k, seed=1).mean())
    best = max(history, key=lambda r: r["valid_score"])
    return {"method": method, "width": width, "train_log_px": train_ll, "test_log_px": test_ll,
            "gap": train_ll - test_ll, "epochs": len(history), "best_epoch": best["epoch"], "seconds": seconds}  # fmt: skip


def table(rows: list[dict]) -> str:
    lines = ["| method | decoder width | train log p(x) | test log p(x) | train − test | epochs (best) |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['width']} | {r['train_log_px']:.2f} | {r['test_log_px']:.2f} | {r['gap']:.2f} | "
                     f"{r['epochs']} ({r['best_epoch']}) |")  # fmt: skip
    return "\n".join(lines)


def picture(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, method in enumerate(METHODS):
        rs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["width"])
        if not rs:
            continue
        w = [r["width"] for r in rs]
        color = f"C{i}"
        ax.plot(w, [r["train_log_px"] for r in rs], "o--", color=color, label=f"{method}, train")
        ax.plot(w, [r["test_log_px"] for r in rs], "o-", color=color, label=f"{method}, test")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("decoder width (units)")
    ax.set_ylabel("log p(x) (nats, importance-weighted)")
    ax.set_title("Decoder capacity against train and test likelihood")
    ax.legend(fontsize=8, ncol=3, loc="lower center", bbox_to_anchor=(0.5, -0.42), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="digits")
    p.add_argument("--data-dir")
    p.add_argument("--widths", type=int, nargs="+", default=[16, 64, 256, 1024])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--latent-dim", type=int, default=8)
    p.add_argument("--encoder-width", type=int, default=256)
    p.add_argument("--likelihood", default="auto")
    p.add_argument("--epochs", type=int, default=500, help="at most this many epochs (default 500)")
    p.add_argument("--patience", type=int, default=30, help="stop after this many epochs without a better validation objective")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--point-lr", type=float, default=0.2, help="learning rate of map's and vi's per-point tables (default 0.2)")
    p.add_argument("--rows", type=int, help="training rows (default: all)")
    p.add_argument("--eval-rows", type=int, default=500, help="rows of each split scored (default 500)")
    p.add_argument("--k", type=int, default=500, help="importance samples per row (default 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()

    data = named_values(load_dataset(DataConfig(source=args.data, data_dir=args.data_dir)))  # digits / 16, as measured
    if args.likelihood == "auto":
        from vaekit.likelihoods import choose

        args.likelihood = choose(data.train)
    rows = []
    for width in args.widths:
        for method in args.methods:
            rows.append(run(method, width, data, args))
            r = rows[-1]
            print(f"{method:10s} width {width:5d}  train {r['train_log_px']:9.2f}  test {r['test_log_px']:9.2f}  "
                  f"epochs {r['epochs']} ({r['seconds']:.0f} s)", flush=True)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"command": "python bench/overfit.py " + " ".join(__import__("sys").argv[1:]), "data": args.data,
              "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "rows": rows}  # fmt: skip
    (args.out / "overfit.json").write_text(json.dumps(result, indent=2) + "\n")
    picture(rows, args.out / "overfit.png")
    print(table(rows))


if __name__ == "__main__":
    main()
