"""Train the MLP VAE 784-400-20-400-784 (Bernoulli, batch 128, Adam 1e-3) on binarized MNIST
with vaekit's own training loop, as a user runs it (validation and checkpoints included), and
report training images per second, test −ELBO and test log-likelihood (IWAE, K = 1000).

    python bench/train_mnist.py [--epochs 10] [--k 1000] [--amp bf16] [--matmul-precision medium] [--compile]
                                [--compile-mode reduce-overhead] [--device cuda] [--data-dir ../shared/data/binarized_mnist]

The speed settings act on training only; the test numbers are always computed in float32.

Prints one line per epoch and one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_data_dir, description, device, mnist_dataset, positive_int, run  # noqa: E402

from vaekit.config import ModelConfig, RunConfig, TrainConfig  # noqa: E402
from vaekit.evaluate import evaluate  # noqa: E402
from vaekit.model import VAEModel  # noqa: E402
from vaekit.train import fit  # noqa: E402



def main() -> None:
    ap = argparse.ArgumentParser(description=description(__doc__))
    ap.add_argument("--epochs", type=positive_int, default=10, help="training epochs (default 10)")
    ap.add_argument("--k", type=positive_int, default=1000, help="importance samples of the test log-likelihood (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--amp", default="off", choices=("off", "bf16"), help="bf16: the networks under bfloat16 autocast")
    ap.add_argument("--matmul-precision", default="highest", choices=("highest", "high", "medium"), help="float32 products' precision")
    ap.add_argument("--compile", action="store_true", help="the loss under torch.compile")
    ap.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune"), help="with --compile: reduce-overhead for CUDA graphs on a GPU (default: default)")
    ap.add_argument("--device", type=device, default="cpu", help="cpu or cuda[:N]")
    add_data_dir(ap)
    args = ap.parse_args()
    if args.compile_mode is not None and not args.compile:
        ap.error("--compile-mode goes with --compile")
    args.compile_mode = args.compile_mode or "default"

    data = mnist_dataset(args.data_dir)
    model_cfg = ModelConfig(input_dim=784, latent_dim=20, hidden=(400,), likelihood="bernoulli", image_shape=(28, 28))
    train_cfg = TrainConfig(
        epochs=args.epochs, batch_size=128, lr=1e-3, seed=args.seed, eval_k=args.k,
        amp=args.amp, matmul_precision=args.matmul_precision, compile=args.compile,
        compile_mode=args.compile_mode, device=args.device,
    )  # fmt: skip
    torch.manual_seed(args.seed)  # the initial weights are part of the run
    model = VAEModel(model_cfg)
    with tempfile.TemporaryDirectory() as run_dir:
        t0 = time.perf_counter()
        history = fit(model, data.train, data.valid, train_cfg, run_dir, RunConfig(model_cfg, train_cfg))
        wall = time.perf_counter() - t0
    for r in history:
        print(f"epoch {r['epoch']:3d}  train -ELBO {-r['train_elbo']:8.3f}  valid -ELBO {-r['valid_elbo']:8.3f}  {r['images_per_second']:8.0f} img/s")
    t0 = time.perf_counter()
    test = evaluate(model, data.test, k=args.k, seed=args.seed)
    eval_seconds = time.perf_counter() - t0
    steps_ips = [r["images_per_second"] for r in history]
    print(json.dumps({
        "bench": "train_mnist",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "epochs": args.epochs,
        "amp": args.amp,
        "matmul_precision": args.matmul_precision,
        "compile": args.compile,
        "compile_mode": args.compile_mode if args.compile else None,
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(args.device),
        "train_images_per_second_median": statistics.median(steps_ips),
        "epoch_images_per_second_with_validation": len(data.train) * args.epochs / wall,
        "test_neg_elbo": -test["elbo"],
        "test_log_likelihood": test["log_likelihood"],
        "k": args.k,
        "eval_seconds": eval_seconds,
    }))


if __name__ == "__main__":
    run(main, "train_mnist.py")
