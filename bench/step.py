"""The training step of the MNIST MLP VAE (784-400-20-400-784, Bernoulli, batch 128) alone,
under each speed setting, in one process and in interleaved rounds, against two ceilings:
the fp32 matmul peak and the same eleven matrix products with nothing else.

    python bench/step.py [--rounds 5] [--steps 200] [--variants eager compile bf16 ...] [--device cuda]

Variants (all with fused Adam, vaekit's default):
  products        the step's 11 fp32 matrix products and nothing else (the ceiling of this shape)
  eager           vaekit's step as train.fit runs it
  compile         the model's loss under torch.compile (TrainConfig(compile=True))
  compile-opt     the same, and the optimizer step compiled too
  full-graph      forward, backward (compiled autograd) and optimizer step as one compiled function
  medium          TrainConfig(matmul_precision="medium"): bfloat16-based float32 products
  bf16            TrainConfig(amp="bf16"): the networks under bfloat16 autocast
  compile-bf16    both

Prints the median and best images/s over the rounds and the median's share of the fp32 peak.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import FLOP_PER_IMAGE, _sync, matmul_peak, products_step  # noqa: E402

from vaekit.config import ModelConfig  # noqa: E402
from vaekit.model import VAEModel  # noqa: E402
from vaekit.train import _matmul_precision, make_optimizers  # noqa: E402

VARIANTS = ("products", "eager", "compile", "compile-opt", "full-graph", "medium", "bf16", "compile-bf16")
N, BS = 50_000, 128


def vaekit_step(x: torch.Tensor, variant: str):
    torch.manual_seed(0)
    device = x.device
    model = VAEModel(ModelConfig(input_dim=784, latent_dim=20, hidden=(400,), likelihood="bernoulli")).to(device)
    (opt,) = make_optimizers(model, 1e-3)
    perm = torch.randperm(N, device=device)
    amp = "bf16" in variant
    precision = "medium" if variant == "medium" else "highest"
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    forward = torch.compile(model, dynamic=False) if variant.startswith("compile") else model
    opt_step = torch.compile(opt.step, dynamic=False) if variant == "compile-opt" else opt.step

    def batch(i: int):
        idx = perm[(i * BS) % (N - BS) :][:BS]
        return torch.index_select(x, 0, idx), idx, torch.randn(1, BS, 20, device=device)

    if variant == "full-graph":
        import torch._dynamo as dynamo

        dynamo.config.compiled_autograd = True

        @torch.compile(dynamic=False)
        def whole(xb, idx, eps):
            loss, _ = model(xb, idx, 1.0, 1, True, eps)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return lambda i: whole(*batch(i))

    def step(i: int) -> None:
        xb, idx, eps = batch(i)
        with autocast(), _matmul_precision(precision):
            loss, _ = forward(xb, idx, 1.0, 1, True, eps)
        opt.zero_grad(set_to_none=True)
        with _matmul_precision(precision):
            loss.backward()
        opt_step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", nargs="+", default=["products", "eager", "compile", "compile-opt", "medium", "bf16"], choices=VARIANTS)
    args = ap.parse_args()

    from vaekit.runtime import keep_freed_memory

    keep_freed_memory()  # as train.fit does
    x = (torch.rand(N, 784, device=args.device) < 0.3).float()
    peak = matmul_peak(device=args.device)
    steps = {v: products_step(x, args.device) if v == "products" else vaekit_step(x, v) for v in args.variants}
    for s in steps.values():  # compilation and warm-up
        for i in range(30):
            s(i)
    ips: dict[str, list[float]] = {v: [] for v in steps}
    for _ in range(args.rounds):
        for v, s in steps.items():
            _sync(args.device)
            t0 = time.perf_counter()
            for i in range(args.steps):
                s(i)
            _sync(args.device)
            ips[v].append(args.steps * BS / (time.perf_counter() - t0))
    where = f"{torch.get_num_threads()} threads" if args.device == "cpu" else torch.cuda.get_device_name(args.device)
    print(f"fp32 matmul peak {peak:.1f} GFLOP/s ({where}, torch {torch.__version__})")
    print(f"{'variant':14s} {'median':>8s} {'best':>8s} {'% of peak':>10s}")
    for v, r in ips.items():
        med = statistics.median(r)
        print(f"{v:14s} {med:8.0f} {max(r):8.0f} {100 * med * FLOP_PER_IMAGE / (peak * 1e9):9.1f}%")
    print(json.dumps({"bench": "step", "matmul_peak_gflops": peak, "images_per_second": ips}))


if __name__ == "__main__":
    main()
