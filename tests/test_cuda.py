"""The GPU paths of vaekit.train and vaekit.evaluate: data resident on the device, bfloat16
autocast, TF32, and CUDA graphs through torch.compile's "reduce-overhead" mode.

These run wherever CUDA is available and are skipped elsewhere (CI has no GPU). The CPU
results are the reference: a GPU run of the same model and seed must land close to them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train_helpers import digits_split, small_model
from vaekit import checkpoint as ckpt
from vaekit.config import RunConfig, TrainConfig
from vaekit.evaluate import elbo_per_point, log_px_per_point
from vaekit.model import VAEModel
from vaekit.train import fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return digits_split()


class Recorder:
    """Forward hook on the decoder's first layer: (device, output dtype, TF32 allowed) in training."""

    def __init__(self, model: VAEModel):
        self.seen: set[tuple[str, torch.dtype, bool]] = set()
        model.decoder[0].register_forward_hook(self)

    def __call__(self, module, inputs, output) -> None:
        if module.training:
            self.seen.add((inputs[0].device.type, output.dtype, torch.backends.cuda.matmul.allow_tf32))


def test_cuda_training_keeps_everything_on_the_gpu_and_matches_the_cpu(digits):
    x_train, x_valid = digits
    cpu = fit(small_model(), x_train, x_valid, TrainConfig(epochs=3, batch_size=64, lr=3e-3))
    model = small_model()
    rec = Recorder(model)
    gpu = fit(model, x_train, x_valid, TrainConfig(epochs=3, batch_size=64, lr=3e-3, device="cuda"))
    assert rec.seen == {("cuda", torch.float32, False)}
    assert all(p.device.type == "cuda" for p in model.parameters())
    # Different kernels and random streams: the same quality, not the same numbers.
    assert gpu[-1]["valid_elbo"] == pytest.approx(cpu[-1]["valid_elbo"], abs=2.0)
    assert gpu[-1]["valid_elbo"] > gpu[0]["valid_elbo"]


def test_cuda_bf16_amp_and_tf32(digits):
    x_train, x_valid = digits
    model = small_model()
    rec = Recorder(model)
    before = torch.backends.cuda.matmul.allow_tf32
    history = fit(model, x_train, x_valid, TrainConfig(epochs=3, batch_size=64, lr=3e-3, device="cuda", amp="bf16", matmul_precision="high"))
    assert rec.seen == {("cuda", torch.bfloat16, True)}
    assert torch.backends.cuda.matmul.allow_tf32 == before
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert history[-1]["valid_elbo"] > history[0]["valid_elbo"]


def test_cuda_graphs_through_compile_reduce_overhead(digits):
    x_train, x_valid = digits
    eager = fit(small_model(), x_train, x_valid, TrainConfig(epochs=2, batch_size=64, lr=3e-3, device="cuda"))
    graphed = fit(
        small_model(), x_train, x_valid,
        TrainConfig(epochs=2, batch_size=64, lr=3e-3, device="cuda", compile=True, compile_mode="reduce-overhead"),
    )  # fmt: skip
    assert np.isfinite([r["train_loss"] for r in graphed]).all()
    assert graphed[-1]["valid_elbo"] == pytest.approx(eager[-1]["valid_elbo"], abs=0.5)


def test_cuda_evaluation_matches_the_cpu(digits):
    _, x_valid = digits
    model = small_model()
    cpu_elbo = elbo_per_point(model, x_valid, n_samples=100)["elbo"]
    cpu_ll = log_px_per_point(model, x_valid, k=500)
    model.cuda()
    gpu_elbo = elbo_per_point(model, x_valid, n_samples=100)["elbo"]
    gpu_ll = log_px_per_point(model, x_valid, k=500)
    # Independent noise on each device: Monte Carlo error only.
    assert abs(gpu_elbo.mean() - cpu_elbo.mean()) < 0.5
    assert abs(gpu_ll.mean() - cpu_ll.mean()) < 0.2


def test_a_cuda_run_loads_on_the_cpu(digits, tmp_path):
    x_train, x_valid = digits
    model = small_model()
    config = TrainConfig(epochs=1, batch_size=64, device="cuda")
    fit(model, x_train, x_valid, config, tmp_path, RunConfig(model.config, config))
    _, loaded = ckpt.load_run(tmp_path)
    assert next(loaded.parameters()).device.type == "cpu"
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value.cpu(), rtol=0, atol=0)


def test_the_closed_form_of_a_cuda_model_reads_its_rows_and_q_from_the_gpu():
    """vaekit.exact holds its arrays on the CPU: rows and q(z|x) of a model on the GPU (what
    `vaekit gaps` passes it) give the numbers of the same model on the CPU."""
    from vaekit.config import ModelConfig
    from vaekit.exact import LinearGaussian

    torch.manual_seed(0)
    model = VAEModel(ModelConfig(input_dim=6, latent_dim=3, hidden=(), likelihood="gaussian", variance="feature")).double()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        exact, q = LinearGaussian.of(model), model.posterior(x)
        ref = (exact.log_px(x), exact.elbo(q, x), exact.gap(q, x))
        model.cuda()
        xc = x.cuda()
        exact, q = LinearGaussian.of(model), model.posterior(xc)
        got = (exact.log_px(xc), exact.elbo(q, xc), exact.gap(q, xc))
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)
