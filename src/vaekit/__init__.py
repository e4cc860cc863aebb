"""vaekit: variational autoencoders as the lecture notes build them.

Heavy modules (torch) load on first use, so ``vaekit --help`` starts fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "VAE": "vaekit.estimator",
    "load": "vaekit.estimator",
    "VAEModel": "vaekit.model",
    "ModelConfig": "vaekit.config",
    "TrainConfig": "vaekit.config",
    "DataConfig": "vaekit.config",
    "RunConfig": "vaekit.config",
    "VaekitError": "vaekit.errors",
}

__all__ = ["DataConfig", "ModelConfig", "RunConfig", "TrainConfig", "VAE", "VAEModel", "VaekitError", "__version__", "load"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vaekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazy names too, so that help(vaekit), dir() and tab completion show the public API."""
    return sorted(set(globals()) | set(_LAZY))
