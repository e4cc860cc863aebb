"""One training loop for every model: stochastic gradients of an objective (the β-weighted
ELBO by default), jointly over the inference parameters φ and the generative parameters θ
(notes: "trained jointly ... using SGD"). Objectives, inference methods, priors, likelihoods,
networks and latent structures change the model or the loss, never this loop.

The dataset lives on the device as one tensor and is reshuffled by one permutation per epoch;
the step does not synchronise with the host (losses are kept in a device tensor and checked
for NaN at progress ticks and at the end of the epoch).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import bubbles
from . import checkpoint as ckpt
from .config import RunConfig, TrainConfig
from .errors import CheckpointError, ConfigError, DataError, TrainingError
from .evaluate import LatentUsage, elbo_per_point, latent_usage, log_px_per_point, model_rows, read_only_tensor, refuse_elbo_overflow
from .launch import rank_world
from .optim import Adam, NormalizedAdam, SparseAdam, WeightAverage
from .registry import OBJECTIVES
from .schedules import lr_at, rates

# Progress-bar refreshes (and NaN checks) per epoch: each costs one host sync.
TICKS_PER_EPOCH = 20
# Methods without an encoder find each validation point's q by optimisation; validating on
# this many rows keeps that under the cost of a training epoch.
VALID_ROWS_WITHOUT_ENCODER = 1000


def make_optimizers(
    model: torch.nn.Module,
    lr: float,
    point_lr: float | None = None,
    normalized_grad: bool = False,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> list[torch.optim.Optimizer]:
    """Adam at ``lr`` (with ``eps`` its ε) for the shared parameters (θ, φ), on normalized gradients with
    ``normalized_grad`` (``optim.NormalizedAdam``), with decoupled ``weight_decay`` (AdamW's
    p ← p − lr·weight_decay·p before the Adam step; Loshchilov & Hutter 2019); SparseAdam for per-point tables, so
    that a row moves only when its datapoint is in the batch (dense Adam would keep moving
    every row on stale momentum), at ``point_lr`` (default: the model's ``point_lr``). A row
    steps once per epoch against θ's once per batch, hence a rate of its own. Both are
    torch's, less the import of torch._dynamo (see ``_Eager``)."""
    local = model.inference.local_parameters()
    local_ids = {id(p) for p in local}
    shared = [p for p in model.parameters() if id(p) not in local_ids]
    kind = NormalizedAdam if normalized_grad else Adam
    decay = {"weight_decay": weight_decay, "decoupled_weight_decay": True} if weight_decay else {}
    try:
        # The fused kernel updates all tensors in one pass: 1.4x the whole training step of
        # the default foreach Adam for the MNIST MLP on this CPU (bench/README.md).
        adam = kind(shared, lr=lr, eps=eps, fused=True, **decay)
    except (RuntimeError, TypeError, ValueError):  # a device or dtype without the fused kernel
        adam = kind(shared, lr=lr, eps=eps, **decay)
    optimizers: list[torch.optim.Optimizer] = [adam]
    if local:
        optimizers.append(SparseAdam(local, lr=model.config.point_lr if point_lr is None else point_lr))
    return optimizers


def make_objective(model, config: TrainConfig):
    """The run's objective object; ``auto`` is the inference method's own. The model fits new
    rows' point estimates with its β from then on (``VAEModel.use_objective``)."""
    name = model.inference.default_objective if config.objective == "auto" else config.objective
    objective = OBJECTIVES.get(name)(config)
    objective.check_inference(type(model.inference))
    objective.check_model(model)
    model.use_objective(objective)
    return objective


def resolve_device(name: str) -> torch.device:
    from .hardware import check_device

    check_device(name)
    return torch.device(name)


def fit(
    model: torch.nn.Module,
    x_train: np.ndarray,
    x_valid: np.ndarray,
    config: TrainConfig,
    run_dir: str | Path | None = None,
    run_config: RunConfig | None = None,
    resume: bool = False,
    progress: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    distributed: bool = True,
) -> list[dict[str, Any]]:
    """Train ``model`` in place and leave it holding the best weights by the objective's
    validation value.

    In a torch.distributed process group the caller has joined (torchrun), each process trains
    on its share of every batch (data-parallel), unless ``distributed`` is False: then this
    process trains alone, on all of x_train, whatever group it is in.

    With ``run_dir`` every epoch appends a line to metrics.jsonl and writes last.safetensors
    (atomically), and an improved validation value rewrites model.safetensors. ``resume``
    continues from last.safetensors with optimizer, epoch and random state, so that on the CPU
    the end result equals an uninterrupted run's. Training runs on ``config.threads`` CPU threads
    (0: PyTorch's current count) with MKL's and OpenMP's dynamic thread counts off, so that the
    load of the machine cannot change how reductions are split. ``on_epoch`` is called with each
    epoch's finished record (on rank 0 alone), after its checkpoint: the logs. Returns the
    per-epoch metrics.
    """
    from .hardware import fixed_threads, no_autocast

    # The rows a model reads (2-D, input_dim wide, finite, in the likelihood's support): a bad
    # row is named now, not met as a shape error or a NaN loss blamed on the learning rate.
    x_train, x_valid = model_rows(model, x_train, "x_train"), model_rows(model, x_valid, "x_valid")
    if model.inference.per_point and model.config.n_points != len(x_train):
        raise ConfigError(
            f"inference {model.config.inference!r} keeps a q for each of n_points={model.config.n_points} training rows, "
            f"and x_train has {len(x_train)}; build the model with n_points={len(x_train)}"
        )
    # Every epoch on the same number of threads, whatever the load (see vaekit.hardware); with
    # gradients on, whatever the caller's torch.no_grad() or inference_mode(), and in the
    # precision config.amp asks for, whatever the caller's torch.autocast. The run seeds
    # torch's global stream (config.seed, or the checkpoint's state): the caller's is given back.
    device = resolve_device(config.device)
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with fixed_threads(config.threads), torch.inference_mode(False), torch.enable_grad(), no_autocast(), torch.random.fork_rng(devices):
        return _fit(model, x_train, x_valid, config, run_dir, run_config, resume, progress, on_epoch, distributed)


def _fit(model, x_train, x_valid, config: TrainConfig, run_dir, run_config, resume: bool, progress: bool, on_epoch, distributed: bool) -> list[dict[str, Any]]:
    device = resolve_device(config.device)
    dtype = getattr(torch, config.dtype)
    model.to(device=device, dtype=dtype)
    objective = make_objective(model, config)
    n, batch_rows = _training_rows(x_train, device, dtype)
    valid_rows = _validation_rows(model, x_valid, device, dtype)
    optimizers = make_optimizers(
        model, config.lr, normalized_grad=config.normalized_grad, eps=config.adam_eps, weight_decay=config.weight_decay
    )
    rank, world = rank_world() if distributed else (0, 1)
    check_shards(n, config.batch_size, world)
    writer = run_dir is not None and rank == 0
    run_dir = Path(run_dir) if run_dir is not None else None
    run = _start(model, optimizers, config, run_dir, run_config, resume, writer, x_train, x_valid)
    step = _Step(model, objective, optimizers, config, device, batch_rows, rank, world, run.average)
    # The bubbles of a 2-D latent before the first step and after the middle epoch (bubbles.py).
    snapshots = bubbles.snapshot_epochs(config.epochs) if writer else ()
    if 0 in snapshots and not resume:
        bubbles.keep_snapshot(model, x_valid, run_dir, 0)

    for epoch in range(run.start, config.epochs + 1):
        t0 = time.perf_counter()
        lr = lr_at(config, epoch, run.history)
        for group in optimizers[0].param_groups:  # θ and φ; per-point tables keep their own rate
            group["lr"] = lr
        model.train()
        try:
            losses, value_sum = step.epoch(n, config.beta_at(epoch), epoch, run_dir, progress)
        except TrainingError as e:
            raise TrainingError(f"{e}; {_likely_cause(model, x_train, config)}") from None
        train_seconds = time.perf_counter() - t0
        with run.evaluated():  # the averaged weights, where the run keeps an average
            try:
                record, improved = _validate(model, objective, config, run, valid_rows, x_valid, epoch, lr, losses, value_sum, n, train_seconds)
            except DataError:
                if _overflows_on_training_rows(model, batch_rows, n, config.seed):
                    raise TrainingError(
                        f"the model's outputs overflow on its own training rows after epoch {epoch}: training diverged"
                        f"{_kept(run_dir)}; {_likely_cause(model, x_train, config)}"
                    ) from None
                raise
            if improved:
                run.best_state = copy.deepcopy(model.state_dict())
            # The epoch as a user pays for it: training and validation.
            record["epoch_seconds"] = time.perf_counter() - t0
            if epoch in snapshots[1:]:  # before the checkpoint: a resumed run will not redo this epoch
                bubbles.keep_snapshot(model, x_valid, run_dir, epoch)
        stopped = config.patience is not None and run.bad_epochs >= config.patience
        if writer:
            meta = {
                "epoch": epoch,
                "best_valid": run.best_valid,
                "best_epoch": run.best_epoch,
                "bad_epochs": run.bad_epochs,
                "stopped": stopped,
                "history": run.history,
                "rows": run.rows,
                "fingerprint": run.fingerprint,
            }
            if run.config_to_save is not None:
                # A resumed run records its new epochs or device with its first new checkpoint:
                # a resume that fails before it leaves the run as it was.
                run.config_to_save.save(run_dir / ckpt.CONFIG_FILE)
                run.config_to_save = None
            meta["model_config"], meta["fixed_config"] = run.model_record, run.fixed_record
            ckpt.save_tensors(run_dir / ckpt.LAST_FILE, *ckpt.training_state(model, optimizers, meta, run.average))
            # After the checkpoint, which holds this epoch's weights too: a write that fails
            # between the two leaves the earlier best beside the earlier record (what readers
            # see), and a resume rewrites it from last.safetensors (``_start``).
            if improved:
                ckpt.save_tensors(run_dir / ckpt.MODEL_FILE, run.best_state, run.best_meta())
            _append_metrics(run_dir, record)
        if on_epoch is not None and rank == 0:
            on_epoch(record)
        if stopped:
            break
    if run.best_state is not None:
        model.load_state_dict(run.best_state)
    model.eval()
    return run.history


def _validate(model, objective, config: TrainConfig, run: _Run, valid_rows, x_valid, epoch: int, lr: float, losses, value_sum, n: int, train_seconds: float) -> tuple[dict[str, Any], bool]:
    """The epoch's record from a pass over the validation rows, appended to the run's history,
    and whether the objective's validation value improved on the best so far (the run's best
    and patience count updated)."""
    # The latent units' use from the same validation pass (no second encoder pass).
    usage = latent_usage(model, config.seed)
    # One noise stream for the pass: means over fixed rows need no per-row streams, whose
    # seeding costs tens of microseconds a row.
    valid = elbo_per_point(model, valid_rows, seed=config.seed + 1, usage=usage, per_row=False, checked=True)
    try:  # a row far outside the training data: an ELBO of −inf every epoch would pick no best
        refuse_elbo_overflow(valid, x_valid)
    except DataError as e:
        raise DataError(f"[valid] {e}") from None
    valid_elbo = float(valid["elbo"].mean())
    # The best epoch is the objective's own: the validation ELBO, K-sample bound or recon.
    score = objective.validate(model, valid_rows, valid, seed=config.seed + 1)
    valid_log_px = None
    if config.valid_k:
        valid_log_px = float(log_px_per_point(model, valid_rows, k=config.valid_k, seed=config.seed + 3, per_row=False, checked=True).mean())
    record = {
        "epoch": epoch,
        "beta": config.beta_at(epoch),
        "lr": lr,
        "objective": objective.name,
        "train_loss": float(losses.mean()),
        "train_objective": float(value_sum) / n,
        "train_elbo": float(value_sum) / n if objective.name == "elbo" else None,
        "valid_elbo": valid_elbo,
        "valid_recon": float(valid["recon"].mean()),
        "valid_kl": float(valid["kl"].mean()),
        "valid_score": score,
        "valid_log_px": valid_log_px,
        "valid_gap": None if valid_log_px is None else valid_log_px - valid_elbo,
        # Posterior collapse on the validation rows: units whose posterior mean varies with x
        # (Burda et al. 2015), and the KL of each dimension (None where it does not split).
        "active_units": usage.active_units,
        "kl_per_dim": usage.kl_per_dim,
        "kl_per_group": usage.kl_per_group,
        # The notes' three bubble forces on the validation rows, where the KL splits
        # into a mean and a variance term: −recon + force_mean + force_variance = −ELBO.
        **_forces(valid, usage),
        "train_seconds": train_seconds,
        "images_per_second": n / train_seconds,
    }
    run.history.append(record)
    improved = score > run.best_valid
    if improved:
        run.best_valid, run.best_epoch, run.bad_epochs = score, epoch, 0
    else:
        # Warm-up epochs train an objective still moving with β: the patience runs from its
        # end (as the plateau schedule's, and the VampPrior reference code's early stopping).
        run.bad_epochs = 0 if epoch <= config.warmup else run.bad_epochs + 1
    return record, improved


def _forces(valid: dict[str, np.ndarray], usage: LatentUsage) -> dict[str, float]:
    """force_recon, force_mean and force_variance of the validation rows (their sum is the
    validation −ELBO), or nothing where q is not a diagonal Gaussian under a standard normal
    prior."""
    forces = usage.forces
    if forces is None:
        return {}
    return {"force_recon": -float(valid["recon"].mean()), **forces}


def _training_rows(x_train, device: torch.device, dtype: torch.dtype):
    """(n, batch_rows): batch_rows(idx) gives the rows idx as a tensor on the device."""
    from .data import MappedRows

    if isinstance(x_train, MappedRows):
        # Larger than memory: rows are read per batch from the memory-mapped file.
        def batch_rows(idx: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(x_train.rows(idx.cpu().numpy())).to(device=device, dtype=dtype)

        return len(x_train), batch_rows
    # The dataset as one tensor on the device: a batch is one index_select.
    x_train_t = read_only_tensor(x_train, dtype, device)

    def batch_rows(idx: torch.Tensor) -> torch.Tensor:
        return torch.index_select(x_train_t, 0, idx)  # 3x faster than x_train_t[idx] on CPU

    return x_train_t.shape[0], batch_rows


def _validation_rows(model, x_valid, device: torch.device, dtype: torch.dtype):
    """The validation rows: all of them, or the first VALID_ROWS_WITHOUT_ENCODER for methods
    that must optimise each point's q; a memory-mapped split stays mapped when it can."""
    from .data import MappedRows

    mapped = isinstance(x_valid, MappedRows)
    if not model.inference.has_encoder:
        return torch.as_tensor(np.asarray(x_valid[:VALID_ROWS_WITHOUT_ENCODER]), dtype=dtype, device=device)
    return x_valid if mapped else read_only_tensor(x_valid, dtype, device)


class _Run:
    """What an epoch loop carries between epochs and what a checkpoint restores."""

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []
        self.best_valid, self.best_epoch, self.bad_epochs, self.start = -math.inf, 0, 0, 1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.config_to_save: RunConfig | None = None
        # config.json's model section, kept with the weights (``ckpt.model_record``), and its
        # fixed train and data fields, kept with the checkpoint (``ckpt.fixed_record``).
        self.model_record: dict[str, Any] | None = None
        self.fixed_record: dict[str, Any] | None = None
        # (training rows, validation rows) and their data_fingerprint: a resume on other data is refused.
        self.rows: list[int] = []
        self.fingerprint: list[str] = []
        # The averaged weights (--ema), which validation and the best model read.
        self.average: WeightAverage | None = None

    def evaluated(self):
        """A context in which the model holds the weights the run evaluates: the average where it
        keeps one, else its own."""
        return self.average.applied() if self.average is not None else contextlib.nullcontext()

    def best_meta(self) -> dict[str, Any]:
        """model.safetensors' metadata: the epoch of the best weights, and the model section."""
        return {"epoch": self.best_epoch, "model_config": self.model_record}


# Rows of each split whose values a checkpoint keeps a hash of: evenly spaced, so that reading
# them costs nothing next to an epoch even from a memory-mapped file.
FINGERPRINT_ROWS = 32


def fingerprint_rows(x):
    """The FINGERPRINT_ROWS evenly spaced rows of ``x`` that ``data_fingerprint`` hashes (all of
    them where x has no more): its hash of these rows alone is its hash of x."""
    n = len(x)
    idx = np.unique(np.linspace(0, n - 1, min(n, FINGERPRINT_ROWS)).round().astype(np.int64))
    return x.rows(idx) if hasattr(x, "rows") else x[torch.as_tensor(idx) if torch.is_tensor(x) else idx]


def data_fingerprint(x) -> str:
    """A hash of the float32 values of FINGERPRINT_ROWS evenly spaced rows of ``x`` (an array,
    a tensor or MappedRows): the same data, in any float dtype, give the same hash; data of the
    same size with other values there give another (a change elsewhere goes unseen)."""
    if len(x) == 0:
        return ""
    rows = fingerprint_rows(x)
    if torch.is_tensor(rows):
        rows = rows.detach().to("cpu", torch.float32).numpy()
    with np.errstate(over="ignore"):  # float64 data beyond float32's range hash as infinities
        return hashlib.sha256(np.ascontiguousarray(rows, dtype=np.float32).tobytes()).hexdigest()[:16]


def _start(model, optimizers, config: TrainConfig, run_dir: Path | None, run_config, resume: bool, writer: bool, x_train, x_valid) -> _Run:
    """A fresh run (seeded, the prior shown the training rows, run directory initialised) or
    one restored from last.safetensors, on the same training and validation rows as before
    (their counts and ``data_fingerprint``)."""
    run = _Run()
    run.rows = [len(x_train), len(x_valid)]
    run.fingerprint = [data_fingerprint(x_train), data_fingerprint(x_valid)]
    if writer and run_config is not None:
        run.model_record, run.fixed_record = ckpt.model_record(run_config), ckpt.fixed_record(run_config)
    if not resume:
        torch.manual_seed(config.seed)
        # A prior may start from the data (the VampPrior's pseudo-inputs); its own numpy
        # stream leaves torch's untouched. Not on resume: the checkpoint holds that state.
        model.prior.init_from_data(x_train, np.random.default_rng(config.seed))
        # From the weights the first step starts at (pseudo-inputs from the data included).
        run.average = WeightAverage(model, config.ema) if config.ema else None
        if writer:
            if run_config is None:
                raise ConfigError("run_config is needed to write a run directory (run_dir given without it)")
            run_config.save(run_dir / ckpt.CONFIG_FILE)
            _write_metrics(run_dir, [])
        return run
    if run_dir is None or not (run_dir / ckpt.LAST_FILE).is_file():
        done = len(ckpt.read_metrics(run_dir)) if run_dir is not None else 0
        why = (f"it was removed after {done} epoch{'s' if done != 1 else ''}; the best model stays usable" if done
               else "the run stopped before its first epoch ended")  # fmt: skip
        raise CheckpointError(
            f"{run_dir}: nothing to resume (no {ckpt.LAST_FILE}: {why}); start it again with --overwrite"
        )
    run.average = WeightAverage(model, config.ema) if config.ema else None
    meta = ckpt.restore_training_state(run_dir / ckpt.LAST_FILE, model, optimizers, run.average)
    ckpt.check_model_record(run_dir / ckpt.CONFIG_FILE, run_dir / ckpt.LAST_FILE, meta)
    if run.model_record is None:
        run.model_record, run.fixed_record = meta.get("model_config"), meta.get("fixed_config")
    _check_schedule(config, meta["history"], run_dir)
    if meta.get("rows", run.rows) != run.rows:  # checkpoints written before they kept it: not checked
        (was_train, was_valid), (now_train, now_valid) = meta["rows"], run.rows
        raise CheckpointError(
            f"{run_dir} was trained on {was_train} training and {was_valid} validation rows, and its data now give "
            f"{now_train} and {now_valid}: the data changed since the run began; resume on the data it trained on, "
            "or train again with --overwrite"
        )
    if meta.get("fingerprint", run.fingerprint) != run.fingerprint:  # not kept before: not checked
        split = "training" if meta["fingerprint"][0] != run.fingerprint[0] else "validation"
        raise CheckpointError(
            f"{run_dir}: the {split} rows hold other values than when the run began (same row counts): the data "
            "changed; resume on the data it trained on, or train again with --overwrite"
        )
    if writer:
        ckpt.remove_stale_temporaries(run_dir)
    if run_config is not None and writer:
        # Only once the checkpoint has loaded and a new epoch has passed may the new epochs or
        # device be recorded (with that epoch's checkpoint).
        run.config_to_save = run_config
    run.history = meta["history"]
    run.best_valid, run.best_epoch, run.bad_epochs = meta["best_valid"], meta["best_epoch"], meta["bad_epochs"]
    if not meta.get("stopped") and config.epochs < meta["epoch"]:
        raise ConfigError(
            f"{run_dir} has trained {meta['epoch']} epochs; --epochs {config.epochs} would end it before its last checkpoint "
            "(a resumed run can only train longer)"
        )
    run.start = config.epochs + 1 if meta.get("stopped") else meta["epoch"] + 1
    run.best_state, saved_epoch = _best_from_disk(run_dir, model)
    # A best model of another epoch than the record's best: its write failed after the
    # checkpoint's (see the epoch loop), or it was replaced by hand.
    stale = run.best_state is not None and saved_epoch is not None and saved_epoch != run.best_epoch
    if (run.best_state is None or stale) and run.best_epoch:
        if run.best_epoch != meta["epoch"]:
            what = f"holds epoch {saved_epoch}" if stale else "is missing or not a file"
            raise CheckpointError(
                f"{run_dir / ckpt.MODEL_FILE} {what}: the best weights (epoch {run.best_epoch}) are lost and "
                f"{ckpt.LAST_FILE} holds epoch {meta['epoch']}; put them back, or train again with --overwrite"
            )
        # The last checkpoint is the best epoch: its weights (or their average) are the best.
        with run.evaluated():
            run.best_state = copy.deepcopy(model.state_dict())
        if writer:
            ckpt.save_tensors(run_dir / ckpt.MODEL_FILE, run.best_state, run.best_meta())
    # Lines after the checkpoint belong to an epoch that will be run again.
    if writer:
        _write_metrics(run_dir, run.history)
    return run


def _check_schedule(config: TrainConfig, history: list[dict[str, Any]], run_dir: Path) -> None:
    """A resumed run may change its learning-rate schedule only where the new one gives every
    epoch so far the rate the run used: then the resumed run equals a straight run under the
    new schedule (a plateau schedule added before the first plateau, say)."""
    for record, wanted in zip(history, rates(config, history)):
        used = record.get("lr", config.lr)  # runs from before schedules stepped at lr throughout
        if not math.isclose(wanted, used, rel_tol=1e-12):
            raise ConfigError(
                f"--lr-schedule {config.lr_schedule} gives epoch {record['epoch']} the learning rate {wanted:g}, "
                f"where {run_dir} used {used:g}; resume it with the schedule it was trained with"
            )


class _Step:
    """One pass over the training set: per batch, the objective's loss, its gradient and the
    optimizer step, under the configured precision, compilation and data parallelism."""

    def __init__(self, model, objective, optimizers, config: TrainConfig, device: torch.device, batch_rows, rank: int, world: int, average: WeightAverage | None = None):
        self.model, self.objective, self.optimizers, self.config = model, objective, optimizers, config
        self.average = average
        self.device, self.batch_rows, self.rank, self.world = device, batch_rows, rank, world
        self.forward = model
        if world > 1:
            if model.inference.local_parameters():
                raise ConfigError(
                    f"data-parallel training needs an inference method without per-point tables; {model.config.inference!r} has them"
                )
            from torch.nn.parallel import DistributedDataParallel

            self.forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if config.compile:
            # dynamic=False: one graph for full batches, one more for the last, smaller batch.
            mode = None if config.compile_mode == "default" else config.compile_mode
            self.forward = torch.compile(self.forward, dynamic=False, mode=mode)
        self.autocast = _autocast(config, device)
        self.dtype = getattr(torch, config.dtype)

    def epoch(self, n: int, beta: float, epoch: int, run_dir: Path | None, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-step losses, the sum of the training points' objective values), both on the device and
        summed over ranks. The matmul precision holds for the whole pass (forward and backward)
        and is restored however the pass ends."""
        with _matmul_precision(self.config.matmul_precision), self._annealed(beta):
            return self._epoch(n, beta, epoch, run_dir, progress)

    @contextlib.contextmanager
    def _annealed(self, beta: float):
        """The epoch's warm-up β also for what the method fits inside a step (stochastic VI's
        local steps, a q refined in training), so that it ascends the objective the shared
        step does; the objective's own β again afterwards, for validation and new rows."""
        inference = self.model.inference
        full = inference.kl_weight
        if self.config.beta:
            inference.kl_weight = full * beta / self.config.beta
        try:
            yield
        finally:
            inference.kl_weight = full

    def _epoch(self, n: int, beta: float, epoch: int, run_dir: Path | None, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
        config, world, rank = self.config, self.world, self.rank
        bs = min(config.batch_size, n)
        steps = math.ceil(n / bs)
        bar = _progress(progress, steps, f"epoch {epoch}/{config.epochs}")
        losses = torch.zeros(steps, dtype=self.dtype, device=self.device)
        value_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        perm = torch.randperm(n, device=self.device)
        tick = max(1, steps // TICKS_PER_EPOCH)
        for step in range(steps):
            idx = perm[step * bs : (step + 1) * bs]
            b = idx.shape[0]
            # The noise of the whole global batch, drawn identically on every rank, so that
            # data-parallel training equals one process on the same global batch.
            eps = torch.randn((self.objective.samples, b, self.model.noise_size), dtype=self.dtype, device=self.device)
            if world > 1:
                lo, hi = rank * b // world, (rank + 1) * b // world
                idx, eps = idx[lo:hi], eps[:, lo:hi]
            xb = self.batch_rows(idx)
            if self.model.config.local_steps_per_batch:
                # Stochastic VI's local step before the shared one; its noise stream is named by
                # a draw from the global stream, so that --resume repeats it.
                seed = int(torch.randint(2**62, (1,)))
                self.model.inference.local_update(self.model, xb, idx, seed)
            with self.autocast():
                batch_loss, value = self.forward(self.objective, xb, idx, eps, beta)
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
            # DDP averages gradients over ranks; weighting each rank's mean by its share of
            # the batch makes that average the gradient of the global-batch mean.
            (batch_loss * (idx.shape[0] * world / b) if world > 1 else batch_loss).backward()
            for opt in self.optimizers:
                opt.step()
            if self.average is not None:
                self.average.update()
            losses[step] = batch_loss.detach() * (idx.shape[0] / b if world > 1 else 1.0)
            value_sum += value.detach().sum()
            if (step + 1) % tick == 0 or step + 1 == steps:
                shown = losses[: step + 1]
                if world > 1:
                    # Each rank holds its share of each step's loss; every rank reaches this
                    # tick at the same step, so the collective is safe, and all see a NaN.
                    import torch.distributed as dist

                    shown = shown.clone()
                    dist.all_reduce(shown)
                _check_finite(shown, step + 1, epoch, run_dir)
                if bar is not None:
                    bar.update(step + 1 - bar.n)
                    bar.set_postfix(loss=f"{shown.mean().item():.3f}")
        if bar is not None:
            bar.close()
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(losses)
            dist.all_reduce(value_sum)
        return losses, value_sum


def _autocast(config: TrainConfig, device: torch.device):
    """The step's autocast context: bfloat16 networks under ``amp="bf16"`` (no loss scaling is
    needed, bfloat16 has float32's exponent range), else nothing. ``auto`` is resolved here for
    a TrainConfig used without a RunConfig. bf16 where it is slow (no matrix units) warns."""
    from .config import resolve_amp
    from .errors import VaekitWarning
    from .hardware import amp_warning

    amp = resolve_amp(config)
    if amp == "off":
        return contextlib.nullcontext  # fit runs in no_autocast(): float32 whatever the caller's
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"--amp {amp}: this GPU has no bfloat16 support")
    slow = amp_warning(amp, str(device))
    if slow:
        warnings.warn(slow, VaekitWarning, stacklevel=5)  # at the caller of fit()
    return functools.partial(_bf16_step, device.type)


@contextlib.contextmanager
def _bf16_step(device_type: str):
    """One step's forward under bfloat16 autocast. Autocast keeps its bfloat16 copies of the
    weights until the outermost autocast region ends, and fit runs inside one (no_autocast):
    without clearing them each step would compute with the weights of the first."""
    try:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            yield
    finally:
        torch.clear_autocast_cache()


@contextlib.contextmanager
def _matmul_precision(precision: str):
    """torch.set_float32_matmul_precision for the block only: the setting is process-wide, and
    evaluation (and the caller's own code) must keep full float32 products."""
    old = torch.get_float32_matmul_precision()
    if old == precision:
        yield
        return
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def check_shards(n: int, batch_size: int, world: int, resume: bool = False) -> None:
    """Each of ``world`` processes takes a share of every global batch; a batch with fewer rows
    than processes leaves a share empty, whose mean loss is 0/0: refused before any step. A
    resumed run keeps its batch size, so then the advice is about the processes."""
    bs = min(batch_size, n)
    smallest = min(bs, n % bs or bs)
    if world > 1 and smallest < world:
        advice = (f"resume it on at most {smallest} process(es) (its --batch-size stays)" if resume
                  else "choose another --batch-size")  # fmt: skip
        raise ConfigError(
            f"{n} training rows in batches of {bs} include a batch of {smallest} row(s), fewer than the {world} "
            f"processes (each needs a row of every batch); {advice}"
        )


def init_distributed(device: str) -> bool:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU,
    NCCL on CUDA); False when not launched by torchrun."""
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    resolve_device(device)  # before the group: no CUDA means no NCCL either, said in one line
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def check_same_setup(setup: dict[str, str]) -> None:
    """Refuse, in every process of a torchrun group, a group whose processes were given
    different options or data: ``setup`` maps what a user names (``--seed``, "the training
    rows") to what this process has. Data-parallel training averages the ranks' gradients, so
    ranks with another --seed or --lr would silently train weights that no single process
    would, and ranks with another --epochs or --batch-size would wait forever in a collective.
    All ranks gather all setups and raise the same error, naming the first difference from
    rank 0, so that none is left waiting."""
    import torch.distributed as dist

    setups: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(setups, setup)
    for rank, other in enumerate(setups[1:], start=1):
        for name in dict.fromkeys([*setups[0], *other]):
            mine, theirs = setups[0].get(name, "nothing"), other.get(name, "nothing")
            if mine != theirs:
                raise ConfigError(
                    f"the processes of this torchrun group were given different {name}: rank 0 {mine}, rank {rank} {theirs}; "
                    "every process must run the same command on the same data"
                )


def _check_finite(losses: torch.Tensor, upto: int, epoch: int, run_dir: Path | None) -> None:
    bad = ~torch.isfinite(losses[:upto])
    if bool(bad.any()):
        step = int(bad.nonzero()[0, 0]) + 1
        raise TrainingError(f"loss became NaN or infinite at epoch {epoch}, step {step}{_kept(run_dir)}")


def _overflows_on_training_rows(model, batch_rows, n: int, seed: int) -> bool:
    """Whether the ELBO of the first training rows is no number either: then a validation row's
    overflow is the weights' doing (an epoch's last step that made them huge or NaN after its
    loss was still finite), not the row's. Asked only once validation has failed."""
    x = batch_rows(torch.arange(min(n, 256), device=next(model.parameters()).device))
    terms = elbo_per_point(model, x, seed=seed, per_row=False, checked=True)
    try:
        refuse_elbo_overflow(terms, x.cpu().numpy())
    except DataError:
        return True
    return False


def _kept(run_dir: Path | None) -> str:
    if run_dir is not None and (run_dir / ckpt.LAST_FILE).is_file():
        return f"; the last good checkpoint in {run_dir} is intact"
    return ""


def _span(lo: float, hi: float) -> str:
    """"LO to HI" with two significant digits more than the fewest that tell them apart (at
    least 4, at most 17): 1e5 ± 0.004 reads 99999.9969 to 100000.0042, not 1e+05 to 1e+05."""
    apart = next((d for d in range(2, 18) if f"{lo:.{d}g}" != f"{hi:.{d}g}"), 2)
    digits = min(max(apart + 2, 4), 17)
    return f"{lo:.{digits}g} to {hi:.{digits}g}"


def _likely_cause(model, x_train, config: TrainConfig) -> str:
    """What a NaN in training most likely comes from, in the user's terms: values far from
    the unit scale that the networks and the Gaussian likelihood start at (standardisation
    off), or else the learning rate."""
    from .data import summarize

    values = summarize(x_train)
    seen = f"the training values the model sees run from {_span(values.min, values.max)}"
    lr = f"the learning rate (--lr {config.lr:g}; try a lower one)"
    mc = model.config
    spread = max(abs(values.min), abs(values.max))
    # The likelihood's gradient (x − mean)/σ², times the decoder's weights backwards, overflows
    # float32 (3.4e38) long before the loss does, which a learning rate cannot help.
    if mc.likelihood == "gaussian" and mc.variance == "fixed" and spread / mc.fixed_std**2 > 1e30:
        return f"likely cause: the fixed σ: --fixed-std {mc.fixed_std:g} is so small beside {seen} that (x − mean)/σ² overflows float32 (train with a larger --fixed-std); else {lr}"
    if mc.likelihood == "gaussian" and mc.standardize == "off" and spread > 10:
        return f"likely cause: the scale of the data: standardisation is off and {seen} (train with --standardize on or auto); else {lr}"
    if mc.standardize == "on":
        return f"the data are standardised ({seen}), so the likely cause is {lr}"
    return f"{seen}; likely cause: {lr}"


def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    ckpt.atomic_write_bytes(run_dir / ckpt.METRICS_FILE, ckpt.metrics_bytes(history))


def _append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / ckpt.METRICS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


def _best_from_disk(run_dir: Path, model: torch.nn.Module) -> tuple[dict[str, torch.Tensor] | None, int | None]:
    """(the best weights of RUN_DIR/model.safetensors on the model's device and dtype, the
    epoch they were saved at: None for weights saved without it), or (None, None) without
    the file."""
    path = run_dir / ckpt.MODEL_FILE
    if not path.is_file():
        return None, None
    tensors, meta = ckpt.load_tensors(path)
    ckpt.check_model_record(run_dir / ckpt.CONFIG_FILE, path, meta)
    p = next(model.parameters())
    state = {k: v.to(device=p.device, dtype=v.dtype if not v.is_floating_point() else p.dtype) for k, v in tensors.items()}
    return state, meta.get("epoch")
