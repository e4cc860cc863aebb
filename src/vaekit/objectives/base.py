"""The interface every objective implements."""

from __future__ import annotations

import torch

from ..errors import ConfigError


class Objective:
    """``loss(model, x, idx, eps, beta)`` → (scalar loss, per-point value (n,)) for a training
    batch, with the noise ``eps`` of shape (samples, n, model.noise_size) drawn by the loop;
    ``validate(model, x, terms, seed)`` → the mean per-point value on validation rows, higher
    is better (``terms`` are the validation ELBO's, already computed by the loop)."""

    name: str
    options: dict

    def __init__(self, config):
        self.config = config

    @property
    def samples(self) -> int:
        """Noise draws per datapoint in one step."""
        return 1

    @property
    def kl_weight(self) -> float:
        """β of this objective read as ELBO_β = E_q[log p(x|z)] − β KL(q || p): the weight of
        log p(ẑ) in what a point estimate ẑ maximises (its KL is −log p(ẑ)), so that the codes
        of new rows are fitted as the training rows' were (``optimize.optimize_point``)."""
        return 1.0

    @classmethod
    def check_inference(cls, method: type) -> None:
        """Raise ConfigError if this objective cannot train with the inference method ``method``."""

    def check_model(self, model) -> None:
        """Raise ConfigError if this objective would leave part of ``model`` untrained."""

    @staticmethod
    def refuse_untrained_prior(model, why: str) -> None:
        """A loss without the KL term never reaches p(z): a prior with parameters of its own (a
        mixture's components, the VampPrior's pseudo-inputs) would be saved, evaluated and
        sampled at its random start."""
        if any(p.requires_grad for p in model.prior.parameters()):
            raise ConfigError(
                f"{why} leaves p(z) out of the loss, so the {model.config.prior} prior's parameters would never be "
                "trained; use the standard_normal prior, or an objective with the KL term"
            )

    def loss(self, model, x: torch.Tensor, idx: torch.Tensor | None, eps: torch.Tensor, beta: float = 1.0):  # pragma: no cover - interface
        raise NotImplementedError

    def validate(self, model, x, terms: dict, seed: int) -> float:  # pragma: no cover - interface
        raise NotImplementedError


def in_model_dtype(model, x: torch.Tensor) -> torch.Tensor:
    """x in the dtype of the model's parameters: the equations take rows of any dtype (float64
    rows for a float32 model, integer 0/1 pixels), as ``evaluate`` does, rather than failing in
    the first matrix product."""
    p = next(model.parameters(), None)
    return x.to(p.dtype) if p is not None and isinstance(x, torch.Tensor) and x.dtype != p.dtype else x
