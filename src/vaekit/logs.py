"""What a run tells the person watching it: one line per epoch on stderr, the progress of the
evaluation after training, and (optionally) TensorBoard event files.

Lines rather than a redrawn bar are what a log file, ``nohup`` or a batch system keeps; the
tqdm bars are for terminals. No torch import here (TensorBoard's writer is imported on use).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError

# The TensorBoard event files of a run: RUN_DIR/tensorboard/.
TENSORBOARD_DIR = "tensorboard"
# Lines the evaluation's progress prints when stderr is no terminal: one per this share of rows.
EVAL_LINES = 10


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One epoch of metrics.jsonl as an aligned line: epoch, the objective on the training
    and validation rows (its own values, higher is better), the validation KL, the learning
    rate the epoch stepped at (so a schedule's cuts show in a log), the epoch's time and the
    training images per second."""
    width = len(str(epochs))
    lr = f"lr {record['lr']:.2e}  " if record.get("lr") is not None else ""
    evidence = f"log p(x) {record['valid_log_px']:10.3f}  gap to ELBO {record['valid_gap']:7.3f}  " if record.get("valid_log_px") is not None else ""
    return (
        f"epoch {record['epoch']:>{width}}/{epochs}  {record['objective']}  "
        f"train {record['train_objective']:10.3f}  valid {record['valid_score']:10.3f}  "
        f"kl {record['valid_kl']:8.3f}  {evidence}{lr}{record['epoch_seconds']:6.1f} s  {record['images_per_second']:7.0f} img/s"
    )


def emit(line: str, stream=None) -> None:
    """One line on ``stream`` (sys.stderr, read now), flushed at once, and as one line: a line
    break in it (a path holding one) is written as \\n. A closed or full stderr loses the line,
    never the work it reports on."""
    stream = stream or sys.stderr
    if stream is None:  # started with stderr closed
        return
    with contextlib.suppress(OSError, ValueError):  # EBADF, ENOSPC, a closed file object
        print(line.replace("\r", "\\r").replace("\n", "\\n"), file=stream, flush=True)


class EpochLog:
    """``fit``'s ``on_epoch``: prints ``epoch_line`` of each epoch on stderr, flushed at once."""

    def __init__(self, epochs: int, stream=None):
        self.epochs, self.stream = epochs, stream

    def __call__(self, record: dict[str, Any]) -> None:
        # sys.stderr read at each call, not at construction: whoever captures it may swap it.
        emit(epoch_line(record, self.epochs), self.stream)


class RowProgress:
    """Progress of a long pass over ``total`` rows on stderr: a tqdm bar when ``bar``, else a
    line such as ``evaluating log p(x) (K=1000): 3000/10000 rows, 12.5 s`` each time another
    tenth of the rows is done. Called with the rows done so far; ``close`` when the pass ends."""

    def __init__(self, total: int, what: str, bar: bool, stream=None):
        self.total, self.what, self.stream = total, what, stream
        self.t0 = time.perf_counter()
        self.shown = 0  # tenths reported
        self.bar = None
        if bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=what, unit="row", file=stream or sys.stderr, leave=False, dynamic_ncols=True)

    def __call__(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            return
        tenths = EVAL_LINES if done >= self.total else math.floor(done * EVAL_LINES / max(self.total, 1))
        if tenths > self.shown:
            self.shown = tenths
            seconds = time.perf_counter() - self.t0
            emit(f"{self.what}: {done}/{self.total} rows, {seconds:.1f} s", self.stream)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def check_tensorboard():
    """TensorBoard's ``SummaryWriter``, or a ConfigError saying how to get it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter


def scalars(record: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """(tag, value) of every number of a metrics.jsonl record but the epoch: ``kl_per_dim`` as
    ``kl_per_dim/<i>``, ``kl_per_group`` as ``kl_per_group/<group>``; None and text are skipped."""
    for key, value in record.items():
        if key == "epoch" or value is None or isinstance(value, (str, bool)):
            continue
        if isinstance(value, (list, tuple)):
            yield from ((f"{key}/{i}", float(v)) for i, v in enumerate(value))
        elif isinstance(value, dict):
            yield from ((f"{key}/{name}", float(v)) for name, v in value.items())
        else:
            yield key, float(value)


class TensorBoardLog:
    """``fit``'s ``on_epoch``: each epoch's metrics.jsonl record as TensorBoard scalars in
    RUN_DIR/tensorboard/, with the epoch as the step (``scalars`` names the tags)."""

    def __init__(self, run_dir: str | Path):
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self.writer = None

    def __call__(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            SummaryWriter = check_tensorboard()
            # A resumed run repeats the epochs after its checkpoint: TensorBoard drops the
            # events of those epochs that a killed run had written.
            self.writer = SummaryWriter(str(self.log_dir), purge_step=record["epoch"])
        for tag, value in scalars(record):
            self.writer.add_scalar(tag, value, record["epoch"])
        self.writer.flush()  # a person following the run sees each epoch as it ends

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
