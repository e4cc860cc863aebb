"""The bubbles under three weights of the KL: one figure, one panel per β.

The loss is −E_q[log p(x|z)] + β·KL (reconstruction and KL) and the KL is two of the notes' three bubble forces (the mean
term wraps all bubbles into one, the variance term keeps them at unit size), so β sets how
hard those two pull against the reconstruction, which pushes the bubbles apart. For each β
this trains the same model with a 2-D latent (same seed, same data) and draws every
validation point's q(z|x) as the ellipse μ ± σ, coloured by label.

    python bench/bubbles.py [--data digits] [--betas 0.1,1,4] [--epochs 30] [--out bench/results/bubbles.png]

Prints one line per β (the validation terms, in nats) and one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import description, documented, number_list, png_file, positive_int, run, writable_dir  # noqa: E402

from vaekit import bubbles, plots  # noqa: E402
from vaekit.config import DataConfig, TrainConfig  # noqa: E402
from vaekit.data import load_dataset  # noqa: E402
from vaekit.evaluate import LatentUsage, elbo_per_point  # noqa: E402
from vaekit.model import VAEModel  # noqa: E402
from vaekit.runs import model_config  # noqa: E402
from vaekit.scaling import named_values  # noqa: E402
from vaekit.train import fit  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def train_one(beta: float, data, args) -> dict:
    config = model_config(data.train, data.image_shape, {"latent_dim": (2,), "hidden": (args.hidden,), "likelihood": args.likelihood})
    torch.manual_seed(args.seed)
    model = VAEModel(config)
    t0 = time.perf_counter()
    fit(model, data.train, data.valid, TrainConfig(epochs=args.epochs, batch_size=args.batch_size, beta=beta, seed=args.seed))
    seconds = time.perf_counter() - t0
    rows = data.valid[: bubbles.BUBBLE_ROWS]
    usage = LatentUsage(model)
    terms = elbo_per_point(model, rows, usage=usage)
    mu, logvar = bubbles.posterior_parameters(model, rows)
    return {
        "beta": beta,
        "valid_recon": float(terms["recon"].mean()),
        "valid_kl": float(terms["kl"].mean()),
        **usage.forces,
        "mean_sigma": float(np.exp(0.5 * logvar).mean()),
        # How far the farthest bubble sits from the prior's centre, in the prior's units.
        "max_mu_norm": float(np.linalg.norm(mu, axis=1).max()),
        "train_seconds": seconds,
        "mu": mu,
        "logvar": logvar,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--data", default="digits", help="a named dataset or a file, as for vaekit train")
    parser.add_argument("--betas", type=number_list, default="0.1,1,4", help="comma-separated KL weights > 0, one panel each")
    parser.add_argument("--epochs", type=positive_int, default=30)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--hidden", type=positive_int, default=256)
    parser.add_argument("--likelihood", default="auto", help="as for vaekit train (default auto)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=png_file, help="the figure (default results/bubbles.png for the documented settings, "
                        "~/vaekit-runs/bubbles/bubbles.png for any other)")
    args = parser.parse_args()
    if args.out is None:  # a smoke test never replaces the documented figure
        args.out = RESULTS / "bubbles.png" if documented(parser, args, ("out",)) else Path.home() / "vaekit-runs" / "bubbles" / "bubbles.png"
    writable_dir(args.out.parent, "--out")
    data = named_values(load_dataset(DataConfig(source=args.data)))  # digits / 16, as measured
    results = [train_one(b, data, args) for b in args.betas]
    labels = {r["beta"]: f"β = {r['beta']:g}:" for r in results}
    width = max(map(len, labels.values()))
    for r in results:
        print(f"{labels[r['beta']]:{width}s} E_q[log p(x|z)] {r['valid_recon']:7.3f}  KL {r['valid_kl']:6.3f} = mean {r['force_mean']:6.3f} "
              f"+ variance {r['force_variance']:.3f}  mean σ {r['mean_sigma']:.3f}  max ‖μ‖ {r['max_mu_norm']:4.1f}  ({r['train_seconds']:.1f} s)")  # fmt: skip
    labels = data.split_labels("valid")
    panels = [(f"β = {r['beta']:g}: KL {r['valid_kl']:.2f} nats, mean σ {r['mean_sigma']:.2f}", r["mu"], r["logvar"]) for r in results]
    n = len(results[0]["mu"])
    path = plots.bubbles_plot(panels, args.out, labels=None if labels is None else labels[:n],
                              title=f"{args.data}: q(z|x) of {n} validation points after {args.epochs} epochs; loss = −E_q[log p(x|z)] + β·KL")  # fmt: skip
    print(json.dumps({"figure": str(path), "results": [{k: v for k, v in r.items() if k not in ("mu", "logvar")} for r in results]}))


if __name__ == "__main__":
    run(main, "bubbles.py")
