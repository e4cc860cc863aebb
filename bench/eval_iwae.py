"""Speed and memory of the importance-weighted log-likelihood estimate, the number the VAE
literature reports (K = 5000 on the 10 000 binarized-MNIST test images).

Trains the MLP VAE 784-400-20-400-784 (Bernoulli) for ``--epochs`` epochs (speed does not depend
on how well it is trained), then times ``vaekit.evaluate.log_px_per_point`` with K samples on
``--rows`` test images, and reports GFLOP/s of decoder matrix products, their share of the fp32
matmul peak measured in the same run, and the process's peak resident memory.

    python bench/eval_iwae.py [--k 5000] [--rows 10000] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_data_dir, description, first_rows, mnist_dataset, positive_int, run  # noqa: E402
from compare import matmul_peak  # noqa: E402

from vaekit.config import ModelConfig, TrainConfig  # noqa: E402
from vaekit.evaluate import log_px_per_point  # noqa: E402
from vaekit.model import VAEModel  # noqa: E402
from vaekit.train import fit  # noqa: E402

# Multiply-adds of one decoder pass 20-400-784 (the encoder runs once per image, not per sample).
DECODER_FLOP = 2 * (20 * 400 + 400 * 784)


def main() -> None:
    ap = argparse.ArgumentParser(description=description(__doc__))
    ap.add_argument("--k", type=positive_int, default=5000, help="importance samples per image (default 5000)")
    ap.add_argument("--rows", type=positive_int, default=10000, help="test images, at most 10000 (default 10000)")
    ap.add_argument("--epochs", type=positive_int, default=1, help="training epochs before the estimate (default 1)")
    add_data_dir(ap)
    args = ap.parse_args()
    data = mnist_dataset(args.data_dir)
    x = first_rows(data.test, args.rows, "eval_iwae.py")
    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=784, latent_dim=20, hidden=(400,), likelihood="bernoulli"))
    fit(model, data.train, data.valid[:1000], TrainConfig(epochs=args.epochs))
    peak = matmul_peak()
    t0 = time.perf_counter()
    log_px = log_px_per_point(model, x, k=args.k)
    seconds = time.perf_counter() - t0
    gflops = len(x) * args.k * DECODER_FLOP / seconds / 1e9
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "bench": "eval_iwae", "k": args.k, "rows": len(x), "seconds": seconds,
        "log_likelihood": float(log_px.mean()), "gflops": gflops, "matmul_peak_gflops": peak,
        "peak_fraction": gflops / peak, "peak_rss_mb": rss_mb,
    }))


if __name__ == "__main__":
    run(main, "eval_iwae.py")
