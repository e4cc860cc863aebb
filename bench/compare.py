"""vaekit against its peers, side by side in one invocation, on the same model and data.

The MLP VAE 784-400-20-400-784 (ReLU, Bernoulli likelihood, batch 128, Adam 1e-3) is trained
on statically binarized MNIST (50 000 training images) by each contestant, each in its own
process, one at a time, ``--repeats`` rounds in which every contestant runs once:

  vaekit     vaekit.train.fit, whole epochs as a user runs them (validation included, the
             checkpoint writes after the epoch's clock stops), float32 like every peer;
             vaekit-compile the same with
             TrainConfig(compile=True); vaekit-bf16 with TrainConfig(amp="bf16") (bfloat16
             networks, float32 weights and log-densities; its test −ELBO shows what that costs;
             left out of the default contestants on a CPU without bfloat16 instructions, where
             its products are emulated)
  examples   a loop written like PyTorch's examples/vae: DataLoader(shuffle=True), per-batch
             .item(), BCE(sum) + KL
  pythae     Pythae's TrainingPipeline / BaseTrainer with its VAE and our encoder/decoder, one
             pipeline call for all epochs, each epoch (training and its evaluation on the same
             10 000 validation images as vaekit) timed by a training callback
  pyro       Pyro's SVI with Trace_ELBO, as in Pyro's VAE example
  products   the step's eleven matrix products and nothing else, batch after batch for an
             epoch: no optimizer, no loss, no data handling. No training loop in float32 can
             be faster, so its ratio to a peer bounds the ratio any implementation can reach.

and a large torch.mm is timed in the same run to give the fp32 matmul peak. For each contestant
it prints training images/s (min/median/max over repeats of the median epoch), the test
−ELBO after ``--epochs`` epochs (computed for every contestant by the same evaluator: the
closed-form KL plus a 10-sample reconstruction term, on the 10 000 test images), the ratio of
vaekit to each, and vaekit's fraction of the matmul peak. The last line is one JSON object.

    python bench/compare.py [--epochs 3] [--repeats 3] [--contestants vaekit vaekit-bf16 examples pythae pyro]
                            [--device cuda]

With ``--device cuda`` every contestant trains on the GPU (vaekit with the dataset resident
there, the loaders' batches copied per step as their examples do) and the peaks are timed there.

Peers are not dependencies: ``pip install pyro-ppl pythae`` first (a missing one is skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import description, device, existing_file, mnist_file, positive_int, run  # noqa: E402
from vaekit.hardware import cpu_flags  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Multiply-adds of one image through 784-400-(20+20)-400-784; forward and backward take three
# products per layer, except the first layer, whose input needs no gradient: 3.28 MFLOP.
_MACS = 784 * 400 + 400 * 40 + 20 * 400 + 400 * 784
FLOP_PER_IMAGE = 2 * (3 * _MACS - 784 * 400)
CONTESTANTS = ("products", "vaekit", "vaekit-compile", "vaekit-bf16", "examples", "pythae", "pyro")
PEERS = ("pythae", "pyro")  # not dependencies: skipped where they are not installed


# -- shared pieces (run inside each contestant's process) ---------------------------------------


def _data(path: str):
    import numpy as np

    d = np.load(path)
    return (d[k].astype(np.float32) for k in ("train", "valid", "test"))


def _check_data(path) -> None:
    """The file every contestant reads, checked once up front (arrays, numbers, 784 pixels):
    a damaged one is one line here rather than a failure in each contestant's process."""
    from vaekit.config import DataConfig
    from vaekit.data import load_dataset
    from vaekit.errors import DataError

    data = load_dataset(DataConfig(source=str(path)))
    if data.dim != 784 or set(data.fixed) != {"valid", "test"}:
        raise DataError(f"--data {path}: expected binarized MNIST, arrays train, valid and test of 784 pixels a row")


def _nets():
    from torch import nn

    enc = nn.Sequential(nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 40))
    dec = nn.Sequential(nn.Linear(20, 400), nn.ReLU(), nn.Linear(400, 784))
    return enc, dec


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def products_step(x, device: str = "cpu"):
    """The training step's eleven matrix products (forward; backward to the inputs of the three
    upper layers; the four weight gradients) on random operands of the same shapes, batch rows
    taken from ``x``; operands are allocated once, so only the products are timed."""
    import torch

    bs = 128
    w1, w2 = torch.randn(784, 400, device=device), torch.randn(400, 40, device=device)
    w3, w4 = torch.randn(20, 400, device=device), torch.randn(400, 784, device=device)
    g = torch.randn(bs, 784, device=device)
    go = torch.randn(bs, 40, device=device)
    n = x.shape[0]

    def step(i: int) -> None:
        a = x[(i * bs) % (n - bs) :][:bs]
        h = a @ w1
        o = h @ w2
        h2 = o[:, :20] @ w3
        h2 @ w4
        h2.t() @ g
        gh2 = g @ w4.t()
        o[:, :20].t() @ gh2
        gh2 @ w3.t()
        h.t() @ go
        gh = go @ w2.t()
        a.t() @ gh

    return step


def run_products(args) -> dict:
    import torch

    x_train, _, _ = _data(args.data)
    x = torch.as_tensor(x_train, device=args.device)
    step = products_step(x, args.device)
    steps = -(-len(x_train) // 128)
    epoch_ips = []
    for _ in range(args.epochs):
        _sync(args.device)
        t0 = time.perf_counter()
        for i in range(steps):
            step(i)
        _sync(args.device)
        epoch_ips.append(len(x_train) / (time.perf_counter() - t0))
    return {"epoch_ips": epoch_ips, "test_neg_elbo": None}


def _test_neg_elbo(encode, decode_logits, x_test) -> float:
    """−ELBO on the test set by one evaluator for everyone: analytic KL + 10-sample recon (on
    the CPU: callers move their networks there first)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    total = 0.0
    x_all = torch.as_tensor(x_test)
    with torch.no_grad():
        for start in range(0, len(x_all), 1000):
            x = x_all[start : start + 1000]
            mu, logvar = encode(x)
            kl = 0.5 * (logvar.exp() - logvar - 1 + mu**2).sum(-1)
            eps = torch.randn((10,) + mu.shape, generator=g)
            logits = decode_logits(mu + eps * (0.5 * logvar).exp())
            recon = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1).mean(0)
            total += float((kl - recon).sum())
    return total / len(x_all)


def run_vaekit(args, compile: bool = False, amp: str = "off") -> dict:
    import torch

    from vaekit.config import ModelConfig, RunConfig, TrainConfig
    from vaekit.model import VAEModel
    from vaekit.train import fit

    x_train, x_valid, x_test = _data(args.data)
    torch.manual_seed(0)
    cfg = ModelConfig(input_dim=784, latent_dim=20, hidden=(400,), likelihood="bernoulli")
    tcfg = TrainConfig(epochs=args.epochs, batch_size=128, lr=1e-3, compile=compile, amp=amp, device=args.device)
    model = VAEModel(cfg)
    with tempfile.TemporaryDirectory() as run_dir:
        history = fit(model, x_train, x_valid, tcfg, run_dir, RunConfig(cfg, tcfg))
    # epoch_seconds covers training, validation and the best model's checkpoint; the last-state
    # checkpoint written after it takes ~20 ms for this model (1% of an epoch).
    epoch_ips = [len(x_train) / r["epoch_seconds"] for r in history]
    model.cpu()
    enc = lambda x: model.inference.encoder(x)  # noqa: E731
    return {"epoch_ips": epoch_ips, "test_neg_elbo": _test_neg_elbo(enc, model.decoder, x_test)}


def run_examples(args) -> dict:
    """A loop written like pytorch/examples vae/main.py (DataLoader, per-batch .item())."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    x_train, _, x_test = _data(args.data)
    torch.manual_seed(0)

    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
            self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

        def encode(self, x):
            h = F.relu(self.fc1(x))
            return self.fc21(h), self.fc22(h)

        def decode(self, z):
            return self.fc4(F.relu(self.fc3(z)))

        def forward(self, x):
            mu, logvar = self.encode(x)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            return torch.sigmoid(self.decode(z)), mu, logvar

    model = VAE().to(args.device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(torch.as_tensor(x_train)), batch_size=128, shuffle=True)
    epoch_ips = []
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        train_loss = 0.0
        for (x,) in loader:
            x = x.to(args.device)
            opt.zero_grad()
            recon, mu, logvar = model(x)
            bce = F.binary_cross_entropy(recon, x, reduction="sum")
            kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss = bce + kld
            loss.backward()
            train_loss += loss.item()
            opt.step()
        epoch_ips.append(len(x_train) / (time.perf_counter() - t0))
    model.cpu()
    return {"epoch_ips": epoch_ips, "test_neg_elbo": _test_neg_elbo(model.encode, model.decode, x_test)}


def run_pythae(args) -> dict:
    import torch
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    x_train, x_valid, x_test = _data(args.data)
    torch.manual_seed(0)
    enc_net, dec_net = _nets()

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = enc_net

        def forward(self, x):
            mu, logvar = self.net(x.reshape(x.shape[0], -1)).chunk(2, -1)
            return ModelOutput(embedding=mu, log_covariance=logvar)

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = dec_net

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)))

    model = VAE(VAEConfig(input_dim=(784,), latent_dim=20, reconstruction_loss="bce"), encoder=Encoder(), decoder=Decoder())

    class EpochClock(TrainingCallback):
        """Seconds of each epoch: its training steps, its evaluation and its best-model copy."""

        def __init__(self):
            self.seconds, self.t0 = [], None

        def on_epoch_begin(self, training_config, **kwargs):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, training_config, **kwargs):
            self.seconds.append(time.perf_counter() - self.t0)

    clock = EpochClock()
    with tempfile.TemporaryDirectory() as out:
        cfg = BaseTrainerConfig(
            output_dir=out, num_epochs=args.epochs, learning_rate=1e-3, per_device_train_batch_size=128,
            per_device_eval_batch_size=1000, optimizer_cls="Adam", no_cuda=args.device == "cpu", steps_saving=None,
        )
        TrainingPipeline(training_config=cfg, model=model)(train_data=x_train, eval_data=x_valid, callbacks=[clock])
    epoch_ips = [len(x_train) / seconds for seconds in clock.seconds]
    enc_net.cpu(), dec_net.cpu()
    enc = lambda x: enc_net(x).chunk(2, -1)  # noqa: E731
    return {"epoch_ips": epoch_ips, "test_neg_elbo": _test_neg_elbo(enc, dec_net, x_test)}


def run_pyro(args) -> dict:
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.infer import SVI, Trace_ELBO
    from pyro.optim import Adam
    from torch.utils.data import DataLoader, TensorDataset

    x_train, _, x_test = _data(args.data)
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    enc_net, dec_net = (net.to(args.device) for net in _nets())

    def model(x):
        pyro.module("decoder", dec_net)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 20), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=dec_net(z), validate_args=False).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", enc_net)
        with pyro.plate("data", x.shape[0]):
            mu, logvar = enc_net(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(mu, torch.exp(0.5 * logvar)).to_event(1))

    svi = SVI(model, guide, Adam({"lr": 1e-3}), loss=Trace_ELBO())
    loader = DataLoader(TensorDataset(torch.as_tensor(x_train)), batch_size=128, shuffle=True)
    epoch_ips = []
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        for (x,) in loader:
            svi.step(x.to(args.device))
        epoch_ips.append(len(x_train) / (time.perf_counter() - t0))
    enc_net.cpu(), dec_net.cpu()
    enc = lambda x: enc_net(x).chunk(2, -1)  # noqa: E731
    return {"epoch_ips": epoch_ips, "test_neg_elbo": _test_neg_elbo(enc, dec_net, x_test)}


def matmul_peak(seconds: float = 3.0, dtype=None, device: str = "cpu") -> float:
    """Best GFLOP/s of square torch.mm over a few sizes (float32 unless ``dtype`` says)."""
    import torch

    best = 0.0
    sizes = (1024, 2048, 3072) if device == "cpu" else (4096, 8192)
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        warm = time.perf_counter() - t0
        if warm > seconds / len(sizes):
            # One product over the budget (emulated bfloat16: minutes at 3072): the warm-up's
            # rate stands for this size, and larger ones are not tried.
            return max(best, 2 * n**3 / warm / 1e9)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / len(sizes):
            for _ in range(1 if device == "cpu" else 10):
                torch.mm(a, b)
                reps += 1
            _sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


# -- driver ---------------------------------------------------------------------------------------


def _elbo_text(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def child(args) -> None:
    runners = {
        "products": run_products,
        "vaekit": run_vaekit,
        "vaekit-compile": lambda a: run_vaekit(a, compile=True),
        "vaekit-bf16": lambda a: run_vaekit(a, amp="bf16"),
        "examples": run_examples,
        "pythae": run_pythae,
        "pyro": run_pyro,
    }
    result = runners[args.child](args)
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=description(__doc__))
    ap.add_argument("--epochs", type=positive_int, default=3, help="epochs each contestant trains per round (default 3)")
    ap.add_argument("--repeats", type=positive_int, default=3, help="rounds, every contestant once in each (default 3)")
    ap.add_argument("--contestants", nargs="+", choices=CONTESTANTS,
                    help="default: all, less vaekit-bf16 on a CPU without bfloat16 instructions")
    ap.add_argument("--data", type=existing_file, help="binarized_mnist.npz, arrays train, valid and test (default: ../shared/data/binarized_mnist "
                    "beside the repository where it exists, else found as vaekit finds it: $VAEKIT_DATA, then the cache)")
    ap.add_argument("--device", type=device, default="cpu", help="cpu, cuda or cuda:N: where every contestant trains")
    ap.add_argument("--child", choices=CONTESTANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.data is None:
        args.data = mnist_file(None)
    _check_data(args.data)
    if args.contestants is None:
        args.contestants = list(CONTESTANTS)
        if args.device == "cpu" and not {"avx512_bf16", "amx_bf16"} & cpu_flags():
            args.contestants.remove("vaekit-bf16")
            print("vaekit-bf16 left out: this CPU has no bfloat16 instructions, its products would be emulated "
                  "(--contestants ... vaekit-bf16 runs it anyway)", flush=True)

    import statistics

    import torch

    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)
    # Round robin (every contestant once, then again): the machine's speed drifts over minutes,
    # and interleaving spreads that drift evenly instead of over whoever happens to run last.
    # The matmul peaks are measured at the start of every round for the same reason.
    runs: dict[str, list[dict]] = {name: [] for name in args.contestants}
    failed: set[str] = set()
    peaks: list[float] = []
    peaks_bf16: list[float] = []
    for rep in range(args.repeats):
        peaks.append(matmul_peak(device=args.device))
        print(f"round {rep + 1}: fp32 matmul peak {peaks[-1]:.1f} GFLOP/s", end="", flush=True)
        if "vaekit-bf16" in args.contestants:
            peaks_bf16.append(matmul_peak(dtype=torch.bfloat16, device=args.device))
            print(f", bf16 {peaks_bf16[-1]:.1f} GFLOP/s", end="")
        print(flush=True)
        for name in args.contestants:
            if name in failed:
                continue
            cmd = [sys.executable, __file__, "--child", name, "--epochs", str(args.epochs), "--data", str(args.data), "--device", args.device]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                print(f"{name}: failed ({tail})", flush=True)
                failed.add(name)
                continue
            r = json.loads(line[7:])
            runs[name].append(r)
            print(f"{name} run {rep + 1}: {statistics.median(r['epoch_ips']):8.0f} img/s  test -ELBO {_elbo_text(r['test_neg_elbo'])}", flush=True)
    peak = statistics.median(peaks)
    peak_bf16 = statistics.median(peaks_bf16) if peaks_bf16 else None
    results: dict[str, dict] = {}
    for name, rs in runs.items():
        if rs:
            ips = sorted(statistics.median(r["epoch_ips"]) for r in rs)
            # Each contestant against the peak of the precision its products run in.
            own_peak = peak_bf16 if name == "vaekit-bf16" else peak
            results[name] = {
                "images_per_second": {"min": ips[0], "median": statistics.median(ips), "max": ips[-1]},
                "test_neg_elbo": None if rs[0]["test_neg_elbo"] is None else statistics.median(r["test_neg_elbo"] for r in rs),
                "peak_fraction": statistics.median(ips) * FLOP_PER_IMAGE / (own_peak * 1e9),
            }
    print()
    print(f"matmul peak (median of {len(peaks)} rounds): fp32 {peak:.1f} GFLOP/s" + (f", bf16 {peak_bf16:.1f} GFLOP/s" if peak_bf16 else ""))
    # "products x" bounds what any float32 loop could reach against each contestant.
    bases = [b for b in ("vaekit", "vaekit-bf16", "products") if b in results]
    print(f"{'contestant':14s} {'min':>8s} {'median':>8s} {'max':>8s} {'peak %':>7s} {'test -ELBO':>10s}" + "".join(f" {b + ' x':>13s}" for b in bases))
    for name, r in results.items():
        ips = r["images_per_second"]
        cols = ""
        for b in bases:
            ratio = results[b]["images_per_second"]["median"] / ips["median"]
            r[f"{b}_ratio"] = ratio
            cols += f" {ratio:13.2f}"
        print(f"{name:14s} {ips['min']:8.0f} {ips['median']:8.0f} {ips['max']:8.0f} {100 * r['peak_fraction']:6.1f}% {_elbo_text(r['test_neg_elbo']):>10s}{cols}")
    print("(peak %: of the fp32 peak, and of the bf16 peak for vaekit-bf16)")
    print(json.dumps({
        "bench": "compare", "epochs": args.epochs, "repeats": args.repeats, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "matmul_peak_gflops": peak, "matmul_peaks_gflops": peaks,
        "bf16_matmul_peak_gflops": peak_bf16, "flop_per_image": FLOP_PER_IMAGE, "results": results,
    }))  # fmt: skip
    # A peer that is not installed is skipped; a contestant of this project's own that fails is a
    # failed benchmark.
    own = sorted(failed - set(PEERS))
    if own or not results:
        sys.exit(f"compare.py: {', '.join(own) if own else 'every contestant'} failed")


if __name__ == "__main__":
    run(main, "compare.py")
