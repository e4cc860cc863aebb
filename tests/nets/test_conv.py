"""vaekit.nets.conv: the convolutional encoder and decoder on image rows of any shape and
leading dims, every output pixel a function of z, training on digits, save/load and the CLI."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

import vaekit
from vaekit.config import ModelConfig, TrainConfig
from vaekit.errors import ConfigError
from vaekit.evaluate import elbo_per_point
from vaekit.model import VAEModel
from vaekit.nets.conv import ConvDecoder, ConvEncoder
from vaekit.registry import NETS
from vaekit.train import fit
from cli_helpers import cli
import torch.nn.functional as F

F64 = torch.float64
# Image shapes: digits, MNIST, odd sides (rounded up on the way down, cropped on the way up),
# colour (C, H, W).
SHAPES = [(8, 8), (28, 28), (7, 5), (3, 8, 8)]
# The encoder's last feature map for channels (32, 64): each side ceil-halved twice, worked out
# by hand (8→4→2, 28→14→7, 7→4→2 and 5→3→2).
LAST_MAP = {(8, 8): (2, 2), (28, 28): (7, 7), (7, 5): (2, 2), (3, 8, 8): (2, 2)}


def conv_config(shape, **kw) -> ModelConfig:
    kw = {"latent_dim": 3, "hidden": (16,), "net": "conv", **kw}
    return ModelConfig(input_dim=math.prod(shape), image_shape=shape, **kw)




def digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return (load_digits().data / 16.0).astype(np.float32)


# -- shapes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("lead", [(5,), (2, 5)], ids=["n", "S,n"])
def test_shapes_on_leading_dims(shape, lead):
    torch.manual_seed(0)
    config = conv_config(shape)
    encoder = NETS.get("conv").encoder(config, 6).to(F64)
    decoder = NETS.get("conv").decoder(config, 3).to(F64)
    d = math.prod(shape)
    x = torch.rand(*lead, d, dtype=F64)
    z = torch.randn(*lead, 3, dtype=F64)
    assert encoder(x).shape == (*lead, 6)
    assert decoder(z).shape == (*lead, d)
    # Leading dims are only a batch: the same as row by row. 1e-12 is float64 rounding.
    rows = torch.stack([encoder(r) for r in x.reshape(-1, d)]).reshape(*lead, 6)
    torch.testing.assert_close(encoder(x), rows, rtol=1e-12, atol=1e-12)
    rows = torch.stack([decoder(r) for r in z.reshape(-1, 3)]).reshape(*lead, d)
    torch.testing.assert_close(decoder(z), rows, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_layout_follows_channels_and_image(shape):
    config = conv_config(shape)
    encoder, decoder = NETS.get("conv").encoder(config, 6), NETS.get("conv").decoder(config, 3)
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    c = shape[0] if len(shape) == 3 else 1
    assert [(m.in_channels, m.out_channels, m.stride) for m in convs] == [(c, 32, (2, 2)), (32, 64, (2, 2))]
    h, w = LAST_MAP[shape]
    linears = [m for m in encoder.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64 * h * w, 16), (16, 6)]
    # The decoder mirrors it: MLP to the 64-channel map, transposed convs 64→32→32, 3x3 to C.
    linears = [m for m in decoder.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 16), (16, 64 * h * w)]
    ups = [m for m in decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels) for m in ups] == [(64, 32), (32, 32)]
    last = [m for m in decoder.modules() if isinstance(m, nn.Conv2d) and not isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels) for m in last] == [(32, c)]


@pytest.mark.parametrize("channels", [(), (8,), (4, 4, 4, 4)], ids=str)
def test_any_depth_even_beyond_a_one_pixel_map(channels):
    # Four halvings of 7x5 reach 1x1 after three; the map stays 1x1 and nothing is empty.
    config = conv_config((7, 5), channels=channels)
    x, z = torch.rand(4, 35), torch.randn(4, 3)
    assert NETS.get("conv").encoder(config, 6)(x).shape == (4, 6)
    assert NETS.get("conv").decoder(config, 3)(z).shape == (4, 35)


def test_empty_batch_and_single_row():
    config = conv_config((8, 8))
    encoder, decoder = NETS.get("conv").encoder(config, 6), NETS.get("conv").decoder(config, 3)
    assert encoder(torch.rand(0, 64)).shape == (0, 6) and decoder(torch.randn(0, 3)).shape == (0, 64)
    assert encoder(torch.rand(64)).shape == (6,) and decoder(torch.randn(3)).shape == (64,)


# -- what the decoder computes ------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 8), (7, 5), (3, 8, 8), (5, 7)], ids=str)
def test_every_output_pixel_depends_on_z(shape):
    """A pixel left out by the crop or padding would be constant (its gradient zero) or missing."""
    torch.manual_seed(0)
    decoder = ConvDecoder((3, 8, 8) if len(shape) == 3 else (1, *shape), (32, 64), (16,), 3).to(F64)
    z = torch.randn(16, 3, dtype=F64, requires_grad=True)
    x = decoder(z)  # (16, D)
    assert x.shape == (16, math.prod(shape))
    # Each pixel's gradient reaches z and the first layer's weights (a path through every
    # layer); one backward pass per pixel of the batch's sum, as rows do not interact.
    first = decoder.head[0][0].weight
    for d in range(x.shape[1]):
        g_z, g_first = torch.autograd.grad(x[:, d].sum(), (z, first), retain_graph=True)
        assert g_z.abs().sum() > 0, f"pixel {d} ignores z"
        assert g_first.abs().sum() > 0, f"pixel {d} does not reach the first layer"
    # No pixel is constant over z.
    assert (x.std(0) > 0).all()


def test_encoder_sees_every_pixel():
    torch.manual_seed(0)
    encoder = ConvEncoder((1, 7, 5), (32, 64), (16,), 6).to(F64)
    x = torch.rand(8, 35, dtype=F64)
    jac = torch.autograd.functional.jacobian(encoder, x)  # (8, 6, 8, 35)
    assert (jac.abs().sum(dim=(0, 1, 2)) > 0).all()


def test_image_layout_is_row_major_channels_first():
    """Pixel (c, i, j) of a row is column c·H·W + i·W + j, as numpy's reshape of (n, C, H, W)."""
    torch.manual_seed(0)
    encoder = ConvEncoder((3, 4, 6), (), (), 72)  # no conv: the head sees the flattened pixels
    head = encoder.head[0]
    with torch.no_grad():
        head.weight.copy_(torch.eye(72))
        head.bias.zero_()
    images = torch.rand(2, 3, 4, 6)
    torch.testing.assert_close(encoder(images.reshape(2, -1)), images.flatten(1))


def test_gradcheck_float64():
    torch.manual_seed(0)
    encoder = ConvEncoder((2, 5, 3), (3, 4), (5,), 4, "tanh").to(F64)
    decoder = ConvDecoder((2, 5, 3), (3, 4), (5,), 4, "tanh").to(F64)
    x = torch.rand(3, 30, dtype=F64, requires_grad=True)
    z = torch.randn(3, 4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(encoder, (x,))
    assert torch.autograd.gradcheck(decoder, (z,))


def test_output_dtype_follows_input_under_bf16_autocast():
    config = conv_config((8, 8))
    encoder, decoder = NETS.get("conv").encoder(config, 6), NETS.get("conv").decoder(config, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert encoder(torch.rand(4, 64)).dtype == torch.float32
        assert decoder(torch.randn(4, 3)).dtype == torch.float32
    assert encoder.to(F64)(torch.rand(4, 64, dtype=F64)).dtype == F64


# -- configuration ------------------------------------------------------------------------------


def test_registered_options_parsed_equal_imported():
    assert "conv" in NETS.names()
    assert NETS.options("conv") == NETS.get("conv").options
    assert NETS.options("conv")["channels"].default == (32, 64)


@pytest.mark.parametrize(
    "kw, role",
    [({"net": "conv"}, "net"), ({"encoder": "conv"}, "encoder"), ({"net": "mlp", "decoder": "conv"}, "decoder")],
)
def test_non_image_data_is_a_config_error(kw, role):
    with pytest.raises(ConfigError, match=rf"^{role} conv needs image-shaped data .*got rows of 10 features"):
        ModelConfig(input_dim=10, latent_dim=2, **kw)


def test_one_dimensional_image_shape_is_a_config_error():
    with pytest.raises(ConfigError, match=r"conv needs image_shape \(H, W\) or \(C, H, W\), got \(64,\)"):
        ModelConfig(input_dim=64, image_shape=(64,), net="conv")


def test_channels_apply_to_the_conv_encoder_alone():
    # --encoder conv selects conv though --net stays mlp: its channels are not foreign.
    config = ModelConfig(input_dim=64, image_shape=(8, 8), encoder="conv", decoder="mlp", channels=(8,))
    model = VAEModel(config)
    assert [m.out_channels for m in model.inference.encoder.modules() if isinstance(m, nn.Conv2d)] == [8]
    assert not any(isinstance(m, nn.Conv2d) for m in model.decoder.modules())
    with pytest.raises(ConfigError, match="channels applies to net conv only"):
        ModelConfig(input_dim=64, image_shape=(8, 8), channels=(8,))


# -- training, saving, the CLI ------------------------------------------------------------------


def test_training_on_digits_improves_validation_elbo():
    x = digits()
    perm = np.random.default_rng(0).permutation(len(x))
    x_train, x_valid = x[perm[:1280]], x[perm[-300:]]
    torch.manual_seed(0)
    model = VAEModel(conv_config((8, 8), latent_dim=4, hidden=(64,), channels=(16, 32), likelihood="continuous_bernoulli"))
    before = elbo_per_point(model, x_valid, seed=1)["elbo"].mean()
    history = fit(model, x_train, x_valid, TrainConfig(epochs=4, batch_size=64, lr=3e-3, seed=0))
    after = elbo_per_point(model, x_valid, seed=1)["elbo"].mean()
    elbos = [r["valid_elbo"] for r in history]
    # Untrained, the decoder's output is near 0 everywhere, the continuous Bernoulli's
    # density near 1 and the ELBO near 0 minus the KL. Over seeds 0-2 four epochs gain 94-98
    # nats on the untrained model and 53-60 from epoch 1 to 4; the margins are about half.
    assert elbos[-1] > elbos[0] + 25, elbos
    assert after > before + 50, (before, after)


def test_save_load_round_trip(tmp_path):
    x = digits()[:400]
    est = vaekit.VAE(net="conv", image_shape=(8, 8), channels=(8, 16), hidden=(32,), latent_dim=3, epochs=2, seed=0).fit(x)
    est.save(tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["net"] == "conv" and config["model"]["channels"] == [8, 16]
    loaded = vaekit.load(tmp_path / "run")
    assert loaded.channels == (8, 16)
    np.testing.assert_array_equal(loaded.transform(x), est.transform(x))
    for a, b in zip(loaded.model_.state_dict().values(), est.model_.state_dict().values()):
        assert torch.equal(a, b)


def test_estimator_on_colour_images():
    rng = np.random.default_rng(0)
    x = rng.random((60, 3 * 6 * 5)).astype(np.float32)
    est = vaekit.VAE(net="conv", image_shape=(3, 6, 5), channels=(4,), hidden=(8,), latent_dim=2, epochs=1).fit(x)
    assert est.transform(x).shape == (60, 2)
    assert est.sample(5).shape == (5, 90)


def test_cli_trains_conv_on_digits(tmp_path, capsys):
    code, out, err = cli(capsys, "train", "--data", "digits", "--net", "conv", "--channels", "8,16", "--hidden", "32", "--epochs", "2", "--eval-k", "5", "--out", tmp_path / "run")
    assert code == 0, err
    assert "test" in out and "log p(x)" in out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["net"] == "conv" and config["model"]["image_shape"] == [8, 8]
    assert (tmp_path / "run" / "samples.png").is_file()


def test_cli_conv_encoder_mlp_decoder(tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--data", "digits", "--encoder", "conv", "--decoder", "mlp", "--channels", "8", "--hidden", "32", "--epochs", "1", "--eval-k", "5", "--out", tmp_path / "run")
    assert code == 0, err
    model = vaekit.load(tmp_path / "run").model_
    assert any(isinstance(m, nn.Conv2d) for m in model.inference.encoder.modules())
    assert not any(isinstance(m, nn.Conv2d) for m in model.decoder.modules())


def test_cli_conv_on_non_image_data_is_one_line(tmp_path, capsys):
    path = tmp_path / "table.npy"
    np.save(path, np.random.default_rng(0).random((50, 10)).astype(np.float32))
    code, out, err = cli(capsys, "train", "--data", path, "--net", "conv", "--epochs", "1", "--out", tmp_path / "run")
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("vaekit: error: --net conv needs image-shaped data") and "10 features" in lines[0]
    assert not (tmp_path / "run").exists()


def test_cli_help_lists_conv_and_channels(capsys):
    code, out, _ = cli(capsys, "train", "--help")
    assert code == 0
    assert "--channels" in out and "options of net conv" in out
    text = " ".join(out.split())
    for flag in ("--net NET", "--encoder ENCODER", "--decoder DECODER"):
        # "--net NET network of encoder and decoder: conv, mlp (default mlp)"
        choices = re.search(re.escape(flag) + r" [a-z].*?: ([a-z_]+(?:, [a-z_]+)+)", text)
        assert choices and {"conv", "mlp"} <= set(choices.group(1).split(", ")), flag


def test_encoder_is_strided_convolutions_each_followed_by_the_activation():
    """The encoder's feature map, written out: tanh(conv(tanh(conv(x)))) with 3x3 kernels,
    stride 2 and padding 1 (the activation after every convolution, tanh so that a missing
    one shows at any input)."""
    torch.manual_seed(0)
    encoder = ConvEncoder((1, 7, 5), (4, 6), (8,), 3, activation="tanh").to(F64)
    x = torch.rand(3, 35, dtype=F64)
    convs = [m for m in encoder.conv if isinstance(m, nn.Conv2d)]
    h = x.reshape(3, 1, 7, 5)
    for conv in convs:
        h = torch.tanh(F.conv2d(h, conv.weight, conv.bias, stride=2, padding=1))
    assert h.shape == (3, 6, 2, 2)
    torch.testing.assert_close(encoder.conv(x.reshape(3, 1, 7, 5)), h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(encoder(x), encoder.head(h.flatten(1)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("side", [8, 7])
def test_each_decoder_cell_writes_the_pixels_of_the_encoder_cell_it_mirrors(side):
    """The encoder's cell j (3x3, stride 2, padding 1) reads pixels 2j − 1 … 2j + 1; the
    decoder's 4x4 transposed convolution (stride 2, padding 1), cropped to the encoder's side,
    writes cell i's value into pixels 2i − 1 … 2i + 2, centred on the same place (an odd side
    loses its extra last row in the crop, not its first). An impulse at each cell of the first
    up-sampling layer (all-ones kernel, no bias) lights exactly those pixels."""
    decoder = ConvDecoder((1, side, side), (2,), (4,), 3).to(F64)
    convt, crop = decoder.up[0], decoder.up[1]
    assert isinstance(convt, nn.ConvTranspose2d)
    h = (side + 1) // 2
    with torch.no_grad():
        convt.weight.fill_(1.0)
        convt.bias.zero_()
    for i in range(h):
        impulse = torch.zeros(1, convt.in_channels, h, h, dtype=F64)
        impulse[0, 0, i, i] = 1.0
        out = crop(convt(impulse))[0, 0]
        assert out.shape == (side, side)
        lit = [r for r in range(side) if out[r].abs().sum() > 0]
        assert lit == [r for r in range(2 * i - 1, 2 * i + 3) if 0 <= r < side], (i, lit)
