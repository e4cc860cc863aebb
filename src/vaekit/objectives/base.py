"""The interface every objective implements."""

from __future__ import annotations

import torch


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

    @classmethod
    def check_inference(cls, method: type) -> None:
        """Raise ConfigError if this objective cannot train with the inference method ``method``."""

    def loss(self, model, x: torch.Tensor, idx: torch.Tensor | None, eps: torch.Tensor, beta: float = 1.0):  # pragma: no cover - interface
        raise NotImplementedError

    def validate(self, model, x, terms: dict, seed: int) -> float:  # pragma: no cover - interface
        raise NotImplementedError
