"""Objectives: the closed-form KL and its Monte Carlo fallback, the ELBO, and the
importance-weighted evidence estimate. One implementation of each, for every inference method."""

from .elbo import Elbo, elbo, loss
from .iwae import iwae, log_mean_exp, log_weights
from .kl import kl

__all__ = ["Elbo", "elbo", "loss", "iwae", "log_mean_exp", "log_weights", "kl"]
