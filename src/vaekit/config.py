"""Typed configuration, saved as RUN_DIR/config.json beside every model.

``RunConfig`` holds everything needed to rebuild the model and to repeat or resume the
run. Checks live in ``__post_init__`` so that a bad value fails when it is set, whether
it came from Python, the CLI or a config file.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

CONFIG_VERSION = 1

ACTIVATIONS = ("relu", "tanh", "elu", "gelu", "softplus", "leaky_relu", "silu")
VARIANCES = ("fixed", "shared", "feature")
DTYPES = ("float32", "float64")
AMP = ("off", "bf16")
MATMUL_PRECISIONS = ("highest", "high", "medium")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _finite(name: str, value: Any, lo: float | None = None, lo_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ConfigError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value!r}")


@dataclass
class ModelConfig:
    """The generative model p(z) p(x|z; θ) and the inference model q(z|x; φ)."""

    input_dim: int
    latent_dim: int = 20
    # Encoder widths; the decoder mirrors them unless decoder_hidden is given. () is a linear
    # map, which makes the Gaussian-likelihood VAE a probabilistic PCA.
    hidden: tuple[int, ...] = (400,)
    decoder_hidden: tuple[int, ...] | None = None
    activation: str = "relu"
    likelihood: str = "bernoulli"
    # Gaussian likelihood only: σ² fixed, one learned σ² for all features, or one per feature.
    variance: str = "shared"
    fixed_std: float = 1.0
    prior: str = "standard_normal"
    inference: str = "amortized"
    # (H, W) or (C, H, W) for image data, so samples and reconstructions can be drawn.
    image_shape: tuple[int, ...] | None = None
    # Rows of the training set that own free latent parameters (map, vi); set from the data.
    n_points: int = 0
    # Test-time optimisation of a per-point q with θ fixed (vi and map for new points, the
    # evaluation proposal of point-estimate methods, q* of the gaps): Adam steps and rate.
    local_steps: int = 100
    local_lr: float = 0.05
    # Semi-amortized VI: gradient steps on each point's ELBO from the encoder's q.
    refine_steps: int = 0
    refine_lr: float = 0.05
    # Also refine during training (the decoder learns from the refined q).
    refine_in_training: bool = False

    def __post_init__(self) -> None:
        from . import likelihoods, priors, inference  # registries fill on import

        self.hidden = tuple(self.hidden)
        if self.decoder_hidden is not None:
            self.decoder_hidden = tuple(self.decoder_hidden)
        if self.image_shape is not None:
            self.image_shape = tuple(self.image_shape)
        _positive_int("input_dim", self.input_dim)
        _positive_int("latent_dim", self.latent_dim)
        for name, widths in (("hidden", self.hidden), ("decoder_hidden", self.decoder_hidden or ())):
            for w in widths:
                _positive_int(f"{name} width", w)
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        likelihoods.LIKELIHOODS.get(self.likelihood)
        priors.PRIORS.get(self.prior)
        inference.INFERENCE.get(self.inference)
        if self.variance not in VARIANCES:
            raise ConfigError(f"variance must be one of {', '.join(VARIANCES)}, got {self.variance!r}")
        _finite("fixed_std", self.fixed_std, 0.0, lo_open=True)
        _positive_int("n_points", self.n_points, minimum=0)
        _positive_int("local_steps", self.local_steps, minimum=0)
        _finite("local_lr", self.local_lr, 0.0, lo_open=True)
        _positive_int("refine_steps", self.refine_steps, minimum=0)
        _finite("refine_lr", self.refine_lr, 0.0, lo_open=True)
        if not isinstance(self.refine_in_training, bool):
            raise ConfigError(f"refine_in_training must be true or false, got {self.refine_in_training!r}")
        method = inference.INFERENCE.get(self.inference)
        if method.per_point and self.n_points < 1:
            raise ConfigError(f"inference {self.inference!r} keeps one latent per training row; n_points must be >= 1")
        if self.refine_steps and not method.has_encoder:
            raise ConfigError(f"refine_steps needs an encoder to refine; inference {self.inference!r} has none")
        if self.image_shape is not None and math.prod(self.image_shape) != self.input_dim:
            raise ConfigError(
                f"image_shape {self.image_shape} has {math.prod(self.image_shape)} pixels, "
                f"but input_dim is {self.input_dim}"
            )

    @property
    def decoder_widths(self) -> tuple[int, ...]:
        return self.hidden[::-1] if self.decoder_hidden is None else self.decoder_hidden


@dataclass
class TrainConfig:
    """Stochastic-gradient training of the ELBO jointly over φ and θ."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    # Loss = -(E_q[log p(x|z)] - β·KL); β = 1 is the ELBO itself.
    beta: float = 1.0
    # β rises linearly from 0 to beta over this many epochs (KL annealing, Bowman et al. 2016).
    warmup: int = 0
    # Posterior samples per datapoint in the Monte Carlo estimate of E_q[log p(x|z)].
    n_samples: int = 1
    # Use the closed-form KL when one is registered; else always Monte Carlo.
    analytic_kl: bool = True
    # Stop after this many epochs without a better validation ELBO; None never stops early.
    patience: int | None = None
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    # K of the importance-weighted log-likelihood printed at the end of training.
    eval_k: int = 1000
    # Compile the training step's forward and backward with torch.compile (TorchInductor).
    compile: bool = False
    # torch.compile's mode; "reduce-overhead" replays the step as a CUDA graph on a GPU.
    compile_mode: str = "default"
    # Mixed precision of the training step: "bf16" runs the networks under autocast to
    # bfloat16, while weights, optimizer state and every log-density stay in the model's dtype.
    amp: str = "off"
    # float32 matrix products during training (torch.set_float32_matmul_precision): "high"
    # allows TF32 on CUDA, "medium" bfloat16-based products (CUDA, and CPUs with bf16 units).
    # Evaluation always runs at "highest", so likelihoods are not affected.
    matmul_precision: str = "highest"

    def __post_init__(self) -> None:
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        _finite("lr", self.lr, 0.0, lo_open=True)
        _finite("beta", self.beta, 0.0)
        _positive_int("warmup", self.warmup, minimum=0)
        _positive_int("n_samples", self.n_samples)
        if self.patience is not None:
            _positive_int("patience", self.patience)
        _positive_int("seed", self.seed, minimum=0)
        _positive_int("eval_k", self.eval_k)
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.compile, bool):
            raise ConfigError(f"compile must be true or false, got {self.compile!r}")
        for name, choices in (("compile_mode", COMPILE_MODES), ("amp", AMP), ("matmul_precision", MATMUL_PRECISIONS)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if self.amp != "off" and self.dtype != "float32":
            raise ConfigError(f"amp={self.amp} needs dtype float32, got {self.dtype!r}")
        if not isinstance(self.analytic_kl, bool):
            raise ConfigError(f"analytic_kl must be true or false, got {self.analytic_kl!r}")
        if not isinstance(self.device, str) or not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"device must be cpu or cuda[:N], got {self.device!r}")

    def beta_at(self, epoch: int) -> float:
        """β for a 1-based epoch under the linear warm-up."""
        if self.warmup <= 0:
            return self.beta
        return self.beta * min(1.0, epoch / self.warmup)


@dataclass
class DataConfig:
    """Where the data comes from and how it is split, so a run can reload its own splits."""

    source: str = "digits"
    data_dir: str | None = None
    valid_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    # Memory-map a .npy file and stream its rows instead of reading it whole (datasets larger
    # than memory).
    mmap: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.mmap, bool):
            raise ConfigError(f"mmap must be true or false, got {self.mmap!r}")
        if not isinstance(self.source, str) or not self.source:
            raise ConfigError(f"source must be a dataset name or a file path, got {self.source!r}")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise ConfigError(f"data_dir must be a path, got {self.data_dir!r}")
        for name in ("valid_fraction", "test_fraction"):
            v = getattr(self, name)
            _finite(name, v, 0.0)
            if v >= 1:
                raise ConfigError(f"{name} must be < 1, got {v!r}")
        if self.valid_fraction + self.test_fraction >= 1:
            raise ConfigError(
                f"valid_fraction + test_fraction must be < 1, got {self.valid_fraction + self.test_fraction!r}"
            )
        _positive_int("split_seed", self.split_seed, minimum=0)


@dataclass
class RunConfig:
    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    version: int = CONFIG_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"config must be a JSON object, got {type(d).__name__}")
        version = d.get("version")
        if version != CONFIG_VERSION:
            raise ConfigError(f"config version must be {CONFIG_VERSION}, got {version!r}")
        try:
            return cls(
                model=_build(ModelConfig, d["model"]),
                train=_build(TrainConfig, d.get("train", {})),
                data=_build(DataConfig, d.get("data", {})),
                version=version,
            )
        except KeyError as e:
            raise ConfigError(f"config is missing the section {e.args[0]!r}") from None

    def save(self, path: str | Path) -> None:
        from .files import atomic_write_bytes

        atomic_write_bytes(Path(path), (json.dumps(self.to_dict(), indent=2) + "\n").encode())

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read config ({e})") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


def _build(cls: type, d: Any):
    if not isinstance(d, dict):
        raise ConfigError(f"config section for {cls.__name__} must be an object, got {d!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    try:
        return cls(**d)
    except TypeError as e:
        raise ConfigError(f"{cls.__name__}: {e}") from None
