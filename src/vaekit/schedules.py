"""Learning-rate schedules of the shared parameters (θ, φ).

A schedule is a function of the epoch and of the run's history alone, never a stateful object:
the rate of epoch e is recomputed from the metrics of epochs 1..e−1, which every checkpoint
holds, so a resumed run steps at exactly the rates of an uninterrupted one.

- ``constant``: ``lr`` throughout.
- ``plateau``: ``lr`` until the validation objective has not improved for more than
  ``lr_patience`` epochs, then ``lr_factor`` times it, and so on, never below ``lr_min``
  (the rule of torch.optim.lr_scheduler.ReduceLROnPlateau in mode "max" with an absolute
  threshold of 0). Epochs of a KL warm-up do not count: their objective is still moving with β.
- ``burda``: Burda et al. (2016, "Importance weighted autoencoders", sec. 5): stage i = 0..7
  lasts 3^i epochs at ``lr``·10^(−i/7), 3280 epochs in all; later epochs stay at the last rate.
"""

from __future__ import annotations

import math
from typing import Any

SCHEDULES = ("constant", "plateau", "burda")
# Burda et al.'s staircase: stages 0..7 of 3^i epochs each, the rate divided by 10^(1/7) per stage.
BURDA_STAGES = 8


def burda_stage(epoch: int) -> int:
    """The stage i of a 1-based epoch: stages 0..i−1 span (3^i − 1)/2 epochs."""
    i = 0
    while i + 1 < BURDA_STAGES and epoch > (3 ** (i + 1) - 1) // 2:
        i += 1
    return i


def lr_at(config, epoch: int, history: list[dict[str, Any]]) -> float:
    """The learning rate of 1-based ``epoch`` under ``config.lr_schedule``, given the records of
    the epochs before it (``history``, each with ``epoch`` and ``valid_score``)."""
    return rates(config, [r for r in history if r["epoch"] < epoch], epoch)[-1]


def rates(config, history: list[dict[str, Any]], upto: int | None = None) -> list[float]:
    """The rate of each epoch of ``history`` and then of epoch ``upto`` (default: the epoch after
    the last record), in one pass over the records."""
    upto = (history[-1]["epoch"] + 1 if history else 1) if upto is None else upto
    if config.lr_schedule == "constant":
        return [config.lr] * (len(history) + 1)
    if config.lr_schedule == "burda":
        return [config.lr * 10.0 ** (-burda_stage(e) / 7) for e in [r["epoch"] for r in history] + [upto]]
    out, lr, best, bad = [], config.lr, -math.inf, 0
    for record in history:
        out.append(lr)
        if record["epoch"] <= config.warmup:
            continue
        score = record["valid_score"]
        if score > best:
            best, bad = score, 0
        else:
            bad += 1
            if bad > config.lr_patience:
                lr, bad = max(lr * config.lr_factor, config.lr_min), 0
    return out + [lr]
