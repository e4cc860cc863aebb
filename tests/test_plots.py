"""vaekit.plots: grid arithmetic and pixel positions checked exactly, charts checked for content."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vaekit import plots
from vaekit.errors import DataError


def _open(path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return img


def _pixels(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _no_temp_files(directory, expected: set[str]) -> None:
    assert {p.name for p in directory.iterdir()} == expected


# --------------------------------------------------------------------------------------------
# image_grid


def test_image_grid_size_mode_and_tile_pixels(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(16, 64))
    path = plots.image_grid(images, tmp_path / "g.png", (8, 8), nrow=4, pad=1, scale=1)
    assert path == tmp_path / "g.png"
    img = _open(path)
    # 4 columns × 4 rows of 8 px, 3 gaps of 1 px each way: 4·8 + 3 = 35
    assert img.size == (35, 35) and img.mode == "L"
    px = _pixels(path)
    # image 6 is row 1, column 2: top-left corner at (y, x) = (1·9, 2·9)
    tile = px[9:17, 18:26]
    np.testing.assert_array_equal(tile, np.rint(images[6].reshape(8, 8) * 255).astype(np.uint8))
    # the gap column between tiles 0 and 1 is pad grey, not image
    assert np.all(px[:, 8] == round(255 * plots.PAD_VALUE))


def test_image_grid_scale_nonsquare_and_clipping(tmp_path):
    images = np.zeros((5, 6))  # five 2×3 images
    images[3] = np.linspace(-1, 2, 6)  # clipped to [0, 1]
    path = plots.image_grid(images, tmp_path / "g.png", (2, 3), nrow=2, pad=2, scale=3)
    # 2 columns, ceil(5/2) = 3 rows; tiles 6×9 px, 2 px gaps
    assert _open(path).size == (2 * 9 + 2, 3 * 6 + 2 * 2)
    px = _pixels(path)
    # image 3 is row 1, column 1 → y0 = 8, x0 = 11; its pixel (0, 0) = clip(-1) = 0 spans 3×3 px
    assert np.all(px[8:11, 11:14] == 0)
    # its pixel (1, 2) = clip(2) = 1 → 255, at y 8+3..8+6, x 11+6..11+9
    assert np.all(px[11:14, 17:20] == 255)
    # the empty sixth cell (row 2, column 1) is pad grey
    assert np.all(px[16:, 11:] == round(255 * plots.PAD_VALUE))


def test_image_grid_default_columns_and_upscaling(tmp_path):
    # 10 images → ceil(sqrt(10)) = 4 columns, 3 rows; 8×8 tiles upscaled by ceil(28/8) = 4 → 32 px
    path = plots.image_grid(np.full((10, 64), 0.25), tmp_path / "g.png", (8, 8))
    assert _open(path).size == (4 * 32 + 3, 3 * 32 + 2)
    # 28×28 tiles are not upscaled
    path = plots.image_grid(np.zeros((4, 784)), tmp_path / "m.png", (28, 28), pad=0)
    assert _open(path).size == (56, 56)


def test_image_grid_rgb(tmp_path):
    images = np.zeros((2, 3 * 4 * 4))
    chw = images.reshape(2, 3, 4, 4)
    chw[1, 0] = 1.0  # image 1 is pure red
    chw[0, 2] = 0.5  # image 0 is half blue
    path = plots.image_grid(images, tmp_path / "c.png", (3, 4, 4), nrow=2, pad=1, scale=1)
    img = _open(path)
    assert img.mode == "RGB" and img.size == (9, 4)
    px = _pixels(path)
    assert tuple(px[0, 0]) == (0, 0, 128)
    assert tuple(px[0, 5]) == (255, 0, 0)


@pytest.mark.parametrize(
    "images, shape, culprit",
    [
        (np.zeros((4, 63)), (8, 8), "D=63"),
        (np.zeros(64), (8, 8), "images must be a 2-D"),
        (np.zeros((0, 64)), (8, 8), "images is empty"),
        (np.full((2, 4), np.nan), (2, 2), "NaN"),
        (np.zeros((2, 8)), (2, 2, 2), "image_shape"),
        (np.zeros((2, 4)), (2,), "image_shape"),
    ],
)
def test_image_grid_bad_input(tmp_path, images, shape, culprit):
    with pytest.raises(DataError, match=culprit) as info:
        plots.image_grid(images, tmp_path / "g.png", shape)
    assert "\n" not in str(info.value)
    _no_temp_files(tmp_path, set())


def test_image_grid_bad_options(tmp_path):
    for kwargs, culprit in [({"nrow": 0}, "nrow"), ({"pad": -1}, "pad"), ({"scale": 0}, "scale")]:
        with pytest.raises(DataError, match=culprit):
            plots.image_grid(np.zeros((4, 4)), tmp_path / "g.png", (2, 2), **kwargs)


# --------------------------------------------------------------------------------------------
# reconstruction_grid


def test_reconstruction_grid_pairs_are_aligned(tmp_path):
    n, h, w = 11, 4, 4
    # every image is one flat value, distinct per image, so a tile identifies its source
    x = np.repeat((np.arange(n) / 40.0)[:, None], h * w, axis=1)
    x_hat = np.repeat((0.5 + np.arange(n) / 40.0)[:, None], h * w, axis=1)
    path = plots.reconstruction_grid(x, x_hat, tmp_path / "r.png", (h, w), n=n, annotate=False)
    scale = 7  # ceil(28 / 4)
    t = h * scale + 1  # tile pitch with pad 1
    img = _open(path)
    # 11 pairs → 8 columns, 2 row-pairs = 4 grid rows
    assert img.size == (8 * w * scale + 7, 4 * h * scale + 3)
    px = _pixels(path)
    for i in range(n):
        block, col = divmod(i, 8)
        y_in, y_rec, x0 = 2 * block * t, (2 * block + 1) * t, col * t
        assert np.all(px[y_in : y_in + h * scale, x0 : x0 + w * scale] == round(255 * x[i, 0])), i
        assert np.all(px[y_rec : y_rec + h * scale, x0 : x0 + w * scale] == round(255 * x_hat[i, 0])), i
    # cells after the 11th pair are left grey
    assert np.all(px[2 * t :, 3 * t :] == round(255 * plots.PAD_VALUE))


def test_reconstruction_grid_classes_fit_over_their_columns(tmp_path, monkeypatch):
    """A class name wider than its column is cut short ("..") to the tile's width, so that
    neighbours do not overlap; one that fits is written whole."""
    font = plots._font()
    long = "a class name far wider than one tile"
    short = plots._fit_text(long, 28, font)
    assert short.endswith("..") and long.startswith(short[:-2]) and plots._text_box(short, font)[0] <= 28
    assert plots._fit_text("7", 28, font) == "7" and plots._fit_text(long, 1, font) == ""
    drawn = []
    real = plots._frame
    monkeypatch.setattr(plots, "_frame", lambda img, *a, **k: drawn.append(k.get("above", ())) or real(img, *a, **k))
    x = np.random.default_rng(0).uniform(size=(3, 64))
    plots.reconstruction_grid(x, x, tmp_path / "r.png", (8, 8), labels=[long, "3", long + "!"])
    tw = 8 * plots._default_scale((1, 8, 8))
    (above,) = [a for a in drawn if a]
    assert [t for _, t in above][1] == "3"
    assert all(plots._text_box(t, font)[0] <= tw for _, t in above)
    assert [x for x, _ in above] == [tw / 2, tw + 1 + tw / 2, 2 * (tw + 1) + tw / 2]


def test_reconstruction_grid_takes_first_n(tmp_path):
    x = np.linspace(0, 1, 20)[:, None] * np.ones((20, 4))
    path = plots.reconstruction_grid(x, x, tmp_path / "r.png", (2, 2), n=3, annotate=False)
    # 3 columns, 1 row-pair; tiles 2·14 = 28 px
    assert _open(path).size == (3 * 28 + 2, 2 * 28 + 1)
    assert _pixels(path)[29, 2 * 29] == round(255 * x[2, 0])


def test_reconstruction_grid_labelled(tmp_path):
    """Named rows, the class of every pair and a title: the tiles sit inside a white frame of
    captions, each row-pair (8 pairs here) with its own strip of class labels above it."""
    x = np.full((16, 64), 0.25)
    bare = _open(plots.reconstruction_grid(x, x, tmp_path / "b.png", (8, 8), n=16, annotate=False))
    named = _open(plots.reconstruction_grid(x, x, tmp_path / "n.png", (8, 8), n=16))
    full = _open(plots.reconstruction_grid(x, x, tmp_path / "f.png", (8, 8), n=16, labels=np.arange(16) % 10, title="test rows"))
    # "reconstruction" on the left widens it; labels and title make it taller, the tiles stay
    assert named.width > bare.width + 60 and named.height > bare.height
    assert full.width == named.width and full.height > named.height + 2 * plots.TEXT_PX
    px = _pixels(tmp_path / "f.png")
    assert np.sum(px == 255) > 0.1 * px.size  # the white frame
    # 32 tiles of 32x32 px, untouched (the text's anti-aliased edges add a few pixels of that grey)
    assert 4 * 8 * (8 * 4) ** 2 <= np.sum(px == round(255 * 0.25)) < 4 * 8 * (8 * 4) ** 2 + 100
    with pytest.raises(DataError, match=r"labels must have one entry per row of x \(16\), got 3"):
        plots.reconstruction_grid(x, x, tmp_path / "r.png", (8, 8), labels=[1, 2, 3])


def test_image_grid_title(tmp_path):
    bare = _open(plots.image_grid(np.zeros((4, 64)), tmp_path / "b.png", (8, 8)))
    titled = _open(plots.image_grid(np.zeros((4, 64)), tmp_path / "t.png", (8, 8), title="4 samples: z ~ p(z)"))
    assert titled.width >= bare.width and titled.height > bare.height + plots.TEXT_PX


def test_reconstruction_grid_mismatch(tmp_path):
    with pytest.raises(DataError, match="x_hat"):
        plots.reconstruction_grid(np.zeros((4, 4)), np.zeros((3, 4)), tmp_path / "r.png", (2, 2))
    with pytest.raises(DataError, match="x_hat has D=5"):
        plots.reconstruction_grid(np.zeros((4, 4)), np.zeros((4, 5)), tmp_path / "r.png", (2, 2))


# --------------------------------------------------------------------------------------------
# latent_traversal_grid


def test_latent_traversal_grid_calls_decode_in_reading_order(tmp_path):
    n, calls = 5, []

    def decode(z):
        calls.append(z.copy())
        # tile brightness encodes z2 so the picture can be read back: top rows brightest
        return np.repeat(((z[:, 1] + 2) / 4)[:, None], 16, axis=1)

    path = plots.latent_traversal_grid(decode, tmp_path / "t.png", (4, 4), n=n, annotate=False)
    assert len(calls) == 1
    z = calls[0]
    assert z.shape == (n * n, 2) and z.dtype == np.float32
    # Φ⁻¹ at p = 0.05, 0.275, 0.5, 0.725, 0.95 (normal tables)
    q = np.array([-1.6448536, -0.5977601, 0.0, 0.5977601, 1.6448536])
    grid_z1, grid_z2 = z[:, 0].reshape(n, n), z[:, 1].reshape(n, n)
    np.testing.assert_allclose(grid_z1, np.tile(q, (n, 1)), atol=1e-6)  # z1 grows to the right
    np.testing.assert_allclose(grid_z2, np.tile(q[::-1, None], (1, n)), atol=1e-6)  # z2 grows upwards
    assert z[0, 1] == z[:, 1].max() and z[0, 0] == z[:, 0].min()
    # n×n tiles of 4 px ×7, 1 px apart
    assert _open(path).size == (n * 28 + n - 1, n * 28 + n - 1)
    px = _pixels(path)
    assert px[0, 0] > px[-1, 0]  # the top row is the largest z2


def test_latent_traversal_grid_linear_spacing(tmp_path):
    seen = []
    plots.latent_traversal_grid(
        lambda z: seen.append(z) or np.zeros((len(z), 4)), tmp_path / "t.png", (2, 2), n=3, span=2.0, spacing="linear"
    )
    np.testing.assert_allclose(seen[0][:3, 0], [-2, 0, 2])
    np.testing.assert_allclose(seen[0][::3, 1], [2, 0, -2])


def test_posterior_range_holds_the_central_98_percent():
    rng = np.random.default_rng(0)
    # posteriors far wider than the prior's ±1.64 on one axis, narrower on the other
    mu = np.stack([rng.normal(0.5, 3.0, 5000), rng.normal(-1.0, 0.2, 5000)], axis=1)
    r = plots.posterior_range(mu)
    assert r.shape == (2, 2)
    inside = (mu >= r[:, 0]) & (mu <= r[:, 1])
    assert np.all(inside.mean(axis=0) >= 0.98)
    # 1st and 99th percentiles of N(0.5, 3²): 0.5 ± 2.326·3, within sampling error
    np.testing.assert_allclose(r[0], [0.5 - 6.98, 0.5 + 6.98], atol=0.4)
    np.testing.assert_allclose(r[1], [-1.0 - 0.465, -1.0 + 0.465], atol=0.04)
    # a unit the encoder ignores still gets a grid of distinct values
    np.testing.assert_allclose(plots.posterior_range(np.zeros((10, 1))), [[-1.0, 1.0]])
    with pytest.raises(DataError, match="coverage must be in"):
        plots.posterior_range(mu, coverage=0)


def test_latent_traversal_grid_limits_and_tick_labels(tmp_path):
    seen = []

    def decode(z):
        seen.append(z)
        return np.zeros((len(z), 64))

    limits = [[-5.0, 4.0], [-2.0, 6.0]]
    path = plots.latent_traversal_grid(decode, tmp_path / "t.png", (8, 8), n=4, limits=limits, title="grid")
    z = seen[0]
    np.testing.assert_allclose(z[:4, 0], [-5, -2, 1, 4])  # z1 along the columns
    np.testing.assert_allclose(z[::4, 1], [6, 10 / 3, 2 / 3, -2], rtol=1e-6)  # z2 down the rows
    bare = _open(plots.latent_traversal_grid(decode, tmp_path / "b.png", (8, 8), n=4, limits=limits, annotate=False))
    img = _open(path)
    # tick labels on the left and beneath, axis names and the title around the same tiles
    assert img.width > bare.width + 20 and img.height > bare.height + 3 * plots.TEXT_PX
    with pytest.raises(DataError, match="limits must be"):
        plots.latent_traversal_grid(decode, tmp_path / "t.png", (8, 8), limits=[[1.0, -1.0], [0.0, 1.0]])
    # decode reads float32: a limit or span past its range would be ±inf there.
    with pytest.raises(DataError, match="limits must lie within float32's range"):
        plots.latent_traversal_grid(decode, tmp_path / "t.png", (8, 8), limits=[[-1e39, 1.0], [0.0, 1.0]])
    with pytest.raises(DataError, match="span must be a number > 0 within float32's range"):
        plots.latent_traversal_grid(decode, tmp_path / "t.png", (8, 8), spacing="linear", span=1e39)
    n = len(seen)
    plots.latent_traversal_grid(decode, tmp_path / "t.png", (8, 8), n=3, limits=[[-3e38, 3e38], [0.0, 1.0]])
    assert np.isfinite(seen[n]).all() and seen[n][0, 0] == np.float32(-3e38)


def test_latent_traversal_grid_bad_decode(tmp_path):
    with pytest.raises(DataError, match="decode"):
        plots.latent_traversal_grid(lambda z: np.zeros((3, 4)), tmp_path / "t.png", (2, 2), n=3)
    with pytest.raises(DataError, match="D=5"):
        plots.latent_traversal_grid(lambda z: np.zeros((len(z), 5)), tmp_path / "t.png", (2, 2), n=3)
    with pytest.raises(DataError, match="spacing"):
        plots.latent_traversal_grid(lambda z: z, tmp_path / "t.png", (2, 2), spacing="log")


# --------------------------------------------------------------------------------------------
# charts


def _assert_real_chart(path, min_kb: float = 10.0) -> None:
    assert path.stat().st_size > min_kb * 1024
    px = _pixels(path).astype(float)
    assert px.std() > 0
    assert len(np.unique(px.reshape(-1, px.shape[-1]), axis=0)) > 10  # lines, text, colours


def _metrics(epochs: int = 12, beta_schedule: bool = False) -> list[dict]:
    out = []
    for e in range(1, epochs + 1):
        beta = min(1.0, e / 5) if beta_schedule else 1.0
        recon, kl = -100 - 60 / e, 20 + 5 * np.log(e)
        out.append({"epoch": e, "train_loss": -(recon - beta * kl), "train_elbo": recon - kl - 1,
                    "valid_elbo": recon - kl, "valid_recon": recon, "valid_kl": kl, "beta": beta})  # fmt: skip
    return out


def test_training_curves(tmp_path):
    path = plots.training_curves(_metrics(), tmp_path / "curves.png")
    _assert_real_chart(path)
    fig = plots._training_curves_figure(_metrics())
    left, right = fig.axes[:2]
    assert [line.get_label() for line in left.lines] == ["train −ELBO", "valid −ELBO"]
    # the right panel plots −recon, positive nats, and KL; their sum is the valid −ELBO
    m = _metrics()
    neg_recon, kl = (line.get_ydata() for line in right.lines)
    np.testing.assert_allclose(neg_recon + kl, [-r["valid_elbo"] for r in m])
    assert "nats" in left.get_ylabel() and "nats" in right.get_ylabel()
    assert left.get_xlabel() == "epoch" and left.get_legend() is not None
    # Whole epochs on the axis, even for one or two epochs (a bare axis reads 0.96 … 1.04).
    for m in (_metrics()[:1], _metrics()[:2]):
        fig = plots._training_curves_figure(m)
        fig.canvas.draw()
        for ax in fig.axes[:2]:
            ticks = ax.get_xticks()
            assert len(ticks) and np.all(ticks == np.round(ticks)), ticks


def test_training_curves_missing_values_and_beta(tmp_path):
    m = _metrics(beta_schedule=True)
    for r in m[:3]:
        r["valid_elbo"] = None  # validation started late
    for r in m:
        del r["valid_kl"]
    fig = plots._training_curves_figure(m)
    left, right = fig.axes[:2]
    labels = [line.get_label() for line in left.lines]
    assert "train loss (β-weighted)" in labels  # β ≠ 1 in warm-up: the loss is not −ELBO
    valid = left.lines[labels.index("valid −ELBO")]
    np.testing.assert_array_equal(valid.get_xdata(), np.arange(4, 13))
    assert len(right.lines) == 1  # KL missing: only −recon
    assert len(fig.axes) == 3  # β schedule on a twin axis
    _assert_real_chart(plots.training_curves(m, tmp_path / "c.png"))


def test_training_curves_of_the_iwae_objective_name_its_bound(tmp_path):
    """Trained on the IWAE bound there is no train ELBO: the loss is drawn as the −IWAE bound,
    beside the validation bound that picks the best epoch (valid_score)."""
    m = _metrics()
    for r in m:
        r["objective"], r["train_elbo"], r["valid_score"] = "iwae", None, r["valid_elbo"] + 3.0
    labels = [line.get_label() for line in plots._training_curves_figure(m).axes[0].lines]
    assert "train −IWAE bound" in labels and "valid −IWAE bound" in labels and "train loss (β-weighted)" not in labels
    left = plots._training_curves_figure(m).axes[0]
    valid = left.lines[labels.index("valid −IWAE bound")]
    np.testing.assert_allclose(valid.get_ydata(), [-r["valid_score"] for r in m])
    _assert_real_chart(plots.training_curves(m, tmp_path / "c.png"))


@pytest.mark.parametrize("hw, scale", [((8, 8), 4), ((28, 28), 1), ((1, 784), 1), ((1, 100000), 1), ((3, 60), 4), ((2, 200), 1)])
def test_tiles_are_upscaled_to_28_px_but_never_past_256(hw, scale):
    assert plots._default_scale((1, *hw)) == scale


def test_training_curves_learning_rate_axis(tmp_path):
    """A schedule's rates, drawn as steps on a log-scale twin of the left panel; a constant rate
    (or none recorded) adds no axis."""
    m = _metrics()
    rates = [1e-3 if r["epoch"] < 5 else 5e-4 if r["epoch"] < 9 else 2.5e-4 for r in m]
    assert len(plots._training_curves_figure([dict(r, lr=1e-3) for r in m]).axes) == 2
    fig = plots._training_curves_figure([dict(r, lr=lr) for r, lr in zip(m, rates)])
    assert len(fig.axes) == 3
    ax_lr = fig.axes[2]
    assert ax_lr.get_yscale() == "log" and ax_lr.get_ylabel() == "learning rate"
    (line,) = ax_lr.lines
    np.testing.assert_array_equal(line.get_xdata(), [r["epoch"] for r in m])
    np.testing.assert_array_equal(line.get_ydata(), rates)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "learning rate (right axis)" in labels
    _assert_real_chart(plots.training_curves([dict(r, lr=lr) for r, lr in zip(m, rates)], tmp_path / "c.png"))


def test_training_curves_bad_input(tmp_path):
    with pytest.raises(DataError, match="metrics is empty"):
        plots.training_curves([], tmp_path / "c.png")
    with pytest.raises(DataError, match="no values"):
        plots.training_curves([{"epoch": 1}], tmp_path / "c.png")
    with pytest.raises(DataError, match=r"metrics\[0\]\['valid_kl'\]"):
        plots.training_curves([{"epoch": 1, "valid_kl": "abc"}], tmp_path / "c.png")
    _no_temp_files(tmp_path, set())


@pytest.mark.parametrize("d", [1, 2, 5])
def test_latent_scatter(tmp_path, d):
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(300, d))
    labels = rng.integers(0, 10, 300)
    _assert_real_chart(plots.latent_scatter(mu, tmp_path / "s.png", labels=labels))
    ax = plots._latent_scatter_figure(mu, labels).axes[0]
    assert len(ax.get_legend().get_texts()) == len(np.unique(labels))
    assert ("PC 1" in ax.get_xlabel()) == (d > 2)


def test_latent_scatter_pca_labels_report_variance():
    # points ±3e₁, ±2e₂, ±e₃, ±e₄ (mean 0): sums of squares 18, 8, 2, 2, so PC 1 = e₁ carries
    # 18/30 = 60% of the variance and PC 2 = e₂ 8/30 = 27%, exactly
    mu = np.concatenate([np.diag([3.0, 2.0, 1.0, 1.0]), -np.diag([3.0, 2.0, 1.0, 1.0])])
    mu = mu + np.array([5.0, -1.0, 0.0, 2.0])  # an offset the centring must remove
    ax = plots._latent_scatter_figure(mu).axes[0]
    assert ax.get_xlabel() == "PC 1 (60% var)"
    assert ax.get_ylabel() == "PC 2 (27% var)"
    assert "PCA" in ax.get_title()
    # variance shares agree with the covariance eigenvalues; the axes are e₁, e₂ with the sign
    # convention "largest loading positive"
    proj, ratio = plots._pca_2d(mu)
    evals = np.linalg.eigvalsh(np.cov(mu, rowvar=False))
    np.testing.assert_allclose(ratio, evals[::-1][:2] / evals.sum(), rtol=1e-10)
    np.testing.assert_allclose(proj, (mu - mu.mean(0))[:, :2], atol=1e-12)


def test_latent_scatter_many_classes_colorbar(tmp_path):
    mu = np.random.default_rng(0).normal(size=(200, 2))
    fig = plots._latent_scatter_figure(mu, np.arange(200) % 50)
    assert len(fig.axes) == 2 and fig.axes[0].get_legend() is None  # a colorbar, not a legend


def test_latent_scatter_bad_input(tmp_path):
    with pytest.raises(DataError, match=r"labels must have shape \(10,\)"):
        plots.latent_scatter(np.zeros((10, 2)), tmp_path / "s.png", labels=np.zeros(9))
    with pytest.raises(DataError, match="mu is empty"):
        plots.latent_scatter(np.zeros((0, 2)), tmp_path / "s.png")
    with pytest.raises(DataError, match="mu must be a 1-D or 2-D"):
        plots.latent_scatter(np.zeros((2, 2, 2)), tmp_path / "s.png")


def test_bound_gap_plot(tmp_path):
    rng = np.random.default_rng(0)
    log_px = rng.normal(-90, 5, 500)
    gap = rng.gamma(2.0, 1.5, 500)
    path = plots.bound_gap_plot(log_px, log_px - gap, tmp_path / "b.png", title="test")
    _assert_real_chart(path)
    fig = plots._bound_gap_figure(log_px, log_px - gap)
    ax_s, ax_h = fig.axes
    assert "nats" in ax_s.get_xlabel() and "nats" in ax_s.get_ylabel() and "nats" in ax_h.get_xlabel()
    diag = ax_s.lines[0]
    np.testing.assert_array_equal(diag.get_xdata(), diag.get_ydata())  # y = x
    mean_line = ax_h.lines[0]
    assert mean_line.get_xdata()[0] == pytest.approx(gap.mean())
    assert f"{gap.mean():.2f}" in mean_line.get_label()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("log_px", [0.0, -1.0665e17, 3e30])
def test_bound_gap_plot_of_a_constant_gap_of_any_size(tmp_path, dtype, log_px):
    """Every row with the same estimates (a gap of 0, or of 1e17 nats, where ±0.5 vanishes in
    float32 and float64 alike): every row lands in one bin, and the axes have a finite width."""
    n = 10
    elbo = np.full(n, 2 * log_px if log_px else -3.0, dtype)
    lp = np.full(n, log_px, dtype)
    fig = plots._bound_gap_figure(lp, elbo)
    ax_s, ax_h = fig.axes
    counts = [patch.get_height() for patch in ax_h.patches]
    assert sum(counts) == n and max(counts) == n
    lo, hi = ax_s.get_xlim()
    assert np.isfinite([lo, hi]).all() and hi > lo
    gap = float(lp[0]) - float(elbo[0])
    assert ax_h.get_xlim()[0] < gap < ax_h.get_xlim()[1]
    _assert_real_chart(plots.bound_gap_plot(lp, elbo, tmp_path / "b.png"))
    lp[-1] = np.nextafter(lp[-1], dtype(np.inf))  # nearly constant: the same
    assert sum(p.get_height() for p in plots._bound_gap_figure(lp, elbo).axes[1].patches) == n


def test_bound_gap_plot_bad_input(tmp_path):
    with pytest.raises(DataError, match=r"log_px \(5,\) and elbo \(4,\)"):
        plots.bound_gap_plot(np.zeros(5), np.zeros(4), tmp_path / "b.png")
    with pytest.raises(DataError, match="log_px is empty"):
        plots.bound_gap_plot(np.zeros(0), np.zeros(0), tmp_path / "b.png")
    with pytest.raises(DataError, match="elbo contains 1 NaN"):
        plots.bound_gap_plot(np.zeros(2), np.array([0.0, np.nan]), tmp_path / "b.png")


# --------------------------------------------------------------------------------------------
# writing


def test_writes_are_atomic_and_leave_no_temp_files(tmp_path, monkeypatch):
    images = np.random.default_rng(0).uniform(size=(4, 16))
    target = tmp_path / "out" / "grid.png"  # parent is created
    plots.image_grid(images, target, (4, 4))
    plots.training_curves(_metrics(3), tmp_path / "out" / "c.png")
    _no_temp_files(tmp_path / "out", {"grid.png", "c.png"})
    before = target.read_bytes()

    # a failure while writing leaves the old file whole and no temp file behind
    from PIL import Image as PILImage

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(PILImage.Image, "save", broken_save)
    with pytest.raises(DataError, match="grid.png: cannot write \\(disk full\\)"):
        plots.image_grid(np.zeros((4, 16)), target, (4, 4))
    assert target.read_bytes() == before
    _no_temp_files(tmp_path / "out", {"grid.png", "c.png"})


def test_overwrite_replaces_file(tmp_path):
    target = tmp_path / "g.png"
    plots.image_grid(np.zeros((1, 4)), target, (2, 2), scale=1)
    plots.image_grid(np.ones((1, 4)), target, (2, 2), scale=1)
    assert np.all(_pixels(target) == 255)
    _no_temp_files(tmp_path, {"g.png"})


def test_written_files_get_ordinary_permissions(tmp_path):
    # temp-file helpers create 0600 files; the PNG must get the mode open() would give it
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    path = plots.image_grid(np.zeros((1, 4)), tmp_path / "g.png", (2, 2))
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_import_is_light():
    # the CLI imports vaekit.plots at start; matplotlib, PIL and torch must load only when drawing
    code = "import sys, vaekit.plots; print(sorted(m for m in ('matplotlib', 'PIL', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# the bubble forces, the bubbles and the VAE spaces


def _with_forces(metrics: list[dict]) -> list[dict]:
    for r in metrics:
        e = r["epoch"]
        r["force_recon"], r["force_mean"], r["force_variance"] = -r["valid_recon"], 3.0 + 0.5 * e, 1.0 / e
    return metrics


def test_training_curves_draw_the_three_forces(tmp_path):
    m = _with_forces(_metrics())
    fig = plots._training_curves_figure(m)
    left, right, forces, recon_axis = fig.axes
    assert [line.get_label().split(":")[0] for line in forces.lines] == ["mean ½Σμ²", "variance ½Σ(σ²−log σ²−1)"]
    assert [line.get_label().split(":")[0] for line in recon_axis.lines] == ["recon −E_q[log p(x|z)]"]
    mean, variance = (line.get_ydata() for line in forces.lines)
    recon = recon_axis.lines[0].get_ydata()
    np.testing.assert_allclose(mean, [r["force_mean"] for r in m])
    np.testing.assert_allclose(variance, [r["force_variance"] for r in m])
    np.testing.assert_allclose(recon, [-r["valid_recon"] for r in m])
    # without force fields the figure keeps its two panels
    assert len(plots._training_curves_figure(_metrics()).axes) == 2
    _assert_real_chart(plots.training_curves(m, tmp_path / "c.png"))


def _ellipses(ax) -> int:
    from matplotlib.collections import EllipseCollection

    return sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, EllipseCollection))


def _bubbles(n: int, seed: int, spread: float, size: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return spread * rng.normal(size=(n, 2)), np.log(size**2) + 0.1 * rng.normal(size=(n, 2))


def test_bubbles_one_ellipse_per_point_per_panel(tmp_path):
    panels = [("start", *_bubbles(40, 0, 0.1, 1.0)), ("middle", *_bubbles(40, 1, 1.0, 0.5)), ("end", *_bubbles(40, 2, 2.0, 0.2))]
    labels = np.arange(40) % 4
    fig = plots._bubbles_figure(panels, labels=labels)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["start", "middle", "end"]
    assert [_ellipses(ax) for ax in axes] == [40, 40, 40]
    # μ ± σ: full widths 2σ₁ and heights 2σ₂, centred on μ
    from matplotlib.collections import EllipseCollection

    (coll,) = [c for c in axes[2].collections if isinstance(c, EllipseCollection)]
    _, mu, logvar = panels[2]
    # matplotlib before 3.9 has no getters; it keeps the half sizes.
    full = lambda what: getattr(coll, f"get_{what}")() if hasattr(coll, f"get_{what}") else 2 * getattr(coll, f"_{what}")  # noqa: E731
    np.testing.assert_allclose(full("widths"), 2 * np.exp(0.5 * logvar[:, 0]))
    np.testing.assert_allclose(full("heights"), 2 * np.exp(0.5 * logvar[:, 1]))
    np.testing.assert_allclose(coll.get_offsets(), mu)
    # the prior's unit circle in every panel, one legend entry per label and the circle
    assert [len(ax.patches) for ax in axes] == [1, 1, 1] and axes[0].patches[0].get_radius() == 1.0
    assert len(axes[2].get_legend().get_texts()) == 1 + 4
    # the same square view in every panel
    assert axes[0].get_xlim() == axes[2].get_xlim() == axes[2].get_ylim()
    path = plots.bubbles_plot(panels, tmp_path / "bubbles.png", labels=labels)
    _assert_real_chart(path)
    _no_temp_files(tmp_path, {"bubbles.png"})


def test_bubbles_bad_input(tmp_path):
    mu, logvar = _bubbles(5, 0, 1.0, 1.0)
    with pytest.raises(DataError, match="panels must be a non-empty list"):
        plots.bubbles_plot([], tmp_path / "b.png")
    with pytest.raises(DataError, match=r"panels\[0\] mu must have 2 columns"):
        plots.bubbles_plot([("a", np.zeros((5, 3)), np.zeros((5, 3)))], tmp_path / "b.png")
    with pytest.raises(DataError, match=r"panels\[1\] logvar must have the shape of mu"):
        plots.bubbles_plot([("a", mu, logvar), ("b", mu, logvar[:4])], tmp_path / "b.png")
    with pytest.raises(DataError, match="every panel must show the same 5 points; panels\\[1\\] has 4"):
        plots.bubbles_plot([("a", mu, logvar), ("b", mu[:4], logvar[:4])], tmp_path / "b.png")
    with pytest.raises(DataError, match=r"labels must have shape \(5,\)"):
        plots.bubbles_plot([("a", mu, logvar)], tmp_path / "b.png", labels=np.zeros(4))
    _no_temp_files(tmp_path, set())


def _roll_decoder(z: np.ndarray) -> np.ndarray:
    t = 1.5 * np.pi + 1.5 * np.pi * (z[:, 0] + 2)  # an exact swiss roll over z
    return np.stack([t * np.cos(t), 5 * z[:, 1], t * np.sin(t)], axis=1) / 7


def test_vae_spaces_three_axes_and_the_decoded_grid(tmp_path):
    rng = np.random.default_rng(0)
    mu = rng.uniform(-1.5, 1.5, size=(60, 2))
    logvar = np.full((60, 2), np.log(0.01))
    x = _roll_decoder(mu)
    asked = []

    def decode(z):
        asked.append(z)
        return _roll_decoder(z)

    fig = plots._vae_spaces_figure(x, mu, decode, logvar=logvar, labels=np.arange(60) // 10, grid=7)
    data_ax, latent_ax, manifold_ax = fig.axes
    assert data_ax.name == manifold_ax.name == "3d" and latent_ax.name == "rectilinear"
    assert _ellipses(latent_ax) == 60
    # one call: the 7×7 grid, then every μ; the grid spans μ ± σ (1st to 99th percentile)
    (z,) = asked
    assert z.dtype == np.float32 and z.shape == (49 + 60, 2)
    np.testing.assert_allclose(z[49:], mu.astype(np.float32))
    assert z[:49, 0].min() == pytest.approx(np.quantile(mu[:, 0] - 0.1, 0.01), rel=1e-6)
    assert z[:49, 1].max() == pytest.approx(np.quantile(mu[:, 1] + 0.1, 0.99), rel=1e-6)
    assert len(manifold_ax.get_legend().get_texts()) == 6
    path = plots.vae_spaces_plot(x, mu, tmp_path / "spaces.png", decode, logvar=logvar)
    _assert_real_chart(path)
    # point masses (no log σ²) are drawn as points, without bubbles
    assert _ellipses(plots._vae_spaces_figure(x, mu, decode).axes[1]) == 0


def test_vae_spaces_bad_input(tmp_path):
    mu = np.zeros((4, 2))
    with pytest.raises(DataError, match="x must have 3 columns"):
        plots.vae_spaces_plot(np.zeros((4, 2)), mu, tmp_path / "s.png", _roll_decoder)
    with pytest.raises(DataError, match=r"mu must have one row per row of x \(4\), got 3"):
        plots.vae_spaces_plot(np.zeros((4, 3)), mu[:3], tmp_path / "s.png", _roll_decoder)
    with pytest.raises(DataError, match=r"decode\(z\) must return \(629, 3\)"):
        plots.vae_spaces_plot(np.zeros((4, 3)), mu, tmp_path / "s.png", lambda z: np.zeros((len(z), 2)))
    _no_temp_files(tmp_path, set())


# ---- the bound beneath the evidence, as bars --------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gaps():
    """evaluate.gaps_per_point of two tiny untrained models (amortized, vi) on 4 rows."""
    import torch

    from vaekit.config import ModelConfig
    from vaekit.evaluate import gaps_per_point
    from vaekit.model import VAEModel

    x = np.random.default_rng(0).random((4, 6)).astype(np.float32)
    out = {}
    for method in ("amortized", "vi"):
        torch.manual_seed(0)
        cfg = ModelConfig(input_dim=6, latent_dim=2, hidden=(4,), likelihood="continuous_bernoulli", inference=method,
                          n_points=4 if method == "vi" else 0, local_steps=5)  # fmt: skip
        out[method] = gaps_per_point(VAEModel(cfg), x, k=8, steps=10, n_samples=4, check_every=5)
    return out


@pytest.mark.parametrize("points", [3, 6])
def test_bound_bars_have_one_bar_per_point_and_quantity_at_the_gaps_numbers(tiny_gaps, points):
    fig = plots._bound_bars_figure(tiny_gaps, points)
    axes = [ax for ax in fig.axes if ax.patches]
    assert len(axes) == 2
    shown = min(points, 4)  # 4 rows were measured
    for ax, (method, per_point) in zip(axes, tiny_gaps.items()):
        assert method in ax.get_title()
        assert len(ax.patches) == 3 * shown
        # Grouped by quantity: log p(x) bars, then ELBO(q*), then ELBO(q); the bar's top is the number.
        for j, key in enumerate(("log_px", "elbo_optimal", "elbo")):
            bars = ax.patches[j * shown : (j + 1) * shown]
            tops = [b.get_y() + b.get_height() for b in bars]
            np.testing.assert_allclose(tops, per_point[key][:shown], rtol=0, atol=1e-9)
            xs = [b.get_x() + b.get_width() / 2 for b in bars]
            np.testing.assert_allclose(xs, np.arange(shown) + (j - 1) * 0.8 / 3, atol=1e-12)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["log p(x)", "ELBO(q*)", "ELBO(q)"]
    fig.clear()


def test_bound_bars_plot_writes_a_png_and_refuses_nothing_to_draw(tiny_gaps, tmp_path):
    path = plots.bound_bars_plot(tiny_gaps, tmp_path / "bars.png")
    assert _open(path).format == "PNG"
    with pytest.raises(DataError, match="methods is empty"):
        plots.bound_bars_plot({}, tmp_path / "none.png")


@pytest.mark.parametrize(
    "shape, drawn",
    [((8, 8), True), ((1, 8, 8), True), ((3, 4, 5), True), ((2, 8, 8), False), ((4, 8, 8), False), ((0, 8), False), (None, False), ((8,), False)],
)
def test_picturable_is_grey_or_rgb_images(shape, drawn):
    from vaekit.plots import picturable

    assert picturable(shape) is drawn


@pytest.mark.parametrize("lo, hi, n", [(-0.2, 0.2, 15), (-1.6449, 1.6449, 20), (-3.0, 3.0, 7), (0.0, 0.004, 9)])
def test_latent_grid_tick_labels_never_repeat(lo, hi, n):
    """Ticks of a latent grid axis take as many decimals (up to 4) as keep neighbouring labels
    apart, for fine grids over narrow ranges as for the paper's [-1.6, 1.6]; a zero is "0.0",
    not "-0.0"; labels that would not fit side by side are thinned, stacked ones are not."""
    from vaekit.plots import _tick_labels

    values = np.linspace(lo, hi, n)
    for across in (True, False):
        ticks = _tick_labels(values, 25, across)
        labels = [label for _, label in ticks]
        assert len(set(labels)) == len(labels) and not any(label.startswith("-0.0") and float(label) == 0 for label in labels)
        for i, label in ticks:
            assert abs(float(label) - values[i]) <= 0.5 * 10.0 ** -(len(label.split(".")[1])) + 1e-12
        widest = 7 * max(len(label) for label in labels) + 2
        step = ticks[1][0] - ticks[0][0]
        assert step == (max(1, -(-widest // 25)) if across else 1)
    assert [label for _, label in _tick_labels(np.linspace(-3, 3, 7), 57, True)] == ["-3.0", "-2.0", "-1.0", "0.0", "1.0", "2.0", "3.0"]


def _titles_outside(fig) -> list[str]:
    """The titles and suptitle of ``fig`` that the canvas cuts (drawn past its edges)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    box = fig.bbox
    texts = [t for ax in fig.axes for t in (ax.title, ax._left_title, ax._right_title)] + ([fig._suptitle] if fig._suptitle else [])
    out = []
    for t in texts:
        if t.get_text():
            e = t.get_window_extent(renderer)
            if e.x0 < box.x0 or e.x1 > box.x1 or e.y1 > box.y1:
                out.append(t.get_text())
    return out


@pytest.mark.parametrize("d", [1, 2, 40, 200])
@pytest.mark.parametrize("split", ["dimension", "group"])
def test_kl_chart_titles_fit_the_figure(d, split):
    """Per dimension (one Gaussian layer, standard prior) or per group (a hierarchy, a mixture
    or VampPrior prior), at any latent size: no title runs past the figure's edge."""
    rng = np.random.default_rng(0)
    kw = {"kl_per_dim": rng.random(d) * 1000} if split == "dimension" else {"kl_per_group": {"z1": 12.5, "z2": 3.25}}
    kw.setdefault("kl_per_dim", None)
    fig = plots._kl_per_dim_figure(rng.random(d), threshold=1e-2, **kw)
    assert _titles_outside(fig) == []


def test_training_curves_draw_the_evidence_and_the_gap_when_tracked():
    """With valid_log_px and valid_gap (train --valid-k), the loss panel adds −log p(x) beside
    the −ELBO and the gap (a few nats, beside terms of tens) gets a panel of its own; without
    them neither is drawn."""
    m = _metrics()
    for r in m:
        r["valid_log_px"] = r["valid_elbo"] + 2.0
        r["valid_gap"] = 2.0
    fig = plots._training_curves_figure(m)
    left, right, gap_axes = fig.axes[:3]
    labels = [line.get_label() for line in left.lines]
    line = left.lines[labels.index("valid −log p(x) (IWAE)")]
    np.testing.assert_allclose(line.get_ydata(), [-r["valid_log_px"] for r in m])
    assert len(right.lines) == 2
    gap = [x for x in gap_axes.lines if x.get_label().startswith("valid log p(x) − ELBO")]
    assert len(gap) == 1 and np.all(gap[0].get_ydata() == 2.0) and gap[0].get_color() not in {x.get_color() for x in right.lines}
    lo, hi = gap_axes.get_ylim()
    assert lo < 2.0 < hi and hi - lo < 1.0  # on its own scale, not the terms' tens of nats
    plain = plots._training_curves_figure(_metrics())
    plain_left, plain_right = plain.axes[:2]
    assert len(plain.axes) == 2
    assert len(plain_left.lines) == 2 and len(plain_right.lines) == 2


def test_labels_of_nan_are_a_class_and_unsortable_labels_are_refused(tmp_path):
    """NaN labels are one class of their own whose points are drawn (NaN == NaN is False, so
    selecting by value lost them); labels that do not compare are one DataError."""
    mu = np.random.default_rng(0).normal(size=(50, 2))
    labels = np.where(np.arange(50) < 3, np.nan, 1.0)
    fig = plots._latent_scatter_figure(mu, labels)
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == 50
    assert sorted(t.get_text() for t in fig.axes[0].get_legend().get_texts()) == ["1.0", "nan"]
    for draw in (lambda: plots.latent_scatter(mu[:2], tmp_path / "a.png", labels=np.array([None, 1], dtype=object)),
                 lambda: plots.bubbles_plot([("q", mu[:2], np.zeros((2, 2)))], tmp_path / "b.png", labels=np.array([None, 1], dtype=object))):  # fmt: skip
        with pytest.raises(DataError, match=r"^labels must be of one sortable kind"):
            draw()


def test_point_estimates_are_drawn_as_points_in_the_bubble_pictures(tmp_path):
    """encode() of map and autoencoder runs gives log σ² = −inf (q is a point mass): the
    bubbles are dots of size 0; NaN or +inf log σ² are still refused."""
    rng = np.random.default_rng(0)
    mu, point = rng.normal(size=(20, 2)), np.full((20, 2), -np.inf)
    plots.bubbles_plot([("map", mu, point), ("vi", mu, np.zeros((20, 2)))], tmp_path / "b.png")
    x = rng.normal(size=(20, 3))
    plots.vae_spaces_plot(x, mu, tmp_path / "s.png", decode=lambda z: np.zeros((len(z), 3)), logvar=point)
    for path in ("b.png", "s.png"):
        assert Image.open(tmp_path / path).size[0] > 100
    for bad in (np.nan, np.inf):
        with pytest.raises(DataError, match=r"logvar contains 1 NaN or infinite"):
            plots.bubbles_plot([("q", mu, np.where(np.arange(40).reshape(20, 2) == 0, bad, 0.0))], tmp_path / "c.png")


@pytest.mark.parametrize(
    "kwargs, says",
    [({}, r"give kl_per_dim \(D,\) or kl_per_group"),
     ({"kl_per_group": {"z1": "abc"}}, r"kl_per_group's values must be a numeric array"),
     ({"kl_per_group": {"z1": float("nan")}}, r"kl_per_group's values contains 1 NaN"),
     ({"kl_per_group": [("z1", 1.0)]}, r"kl_per_group must be a dict"),
     ({"kl_per_dim": np.ones(4), "threshold": float("nan")}, r"threshold must be a finite number >= 0, got nan"),
     ({"kl_per_dim": np.ones(4), "threshold": -1}, r"threshold must be a finite number >= 0"),
     ({"kl_per_dim": np.ones(4), "variance": -np.ones(4)}, r"variance must be >= 0")],  # fmt: skip
)
def test_kl_per_dim_plot_refuses_what_it_cannot_draw(kwargs, says, tmp_path):
    variance = kwargs.pop("variance", np.ones(4))
    with pytest.raises(DataError, match=says):
        plots.kl_per_dim_plot(variance, tmp_path / "k.png", **kwargs)
    assert not (tmp_path / "k.png").exists()


def test_bound_pictures_refuse_malformed_gaps(tmp_path):
    g = {"log_px": np.zeros(3), "elbo_optimal": np.zeros(3), "elbo": np.zeros(3)}
    for methods, says in (({"m": {"log_px": g["log_px"], "elbo": g["elbo"]}}, r"methods\['m'\] must hold the arrays .*; missing elbo_optimal"),
                          ([g], r"methods must be a dict"),
                          ({"m": {**g, "elbo_optimal": np.zeros(2)}}, r"the arrays must have one value per row each")):  # fmt: skip
        with pytest.raises(DataError, match=says):
            plots.bound_bars_plot(methods, tmp_path / "b.png")
    with pytest.raises(DataError, match=r"log_px and elbo differ by more than float64 holds"):
        plots.bound_gap_plot(np.array([1e308, -1e308]), np.array([-1e308, 1e308]), tmp_path / "g.png")
    assert not any(tmp_path.iterdir())


def test_principal_axes_of_huge_values_and_titles_of_several_lines(tmp_path):
    """The PCA's variance shares of latents at 1e300 are numbers (squares would overflow), and
    a title of three lines gets three lines of room above the tiles."""
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(50, 5))
    shares = [plots._latent_scatter_figure(m).axes[0].get_xlabel() for m in (mu, mu * 1e300)]
    assert shares[0] == shares[1] and "nan" not in shares[0]
    heights = [plots.image_grid(rng.random((4, 64)), tmp_path / f"{n}.png", image_shape=(8, 8), title="\n".join(["line"] * n)) for n in (1, 3)]
    tall = [Image.open(p).size[1] for p in heights]
    assert tall[1] - tall[0] >= 2 * 10  # two more lines of text, each at least 10 px
