"""The notes' bubbles: in a 2-D latent space every datapoint's q(z|x) = N(μ, diag σ²)
is a bubble around μ, and the loss moves the bubbles with three forces (reconstruction pushes
them apart, the KL's mean term wraps them into one, its variance term keeps them at unit
size; ``objectives.kl.bubble_forces``).

To show how training moves them, the training loop keeps (μ, log σ²) of ``BUBBLE_ROWS``
validation rows (``rows``: a seeded random sample across the split, since splits may be
stored sorted by class) before the first step and after the middle epoch in the run
directory (``bubbles.npz``, a few kB); the trained model gives the end. ``plots.bubbles_plot``
draws them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .files import BUBBLES_FILE, atomic_write
# More bubbles than this cover the plane and hide each other.
BUBBLE_ROWS = 500


def rows(n: int) -> np.ndarray:
    """Positions of the validation rows whose bubbles are kept and drawn: BUBBLE_ROWS of the
    ``n`` rows (all when fewer), a fixed random sample in ascending order. The training loop
    has no labels, so the sample is uniform, not stratified; the pictures colour the same rows
    by class."""
    from .data.stratify import stratified_rows

    return stratified_rows(n, BUBBLE_ROWS, None, seed=0)


def drawable(model) -> bool:
    """Whether the model's latent space is a plane: one latent group of size 2."""
    return len(model.latents) == 1 and model.latent_size == 2


def snapshot_epochs(epochs: int) -> tuple[int, ...]:
    """The epochs after which the loop keeps the bubbles: 0 (before the first step) and the
    middle one, ⌈epochs / 2⌉, when it comes before the last (the end is the trained model)."""
    middle = math.ceil(epochs / 2)
    return (0, middle) if 0 < middle < epochs else (0,)


@torch.no_grad()
def posterior_parameters(model, x, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray | None]:
    """(μ, log σ²) of the q(z|x) that evaluation uses (``evaluation_posterior``) for the rows
    ``x``, each (n, D) float64; log σ² is None when q is a point mass (no bubble)."""
    from .distributions import DiagonalNormal
    from .evaluate import batches, eval_mode, model_rows

    x = model_rows(model, x)
    mus, logvars = [], []
    with eval_mode(model):
        for xb in batches(model, x, batch_size):
            q = model.evaluation_posterior(xb)
            mus.append(q.mean.double().cpu())
            logvars.append(q.logvar.double().cpu() if isinstance(q, DiagonalNormal) else None)
    mu = torch.cat(mus).numpy() if mus else np.zeros((0, model.latent_size))
    if not mus or any(lv is None for lv in logvars):
        return mu, None
    return mu, torch.cat(logvars).numpy()


def save_snapshot(run_dir: str | Path, epoch: int, mu: np.ndarray, logvar: np.ndarray) -> Path:
    """Add the bubbles after ``epoch`` to ``run_dir/bubbles.npz`` (arrays ``mu_E`` and
    ``logvar_E``; one of the same epoch is replaced), written atomically."""
    path = Path(run_dir) / BUBBLES_FILE
    arrays = {}
    for e, (m, lv) in load_snapshots(run_dir).items():
        arrays[f"mu_{e}"], arrays[f"logvar_{e}"] = m, lv
    arrays[f"mu_{epoch}"], arrays[f"logvar_{epoch}"] = np.asarray(mu), np.asarray(logvar)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def load_snapshots(run_dir: str | Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{epoch: (μ, log σ²)} kept in ``run_dir/bubbles.npz``, by epoch; empty when there is none.
    The file only feeds a picture: one that cannot be read (damaged, or another program's
    arrays under its name) is left out with a warning, and the next snapshot replaces it,
    rather than stopping a training run at its end."""
    import re
    import warnings
    import zipfile

    from .errors import VaekitWarning

    path = Path(run_dir) / BUBBLES_FILE
    if not path.is_file():
        return {}
    kept = {}
    try:
        with np.load(path, allow_pickle=False) as f:
            for key in f.files:
                if re.fullmatch(r"logvar_\d+", key):
                    continue  # read with its mu_
                if (m := re.fullmatch(r"mu_(\d+)", key)) is None:
                    raise ValueError(f"an array {key!r}, not of a snapshot")
                if f"logvar_{m[1]}" not in f.files:
                    raise ValueError(f"{key} without logvar_{m[1]}")
                mu, logvar = f[key], f[f"logvar_{m[1]}"]
                if mu.ndim != 2 or mu.shape != logvar.shape or mu.dtype.kind != "f" or logvar.dtype.kind != "f":
                    raise ValueError(f"{key} and logvar_{m[1]} are not two (n, d) float arrays alike")
                kept[int(m[1])] = (mu, logvar)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        warnings.warn(f"{path}: not a file of bubbles vaekit can read ({e}); its bubbles are left out of the pictures", VaekitWarning, stacklevel=2)
        return {}
    return dict(sorted(kept.items()))


def keep_snapshot(model, x_valid, run_dir: Path, epoch: int) -> None:
    """Save the bubbles of the ``rows`` of ``x_valid`` after ``epoch``, where the
    latent is a plane and q a diagonal Gaussian. Draws no random numbers from torch's global
    stream, so a run with snapshots trains exactly as one without."""
    if not drawable(model) or len(x_valid) == 0:
        return
    mu, logvar = posterior_parameters(model, np.asarray(x_valid[rows(len(x_valid))]))
    if logvar is not None:
        save_snapshot(run_dir, epoch, mu, logvar)


def training_panels(run_dir: str | Path, history: list[dict], mu: np.ndarray, logvar: np.ndarray) -> list[tuple]:
    """The panels of bubbles.png, ``(title, μ, log σ²)``: the bubbles kept in ``run_dir`` before
    the last epoch of ``history`` (the start and the middle), then the trained model's ``mu``,
    ``logvar`` (the end: the best epoch's weights)."""
    last = history[-1]["epoch"] if history else 0
    best = max(history, key=lambda r: r["valid_score"])["epoch"] if history else 0
    kept = {e: v for e, v in load_snapshots(run_dir).items() if e < last and len(v[0]) == len(mu)}
    panels = [("start: before training" if e == 0 else f"middle: after epoch {e}", m, lv) for e, (m, lv) in kept.items()]
    panels.append((f"end: the best epoch, {best} of {last}", mu, logvar))
    return panels
