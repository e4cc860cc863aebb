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
import tempfile
import time
from pathlib import Path

import torch

from vaekit.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from vaekit.data import load_dataset
from vaekit.evaluate import evaluate
from vaekit.model import VAEModel
from vaekit.train import fit

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--amp", default="off", help="off or bf16")
    ap.add_argument("--matmul-precision", default="highest", help="highest, high or medium")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compile-mode", default="default", help="reduce-overhead for CUDA graphs on a GPU")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared/data/binarized_mnist"))
    args = ap.parse_args()

    data = load_dataset(DataConfig(source="binarized_mnist", data_dir=args.data_dir))
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
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(args.device),
        "train_images_per_second_median": sorted(steps_ips)[len(steps_ips) // 2],
        "epoch_images_per_second_with_validation": len(data.train) * args.epochs / wall,
        "test_neg_elbo": -test["elbo"],
        "test_log_likelihood": test["log_likelihood"],
        "k": args.k,
        "eval_seconds": eval_seconds,
    }))


if __name__ == "__main__":
    main()
