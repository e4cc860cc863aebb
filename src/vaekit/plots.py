"""The pictures of the notes: samples, reconstructions, latent spaces, training curves, the bound.

Every function takes numpy arrays, writes one PNG atomically (a temp file in the same directory,
then ``os.replace``, so a reader never sees half a file) and returns its path. Image grids use
Pillow only; charts use matplotlib through ``Figure`` + ``FigureCanvasAgg`` (no pyplot, no global
backend or figure registry to leak). Both are imported inside the functions so that importing
this module (and so ``vaekit --help``) stays fast.

Input checks raise :class:`vaekit.errors.DataError` with a one-line message naming the argument,
what was expected and what came.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import NormalDist

import numpy as np

from .errors import DataError
from .files import atomic_write as _atomic_write

__all__ = [
    "image_grid",
    "reconstruction_grid",
    "training_curves",
    "latent_scatter",
    "latent_traversal_grid",
    "posterior_range",
    "bound_gap_plot",
    "kl_per_dim_plot",
    "bubbles_plot",
    "vae_spaces_plot",
]

MIN_TILE_PX = 28  # default upscaling makes tiles at least this tall/wide (8x8 digits would be specks)
MAX_TILE_PX = 256  # ...but never upscales a tile's longer side past this (a 1x784 strip stays 784 wide)
RECON_COLUMNS = 8  # reconstruction_grid wraps into row-pairs of at most this many columns
PAD_VALUE = 0.5  # mid grey between tiles: visible on black digits and on white backgrounds alike


# --------------------------------------------------------------------------------------------
# checks and atomic writes


def _shape_str(a: np.ndarray) -> str:
    return "(" + ", ".join(str(s) for s in a.shape) + ("," if a.ndim == 1 else "") + ")"


def _as_float_array(a, name: str, ndim: int | tuple[int, ...], low_inf: bool = False) -> np.ndarray:
    """``a`` as a float64 array with the given number of dims, nonempty and finite (or −inf,
    with ``low_inf``: a point estimate's log σ²)."""
    if hasattr(a, "detach"):  # a torch tensor slipped through: accept it without importing torch
        a = a.detach().cpu().numpy()
    try:
        a = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{name} must be a numeric array, got {type(a).__name__} ({e})") from None
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if a.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise DataError(f"{name} must be a {want} array, got {a.ndim}-D array of shape {_shape_str(a)}")
    if a.size == 0:
        raise DataError(f"{name} is empty (shape={_shape_str(a)}); at least one value is required")
    bad = int(np.sum(~np.isfinite(a) & ~(low_inf & (a == -np.inf))))
    if bad:
        raise DataError(f"{name} contains {bad} NaN or infinite value(s)")
    return a


def picturable(image_shape) -> bool:
    """Whether images of ``image_shape`` can be drawn: (H, W), or (C, H, W) with C in {1, 3}
    (grey or RGB); other channel counts are data to a model, not pictures."""
    if image_shape is None:
        return False
    shape = tuple(int(s) for s in image_shape)
    return min(shape, default=0) >= 1 and (len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3)))


def _check_image_shape(image_shape) -> tuple[int, int, int]:
    """(H, W) or (C, H, W) with C in {1, 3}, returned as (C, H, W)."""
    try:
        shape = tuple(int(s) for s in image_shape)
    except (TypeError, ValueError):
        raise DataError(f"image_shape must be a tuple of ints, got {image_shape!r}") from None
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or shape[0] not in (1, 3) or min(shape) < 1:
        raise DataError(f"image_shape must be (H, W) or (C, H, W) with C in {{1, 3}}, got {tuple(image_shape)}")
    return shape  # type: ignore[return-value]


def _as_images(images, name: str, image_shape) -> tuple[np.ndarray, tuple[int, int, int]]:
    """(n, D) floats → (n, C, H, W) clipped to [0, 1]. (n, *image_shape) is accepted as well."""
    chw = _check_image_shape(image_shape)
    a = _as_float_array(images, name, ndim=(2, 3, 4))
    d = math.prod(chw)
    if a.ndim > 2 and math.prod(a.shape[1:]) == d:
        a = a.reshape(len(a), d)
    if a.ndim != 2:
        raise DataError(f"{name} must be a 2-D array (n, D), got shape {_shape_str(a)}")
    if a.shape[1] != d:
        raise DataError(
            f"{name} has D={a.shape[1]} values per image (shape {_shape_str(a)}) "
            f"but image_shape {tuple(image_shape)} needs prod={d}"
        )
    return np.clip(a, 0.0, 1.0).reshape(len(a), *chw), chw


def _check_positive_int(value, name: str, minimum: int = 1) -> int:
    from .config import check_positive_int

    return check_positive_int(name, value, minimum, error=DataError)





def _save_figure(fig, path) -> Path:
    """Render a matplotlib ``Figure`` to PNG atomically, then drop its artists."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # attaches itself as fig.canvas; no pyplot, no global state
    try:
        return _write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        fig.clear()


def _new_figure(figsize: tuple[float, float]):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


# --------------------------------------------------------------------------------------------
# image grids (Pillow only)


def _default_scale(chw: tuple[int, int, int]) -> int:
    """Nearest-neighbour upscaling of a tile: its shorter side to MIN_TILE_PX, unless that
    would take its longer side past MAX_TILE_PX (an elongated "image", 1 x 100000 say, would
    otherwise take gigabytes)."""
    short, long = min(chw[1], chw[2]), max(chw[1], chw[2])
    return max(1, min(math.ceil(MIN_TILE_PX / short), MAX_TILE_PX // long))


def _render_grid(tiles: np.ndarray, present: np.ndarray, ncol: int, pad: int, scale: int):
    """Tiles (m, C, H, W) in [0, 1] laid out row by row in ``ncol`` columns → a PIL image.

    Each tile is upscaled ``scale`` times (nearest neighbour) and tiles are ``pad`` pixels apart
    (no outer border), so the image is ``ncol·W·scale + (ncol−1)·pad`` wide and
    ``rows·H·scale + (rows−1)·pad`` tall. Tiles with ``present[i] == False`` and the gaps are
    mid grey."""
    from PIL import Image

    m, c, h, w = tiles.shape
    rows = math.ceil(m / ncol)
    th, tw = h * scale, w * scale
    canvas = np.full((rows * th + (rows - 1) * pad, ncol * tw + (ncol - 1) * pad, c), PAD_VALUE)
    big = tiles.repeat(scale, axis=2).repeat(scale, axis=3).transpose(0, 2, 3, 1)  # (m, th, tw, C)
    for i in np.flatnonzero(present):
        r, col = divmod(int(i), ncol)
        y, x = r * (th + pad), col * (tw + pad)
        canvas[y : y + th, x : x + tw] = big[i]
    pixels = np.rint(canvas * 255.0).astype(np.uint8)
    # uint8 (h, w) gives mode "L", uint8 (h, w, 3) mode "RGB"
    return Image.fromarray(pixels[..., 0] if c == 1 else pixels)


def _save_image(img, path) -> Path:
    return _write(path, lambda f: img.save(f, format="PNG"))


def _write(path, write) -> Path:
    """Atomically, with a failure to write (no space, no permission) as a one-line DataError."""
    try:
        return _atomic_write(path, write)
    except OSError as e:
        raise DataError(f"{path}: cannot write ({e.strerror or e})") from None


TEXT_PX = 11  # caption font size; 8x8 digits upscaled to 32 px leave room for one short line
MARGIN = 4  # white space between a caption and the tiles it names


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=TEXT_PX)
    except TypeError:  # Pillow < 10.1 has only its fixed bitmap font
        return ImageFont.load_default()


def _text_box(text: str, font) -> tuple[int, int]:
    from PIL import Image, ImageDraw

    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _fit_text(text: str, width: float, font) -> str:
    """``text`` as it fits in ``width`` pixels: whole, or cut short and ended with "..", so that
    captions side by side (the classes over a grid's columns) do not run into each other."""
    if _text_box(text, font)[0] <= width:
        return text
    for end in range(len(text) - 1, 0, -1):
        short = text[:end].rstrip() + ".."
        if _text_box(short, font)[0] <= width:
            return short
    return ""


def _frame(img, title: str | None = None, rows: Sequence[tuple[float, str]] = (), cols: Sequence[tuple[float, str]] = (),
           corner: str | None = None, below: str | None = None, above: Sequence[tuple[float, str]] = ()):  # fmt: skip
    """``img`` on a white canvas with captions: ``title`` centred above, ``rows`` (y centre in
    ``img``, text) right-aligned on the left, ``cols`` (x centre, text) centred beneath and
    ``above`` (x centre, text) centred over the tiles, ``corner`` above the row captions (the
    vertical axis's name) and ``below`` centred under the column captions (the horizontal
    axis's name)."""
    from PIL import Image, ImageDraw

    font = _font()
    line = _text_box("Ag0", font)[1] + MARGIN
    left = max([_text_box(t, font)[0] for _, t in rows] + [_text_box(corner, font)[0] if corner else 0])
    left = left + 2 * MARGIN if left else 0
    # A title of several lines is as tall as its lines; one line keeps the captions' height.
    top = (max(line, _text_box(title, font)[1] + MARGIN) + MARGIN if title else 0) + (line if corner or above else 0)
    bottom = (line + MARGIN if cols else 0) + (line if below else 0)
    width = max(left + img.width, _text_box(title, font)[0] + 2 * MARGIN if title else 0)
    canvas = Image.new(img.mode, (width, top + img.height + bottom), "white")
    canvas.paste(img, (left, top))
    draw = ImageDraw.Draw(canvas)

    def put(x: float, y: float, text: str, h: str, v: str) -> None:
        # Placed from the text's box rather than with Pillow's anchors, so that captions sit
        # alike with any font any Pillow >= 9 gives: h is l/m/r of x, v is t/m/b of y.
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
        dx = {"l": 0, "m": (x1 - x0) / 2, "r": x1 - x0}[h] + x0
        dy = {"t": 0, "m": (y1 - y0) / 2, "b": y1 - y0}[v] + y0
        draw.text((round(x - dx), round(y - dy)), text, fill="black", font=font)

    if title:
        put(width / 2, MARGIN, title, "m", "t")
    if corner:
        put(left - MARGIN, top - MARGIN, corner, "r", "b")
    for y, text in rows:
        put(left - MARGIN, top + y, text, "r", "m")
    for x, text in cols:
        put(left + x, top + img.height + MARGIN, text, "m", "t")
    for x, text in above:
        put(left + x, top - MARGIN, text, "m", "b")
    if below:
        put(left + img.width / 2, top + img.height + bottom - line + MARGIN // 2, below, "m", "t")
    return canvas


def _stack(images, gap: int):
    """Images one under another, ``gap`` white pixels apart, left-aligned."""
    from PIL import Image

    canvas = Image.new(images[0].mode, (max(i.width for i in images), sum(i.height for i in images) + gap * (len(images) - 1)), "white")
    y = 0
    for img in images:
        canvas.paste(img, (0, y))
        y += img.height + gap
    return canvas


def image_grid(
    images: np.ndarray,
    path,
    image_shape: tuple[int, ...],
    nrow: int | None = None,
    pad: int = 1,
    scale: int | None = None,
    title: str | None = None,
) -> Path:
    """Tile ``images`` (n, D), values in [0, 1] (others clipped), into one PNG.

    ``image_shape`` is (H, W) for grey or (C, H, W) with C in {1, 3}; grey gives a mode "L" PNG,
    three channels "RGB". ``nrow`` is the number of columns (torchvision's name for it; default
    ⌈√n⌉), tiles are filled row by row, ``pad`` grey pixels apart. Each tile is upscaled by the
    integer ``scale`` (nearest neighbour); by default the smallest one making tiles at least
    28 px. Tile (r, c) starts at pixel (x, y) = (c·(W·scale + pad), r·(H·scale + pad)) and pixel
    values are round(255·x). A ``title`` is written above the tiles on a white strip (the
    tiles then start that strip's height lower)."""
    tiles, chw = _as_images(images, "images", image_shape)
    n = len(tiles)
    ncol = math.ceil(math.sqrt(n)) if nrow is None else _check_positive_int(nrow, "nrow")
    ncol = min(ncol, n)
    pad = _check_positive_int(pad, "pad", minimum=0)
    scale = _default_scale(chw) if scale is None else _check_positive_int(scale, "scale")
    img = _render_grid(tiles, np.ones(n, dtype=bool), ncol, pad, scale)
    return _save_image(_frame(img, title) if title else img, path)


def reconstruction_grid(
    x: np.ndarray,
    x_hat: np.ndarray,
    path,
    image_shape,
    n: int = 16,
    labels: Sequence | None = None,
    title: str | None = None,
    annotate: bool = True,
) -> Path:
    """Inputs and their reconstructions, pair by pair: the first ``n`` rows of ``x`` and ``x_hat``
    (fewer if there are fewer) in row-pairs of up to 8 columns. Input i sits in grid row
    2·(i // 8), column i % 8; its reconstruction directly beneath it, in row 2·(i // 8) + 1.
    Unused cells of the last row-pair are grey.

    With ``annotate`` (default) every row-pair is named "data" and "reconstruction" on the
    left, each pair carries its class from ``labels`` (one per row of x) above it, and
    ``title`` sits on top. ``annotate=False`` gives the bare tiles, in the pixel layout of
    :func:`image_grid` with pad=1 and the default scale."""
    xs, chw = _as_images(x, "x", image_shape)
    xh, _ = _as_images(x_hat, "x_hat", image_shape)
    if xs.shape != xh.shape:
        raise DataError(f"x and x_hat must have the same shape, got x {xs.shape} and x_hat {xh.shape}")
    if labels is not None and len(labels) != len(xs):
        raise DataError(f"labels must have one entry per row of x ({len(xs)}), got {len(labels)}")
    n = min(_check_positive_int(n, "n"), len(xs))
    ncol = min(RECON_COLUMNS, n)
    blocks = math.ceil(n / ncol)
    scale = _default_scale(chw)
    tiles = np.zeros((2 * blocks * ncol, *chw))
    present = np.zeros(len(tiles), dtype=bool)
    for i in range(n):
        b, col = divmod(i, ncol)
        top, bottom = (2 * b) * ncol + col, (2 * b + 1) * ncol + col
        tiles[top], tiles[bottom] = xs[i], xh[i]
        present[top] = present[bottom] = True
    if not annotate:
        return _save_image(_render_grid(tiles, present, ncol, pad=1, scale=scale), path)
    th, tw = chw[1] * scale, chw[2] * scale
    framed = []
    for b in range(blocks):
        rows = slice(2 * b * ncol, (2 * b + 2) * ncol)
        block = _render_grid(tiles[rows], present[rows], ncol, pad=1, scale=scale)
        shown = range(b * ncol, min(n, (b + 1) * ncol))
        font = _font()
        above = [((i - b * ncol) * (tw + 1) + tw / 2, _fit_text(str(labels[i]), tw, font)) for i in shown] if labels is not None else ()
        framed.append(_frame(block, rows=[(th / 2, "data"), (th + 1 + th / 2, "reconstruction")], above=above))
    img = _stack(framed, gap=2 * MARGIN)
    return _save_image(_frame(img, title) if title else img, path)


def posterior_range(mu: np.ndarray, coverage: float = 0.98) -> np.ndarray:
    """(d, 2): per latent dimension, a range holding the central ``coverage`` of the posterior
    means ``mu`` (n, d): from the (1 − coverage)/2 to the (1 + coverage)/2 sample quantile (1st
    to 99th percentile by default), each rounded outward to a row's value. A latent picture spanning this range shows where the data are encoded, which for a
    trained VAE is often far wider (or narrower) than the prior's ±1.64."""
    mu = _as_float_array(mu, "mu", ndim=2)
    if not (0 < coverage <= 1):
        raise DataError(f"coverage must be in (0, 1], got {coverage!r}")
    tail = 100 * (1 - coverage) / 2
    # The sample quantiles outward (lower, higher), so at least ``coverage`` of the rows lie
    # within the range whatever their number.
    lo = np.percentile(mu, tail, axis=0, method="lower")
    hi = np.percentile(mu, 100 - tail, axis=0, method="higher")
    # A dimension the encoder ignores has one value: widen it so the grid still has n points.
    same = hi - lo < 1e-6
    lo, hi = np.where(same, lo - 1.0, lo), np.where(same, hi + 1.0, hi)
    return np.stack([lo, hi], axis=1)


def latent_traversal_grid(
    decode: Callable[[np.ndarray], np.ndarray],
    path,
    image_shape,
    n: int = 15,
    span: float = 3.0,
    spacing: str = "quantile",
    limits: np.ndarray | None = None,
    annotate: bool = True,
    title: str | None = None,
) -> Path:
    """The learned data manifold of a 2-D latent space (Kingma & Welling 2014, Fig. 4).

    z runs over an n×n grid; with ``spacing="quantile"`` (default, as in the paper) the
    coordinates are the N(0, 1) quantiles Φ⁻¹(p) for p = linspace(0.05, 0.95, n), so each cell
    holds the same prior mass and ``span`` is not used; ``spacing="linear"`` takes
    linspace(−span, span, n) instead, for priors other than N(0, I) or to look into the tails.
    ``limits`` ((lo₁, hi₁), (lo₂, hi₂)) takes linspace(lo_j, hi_j, n) for each z_j instead of
    either (:func:`posterior_range` gives the range where the data's posteriors are).
    ``decode`` gets one float32 array of shape (n·n, 2), in reading order: z1 grows to the right,
    z2 grows upwards (the top row has the largest z2, as in a plot), so row 0 of the array is
    (min z1, max z2). It must return (n·n, D) means in [0, 1]. Tiles are 1 px apart: small
    images (8x8 digits) that touch blur into stripes. With ``annotate`` (default) the z values
    of the columns and rows are written beneath and beside the tiles; ``annotate=False`` gives
    the bare tiles of :func:`image_grid`."""
    n = _check_positive_int(n, "n")
    if limits is not None:
        limits = _as_float_array(limits, "limits", ndim=2)
        if limits.shape != (2, 2) or np.any(limits[:, 1] <= limits[:, 0]):
            raise DataError(f"limits must be ((lo1, hi1), (lo2, hi2)) with lo < hi, got {limits.tolist()}")
        # decode gets float32 z: a limit past its range would arrive as ±inf.
        if np.any(np.abs(limits) > float(np.finfo(np.float32).max)):
            raise DataError(f"limits must lie within float32's range (±{np.finfo(np.float32).max:.4g}), got {limits.tolist()}")
        grid1, grid2 = np.linspace(*limits[0], n), np.linspace(*limits[1], n)
    elif spacing == "quantile":
        grid1 = grid2 = np.array([NormalDist().inv_cdf(p) for p in np.linspace(0.05, 0.95, n)])
    elif spacing == "linear":
        if not (isinstance(span, (int, float)) and math.isfinite(span) and 0 < span <= float(np.finfo(np.float32).max)):
            raise DataError(f"span must be a number > 0 within float32's range, got {span!r}")
        grid1 = grid2 = np.linspace(-span, span, n)
    else:
        raise DataError(f"spacing must be 'quantile' or 'linear', got {spacing!r}")
    z2, z1 = np.meshgrid(grid2[::-1], grid1, indexing="ij")  # rows: z2 from high to low
    z = np.stack([z1.ravel(), z2.ravel()], axis=1).astype(np.float32)  # (n·n, 2)
    x = _as_float_array(decode(z), "decode(z)", ndim=2)
    if len(x) != len(z):
        raise DataError(f"decode(z) returned {len(x)} rows for {len(z)} latent points (shape {_shape_str(x)})")
    if not annotate:
        return image_grid(x, path, image_shape, nrow=n, pad=1)
    tiles, chw = _as_images(x, "decode(z)", image_shape)
    scale = _default_scale(chw)
    img = _render_grid(tiles, np.ones(len(tiles), dtype=bool), n, pad=1, scale=scale)
    th, tw = chw[1] * scale, chw[2] * scale
    cols = [(c * (tw + 1) + tw / 2, label) for c, label in _tick_labels(grid1, tw + 1, across=True)]
    rows = [(r * (th + 1) + th / 2, label) for r, label in _tick_labels(grid2[::-1], th + 1, across=False)]
    return _save_image(_frame(img, title, rows=rows, cols=cols, corner="z2", below="z1"), path)


def _tick_labels(values: np.ndarray, cell_px: int, across: bool) -> list[tuple[int, str]]:
    """(index, label) of the ticks of a grid axis with ``cell_px`` pixels per value: every value
    whose label fits (side by side ``across``, ~7 px a character; stacked, 14 px a line), with the
    fewest decimals (1 to 4) that keep the shown labels apart, so a fine grid over a narrow range
    does not repeat a label."""
    for decimals in range(1, 5):
        labels = [f"{v:.{decimals}f}" for v in values]
        labels = [label.lstrip("-") if float(label) == 0 else label for label in labels]  # no "-0.0"
        need_px = 7 * max(len(label) for label in labels) + 2 if across else 14
        step = max(1, math.ceil(need_px / cell_px))
        shown = labels[::step]
        if len(set(shown)) == len(shown):
            break
    return [(i, labels[i]) for i in range(0, len(values), step)]


# --------------------------------------------------------------------------------------------
# charts (matplotlib, Agg)


def _series(metrics: Sequence[dict], key: str) -> np.ndarray:
    """metrics[i][key] as floats, NaN where missing or None."""
    out = np.full(len(metrics), np.nan)
    for i, m in enumerate(metrics):
        v = m.get(key)
        if v is not None:
            try:
                out[i] = float(v)
            except (TypeError, ValueError):
                raise DataError(f"metrics[{i}][{key!r}] must be a number, got {v!r}") from None
    return out


def _training_curves_figure(metrics: list[dict]):
    from matplotlib.ticker import MaxNLocator

    if not isinstance(metrics, Sequence) or isinstance(metrics, (str, bytes)):
        raise DataError(f"metrics must be a list of dicts (one per epoch), got {type(metrics).__name__}")
    if len(metrics) == 0:
        raise DataError("metrics is empty; at least one epoch is required")
    for i, m in enumerate(metrics):
        if not isinstance(m, dict):
            raise DataError(f"metrics[{i}] must be a dict, got {type(m).__name__}")
    epoch = _series(metrics, "epoch")
    epoch = np.where(np.isnan(epoch), np.arange(1, len(metrics) + 1), epoch)
    beta = _series(metrics, "beta")
    beta_is_one = bool(np.all(np.isnan(beta) | (beta == 1.0)))
    # −ELBO and −recon: the notes' losses are negated bounds, in nats per datapoint.
    left = [("train −ELBO", -_series(metrics, "train_elbo"), "C0", "-"),
            ("valid −ELBO", -_series(metrics, "valid_elbo"), "C1", "-")]  # fmt: skip
    log_px = _series(metrics, "valid_log_px")  # with --valid-k: the evidence the ELBO bounds
    if not np.all(np.isnan(log_px)):
        left.append(("valid −log p(x) (IWAE)", -log_px, "C1", ":"))
    train_loss = _series(metrics, "train_loss")
    if any(m.get("objective") == "iwae" for m in metrics):
        # Trained on the importance-weighted bound: its loss, and its validation value, which
        # picks the best epoch.
        left.append(("train −IWAE bound", train_loss, "C0", "--"))
        left.append(("valid −IWAE bound", -_series(metrics, "valid_score"), "C1", "--"))
    elif np.all(np.isnan(left[0][1])) or not beta_is_one:  # β ≠ 1: the loss is not −ELBO, show both
        left.append(("train loss (β-weighted)", train_loss, "C0", "--"))
    right = [("valid −recon = −E_q[log p(x|z)]", -_series(metrics, "valid_recon"), "C2", "-"),
             ("valid KL(q(z|x) ‖ p(z))", _series(metrics, "valid_kl"), "C3", "-")]  # fmt: skip
    gap = _series(metrics, "valid_gap")  # a few nats beside a recon of tens: a panel of its own
    gaps = not np.all(np.isnan(gap))
    if all(np.all(np.isnan(s)) for _, s, _, _ in left + right):
        raise DataError(
            "metrics have no values for any of train_elbo, valid_elbo, train_loss, valid_recon, valid_kl"
        )

    forces = any(m.get("force_mean") is not None for m in metrics)
    panels = 2 + gaps + forces
    fig = _new_figure((5.5 * panels, 4.6))
    ax_l, ax_r, *more = fig.subplots(1, panels)
    ax_g = more.pop(0) if gaps else None
    ax_f = more
    marker = "o" if len(metrics) <= 30 else None
    handles = {ax_l: [], ax_r: []}
    for ax, curves in ((ax_l, left), (ax_r, right)):
        for label, y, color, ls in curves:
            ok = ~np.isnan(y)
            if ok.any():
                handles[ax] += ax.plot(epoch[ok], y[ok], ls, color=color, marker=marker, ms=3, label=label)
        if not handles[ax]:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes, color="0.5")
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per datapoint")
        ax.grid(alpha=0.3)
    for ax in (ax_l, ax_r, ax_g, *ax_f):
        if ax is not None:  # epochs are whole: no tick at 0.96 or 1.2
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax_l.set_title("Negative ELBO (lower is better)")
    ax_r.set_title("Validation terms: −ELBO = −recon + KL")
    if not np.all(np.isnan(beta)) and np.nanmin(beta) != np.nanmax(beta):  # a β schedule (warm-up)
        ax_b = ax_r.twinx()
        ok = ~np.isnan(beta)
        handles[ax_r] += ax_b.plot(epoch[ok], beta[ok], ":", color="0.4", label="β (right axis)")
        ax_b.set_ylabel("β")
    lr = _series(metrics, "lr")
    if not np.all(np.isnan(lr)) and np.nanmin(lr) != np.nanmax(lr):  # a learning-rate schedule
        ax_lr = ax_l.twinx()
        ok = ~np.isnan(lr)
        handles[ax_l] += ax_lr.step(epoch[ok], lr[ok], ":", where="post", color="0.4", label="learning rate (right axis)")
        ax_lr.set_yscale("log")
        ax_lr.set_ylabel("learning rate")
    if gaps:
        ok = ~np.isnan(gap)
        handles[ax_g] = ax_g.plot(epoch[ok], gap[ok], "-", color="C6", marker=marker, ms=3,
                                  label="valid log p(x) − ELBO ≈ KL(q(z|x) ‖ p(z|x))")
        ax_g.set_title("Gap between the evidence and its bound")
        ax_g.set_xlabel("epoch")
        ax_g.set_ylabel("nats per datapoint")
        ax_g.grid(alpha=0.3)
    if forces:
        handles[ax_f[0]] = _draw_forces(ax_f[0], epoch, metrics, marker)
    for ax, hs in handles.items():  # below the axes: curves of any shape stay uncovered
        if hs:
            ax.legend(handles=hs, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, fontsize=9, frameon=False)
    fig.suptitle("Training curves")
    return fig


def _draw_forces(ax, epoch: np.ndarray, metrics: Sequence[dict], marker) -> list:
    """The notes' three bubble forces on the validation rows against epoch: the KL's
    mean term ½ Σ μ² and variance term ½ Σ (σ² − log σ² − 1) on ``ax``, the reconstruction
    term −E_q[log p(x|z)] (larger, and of its own scale) on a twin axis. Returns the lines."""
    mean, variance = _series(metrics, "force_mean"), _series(metrics, "force_variance")
    recon = _series(metrics, "force_recon")
    lines = []
    for label, y, color in (("mean ½Σμ²: wraps bubbles into one", mean, "C4"),
                            ("variance ½Σ(σ²−log σ²−1): unit size", variance, "C5")):  # fmt: skip
        ok = ~np.isnan(y)
        lines += ax.plot(epoch[ok], y[ok], "-", color=color, marker=marker, ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("KL terms (nats per datapoint)")
    ax.grid(alpha=0.3)
    ax_recon = ax.twinx()
    ok = ~np.isnan(recon)
    lines += ax_recon.plot(epoch[ok], recon[ok], "--", color="C2", marker=marker, ms=3,
                           label="recon −E_q[log p(x|z)]: pushes apart (right axis)")  # fmt: skip
    ax_recon.set_ylabel("reconstruction (nats per datapoint)")
    ax.set_title("The three bubble forces (valid): loss = recon + β·(mean + variance)", fontsize=10)
    return lines


def training_curves(metrics: list[dict], path) -> Path:
    """Two panels from the per-epoch metric records of a run (keys ``epoch``, ``train_loss``,
    ``train_elbo``, ``valid_elbo``, ``valid_recon``, ``valid_kl``, ``beta``; missing or None values
    are skipped). Left: train and valid −ELBO against epoch (plus the β-weighted train loss when
    β ≠ 1 somewhere, or when train_elbo is absent). Right: valid −recon = −E_q[log p(x|z)] and
    KL(q(z|x) ‖ p(z)), whose sum is the valid −ELBO (notes, eq. 3), with β on a twin axis when
    it changes, and the learning rate (``lr``, log scale) on a twin of the left panel when it
    changes. With ``force_recon``, ``force_mean`` and ``force_variance`` (a diagonal Gaussian q
    under a standard normal prior) a third panel shows the notes' three bubble forces,
    whose sum is the valid −ELBO. All in nats per datapoint."""
    return _save_figure(_training_curves_figure(metrics), path)


def _pca_2d(mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project (n, d) onto the first two principal axes of the centred rows (SVD).

    Returns the (n, 2) coordinates and the fraction of total variance of each axis. Axis signs
    are fixed (largest loading positive) so the picture does not flip between runs."""
    centred = mu - mu.mean(axis=0)
    top = float(np.abs(centred).max(initial=0.0))
    # The SVD of the rows scaled to at most 1: singular values of 1e300 would square to inf.
    _, s, vt = np.linalg.svd(centred / top if top > 0 else centred, full_matrices=False)
    vt = vt[:2]
    flip = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
    vt = vt * np.where(flip == 0, 1.0, flip)[:, None]
    var = s**2
    ratio = var[:2] / var.sum() if var.sum() > 0 else np.zeros(len(vt))
    proj = centred @ vt.T
    if proj.shape[1] < 2:  # n == 1: a single point
        proj = np.pad(proj, ((0, 0), (0, 2 - proj.shape[1])))
        ratio = np.pad(ratio, (0, 2 - len(ratio)))
    return proj, ratio


def _latent_scatter_figure(mu: np.ndarray, labels: np.ndarray | None = None, title: str | None = None):
    mu = _as_float_array(mu, "mu", ndim=(1, 2))
    if mu.ndim == 1:
        mu = mu[:, None]
    n, d = mu.shape
    if labels is not None:
        classes, index = _classes(labels, n)
        labels = np.asarray(labels)

    if d == 1:
        # a strip plot: the vertical position is random jitter so overlapping points stay visible
        xy = np.stack([mu[:, 0], np.random.default_rng(0).uniform(-1, 1, n)], axis=1)
        xlabel, ylabel = "z₁ (posterior mean)", "jitter (no meaning)"
    elif d == 2:
        xy = mu
        xlabel, ylabel = "z₁ (posterior mean)", "z₂ (posterior mean)"
    else:
        xy, ratio = _pca_2d(mu)
        xlabel = f"PC 1 ({100 * ratio[0]:.0f}% var)"
        ylabel = f"PC 2 ({100 * ratio[1]:.0f}% var)"

    size = float(np.clip(8000 / n, 3, 25))  # small markers, smaller for many points
    alpha = float(np.clip(1500 / n, 0.3, 0.9))  # and transparent so density shows
    fig = _new_figure((6.4, 5.4))
    ax = fig.subplots()
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=size, alpha=alpha, linewidths=0, color="C0")
    else:
        if len(classes) <= 20:
            import matplotlib

            cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
            for k, cls in enumerate(classes):
                sel = index == k  # NaN == NaN is False: select by the class's index
                ax.scatter(xy[sel, 0], xy[sel, 1], s=size, alpha=alpha, linewidths=0, color=cmap(k), label=str(cls))
            leg = ax.legend(title="label", markerscale=max(1.0, 6 / math.sqrt(size)), fontsize=8,
                            loc="center left", bbox_to_anchor=(1.01, 0.5))  # fmt: skip
            for h in getattr(leg, "legend_handles", None) or leg.legendHandles:  # renamed in mpl 3.7
                h.set_alpha(1.0)
        else:
            if not np.issubdtype(labels.dtype, np.number):
                raise DataError(f"labels with more than 20 classes must be numeric, got dtype {labels.dtype}")
            sc = ax.scatter(xy[:, 0], xy[:, 1], s=size, alpha=alpha, linewidths=0, c=labels, cmap="viridis")
            fig.colorbar(sc, ax=ax, label="label")
    if d == 1:
        ax.set_yticks([])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if title is None:
        title = f"Posterior means, d = {d}" + (" (PCA to 2-D)" if d > 2 else "") + f", n = {n}"
    ax.set_title(title)
    return fig


def latent_scatter(mu: np.ndarray, path, labels: np.ndarray | None = None, title: str | None = None) -> Path:
    """Scatter of posterior means ``mu`` (n, d): as is for d = 2; for d = 1 against random
    jitter (a strip plot); for d > 2 projected on the first two principal components of the
    centred means, with the variance share of each in the axis labels ("PC 1 (37% var)").
    Integer ``labels`` (n,) colour the points with a discrete colormap and a legend (a colorbar
    beyond 20 classes)."""
    return _save_figure(_latent_scatter_figure(mu, labels, title), path)


def _padded_range(lo: float, hi: float, share: float = 0.05) -> tuple[float, float]:
    """[lo, hi] widened by ``share`` of its width, in float64; an (almost) constant sample gets
    ±0.5, or ±1e-6 of its magnitude where 0.5 would vanish in the rounding (a sample of 1e17s
    has float64 neighbours 16 apart), so that axes and histogram bins have a finite width."""
    lo, hi = float(lo), float(hi)
    floor = max(0.5, 1e-6 * max(abs(lo), abs(hi)))
    pad = share * (hi - lo) if hi - lo > floor else floor
    return lo - pad, hi + pad


def _bound_gap_figure(log_px: np.ndarray, elbo: np.ndarray, title: str | None = None):
    log_px = _as_float_array(log_px, "log_px", ndim=1)
    elbo = _as_float_array(elbo, "elbo", ndim=1)
    if log_px.shape != elbo.shape:
        raise DataError(
            f"log_px and elbo must have the same length, got log_px {_shape_str(log_px)} and elbo {_shape_str(elbo)}"
        )
    n = len(log_px)
    with np.errstate(over="ignore"):
        gap = log_px - elbo
    if not np.all(np.isfinite(gap)) or not np.isfinite(max(log_px.max(), elbo.max()) - min(log_px.min(), elbo.min())):
        raise DataError("log_px and elbo differ by more than float64 holds; expected estimates in nats")
    above = int(np.sum(gap < 0))  # only possible because log_px is itself an estimate

    fig = _new_figure((11, 4.6))
    ax_s, ax_h = fig.subplots(1, 2)
    ax_s.scatter(log_px, elbo, s=float(np.clip(4000 / n, 3, 20)), alpha=float(np.clip(1000 / n, 0.2, 0.8)),
                 linewidths=0, color="C0", label="datapoints")  # fmt: skip
    line = np.array(_padded_range(min(log_px.min(), elbo.min()), max(log_px.max(), elbo.max())))
    ax_s.plot(line, line, "--", color="0.3", lw=1, label="ELBO = log p(x)")
    ax_s.set_xlim(*line)
    ax_s.set_ylim(*line)
    ax_s.set_aspect("equal", adjustable="box")
    ax_s.set_xlabel("log p(x) estimate (nats)")
    ax_s.set_ylabel("ELBO (nats)")
    ax_s.set_title("The ELBO lies below the evidence")
    ax_s.legend(loc="upper left", fontsize=9)
    ax_s.grid(alpha=0.3)

    bins = int(np.clip(math.sqrt(n), 5, 60))
    gap = gap.astype(np.float64)  # bin edges in float32 can collapse onto each other
    ax_h.hist(gap, bins=bins, range=_padded_range(gap.min(), gap.max(), share=0.0), color="C1", alpha=0.8)
    ax_h.axvline(gap.mean(), color="k", lw=1.5, label=f"mean gap = {gap.mean():.2f} nats")
    ax_h.axvline(0.0, color="0.5", lw=1, ls=":")
    if above:
        ax_h.plot([], [], " ", label=f"{above} of {n} below 0 (estimator noise)")
    ax_h.set_xlabel("log p(x) − ELBO = KL(q(z|x) ‖ p(z|x)) (nats)")
    ax_h.set_ylabel("datapoints")
    ax_h.set_title("Gap per datapoint")
    ax_h.legend(loc="upper right", fontsize=9)
    ax_h.grid(alpha=0.3)
    fig.suptitle(title if title is not None else f"Evidence vs. ELBO (n = {n})")
    return fig


def bound_gap_plot(log_px: np.ndarray, elbo: np.ndarray, path, title: str | None = None) -> Path:
    """Per datapoint, the evidence estimate ``log_px`` (n,) against ``elbo`` (n,) with the line
    y = x (the notes: log p(x) = ELBO + KL(q(z|x) ‖ p(z|x)) ≥ ELBO, so points lie beneath it),
    and a histogram of the gap log_px − elbo with its mean marked. Nats throughout."""
    return _save_figure(_bound_gap_figure(log_px, elbo, title), path)


def _kl_per_dim_figure(variance: np.ndarray, kl_per_dim: np.ndarray | None, threshold: float,
                       kl_per_group: dict | None = None, title: str | None = None):  # fmt: skip
    variance = _as_float_array(variance, "variance", ndim=1)
    d = len(variance)
    if d == 0:
        raise DataError("variance is empty; at least one latent unit is required")
    if np.any(variance < 0):
        raise DataError(f"variance must be >= 0 (a variance across rows), got {variance.min():g}")
    if not isinstance(threshold, (int, float, np.number)) or isinstance(threshold, bool) or not np.isfinite(threshold) or threshold < 0:
        raise DataError(f"threshold must be a finite number >= 0, got {threshold!r}")
    if kl_per_dim is None and not kl_per_group:
        raise DataError("give kl_per_dim (D,) or kl_per_group {group: KL}: the top panel draws one of them")
    if kl_per_dim is not None:
        kl_per_dim = _as_float_array(kl_per_dim, "kl_per_dim", ndim=1)
        if kl_per_dim.shape != variance.shape:
            raise DataError(f"kl_per_dim must have shape ({d},) to match variance, got {_shape_str(kl_per_dim)}")
    elif not isinstance(kl_per_group, dict):
        raise DataError(f"kl_per_group must be a dict {{group: KL in nats}}, got {type(kl_per_group).__name__}")
    else:
        values = _as_float_array(list(kl_per_group.values()), "kl_per_group's values", ndim=1)
        kl_per_group = dict(zip(map(str, kl_per_group), values))
    active = variance > threshold
    colors = np.where(active, "C0", "0.65")
    units = np.arange(d)
    fig = _new_figure((max(7.0, min(16.0, 0.25 * d + 4)), 6.4))
    ax_k, ax_v = fig.subplots(2, 1, sharex=kl_per_dim is not None)
    if kl_per_dim is not None:
        ax_k.bar(units, kl_per_dim, color=colors, width=0.8)
        ax_k.set_ylabel("KL (nats)")
        ax_k.set_title(f"KL(q(z_u|x) ‖ N(0, 1)) per dimension, mean over rows\ntotal {kl_per_dim.sum():.2f} nats")
    else:
        # The KL does not split by dimension here: the per-group KL is the finest split.
        groups = dict(kl_per_group or {})
        ax_k.bar(range(len(groups)), list(groups.values()), color="C0", width=0.6)
        ax_k.set_xticks(range(len(groups)), list(groups.keys()))
        ax_k.set_ylabel("KL (nats)")
        ax_k.set_title("KL per latent group\n(the KL does not split by dimension for this q and prior)")
    ax_v.bar(units, np.maximum(variance, 1e-12), color=colors, width=0.8)
    ax_v.set_yscale("log")
    ax_v.axhline(threshold, color="k", ls="--", lw=1, label=f"active above {threshold:g}")
    ax_v.set_xlabel("latent unit u")
    ax_v.set_ylabel("Var_x(E_q[z_u])")
    ax_v.set_title(f"Activity: {int(active.sum())} of {d} units active (blue; grey: inactive)")
    ax_v.legend(loc="best", fontsize=9)
    for ax in (ax_k, ax_v):
        ax.grid(alpha=0.3, axis="y")
    if kl_per_dim is not None:
        ax_v.set_xticks(units if d <= 40 else units[:: math.ceil(d / 40)])
    fig.suptitle(title if title is not None else "Posterior collapse: per-unit KL and activity")
    return fig


def kl_per_dim_plot(variance: np.ndarray, path, kl_per_dim: np.ndarray | None = None, threshold: float = 1e-2,
                    kl_per_group: dict | None = None, title: str | None = None) -> Path:  # fmt: skip
    """Posterior collapse at a glance. Top: bars of each latent dimension's KL(q(z_u|x) ‖ N(0,1))
    ``kl_per_dim`` (D,) (or, when None, of each group's KL ``kl_per_group``). Bottom: the
    activity Var_x(E_q[z_u]) ``variance`` (D,) on a log axis with the ``threshold`` of Burda
    et al. (2015, sec. 5.2); active units blue, inactive grey, in both panels."""
    return _save_figure(_kl_per_dim_figure(variance, kl_per_dim, threshold, kl_per_group, title), path)


# --------------------------------------------------------------------------------------------
# the bubbles of a 2-D latent and the VAE spaces (matplotlib, Agg)


def _classes(labels, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(classes, index of each row's class) of ``labels`` (n,): NaN is one class of its own;
    labels that do not sort (None beside numbers) are refused in one line."""
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise DataError(f"labels must have shape ({n},) to match the {n} points, got {_shape_str(labels)}")
    try:
        classes, index = np.unique(labels, return_inverse=True)
    except TypeError as e:
        raise DataError(f"labels must be of one sortable kind (numbers, or strings), got {labels.dtype} values that do not compare ({e})") from None
    return classes, index.reshape(-1)


def _label_colors(labels: np.ndarray | None, n: int) -> tuple[np.ndarray, list]:
    """RGBA colours (n, 4) of the points and legend handles: one colour per class for up to 20
    classes (tab10/tab20), a viridis ramp over numeric labels beyond that, C0 without labels."""
    import matplotlib
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D

    if labels is None:
        return np.tile(to_rgba("C0"), (n, 1)), []
    classes, index = _classes(labels, n)
    labels = np.asarray(labels)
    if len(classes) <= 20:
        cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
        handles = [Line2D([], [], ls="", marker="o", color=cmap(k), label=str(c)) for k, c in enumerate(classes)]
        return np.array([cmap(k) for k in index]), handles
    if not np.issubdtype(labels.dtype, np.number):
        raise DataError(f"labels with more than 20 classes must be numeric, got dtype {labels.dtype}")
    span = np.ptp(labels.astype(float)) or 1.0
    return matplotlib.colormaps["viridis"]((labels - labels.min()) / span), []


def _check_bubbles(mu, logvar, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    mu = _as_float_array(mu, f"{name} mu", ndim=2)
    if mu.shape[1] != 2:
        raise DataError(f"{name} mu must have 2 columns (a 2-D latent), got shape {_shape_str(mu)}")
    if logvar is None:
        return mu, None
    logvar = _as_float_array(logvar, f"{name} logvar", ndim=2, low_inf=True)  # −inf: a point estimate's q
    if logvar.shape != mu.shape:
        raise DataError(f"{name} logvar must have the shape of mu {_shape_str(mu)}, got {_shape_str(logvar)}")
    return mu, logvar


def _draw_bubbles(ax, mu: np.ndarray, logvar: np.ndarray | None, colors: np.ndarray) -> None:
    """Each point's q(z|x) as the ellipse μ ± σ per axis (one EllipseCollection, one ellipse per
    row), or its μ as a dot when q is a point mass; the prior's unit circle N(0, I) dashed."""
    from matplotlib.collections import EllipseCollection
    from matplotlib.patches import Circle

    n = len(mu)
    if logvar is not None:
        sigma = np.exp(0.5 * logvar)
        face = colors.copy()
        face[:, 3] = float(np.clip(20 / n, 0.04, 0.25))  # overlapping bubbles still show through
        edge = colors.copy()
        edge[:, 3] = float(np.clip(100 / n, 0.3, 0.8))
        # widths and heights are full axis lengths: 2σ spans μ − σ to μ + σ
        ax.add_collection(EllipseCollection(2 * sigma[:, 0], 2 * sigma[:, 1], np.zeros(n), units="xy", offsets=mu,
                                            offset_transform=ax.transData, facecolors=face, edgecolors=edge, linewidths=0.6))  # fmt: skip
    ax.scatter(mu[:, 0], mu[:, 1], s=3, color=colors, linewidths=0)
    ax.add_patch(Circle((0, 0), 1.0, fill=False, ls="--", lw=1.2, color="k", label="p(z) = N(0, I): μ ± σ"))
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("z₁")
    ax.set_ylabel("z₂")
    ax.grid(alpha=0.3)


def _bubbles_limit(parts: list[tuple[np.ndarray, np.ndarray | None]]) -> float:
    """Half-width of a square view that holds the prior's circle and nearly all bubbles (the
    99.5th percentile of |μ| + σ: one stray bubble does not shrink all others to dots)."""
    reach = [np.abs(mu) + (0.0 if lv is None else np.exp(0.5 * lv)) for mu, lv in parts]
    return 1.08 * max(1.5, float(np.quantile(np.concatenate(reach).ravel(), 0.995)))


def _bubbles_figure(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], labels: np.ndarray | None = None,
                    title: str | None = None):  # fmt: skip
    if not isinstance(panels, Sequence) or len(panels) == 0:
        raise DataError("panels must be a non-empty list of (title, mu, logvar)")
    checked = []
    for i, panel in enumerate(panels):
        if not (isinstance(panel, (tuple, list)) and len(panel) == 3):
            raise DataError(f"panels[{i}] must be (title, mu, logvar), got {type(panel).__name__}")
        checked.append((str(panel[0]), *_check_bubbles(panel[1], panel[2], f"panels[{i}]")))
    n = len(checked[0][1])
    colors, handles = _label_colors(labels, n)
    for i, (_, mu, _) in enumerate(checked):
        if len(mu) != n:
            raise DataError(f"every panel must show the same {n} points; panels[{i}] has {len(mu)}")
    lim = _bubbles_limit([(mu, lv) for _, mu, lv in checked])
    k = len(checked)
    fig = _new_figure((4.6 * k + (1.2 if handles else 0.0), 5.0))
    axes = np.atleast_1d(fig.subplots(1, k, sharex=True, sharey=True))
    for ax, (name, mu, logvar) in zip(axes, checked):
        _draw_bubbles(ax, mu, logvar, colors)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_title(name, fontsize=10)
    prior = [axes[0].patches[-1]]
    axes[-1].legend(handles=prior + handles, title="label" if handles else None, fontsize=8,
                    loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)  # fmt: skip
    fig.suptitle(title if title is not None else f"q(z|x) of {n} points: each bubble is μ ± σ per axis")
    return fig


def bubbles_plot(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], path, labels: np.ndarray | None = None,
                 title: str | None = None) -> Path:  # fmt: skip
    """The notes' bubbles: one panel per ``(title, mu, logvar)`` in ``panels``
    (each (n, 2), the same n points in every panel: e.g. the start, middle and end of
    training, or one β each), every point's q(z|x) = N(μ, diag σ²) drawn as the ellipse
    μ ± σ per axis, coloured by ``labels`` (n,) where given, with the prior's unit circle
    dashed. The panels share one square view, so sizes and spreads compare."""
    return _save_figure(_bubbles_figure(panels, labels, title), path)


def _latent_grid(mu: np.ndarray, logvar: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """An n×n grid (its two coordinate vectors) spanning the posteriors: per axis from the 1st
    percentile of μ − σ to the 99th of μ + σ (σ = 0 for point masses)."""
    sigma = np.zeros_like(mu) if logvar is None else np.exp(0.5 * logvar)
    lo, hi = np.quantile(mu - sigma, 0.01, axis=0), np.quantile(mu + sigma, 0.99, axis=0)
    hi = np.where(hi > lo, hi, lo + 1.0)
    return np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)


def _vae_spaces_figure(x: np.ndarray, mu: np.ndarray, decode: Callable[[np.ndarray], np.ndarray],
                       logvar: np.ndarray | None = None, labels: np.ndarray | None = None, grid: int = 25,
                       title: str | None = None):  # fmt: skip
    x = _as_float_array(x, "x", ndim=2)
    if x.shape[1] != 3:
        raise DataError(f"x must have 3 columns (data in 3-D), got shape {_shape_str(x)}")
    mu, logvar = _check_bubbles(mu, logvar, "latent")
    if len(mu) != len(x):
        raise DataError(f"mu must have one row per row of x ({len(x)}), got {len(mu)}")
    grid = _check_positive_int(grid, "grid", minimum=2)
    colors, handles = _label_colors(labels, len(x))
    g1, g2 = _latent_grid(mu, logvar, grid)
    z1, z2 = np.meshgrid(g1, g2, indexing="ij")
    z = np.concatenate([np.stack([z1.ravel(), z2.ravel()], axis=1), mu]).astype(np.float32)
    decoded = _as_float_array(decode(z), "decode(z)", ndim=2)
    if decoded.shape != (len(z), 3):
        raise DataError(f"decode(z) must return ({len(z)}, 3) for {len(z)} latent points, got {_shape_str(decoded)}")
    surface, x_hat = decoded[: grid * grid].reshape(grid, grid, 3), decoded[grid * grid :]
    from matplotlib.patches import Rectangle

    fig = _new_figure((16.5, 5.4))
    ax_x = fig.add_subplot(1, 3, 1, projection="3d")
    ax_z = fig.add_subplot(1, 3, 2)
    ax_m = fig.add_subplot(1, 3, 3, projection="3d")
    size = float(np.clip(6000 / len(x), 2, 12))
    ax_x.scatter(x[:, 0], x[:, 1], x[:, 2], s=size, color=colors, linewidths=0, depthshade=False)
    ax_x.set_title("data space: x on its manifold", fontsize=10)
    _draw_bubbles(ax_z, mu, logvar, colors)
    lim = _bubbles_limit([(mu, logvar)])
    ax_z.set_xlim(-lim, lim)
    ax_z.set_ylim(-lim, lim)
    ax_z.add_patch(Rectangle((g1[0], g2[0]), g1[-1] - g1[0], g2[-1] - g2[0], fill=False, ls=":", lw=1, color="0.4"))
    ax_z.set_title("latent space: q(z|x) = N(μ, σ²), the grid decoded (dotted)", fontsize=10)
    ax_m.plot_wireframe(surface[..., 0], surface[..., 1], surface[..., 2], color="0.55", linewidth=0.4)
    ax_m.scatter(x_hat[:, 0], x_hat[:, 1], x_hat[:, 2], s=size, color=colors, linewidths=0, depthshade=False)
    ax_m.set_title("decoded manifold: E[x|z] over the grid, and at each μ", fontsize=10)
    # one frame for data and decoder, so the two 3-D panels compare
    both = np.concatenate([x, decoded])
    lo, hi = both.min(axis=0), both.max(axis=0)
    for ax in (ax_x, ax_m):
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_zlim(lo[2], hi[2])
        ax.set_xlabel("x₁")
        ax.set_ylabel("x₂")
        ax.set_zlabel("x₃")
        ax.view_init(elev=12, azim=-66)
    if handles:
        ax_m.legend(handles=handles, title="label", fontsize=8, loc="center left", bbox_to_anchor=(1.05, 0.5), frameon=False)
    fig.suptitle(title if title is not None else "The VAE's spaces: data x (3-D) → latent z (2-D) → decoded manifold (3-D)")
    return fig


def vae_spaces_plot(x: np.ndarray, mu: np.ndarray, path, decode: Callable[[np.ndarray], np.ndarray],
                    logvar: np.ndarray | None = None, labels: np.ndarray | None = None, grid: int = 25,
                    title: str | None = None) -> Path:  # fmt: skip
    """The notes' picture of the VAE's spaces, for data in 3-D and a 2-D latent. Left:
    the rows ``x`` (n, 3) in 3-D. Middle: their posteriors, μ (n, 2) with the bubbles μ ± σ
    when ``logvar`` (n, 2) is given, and the latent grid's extent. Right: the decoded
    manifold, the decoder means E[x|z] over a ``grid``×``grid`` grid spanning the posteriors
    (1st to 99th percentile of μ ∓ σ per axis) as a wireframe, and the decoded μ of every row,
    in the left panel's frame. ``decode`` gets float32 (m, 2) and returns (m, 3); ``labels``
    (n,) colour the points in all three panels."""
    return _save_figure(_vae_spaces_figure(x, mu, decode, logvar, labels, grid, title), path)


# The bars of the bound beneath the evidence, per point, in this order and colour.
BOUND_BARS = (("log_px", "log p(x)", "C0"), ("elbo_optimal", "ELBO(q*)", "C2"), ("elbo", "ELBO(q)", "C1"))
# Points shown per method: a handful, so that every bar stays readable.
BOUND_POINTS = 6


def _bound_bars_figure(methods: dict[str, dict[str, np.ndarray]], points: int, title: str | None = None):
    if not isinstance(methods, dict):
        raise DataError(f"methods must be a dict {{method: gaps_per_point's arrays}}, got {type(methods).__name__}")
    if not methods:
        raise DataError("methods is empty; at least one method's gaps are required")
    points = _check_positive_int(points, "points")
    for method, per_point in methods.items():
        missing = [key for key, _, _ in BOUND_BARS if not isinstance(per_point, dict) or key not in per_point]
        if missing:
            raise DataError(f"methods[{method!r}] must hold the arrays {', '.join(k for k, _, _ in BOUND_BARS)}; missing {', '.join(missing)}")
        lengths = {key: len(np.atleast_1d(per_point[key])) for key, _, _ in BOUND_BARS}
        if len(set(lengths.values())) > 1:
            raise DataError(f"methods[{method!r}]: the arrays must have one value per row each, got lengths {lengths}")
    ncols = min(3, len(methods))
    nrows = math.ceil(len(methods) / ncols)
    fig = _new_figure((ncols * (0.9 * points + 2.4), 3.4 * nrows + 0.6))
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[len(methods) :]:
        ax.remove()
    width = 0.8 / len(BOUND_BARS)
    for ax, (method, per_point) in zip(axes, methods.items()):
        values = [_as_float_array(per_point[key], key, ndim=1)[:points] for key, _, _ in BOUND_BARS]
        n = min(len(v) for v in values)
        if n == 0:
            raise DataError(f"{method}: no points to draw")
        values = [v[:n] for v in values]
        lo, hi = min(v.min() for v in values), max(v.max() for v in values)
        # A common floor below the lowest value, so that the gaps, a few nats on top of
        # evidence of hundreds, are the visible differences of bar tops (Bishop, fig. 9.11).
        floor = lo - 0.25 * max(hi - lo, 1.0)
        for j, ((_, label, color), v) in enumerate(zip(BOUND_BARS, values)):
            ax.bar(np.arange(n) + (j - 1) * width, v - floor, width, bottom=floor, color=color, label=label)
        ax.set_ylim(floor, hi + 0.1 * max(hi - lo, 1.0))
        ax.set_xticks(np.arange(n), [f"x{i + 1}" for i in range(n)])
        approx = float(np.mean(values[0] - values[1]))
        amort = float(np.mean(values[1] - values[2]))
        ax.set_title(f"{method}, first {n} rows: mean approximation gap {approx:.2f}, amortization gap {amort:.2f} nats", fontsize=9)
        ax.set_ylabel("nats")
        ax.grid(alpha=0.3, axis="y")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=len(BOUND_BARS), fontsize=9)
    fig.suptitle(title if title is not None else "The bound beneath the evidence: log p(x) ≥ ELBO(q*) ≥ ELBO(q) per point")
    return fig


def bound_bars_plot(methods: dict[str, dict[str, np.ndarray]], path, points: int = BOUND_POINTS, title: str | None = None) -> Path:
    """Per datapoint, grouped bars of log p(x), ELBO(q*) and ELBO(q) (nats), one panel per
    inference method: ``methods`` maps a method's name to ``evaluate.gaps_per_point``'s arrays
    (``log_px``, ``elbo_optimal``, ``elbo``), of which the first ``points`` rows are drawn.
    The notes' picture of the ELBO beneath the evidence (after Bishop 2006, fig. 9.11): the top
    of each bar is the number, the distance from log p(x) down to ELBO(q*) the approximation
    gap, from ELBO(q*) down to ELBO(q) the amortization gap (Cremer et al. 2018)."""
    return _save_figure(_bound_bars_figure(methods, points, title), path)
