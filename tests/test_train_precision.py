"""vaekit.train's speed settings: bfloat16 autocast, float32 matmul precision, torch.compile.

Each setting is checked where it acts (a forward hook records the dtype and the matmul
precision that a layer sees inside the training step) and by what it must not change: the
weights, the optimizer state and every log-density stay float32, evaluation runs at full
precision, and the trained model is as good as the float32 one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train_helpers import digits_split, small_model
from vaekit.config import ModelConfig, TrainConfig
from vaekit.errors import ConfigError, TrainingError
from vaekit.model import VAEModel
from vaekit.nets import MLP
from vaekit.train import _matmul_precision, fit


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return digits_split()


class Recorder:
    """Forward hook on the decoder's first layer: (training?, output dtype, matmul precision)."""

    def __init__(self, model: VAEModel):
        self.seen: list[tuple[bool, torch.dtype, str]] = []
        model.decoder[0].register_forward_hook(self)

    def __call__(self, module, inputs, output) -> None:
        self.seen.append((module.training, output.dtype, torch.get_float32_matmul_precision()))

    def during(self, training: bool) -> set:
        return {(dtype, precision) for t, dtype, precision in self.seen if t == training}


def test_mlp_computes_in_bfloat16_under_autocast_and_returns_the_input_dtype():
    torch.manual_seed(0)
    net = MLP(64, (128,), 32)
    x = torch.randn(16, 64)
    reference = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = net(x)
    assert mixed.dtype == torch.float32
    # The same products with bfloat16 operands: the autocast result is their value, not float32's.
    w1, b1, w2, b2 = (p.detach() for p in net.parameters())
    linear = torch.nn.functional.linear
    h = torch.relu(linear(x.bfloat16(), w1.bfloat16(), b1.bfloat16()))
    by_hand = linear(h, w2.bfloat16(), b2.bfloat16()).float()
    torch.testing.assert_close(mixed, by_hand, rtol=0, atol=0)
    err = (mixed - reference).abs().max().item()
    assert 1e-4 < err < 5e-2 * reference.abs().max().item()


def test_bf16_amp_trains_in_bfloat16_and_evaluates_in_float32(digits):
    x_train, x_valid = digits
    model = small_model()
    rec = Recorder(model)
    history = fit(model, x_train, x_valid, TrainConfig(epochs=3, batch_size=64, lr=3e-3, amp="bf16"))
    assert rec.during(training=True) == {(torch.bfloat16, "highest")}
    assert rec.during(training=False) == {(torch.float32, "highest")}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["valid_elbo"] > history[0]["valid_elbo"]


def test_bf16_amp_reaches_the_float32_elbo(digits):
    """Same seed, same data: the bfloat16 run follows its own path (its losses differ) but ends
    within a small fraction of a nat per image of the float32 run."""
    x_train, x_valid = digits
    runs = {}
    for amp in ("off", "bf16"):
        runs[amp] = fit(small_model(), x_train, x_valid, TrainConfig(epochs=5, batch_size=64, lr=3e-3, amp=amp))
    full, mixed = runs["off"], runs["bf16"]
    assert [r["train_loss"] for r in full] != [r["train_loss"] for r in mixed]
    gain = full[-1]["valid_elbo"] - full[0]["valid_elbo"]
    assert gain > 5
    assert abs(full[-1]["valid_elbo"] - mixed[-1]["valid_elbo"]) < 0.05 * gain


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_a_callers_autocast_region_changes_no_bit_of_a_fit(digits, amp):
    """fit sets its own precision: inside a caller's bfloat16 autocast region it gives the bits
    it gives outside (float32 steps stay float32; bf16 steps recast the weights each step, not
    the first step's copies that the caller's region would keep alive)."""
    x_train, x_valid = digits
    config = TrainConfig(epochs=3, batch_size=64, lr=3e-3, amp=amp)
    torch.manual_seed(0)
    ref_model = small_model()
    ref = fit(ref_model, x_train, x_valid, config)
    torch.manual_seed(0)
    model = small_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fit(model, x_train, x_valid, config)
    assert [r["train_loss"] for r in got] == [r["train_loss"] for r in ref]
    for a, b in zip(ref_model.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("precision", ["high", "medium"])
def test_matmul_precision_holds_in_the_step_only(digits, precision):
    x_train, x_valid = digits
    model = small_model()
    rec = Recorder(model)
    before = torch.get_float32_matmul_precision()
    fit(model, x_train[:256], x_valid, TrainConfig(epochs=1, batch_size=64, matmul_precision=precision))
    assert rec.during(training=True) == {(torch.float32, precision)}
    assert rec.during(training=False) == {(torch.float32, before)}
    assert torch.get_float32_matmul_precision() == before


def test_matmul_precision_is_restored_when_training_fails(digits):
    x_train, x_valid = digits
    model = small_model()
    before = torch.get_float32_matmul_precision()
    with torch.no_grad():
        model.decoder[-1].bias.fill_(float("nan"))  # the first loss is NaN
    with pytest.raises(TrainingError):
        fit(model, x_train[:256], x_valid, TrainConfig(epochs=1, batch_size=64, matmul_precision="medium"))
    assert torch.get_float32_matmul_precision() == before


def test_matmul_precision_context_restores_after_an_exception():
    before = torch.get_float32_matmul_precision()
    with pytest.raises(KeyError):
        with _matmul_precision("medium"):
            assert torch.get_float32_matmul_precision() == "medium"
            raise KeyError("x")
    assert torch.get_float32_matmul_precision() == before


def test_bf16_amp_with_a_gaussian_likelihood_and_per_point_tables(digits):
    """The learned variance and the per-point tables (SparseAdam) stay float32 under autocast."""
    x_train, x_valid = digits
    torch.manual_seed(0)
    model = VAEModel(
        ModelConfig(input_dim=64, latent_dim=4, hidden=(32,), likelihood="gaussian", inference="vi", n_points=len(x_train))
    )
    history = fit(model, x_train, x_valid, TrainConfig(epochs=2, batch_size=64, lr=3e-3, amp="bf16"))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert np.isfinite([r["train_loss"] for r in history]).all()
    assert history[-1]["train_loss"] < history[0]["train_loss"]


@pytest.mark.parametrize(
    "settings, culprits",
    [
        (dict(amp="fp16"), ["amp", "'fp16'", "bf16"]),
        (dict(amp="bf16", dtype="float64"), ["bf16", "float64"]),
        (dict(matmul_precision="low"), ["matmul_precision", "'low'"]),
        (dict(compile_mode="fast"), ["compile_mode", "'fast'"]),
    ],
)
def test_bad_settings_are_refused(settings, culprits):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**settings)
    for c in culprits:
        assert c in str(e.value)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_step_trains_like_the_eager_step(digits, mode):
    """torch.compile reorders floating-point work, so the runs agree closely, not bit for bit;
    "reduce-overhead" (CUDA graphs on a GPU) falls back to the default on the CPU."""
    x_train, x_valid = digits
    eager = fit(small_model(), x_train[:512], x_valid, TrainConfig(epochs=2, batch_size=64, lr=3e-3))
    compiled = fit(
        small_model(), x_train[:512], x_valid, TrainConfig(epochs=2, batch_size=64, lr=3e-3, compile=True, compile_mode=mode)
    )
    for e, c in zip(eager, compiled):
        assert c["train_loss"] == pytest.approx(e["train_loss"], rel=1e-4)
        assert c["valid_elbo"] == pytest.approx(e["valid_elbo"], rel=1e-4)


def test_compiled_importance_weighted_step_trains_like_the_eager_step(digits):
    """On binary data and K samples per row the eager Bernoulli likelihood takes its own
    autograd Function, which compiled code replaces by the general expression for the compiler to
    fuse: the two runs of the IWAE bound (under bf16 autocast, as the iwae row trains) agree
    closely."""
    x_train, x_valid = (np.asarray(x > 0.5, np.float32) for x in digits)
    settings = dict(epochs=2, batch_size=64, lr=3e-3, objective="iwae", k=5, amp="bf16")
    eager = fit(small_model(likelihood="bernoulli"), x_train[:512], x_valid, TrainConfig(**settings))
    compiled = fit(small_model(likelihood="bernoulli"), x_train[:512], x_valid, TrainConfig(**settings, compile=True))
    for e, c in zip(eager, compiled):
        assert c["train_loss"] == pytest.approx(e["train_loss"], rel=2e-3)
        assert c["valid_score"] == pytest.approx(e["valid_score"], rel=2e-3)
