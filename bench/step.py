"""The training step of the MNIST MLP VAE (784-400-20-400-784, Bernoulli, batch 128) alone,
under each speed setting, in one process and in interleaved rounds, against two ceilings:
the fp32 matmul peak and the same eleven matrix products with nothing else.

    python bench/step.py [--rounds 5] [--steps 200] [--variants eager compile bf16 ...] [--device cuda]
    python bench/step.py --profile 100      # where the eager step's time goes (torch.profiler)

Variants (all with fused Adam, vaekit's default):
  products        the step's 11 fp32 matrix products and nothing else (the ceiling of this shape)
  eager           vaekit's step as train.fit runs it
  compile         the model's loss under torch.compile (TrainConfig(compile=True))
  compile-opt     the same, and the optimizer step compiled too
  full-graph      forward, backward (compiled autograd) and optimizer step as one compiled function
  medium          TrainConfig(matmul_precision="medium"): bfloat16-based float32 products
  bf16            TrainConfig(amp="bf16"): the networks under bfloat16 autocast
  compile-bf16    both
  adam-foreach    eager with torch's default Adam (foreach) in place of the fused one
  adam-loop       eager with Adam(foreach=False), one parameter after another
  gather-index    eager with the batch gathered by advanced indexing, x[idx], not index_select
  no-autograd     the same step with hand-derived gradients written into preallocated .grad
                  tensors: no autograd graph at all. An experiment, not a vaekit path: it bounds
                  what fusing the step's ~30 elementwise ops and autograd's bookkeeping could buy.
                  Its gradients are checked against autograd's before timing.

Prints the median and best images/s over the rounds, the median's share of the fp32 peak, and
the minor page faults per step (memory the allocator gave back to the OS and must fault in again).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import description, device, positive_int, run  # noqa: E402
from compare import FLOP_PER_IMAGE, _sync, matmul_peak, products_step  # noqa: E402

from vaekit.config import ModelConfig  # noqa: E402
from vaekit.model import VAEModel  # noqa: E402
from vaekit.config import TrainConfig  # noqa: E402
from vaekit.train import _matmul_precision, make_objective, make_optimizers  # noqa: E402

VARIANTS = ("products", "eager", "compile", "compile-opt", "full-graph", "medium", "bf16", "compile-bf16", "no-autograd",
            "adam-foreach", "adam-loop", "gather-index")
N, BS = 50_000, 128


def vaekit_step(x: torch.Tensor, variant: str):
    device = x.device
    model = _mnist_model(device)
    (opt,) = make_optimizers(model, 1e-3)
    if variant.startswith("adam-"):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=variant == "adam-foreach")
    objective = make_objective(model, TrainConfig())
    perm = torch.randperm(N, device=device)
    amp = "bf16" in variant
    precision = "medium" if variant == "medium" else "highest"
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    forward = torch.compile(model, dynamic=False) if variant.startswith("compile") else model
    opt_step = torch.compile(opt.step, dynamic=False) if variant == "compile-opt" else opt.step

    def batch(i: int):
        idx = perm[(i * BS) % (N - BS) :][:BS]
        xb = x[idx] if variant == "gather-index" else torch.index_select(x, 0, idx)
        return xb, idx, torch.randn(1, BS, 20, device=device)

    if variant == "full-graph":
        import torch._dynamo as dynamo

        dynamo.config.compiled_autograd = True

        @torch.compile(dynamic=False)
        def whole(xb, idx, eps):
            loss, _ = model(objective, xb, idx, eps)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return lambda i: whole(*batch(i))

    def step(i: int) -> None:
        xb, idx, eps = batch(i)
        with autocast(), _matmul_precision(precision):
            loss, _ = forward(objective, xb, idx, eps)
        opt.zero_grad(set_to_none=True)
        with _matmul_precision(precision):
            loss.backward()
        opt_step()

    return step


def fit_step(model: VAEModel, config: TrainConfig, x: torch.Tensor):
    """vaekit's training step on the batch ``x`` as train.fit takes it: fresh noise of x's dtype,
    the run's matmul precision, the loss under the run's autocast (compiled under ``config.compile``), its gradient, every optimizer's
    step. Returns it as a callable."""
    import warnings

    from vaekit.train import _autocast, _matmul_precision

    from vaekit.optim import WeightAverage

    objective = make_objective(model, config)
    optimizers = make_optimizers(
        model, config.lr, normalized_grad=config.normalized_grad, eps=config.adam_eps, weight_decay=config.weight_decay
    )
    average = WeightAverage(model, config.ema) if config.ema else None
    with warnings.catch_warnings():  # bf16's speed warning: measuring it is the point
        warnings.simplefilter("ignore")
        autocast = _autocast(config, x.device)

    # as train.fit compiles it: the model's forward (the loss) only, one graph per batch shape
    forward = torch.compile(model, dynamic=False, mode=None if config.compile_mode == "default" else config.compile_mode) if config.compile else model

    def step() -> None:
        # The run's matmul precision for the pass, as train.fit's epoch holds it.
        with _matmul_precision(config.matmul_precision):
            eps = torch.randn(objective.samples, x.shape[0], model.noise_size, dtype=x.dtype, device=x.device)
            with autocast():
                loss, _ = forward(objective, x, None, eps, 1.0)
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimizers:
                opt.step()
            if average is not None:
                average.update()

    return step


def _mnist_model(device) -> VAEModel:
    torch.manual_seed(0)
    return VAEModel(ModelConfig(input_dim=784, latent_dim=20, hidden=(400,), likelihood="bernoulli")).to(device)


def _params(model: VAEModel) -> list[torch.Tensor]:
    enc, dec = model.inference.encoder.net, model.decoder
    return [enc[0].weight, enc[0].bias, enc[2].weight, enc[2].bias, dec[0].weight, dec[0].bias, dec[2].weight, dec[2].bias]


@torch.no_grad()
def _manual_gradients(params, x: torch.Tensor, eps: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """The gradients of the loss −mean(recon − β·KL) of the 784-400-20-400-784 ReLU VAE,
    derived by hand and written into each parameter's .grad; returns the loss."""
    w1, b1, w2, b2, w3, b3, w4, b4 = params
    n, d = x.shape[0], eps.shape[-1]
    h1 = torch.addmm(b1, x, w1.t()).relu_()
    o = torch.addmm(b2, h1, w2.t())
    mu, logvar = o[:, :d], o[:, d:]
    std = torch.exp(0.5 * logvar)
    z = torch.addcmul(mu, eps, std)
    h2 = torch.addmm(b3, z, w3.t()).relu_()
    logits = torch.addmm(b4, h2, w4.t())
    recon = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kl = 0.5 * (std * std - logvar - 1 + mu * mu).sum()
    # d loss / d logits = (σ(logits) − x) / n, then back through each layer
    g = torch.sigmoid(logits).sub_(x).div_(n)
    torch.mm(g.t(), h2, out=w4.grad), torch.sum(g, 0, out=b4.grad)
    gh = torch.mm(g, w4).mul_(h2 > 0)
    torch.mm(gh.t(), z, out=w3.grad), torch.sum(gh, 0, out=b3.grad)
    gz = torch.mm(gh, w3)
    go = torch.empty_like(o)
    torch.add(gz, mu, alpha=beta / n, out=go[:, :d])
    go[:, d:] = (gz * eps + (beta / n) * std).mul_(std).sub_(beta / n).mul_(0.5)
    torch.mm(go.t(), h1, out=w2.grad), torch.sum(go, 0, out=b2.grad)
    gh1 = torch.mm(go, w2).mul_(h1 > 0)
    torch.mm(gh1.t(), x, out=w1.grad), torch.sum(gh1, 0, out=b1.grad)
    return -(recon - beta * kl) / n


def manual_step(x: torch.Tensor):
    model = _mnist_model(x.device)
    params = _params(model)
    # The hand-derived gradients against autograd's on one batch, in float64.
    ref = _mnist_model("cpu").double()
    xb, eps = x[:64].cpu().double(), torch.randn(64, 20, dtype=torch.float64)
    loss, _ = ref(make_objective(ref, TrainConfig()), xb, None, eps[None], 0.7)
    expected = torch.autograd.grad(loss, _params(ref))
    for p in _params(ref):
        p.grad = torch.zeros_like(p)
    assert torch.allclose(_manual_gradients(_params(ref), xb, eps, 0.7), loss.detach(), rtol=1e-10)
    for p, e in zip(_params(ref), expected):
        assert torch.allclose(p.grad, e, rtol=1e-9, atol=1e-12), "hand-derived gradient differs from autograd's"

    for p in params:
        p.grad = torch.zeros_like(p)
    (opt,) = make_optimizers(model, 1e-3)
    perm = torch.randperm(N, device=x.device)

    def step(i: int) -> None:
        idx = perm[(i * BS) % (N - BS) :][:BS]
        _manual_gradients(params, torch.index_select(x, 0, idx), torch.randn(BS, 20, device=x.device))
        opt.step()

    return step


def profile(step, steps: int, top: int = 12) -> None:
    """torch.profiler over ``steps`` steps (after 30 of warm-up): the ``top`` operators by self
    CPU time, their share, and the products' GFLOP/s while they run."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    for i in range(30):
        step(i)
    with profiler(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for i in range(steps):
            step(i)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{steps} eager steps, {total / 1e3 / steps:.2f} ms of CPU time per step")
    print(f"{'operator':32s} {'share':>7s} {'calls/step':>11s}")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
        print(f"{e.key:32s} {100 * e.self_cpu_time_total / total:6.1f}% {e.count / steps:11.1f}")
    products = [e for e in events if e.key in ("aten::mm", "aten::addmm")]
    seconds = sum(e.self_cpu_time_total for e in products) / 1e6
    flops = sum(e.flops for e in products)
    print(f"matrix products: {100 * seconds * 1e6 / total:.1f}% of the time, {flops / seconds / 1e9:.1f} GFLOP/s while they run")
    print(json.dumps({"bench": "step-profile", "steps": steps, "ops": {e.key: e.self_cpu_time_total / total for e in events}}))


def main() -> None:
    ap = argparse.ArgumentParser(description=description(__doc__))
    ap.add_argument("--rounds", type=positive_int, default=5, help="interleaved rounds, every variant once in each (default 5)")
    ap.add_argument("--steps", type=positive_int, default=200, help="steps timed per variant and round (default 200)")
    ap.add_argument("--device", type=device, default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--variants", nargs="+", default=["products", "eager", "compile", "compile-opt", "medium", "bf16"], choices=VARIANTS)
    ap.add_argument("--profile", type=positive_int, metavar="STEPS", help="instead: torch.profiler over this many eager steps, "
                    "the operators by their share of the CPU time")
    args = ap.parse_args()
    if args.profile:  # the profile is of the eager step alone, once: the timing options have nothing to act on
        defaults = vars(ap.parse_args([]))
        for key in ("rounds", "steps", "variants"):
            if getattr(args, key) != defaults[key]:
                ap.error(f"--{key} does not go with --profile, which profiles the eager step over its own STEPS")

    x = (torch.rand(N, 784, device=args.device) < 0.3).float()
    if args.profile:
        return profile(vaekit_step(x, "eager"), args.profile)
    peak = matmul_peak(device=args.device)
    makers = {"products": lambda: products_step(x, args.device), "no-autograd": lambda: manual_step(x)}
    steps = {v: makers[v]() if v in makers else vaekit_step(x, v) for v in args.variants}
    for s in steps.values():  # compilation and warm-up
        for i in range(30):
            s(i)
    ips: dict[str, list[float]] = {v: [] for v in steps}
    faults: dict[str, list[float]] = {v: [] for v in steps}
    for _ in range(args.rounds):
        for v, s in steps.items():
            _sync(args.device)
            f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            for i in range(args.steps):
                s(i)
            _sync(args.device)
            ips[v].append(args.steps * BS / (time.perf_counter() - t0))
            faults[v].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / args.steps)
    where = f"{torch.get_num_threads()} threads" if args.device == "cpu" else torch.cuda.get_device_name(args.device)
    print(f"fp32 matmul peak {peak:.1f} GFLOP/s ({where}, torch {torch.__version__})")
    print(f"{'variant':14s} {'median':>8s} {'best':>8s} {'% of peak':>10s} {'faults/step':>12s}")
    for v, r in ips.items():
        med = statistics.median(r)
        pct = 100 * med * FLOP_PER_IMAGE / (peak * 1e9)
        print(f"{v:14s} {med:8.0f} {max(r):8.0f} {pct:9.1f}% {statistics.median(faults[v]):12.1f}")
    print(json.dumps({"bench": "step", "matmul_peak_gflops": peak, "images_per_second": ips, "faults_per_step": faults}))


if __name__ == "__main__":
    run(main, "step.py")
