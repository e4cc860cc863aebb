"""The VampPrior model (Tomczak & Welling 2018) in vaekit and in Pythae, with the same networks
and the same weights: the test log-likelihood estimate with K importance samples and the
training step, timed side by side in interleaved rounds, and both estimates compared.

The model is the literature's one-layer VampPrior (gated MLP 300-300, z of 40, 500 pseudo-inputs):
a trained run (``--run``, e.g. ~/vaekit-runs/literature/vampprior), or a freshly initialised one
(speed does not depend on training). Pythae's VAMP is given vaekit's own encoder and decoder as
its networks and vaekit's pseudo-inputs as its pseudo-input layer, so that both libraries compute
the same p(x, z) and q(z|x) and differ only in how they evaluate them.

    pip install pythae
    python bench/vampprior.py [--run DIR] [--rows 20] [--k 5000] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_data_dir, description, first_rows, mnist_dataset, positive_int, run  # noqa: E402


def vaekit_model(run: Path | None, x_train: np.ndarray):
    from vaekit.checkpoint import load_run
    from vaekit.config import ModelConfig
    from vaekit.model import VAEModel

    if run is not None:
        return load_run(run)[1]
    torch.manual_seed(0)
    config = ModelConfig(input_dim=784, latent_dim=40, hidden=(300, 300), net="gated", likelihood="bernoulli",
                         prior="vampprior", pseudo_inputs=500)  # fmt: skip
    model = VAEModel(config)
    model.prior.init_from_data(x_train, np.random.default_rng(0))
    return model


def pythae_twin(model):
    """Pythae's VAMP whose encoder, decoder and pseudo-inputs are the vaekit model's."""
    lo, hi = model.prior.data_range.tolist()
    if (lo, hi) != (0.0, 1.0):
        sys.exit(f"vampprior.py: Pythae clamps pseudo-inputs to [0, 1]; this run's data range is [{lo}, {hi}]")
    if model.prior.map != "clamp":  # Pythae's twin would read sigmoid's logits as pixels
        sys.exit(f"vampprior.py: Pythae maps pseudo-inputs by hardtanh (--pseudo-map clamp); this run has --pseudo-map {model.prior.map}")
    from pythae.models import VAMP, VAMPConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            q = self.model.posterior(x.reshape(x.shape[0], -1))
            return ModelOutput(embedding=q.mu, log_covariance=q.logvar)

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.model.decode(z).logits))

    config = VAMPConfig(input_dim=(784,), latent_dim=model.latent_size, number_components=model.config.pseudo_inputs,
                        reconstruction_loss="bce", linear_scheduling_steps=0)  # fmt: skip
    twin = VAMP(config, encoder=Encoder(), decoder=Decoder())
    with torch.no_grad():
        twin.pseudo_inputs[0].weight.copy_(model.prior.pseudo_inputs.T)
        twin.pseudo_inputs[0].bias.zero_()
    return twin.eval()


def vaekit_log_px(model, x: np.ndarray, k: int, seed: int = 0) -> float:
    from vaekit.evaluate import log_px_per_point

    return float(log_px_per_point(model, x, k=k, seed=seed).mean())


def seed_spread(model, x: np.ndarray, k: int, seeds: int, seed0: float) -> tuple[list[float], float | None]:
    """vaekit's mean log p(x) under seeds 0..seeds−1 (``seed0``: seed 0's, already computed) and
    their standard deviation (None for one seed). Two honest estimates agree when they differ by
    about this Monte Carlo spread."""
    by_seed = [seed0] + [vaekit_log_px(model, x, k, seed) for seed in range(1, seeds)]
    return by_seed, statistics.stdev(by_seed) if len(by_seed) > 1 else None


def pythae_log_px(twin, x: np.ndarray, k: int) -> float:
    # Its get_nll prints a running mean and returns the mean log p(x) itself (not negated).
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        return float(twin.get_nll(torch.as_tensor(x), n_samples=k, batch_size=100))


def steppers(model, twin, x: torch.Tensor):
    """One training step each (batch of ``x``, Adam 5e-4, β = 1), sharing nothing but the data."""
    import copy

    from step import fit_step

    from vaekit.config import TrainConfig

    vaekit_step = fit_step(copy.deepcopy(model).train(), TrainConfig(lr=5e-4), x)
    theirs = copy.deepcopy(twin).train()
    their_opt = torch.optim.Adam(theirs.parameters(), lr=5e-4)

    def pythae_step() -> None:
        loss = theirs({"data": x}, epoch=1).loss
        their_opt.zero_grad(set_to_none=True)
        loss.backward()
        their_opt.step()

    return {"vaekit": vaekit_step, "pythae": pythae_step}


def timed(fn, repeat: int = 1) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=description(__doc__))
    ap.add_argument("--run", type=Path, help="a trained vaekit VampPrior run directory (default: a fresh model)")
    ap.add_argument("--rows", type=positive_int, default=20, help="test images for the log-likelihood estimate")
    ap.add_argument("--k", type=positive_int, default=5000, help="importance samples per image")
    ap.add_argument("--rounds", type=positive_int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--steps", type=positive_int, default=20, help="training steps timed per round")
    ap.add_argument("--threads", type=positive_int, default=1, help="CPU threads (default 1)")
    ap.add_argument("--seeds", type=positive_int, default=6,
                    help="seeds of vaekit's estimate, whose spread says how far apart two honest estimates may lie (default 6)")
    add_data_dir(ap)
    args = ap.parse_args()
    import pythae  # noqa: F401  (the peer: a missing one is one line, before anything runs)

    torch.set_num_threads(args.threads)
    data = mnist_dataset(args.data_dir)
    x_test = np.asarray(first_rows(data.test, args.rows, "vampprior.py"), dtype=np.float32)
    model = vaekit_model(args.run, np.asarray(data.train[:5000], dtype=np.float32))
    if model.config.prior != "vampprior" or len(model.latents) != 1:
        sys.exit("vampprior.py: --run must be a one-layer VampPrior run")
    model.eval()
    twin = pythae_twin(model)
    batch = torch.as_tensor(np.asarray(data.train[:100], dtype=np.float32))
    steps = steppers(model, twin, batch)

    evals = {"vaekit": [], "pythae": []}
    step_ms = {"vaekit": [], "pythae": []}
    estimates = {}
    for r in range(args.rounds):
        for name, fn in (("vaekit", vaekit_log_px), ("pythae", pythae_log_px)):
            subject = model if name == "vaekit" else twin
            t0 = time.perf_counter()
            estimates[name] = fn(subject, x_test, args.k)
            evals[name].append(time.perf_counter() - t0)
        for name, step in steps.items():
            step()  # warm
            step_ms[name].append(1e3 * timed(step, args.steps))
        print(f"round {r + 1}: log p(x) {evals['vaekit'][-1]:.1f} s vs {evals['pythae'][-1]:.1f} s; "
              f"step {step_ms['vaekit'][-1]:.1f} ms vs {step_ms['pythae'][-1]:.1f} ms", flush=True)  # fmt: skip

    med = {name: statistics.median(v) for name, v in evals.items()}
    med_step = {name: statistics.median(v) for name, v in step_ms.items()}
    print(f"\n{'':8} {'log p(x), ' + str(args.rows) + ' images, K=' + str(args.k):>34} {'training step':>15}")
    for name in ("vaekit", "pythae"):
        print(f"{name:8} {med[name]:10.2f} s  (mean log p(x) {estimates[name]:9.3f}) {med_step[name]:12.1f} ms")
    print(f"pythae / vaekit time: log p(x) {med['pythae'] / med['vaekit']:.1f}x, training step {med_step['pythae'] / med_step['vaekit']:.2f}x")
    by_seed, spread = seed_spread(model, x_test, args.k, args.seeds, estimates["vaekit"])
    sd = "no standard deviation" if spread is None else f"standard deviation {spread:.3f} nats"
    print(f"vaekit's mean log p(x) over {args.seeds} seed(s): {statistics.mean(by_seed):.3f}, {sd}; "
          f"pythae - vaekit (seed 0): {estimates['pythae'] - estimates['vaekit']:+.3f} nats")
    print(json.dumps({
        "bench": "vampprior", "run": str(args.run) if args.run else None, "rows": args.rows, "k": args.k,
        "threads": args.threads, "rounds": args.rounds, "torch": torch.__version__,
        "log_px_seconds": med, "step_ms": med_step, "log_px": estimates,
        "log_px_ratio": med["pythae"] / med["vaekit"], "step_ratio": med_step["pythae"] / med_step["vaekit"],
        "vaekit_log_px_by_seed": by_seed, "vaekit_log_px_sd": spread,
    }))  # fmt: skip


if __name__ == "__main__":
    run(main, "vampprior.py")
