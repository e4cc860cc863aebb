"""Objectives: what training maximises, as objects the training loop calls (as Pyro's
``Trace_ELBO`` plugs into ``SVI``), plus the pieces they share: the closed-form KL with its
Monte Carlo fallback, the ELBO's terms, the importance weights and their log-mean-exp.

An objective is registered in ``OBJECTIVES`` and owns its options (the ELBO its β and
warm-up, the importance-weighted bound its K). The inference method only supplies q; the
objective turns the model and q into a loss, and into the per-point value that picks the best
epoch on the validation set. A new objective is one file in this folder.
"""

from __future__ import annotations

from ..registry import OBJECTIVES
from .base import Objective
from .elbo import Elbo, elbo, loss
from .iwae import iwae, iwae_and_elbo, log_mean_exp, log_weights
from .kl import kl

__all__ = ["OBJECTIVES", "Objective", "Elbo", "elbo", "loss", "iwae", "iwae_and_elbo", "log_mean_exp", "log_weights", "kl"]
