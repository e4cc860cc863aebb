"""The notes' inference methods side by side on binarized MNIST, same decoder, same budget.

For each method (autoencoder, map, vi, amortized, amortized with refinement) this trains the
decoder 20-400-784 (Bernoulli) with Adam 1e-3, batch 128, for the same number of epochs, then
measures on held-out test rows and on training rows: log p(x) (IWAE with the method's own
q as proposal, K importance samples), the ELBO of the method's q, the ELBO of the optimal
per-point Gaussian q*, the approximation and amortization gaps (Cremer et al. 2018),
training images per second, and the cost of test-time inference (seconds per 1000 images to
produce q for new data). MAP's overfitting shows as the distance between its training and
test log-likelihoods.

    python bench/methods.py [--epochs 10] [--k 1000] [--rows 1000] [--methods ...]

Prints a table and one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from vaekit.config import DataConfig, ModelConfig, TrainConfig
from vaekit.data import load_dataset
from vaekit.config import GAP_STEPS
from vaekit.evaluate import elbo_per_point, gaps
from vaekit.model import VAEModel
from vaekit.plots import bound_bars_plot
from vaekit.train import fit

RESULTS = Path(__file__).resolve().parent / "results" / "methods.json"
ROOT = Path(__file__).resolve().parents[1]
METHODS = {
    "autoencoder": dict(inference="autoencoder"),
    "map": dict(inference="map"),
    "vi": dict(inference="vi"),
    # Stochastic VI's local step: each batch's per-point parameters first take 10 steps with θ fixed.
    "map+local": dict(inference="map", local_steps_per_batch=10),
    "vi+local": dict(inference="vi", local_steps_per_batch=10),
    "amortized": dict(inference="amortized"),
    "amortized+refine": dict(inference="amortized", refine_steps=20),
}


def run(name: str, data, args) -> dict:
    torch.manual_seed(args.seed)
    kw = dict(METHODS[name])
    per_point = kw["inference"] in ("map", "vi")
    cfg = ModelConfig(
        input_dim=784, latent_dim=20, hidden=(400,), likelihood="bernoulli", image_shape=(28, 28),
        n_points=len(data.train) if per_point else 0, local_steps=args.local_steps, **kw,
    )
    model = VAEModel(cfg)
    history = fit(model, data.train, data.valid[: args.rows], TrainConfig(epochs=args.epochs, seed=args.seed))
    ips = float(np.median([r["images_per_second"] for r in history]))
    x_test, x_train = data.test[: args.rows], data.train[: args.rows]
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(x_test), 256):
            model.evaluation_posterior(torch.as_tensor(x_test[start : start + 256]))
    infer = (time.perf_counter() - t0) / len(x_test) * 1000
    test = gaps(model, x_test, k=args.k, steps=args.gap_steps, seed=args.seed)
    train = gaps(model, x_train, k=args.k, steps=args.gap_steps, seed=args.seed)
    own_train_elbo = float(elbo_per_point(model, x_train, seed=args.seed)["elbo"].mean())
    train.pop("per_point")
    return {
        "per_point": test.pop("per_point"),
        "method": name,
        "test_log_likelihood": test["log_likelihood"],
        "test_elbo": test["elbo"],
        "test_elbo_optimal": test["elbo_optimal"],
        "approximation_gap": test["approximation_gap"],
        "approximation_gap_se": test["approximation_gap_se"],
        "amortization_gap": test["amortization_gap"],
        "amortization_gap_se": test["amortization_gap_se"],
        "train_log_likelihood": train["log_likelihood"],
        "train_elbo": own_train_elbo,
        "train_images_per_second": ips,
        "inference_seconds_per_1000": infer,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=1000, help="test and training rows evaluated")
    ap.add_argument("--local-steps", type=int, default=100)
    ap.add_argument("--gap-steps", type=int, default=GAP_STEPS, help="cap on q*'s Adam steps (it stops when its ELBO stops improving)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared/data/binarized_mnist"))
    ap.add_argument("--table", action="store_true", help="print the README table from bench/results/methods.json")
    args = ap.parse_args()
    if args.table:
        print(table())
        return
    data = load_dataset(DataConfig(source="binarized_mnist", data_dir=args.data_dir))
    rows = []
    head = f"{'method':18s} {'test LL':>9s} {'test ELBO':>9s} {'ELBO(q*)':>9s} {'approx':>7s} {'amort':>7s} {'train LL':>9s} {'img/s':>8s} {'s/1000 inf':>10s}"
    print(head, flush=True)
    bound = {}
    for name in args.methods:
        r = run(name, data, args)
        bound[name] = r.pop("per_point")
        rows.append(r)
        print(
            f"{name:18s} {r['test_log_likelihood']:9.2f} {r['test_elbo']:9.2f} {r['test_elbo_optimal']:9.2f} "
            f"{r['approximation_gap']:7.2f} {r['amortization_gap']:7.2f} {r['train_log_likelihood']:9.2f} "
            f"{r['train_images_per_second']:8.0f} {r['inference_seconds_per_1000']:10.3f}",
            flush=True,
        )
    result = {"bench": "methods", "epochs": args.epochs, "k": args.k, "rows": args.rows, "gap_steps": args.gap_steps, "results": rows}
    print(json.dumps(result))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    # The bound beneath the evidence for the first test rows, one panel per method.
    bound_bars_plot(bound, RESULTS.with_name("methods_bound.png"))


def _num(v: float, digits: int = 2) -> str:
    """A table number with a typographic minus and thin thousands spacing."""
    text = f"{abs(v):,.{digits}f}".replace(",", " ")
    return ("−" if v < 0 else "") + text


def table() -> str:
    """The README table from bench/results/methods.json (never typed by hand)."""
    result = json.loads(RESULTS.read_text())
    lines = [
        "| method | test log p(x) | test ELBO | ELBO(q*) | approximation gap | amortization gap | train log p(x) | train img/s | s per 1000 new images |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["results"]:
        cells = [
            r["method"],
            _num(r["test_log_likelihood"]),
            _num(r["test_elbo"]),
            _num(r["test_elbo_optimal"]),
            f"{_num(r['approximation_gap'])} ± {r['approximation_gap_se']:.2f}",
            f"{_num(r['amortization_gap'])} ± {r['amortization_gap_se']:.2f}",
            _num(r["train_log_likelihood"]),
            _num(r["train_images_per_second"], 0),
            f"{r['inference_seconds_per_1000']:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
