"""What ``vaekit train`` does around the training loop: load and check the data, fit, draw the
pictures of the notes, evaluate on the test split; and the data-parallel process group."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint as ckpt
from .config import FROM_DATA, RunConfig
from .errors import DataError, VaekitWarning
from .files import PICTURES, of_a_run  # PICTURES: what write_pictures and write_space_pictures may write
from .launch import launched_rank_world, rank_world
from .scaling import Scaling, model_rows
from .train import check_same_setup, check_shards, fit, init_distributed

# Test rows drawn in the latent-space picture, and shown in reconstructions.png.
LATENT_POINTS = 5000
RECONSTRUCTED_ROWS = 32


def model_config(
    x_train, image_shape, options: dict[str, Any], named: tuple[float, float] | None = None, held_out: tuple = ()
):
    """The ModelConfig for training rows ``x_train`` (the user's values) and the user's model
    options: the data fix input_dim, image_shape and n_points; ``likelihood="auto"`` (or
    absent) is chosen from every row the run reads, ``x_train`` and the ``held_out`` splits, as
    a named dataset's scaling ``named`` (shift, scale) maps them, so that a value in a held-out
    row cannot fall outside the support of a likelihood chosen without it; ``standardize="auto"``
    (or absent) standardises when the likelihood is Gaussian and those values are not all in
    [0, 1]. The input map (standardisation learned from ``x_train`` alone, else ``named``) is
    stored in the config (vaekit.scaling)."""
    from .config import AUTO, MODEL_OPTIONS, ModelConfig, check_auto_option
    from .likelihoods import choose
    from .registry import INFERENCE
    from .scaling import apply, choose_standardize, config_fields

    options = dict(options)
    for name in AUTO:
        if name in options:
            check_auto_option(name, options[name])
    named_map = None if named is None else Scaling.uniform(*named)
    seen = tuple(x if named_map is None else apply(named_map, x, np.float64) for x in (x_train, *held_out))
    if options.get("likelihood", "auto") == "auto":
        options["likelihood"] = choose(seen)
    options["standardize"] = choose_standardize(seen, options["likelihood"], options.get("standardize", "auto"))
    scaling = Scaling.standardizing(x_train) if options["standardize"] == "on" else named_map
    if INFERENCE.get(options.get("inference", MODEL_OPTIONS["inference"].default)).per_point:
        options["n_points"] = x_train.shape[0]
    if isinstance(options.get("prior_from"), (str, os.PathLike)):
        # A run directory, kept absolute: the run, its resume and a refit of the loaded model
        # read it again from whatever directory they start in.
        options["prior_from"] = os.path.abspath(os.path.expanduser(os.fspath(options["prior_from"])))
    return ModelConfig(input_dim=x_train.shape[1], image_shape=image_shape, **options, **config_fields(scaling))


def train_run(
    run_config: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool = False, overwrite: bool = False,
    data_read: bool = False,
) -> dict[str, Any]:
    """What ``vaekit train`` does: load the data, fit, draw the pictures, evaluate on the test
    split (ELBO and log p(x) with K = eval_k), reporting on stderr as it goes (one line per
    epoch and the evaluation's progress, unless ``quiet``; tqdm bars instead of the progress
    lines when ``progress``) and, with ``tensorboard``, into RUN_DIR/tensorboard/. The caller
    holds the run directory's lock (``vaekit.lock``). ``overwrite`` empties RUN_DIR of the run it
    holds once the data and the model have passed every check (a refused run leaves the old one).
    ``data_read``: the caller has read the data already (to build the config) and shown its
    warnings, which reading it again would repeat. Returns the summary that the CLI prints."""

    run_dir = Path(run_dir)
    rank, world = launched_rank_world()
    if world > 1 and run_config.train.device.startswith("cuda"):
        import dataclasses
        import os

        local = int(os.environ.get("LOCAL_RANK", "0"))
        run_config = dataclasses.replace(run_config, train=dataclasses.replace(run_config.train, device=f"cuda:{local}"))
    created = not run_dir.exists()
    aside: list[bool] = []  # _train_run appends as it starts to set the old run aside (overwrite)
    joined: list[bool] = []  # and True once it has joined the data-parallel group
    try:
        try:
            summary = _train_run(run_config, run_dir, resume, progress, overwrite, aside, joined, data_read)
        except BaseException:
            # Under overwrite the old run stays in place until the checks pass, then aside until
            # the new run's first checkpoint: a new run that fails before it gives it back.
            if not resume and rank == 0 and (not overwrite or aside):
                if aside:
                    recover_replaced(run_dir)
                else:
                    _remove_unfinished(run_dir, created)
            raise
        if aside:
            ckpt.end_aside(run_dir, restore=False)
        if any(joined):
            import torch.distributed as dist

            # Ranks > 0 are done while rank 0 still draws and evaluates; tearing the group
            # down under it aborts gloo, so everyone leaves together.
            dist.barrier()
        return summary
    finally:
        if any(joined):
            import torch.distributed as dist

            dist.destroy_process_group()


def recover_replaced(run_dir: str | Path) -> None:
    """Finish what an ``--overwrite`` stopped by a kill left in RUN_DIR/.vaekit-replaced: a
    restore cut short goes on; a new run with a checkpoint keeps the directory and the old
    run goes; a new run without one goes (it cannot be resumed) and the old run comes back.
    The caller holds the run's lock, so no overwrite is under way."""
    run_dir = Path(run_dir)
    aside = run_dir / ckpt.REPLACED_DIR
    if not aside.is_dir() or aside.is_symlink():
        return
    # A move aside cut short: what is left in RUN_DIR is the old run's too (the new run
    # starts writing only after it); a move back cut short: finish it.
    if (aside / ckpt.SETTING).exists() or (aside / ckpt.RESTORING).exists():
        ckpt.end_aside(run_dir, restore=True)
    elif (run_dir / ckpt.LAST_FILE).is_file():
        ckpt.end_aside(run_dir, restore=False)
    else:
        _remove_unfinished(run_dir, created=False)
        ckpt.end_aside(run_dir, restore=True)


def _remove_unfinished(run_dir: Path, created: bool) -> None:
    """After a fresh run failed: if it wrote no checkpoint, remove what it wrote (the whole
    directory when it created it), so that the same command can be run again. A run that got
    as far as a checkpoint is kept: ``--resume`` continues it."""
    import shutil

    from . import checkpoint as ckpt
    from .bubbles import BUBBLES_FILE
    from .logs import TENSORBOARD_DIR

    if (run_dir / ckpt.LAST_FILE).is_file() or not run_dir.is_dir():
        return
    ckpt.remove_stale_temporaries(run_dir)
    for name in (ckpt.CONFIG_FILE, ckpt.MODEL_FILE, ckpt.METRICS_FILE, BUBBLES_FILE, *PICTURES):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / TENSORBOARD_DIR, ignore_errors=True)
    if created and not any(run_dir.iterdir()):
        run_dir.rmdir()


def _warn_of_other_files(run_dir: Path) -> None:
    """--overwrite replaces everything in RUN_DIR; files that no run writes (the verbs' outputs
    saved there, the user's own) go with it, so they are named first rather than lost unseen."""
    import warnings

    from .errors import VaekitWarning
    from .logs import TENSORBOARD_DIR

    others = [n for n in ckpt.run_entries(run_dir) if n not in (TENSORBOARD_DIR, ckpt.REPLACED_DIR) and not of_a_run(n)]
    if others:
        warnings.warn(
            f"--overwrite replaces all that {run_dir} holds, also files that are not the old run's: {ckpt.shown(others, 5)} "
            "(given back if the new run stops before its first checkpoint, deleted after)",
            VaekitWarning,
            stacklevel=2,
        )


# Options each process of a torchrun group may set for itself: they change what it shows or
# what it runs on, not what it computes (the device's index is each process's own GPU).
PER_PROCESS = {"threads", "quiet", "tensorboard"}


def _setup(run_config: RunConfig, run_dir: Path, resume: bool, splits: dict[str, Any]) -> dict[str, str]:
    """What the processes of a torchrun group must agree on (train.check_same_setup), keyed by
    what the user names: the data first (a different file is named as such, not by the width
    it implies), then each option as its flag, the run directory, and whether it resumes."""
    import dataclasses

    from .data import fingerprint

    def shown(value: Any) -> str:
        text = json.dumps(value)
        return text if len(text) <= 60 else text[:57] + "..."

    setup = {"--data": shown(run_config.data.source)}
    for name, rows in splits.items():
        setup[f"{name} rows"] = f"{len(rows)}x{np.shape(rows)[1]} with digest {fingerprint(rows)}"
    for section in ("data", "model", "train"):
        for name, value in dataclasses.asdict(getattr(run_config, section)).items():
            # The options read from the data (config.FROM_DATA) differ only where the rows do.
            if name in PER_PROCESS or name in FROM_DATA or (section, name) == ("data", "source"):
                continue
            if name == "device":
                value = value.split(":")[0]
            setup["--" + name.replace("_", "-")] = shown(value)
    setup["--out"] = str(run_dir.resolve())
    setup["--resume"] = "given" if resume else "not given"
    return setup


def _train_run(
    run_config: RunConfig, run_dir: Path, resume: bool, progress: bool, overwrite: bool, aside: list[bool], joined: list[bool],
    data_read: bool = False,
) -> dict[str, Any]:
    from .data import check_data, load_dataset
    from .evaluate import elbo_stage, evaluate
    from .hardware import check_model_fits
    from .logs import EpochLog, RowProgress, TensorBoardLog, check_tensorboard
    from .model import build_model

    with warnings.catch_warnings():
        if data_read:  # the same file's warnings were shown when the caller read it
            warnings.simplefilter("ignore", VaekitWarning)
        data = load_dataset(run_config.data)
    check_model_fits(run_config.model, run_config.train.dtype, run_config.train.device)
    torch.manual_seed(run_config.train.seed)  # the initial weights are part of the run
    model = build_model(run_config.model, run_config.train)
    splits = {}
    scaling = Scaling.of(run_config.model)
    for name, use in (("valid", "picks its best epoch on the validation rows"), ("test", "ends by scoring the test rows")):
        if len(data.split(name)) == 0:
            why = f"--{name}-fraction 0" if getattr(run_config.data, f"{name}_fraction") == 0 else f"its {name} split is empty"
            raise DataError(f"{data.name} has no {name} rows ({why}): vaekit train {use}; give it some")
    for name in ("train", "valid", "test"):
        what = f"{data.name} ({name} split)"
        rows = None if data.rows is None else data.rows[name] + 1  # messages name a row by its number in the source
        # Whether float32 resolves a feature is judged on the rows the model learns from; a
        # small held-out split's own spread would refuse rows the training split resolves.
        resolve = name == "train"
        splits[name] = check_data(
            model_rows(run_config.model, data.split(name), data.scaling, run_config.train.dtype, what, rows, resolve),
            what=what,
            rows=rows,
            dtype=run_config.train.dtype,
            min_rows=2 if name == "train" else 1,
            input_dim=run_config.model.input_dim,
            likelihood=model.likelihood,
            scaling=scaling,
            resolve=resolve,
        )
    # Every process of a torchrun group reads and checks the same data, so all refuse a batch
    # too small to share alike, and before joining: none waits for a peer that has left.
    check_shards(len(splits["train"]), run_config.train.batch_size, launched_rank_world()[1], resume)
    joined.append(init_distributed(run_config.train.device))
    if joined[-1]:
        check_same_setup(_setup(run_config, run_dir, resume, splits))
    rank, _ = rank_world()
    if not resume:
        model.prior.check_source()  # what the prior will read at the first step (an earlier run)
    if overwrite and rank == 0:
        # Only the lock holder empties the directory, and only now: a run refused by the checks
        # above leaves the old one. The other ranks read nothing of RUN_DIR in a new run.
        _warn_of_other_files(run_dir)
        aside.append(True)  # first: an interrupt inside set_aside is undone too
        ckpt.set_aside(run_dir)
    cfg = run_config.train
    # Rank 0 alone reports; --quiet silences the lines and the bars, not --tensorboard.
    bars = progress and not cfg.quiet and rank == 0
    lines = EpochLog(cfg.epochs) if rank == 0 and not cfg.quiet else None
    events = None
    if rank == 0 and cfg.tensorboard:
        check_tensorboard()  # before the first file is written
        events = TensorBoardLog(run_dir)

    def on_epoch(record: dict[str, Any]) -> None:
        for log in (lines, events):
            if log is not None:
                log(record)

    try:
        history = fit(model, splits["train"], splits["valid"], cfg, run_dir, run_config, resume, bars, on_epoch=on_epoch)
    finally:
        if events is not None:
            events.close()
    if rank != 0:
        return {"run_dir": str(run_dir), "rank": rank}
    try:
        first = elbo_stage(model, splits["test"], seed=cfg.seed)
    except DataError as e:  # a row that overflows the model's arithmetic, named with its split
        raise DataError(f"[test] {e} (training finished: the model is saved in {run_dir}; its test split is what could not be evaluated)") from None
    write_pictures(model, data, history, run_dir, seed=cfg.seed, x_test=splits["test"], x_valid=splits["valid"])
    # Nearly all of a short run's time after training: it gets a progress report of its own.
    rows = None if cfg.quiet else RowProgress(np.shape(splits["test"])[0], f"evaluating log p(x) (K={cfg.eval_k})", bar=progress)
    try:
        test = evaluate(model, splits["test"], k=cfg.eval_k, seed=cfg.seed, progress=rows, first=first)
    finally:
        if rows is not None:
            rows.close()
    best = max(history, key=lambda r: r["valid_score"]) if history else None
    return {
        "run_dir": str(run_dir),
        "epochs": len(history),
        "best_epoch": best["epoch"] if best else None,
        "valid_elbo": best["valid_elbo"] if best else None,
        "test": test,
    }


def picture_rows(data, seed: int = 0) -> dict[str, np.ndarray]:
    """Positions in the test split of the rows the pictures show: "latent" (LATENT_POINTS rows
    for latent.png, kl_per_dim.png and latent_grid.png's range) and "reconstructions"
    (RECONSTRUCTED_ROWS rows). Each is a seeded random sample across the whole split, the same
    number from every class where the data have labels: splits stored sorted by class would
    otherwise show only their first classes."""
    from .data.stratify import stratified_rows

    n, labels = len(data.split("test")), data.split_labels("test")
    return {
        "latent": stratified_rows(n, LATENT_POINTS, labels, seed),
        "reconstructions": stratified_rows(n, RECONSTRUCTED_ROWS, labels, seed + 1),
    }


def write_pictures(model, data, history: list[dict[str, Any]], run_dir: Path, seed: int = 0, x_test=None, x_valid=None) -> list[Path]:
    """The pictures of the notes for a trained model: samples from the prior, reconstructions
    beside their inputs with their classes, training curves, the latent space coloured by class,
    the latent units' KL and activity (kl_per_dim.png), and for a 2-D latent the decoder over
    the range where the test rows' posterior means lie (latent_grid.png). Test rows are those of
    ``picture_rows(data, seed)``. Pictures show the values the model sees (a named dataset's
    [0, 1]); ``x_test``, ``x_valid``: the test and validation rows so mapped (default
    ``data.split(...)``)."""
    from . import plots
    from .evaluate import ACTIVE_UNIT_THRESHOLD, batches, latent_usage

    run_dir = Path(run_dir)
    written = []
    # Images of other channel counts than grey or RGB are drawn as rows are: no image grids.
    shape = model.config.image_shape if plots.picturable(model.config.image_shape) else None
    x_test = data.split("test") if x_test is None else x_test
    labels = data.split_labels("test")
    rows = picture_rows(data, seed)
    p = next(model.parameters())
    g = torch.Generator(device=p.device).manual_seed(seed)
    with torch.no_grad():
        if shape is not None:
            samples = model.sample(64, generator=g).float().cpu().numpy()
            written.append(plots.image_grid(samples, run_dir / "samples.png", shape, title="64 samples: z ~ p(z), decoder means"))
            shown = np.asarray(x_test[rows["reconstructions"]])
            x = torch.as_tensor(shown, dtype=p.dtype, device=p.device)
            x_hat = model.decode(model.representation(x).mean).mean.float().cpu().numpy()
            written.append(
                plots.reconstruction_grid(
                    shown, x_hat, run_dir / "reconstructions.png", shape, n=len(shown),
                    labels=None if labels is None else labels[rows["reconstructions"]],
                    title=f"{len(shown)} test rows (random, by class) and their reconstructions",
                )
            )
        # A scatter of more points than this is a blot, and costs memory for nothing.
        shown = np.asarray(x_test[rows["latent"]])
        # The q's of evaluation give the latent units' activity and KL (kl_per_dim.png); the
        # scatter shows the codes (a point estimate's ẑ, not its proposal's mean).
        usage = latent_usage(model, seed)
        means = []
        for xb in batches(model, shown, 1024):
            q = model.evaluation_posterior(xb)
            means.append(model.representation(xb).mean if model.inference.point_estimate else q.mean)
            usage.add(q)
        mu = torch.cat(means).float().cpu().numpy()
    if history:
        written.append(plots.training_curves(history, run_dir / "curves.png"))
    written.append(
        plots.kl_per_dim_plot(
            usage.variance, run_dir / "kl_per_dim.png", kl_per_dim=usage.kl_per_dim, threshold=ACTIVE_UNIT_THRESHOLD,
            kl_per_group=usage.kl_per_group, title=f"Posterior collapse on {usage.n} test rows: per-unit KL and activity",
        )
    )
    written.append(plots.latent_scatter(mu, run_dir / "latent.png", labels=None if labels is None else labels[rows["latent"]]))
    if len(model.latents) == 1 and model.latent_size == 2 and shape is not None:

        def decode(z: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                zt = torch.as_tensor(z, dtype=p.dtype, device=p.device)
                return model.decode(zt).mean.float().cpu().numpy()

        written.append(
            plots.latent_traversal_grid(
                decode, run_dir / "latent_grid.png", shape, limits=plots.posterior_range(mu),
                title=f"Decoder means over the central 98% of {len(mu)} test rows' posterior means",
            )
        )
    written += write_space_pictures(model, data, history, run_dir, x_valid)
    return written


def write_space_pictures(model, data, history: list[dict[str, Any]], run_dir: Path, x_valid=None) -> list[Path]:
    """For a 2-D latent, the pictures of the first two notes on the validation rows whose
    bubbles the training loop kept (``bubbles.rows``): bubbles.png, every row's
    q(z|x) as an ellipse at the start, middle and end of training, where q is a diagonal
    Gaussian; and for data in 3-D, spaces.png: the data, the latent with its bubbles, and the
    decoded manifold."""
    from . import bubbles, plots

    x = data.split("valid") if x_valid is None else x_valid  # the values the model sees
    labels = data.split_labels("valid")
    if not bubbles.drawable(model) or len(x) == 0:
        return []
    picked = bubbles.rows(len(x))
    x = np.asarray(x[picked])
    labels = None if labels is None else np.asarray(labels)[picked]
    mu, logvar = bubbles.posterior_parameters(model, x)
    written = []
    if logvar is not None:
        panels = bubbles.training_panels(run_dir, history, mu, logvar)
        written.append(plots.bubbles_plot(panels, run_dir / "bubbles.png", labels=labels))
    if model.config.input_dim == 3 and model.config.image_shape is None:
        p = next(model.parameters())

        def decode(z: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model.decode(torch.as_tensor(z, dtype=p.dtype, device=p.device)).mean.double().cpu().numpy()

        written.append(plots.vae_spaces_plot(x, mu, run_dir / "spaces.png", decode, logvar=logvar, labels=labels))
    return written
