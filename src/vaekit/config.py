"""Typed configuration, saved as RUN_DIR/config.json beside every model.

Every hyperparameter is declared once, as an ``Option`` (default, help, check): the core ones
below, and each component's own in its ``register(..., options={...})`` call (the Gaussian
likelihood declares ``variance``, the ELBO ``beta``, ...). The dataclasses ``ModelConfig``,
``TrainConfig`` and ``DataConfig`` are built from those declarations, and so are the CLI's
flags, the estimator's parameters, ``--resume``'s comparison and config.json. Checks run in
``__post_init__``, so a bad value fails when it is set, whether it came from Python, the CLI
or a file. ``RunConfig`` holds everything needed to rebuild the model and to repeat or resume
the run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError

# float32's largest value (torch.finfo(torch.float32).max), without importing torch here.
FLOAT32_MAX = 3.4028234663852886e38
from .files import json_loads
from .registry import K_MAX, REGISTRIES, STEPS_MAX, Option
from .schedules import SCHEDULES

CONFIG_VERSION = 10
# From this version on a config.json holds every field.
FIRST_COMPLETE_VERSION = 6
# The fields each version added, by section: an older file lacks them (``_migrate`` fills them
# in), and one that holds them had its version edited.
ADDED_FIELDS: dict[int, dict[str, tuple[str, ...]]] = {
    2: {"train": ("objective",)},
    3: {"model": ("standardize", "input_shift", "input_scale")},
    4: {"model": ("point_lr",)},
    5: {"model": ("downward",)},
    7: {"train": ("valid_k",)},
    8: {"model": ("x_path",)},
    9: {"train": ("ema",)},
    10: {"train": ("weight_decay",)},
}

# Versions whose step to the next only adds one field: version -> (section, field, the value
# that version's runs had in effect).
DEFAULTED_FIELDS: dict[int, tuple[str, str, Any]] = {
    # train.valid_k, the per-epoch validation log p(x): version 6 runs did not estimate it.
    6: ("train", "valid_k", 0),
    # model.x_path (topdown's q(z_l | z_{l+1}, x) may read x through one layer): version 7
    # runs read it through an encoder trunk.
    7: ("model", "x_path", "trunk"),
    # train.ema (averaged weights): version 8 runs validated and kept their own weights.
    8: ("train", "ema", 0.0),
    # train.weight_decay (decoupled weight decay): version 9 runs had none.
    9: ("train", "weight_decay", 0.0),
}

ACTIVATIONS = ("relu", "tanh", "elu", "gelu", "softplus", "leaky_relu", "silu")
DTYPES = ("float32", "float64")
AMP = ("off", "bf16", "auto")
MATMUL_PRECISIONS = ("highest", "high", "medium")
# Seeds are what torch.manual_seed and numpy take alike: integers in [0, 2**63).
SEED_MAX = 2**63 - 1
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_positive_int(name: str, value: Any, minimum: int = 1, error: type[Exception] = ConfigError, maximum: int | None = None) -> int:
    """The one validator for counts: an integer (not a bool) >= ``minimum`` (and <= ``maximum``
    where given), else ``error`` (a VaekitError subclass) naming ``name``."""
    try:
        return Option(minimum, "", type="int", minimum=minimum, maximum=maximum).check(name, value)
    except ConfigError as e:
        raise error(str(e)) from None


def check_bool(name: str, value: Any) -> bool:
    """The one validator for switches of the Python API: True or False (numpy's too), else
    ConfigError naming ``name``; a string "False" or a 0 is no answer to a yes-or-no question."""
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return bool(value)


# Core options of each section; components add theirs (see the module docstring). ``cli``:
# False for what the data decide (input_dim, n_points); the flag of ``source`` is --data.
MODEL_OPTIONS: dict[str, Option] = {
    "input_dim": Option(None, "features per row (from the data)", type="int", minimum=1),
    "latent_dim": Option(
        (20,), "size of z, or of each stochastic layer bottom first (40,40: a two-layer hierarchy)", type="int|widths"
    ),
    # Encoder widths; the decoder mirrors them unless decoder_hidden is given. () is a linear
    # map, which makes the Gaussian-likelihood VAE a probabilistic PCA.
    "hidden": Option((400,), "encoder widths, comma-separated; '' for a linear map", type="widths"),
    "decoder_hidden": Option(None, "decoder widths (default: the encoder's, reversed)", type="widths", optional=True),
    "activation": Option("relu", "activation of the hidden layers", choices=ACTIVATIONS),
    "likelihood": Option("bernoulli", "p(x|z); auto picks it from the data", choices="likelihood"),
    "prior": Option("standard_normal", "p(z) of the top layer", choices="prior"),
    "inference": Option("amortized", "how q(z|x) is obtained", choices="inference"),
    "net": Option("mlp", "network of encoder and decoder", choices="net"),
    "encoder": Option(None, "encoder network (default: --net)", type="str", choices="net", optional=True),
    "decoder": Option(None, "decoder network (default: --net)", type="str", choices="net", optional=True),
    # p(z_l | z_{l+1}) of a hierarchy is part of the generative model: by default a dense net
    # of the decoder's family (gated layers under --net gated, as Tomczak & Welling's).
    "downward": Option(None, "network of p(z_l | z_{l+1}) between stochastic layers, with the encoder's widths (default: the decoder's network; conv, with no network of vectors of its own, uses mlp's there and is not a choice)", type="str", choices="net", optional=True),
    "init": Option("default", "initial weights of the networks' linear and conv layers: PyTorch's default, or he: N(0, 2/fan_in) (He et al. 2015), as Tomczak & Welling 2018 started theirs", choices=("default", "he")),
    # Tomczak & Welling's code passes every log σ² of q and of p(z_l | z_{l+1}) through
    # hardtanh(−6, 2): a floor on σ that keeps the VampPrior's components and the
    # hierarchy's conditionals from growing arbitrarily sharp.
    "logvar_min": Option(None, "floor on log σ² of every Gaussian network head (q(z|x) and p(z_l|z_{l+1})), as hardtanh: −6 in Tomczak & Welling 2018's code", type="float", optional=True),
    "logvar_max": Option(None, "ceiling on log σ² of every Gaussian network head: 2 in Tomczak & Welling 2018's code", type="float", optional=True),
    "decoder_input": Option("bottom", "what p(x|z) reads: the bottom latent group, or all groups side by side (p(x|z1, z2) of Tomczak & Welling 2018)", choices=("bottom", "all")),
    # Where a network reads several inputs of a hierarchy, p(x|z_1, …, z_L) and the top-down
    # q(z_l | z_{l+1}, x): side by side into its first layer, or a layer per input first.
    "join": Option("concat", "how p(x|z1, z2) (decoder_input all) and topdown's q(z1|x, z2) read their inputs: concat (side by side into the first layer) or branch (one hidden layer of the net family per input, then joined, as Tomczak & Welling 2018's code)", choices=("concat", "branch")),
    # Test-time optimisation of a per-point q with θ fixed (vi and map for new points, the
    # evaluation proposal of point-estimate methods, q* of the gaps): Adam steps and rate.
    "local_steps": Option(100, "Adam steps of a per-point q found with θ fixed (new points of vi/map; at most, per stage and row, for the point-estimate proposals)", minimum=0, maximum=STEPS_MAX),
    "local_lr": Option(0.05, "learning rate of those steps (and of --local-steps-per-batch)", minimum=0.0, exclusive=True),
    # (H, W) or (C, H, W) for image data: pictures, and the shape conv nets see.
    "image_shape": Option(None, "image shape of a row", type="widths", optional=True),
    # The map x' = (x − shift)/scale from the user's values to the model's (vaekit.scaling),
    # per feature or one value for all: standardisation learned on the training split, or a
    # named dataset's own scaling; None for none. Set from the data, stored in config.json.
    "standardize": Option("off", "standardise each feature by the training split's mean and std (gaussian likelihood; auto: when the data's values are not all in [0, 1])", choices=("on", "off")),
    "input_shift": Option(None, "per-feature shift of the input map (from the data)", type="floats", optional=True),
    "input_scale": Option(None, "per-feature scale of the input map (from the data)", type="floats", minimum=0.0, exclusive=True, optional=True),
    # Rows of the training set that own free latent parameters (map, vi); set from the data.
    "n_points": Option(0, "training rows with per-point parameters (from the data)", minimum=0),
}
TRAIN_OPTIONS: dict[str, Option] = {
    "objective": Option("auto", "training objective (auto: the inference method's own)", choices="objective", also=("auto",)),
    "epochs": Option(10, "passes over the training set", minimum=1, resumable=True),
    "batch_size": Option(128, "rows per step", minimum=1),
    "lr": Option(1e-3, "Adam learning rate", minimum=0.0, exclusive=True),
    "adam_eps": Option(1e-8, "Adam's epsilon, added to the root of the second-moment estimate (torch's default; Burda et al. 2016 trained the IWAE with 1e-4)", minimum=0.0, exclusive=True),
    # Decoupled (AdamW): the shrink does not pass through Adam's moments, so it is the same
    # with --normalized-grad, whose gradients carry no scale an L2 term could ride on.
    "weight_decay": Option(0.0, "decoupled weight decay (AdamW, Loshchilov & Hutter 2019): each step also shrinks every shared weight (θ, φ, the prior's parameters; not per-point tables) by lr·weight_decay of itself; 0 is off", minimum=0.0),
    "normalized_grad": Option(False, "Adam on each parameter tensor's gradient divided by its L2 norm (Yu et al. 2017; how Tomczak & Welling 2018 trained)"),
    # Validation, the best model and every output read the averaged weights; training steps
    # the model's own (optim.WeightAverage).
    "ema": Option(0.0, "decay of an exponential moving average of the weights after every step (Polyak averaging; 0.999 is usual), which validation, early stopping and the saved model use; 0 is off", minimum=0.0),
    # The rate of each epoch is a function of the run's history (vaekit.schedules), so --resume
    # recomputes it rather than storing a scheduler's state; a resume may change the schedule
    # where the new one gives the rates the run has used so far (train._check_schedule).
    "lr_schedule": Option("constant", "learning rate over the epochs: constant; plateau (times --lr-factor after more than --lr-patience epochs without a better validation objective, not below --lr-min); burda (Burda et al. 2016: 3^i epochs at lr·10^(-i/7), i = 0..7)", choices=SCHEDULES, resumable=True),
    "lr_factor": Option(0.5, "plateau: factor of each cut of the learning rate, in (0, 1)", minimum=0.0, exclusive=True, resumable=True),
    "lr_patience": Option(10, "plateau: a cut follows more than this many epochs without a better validation objective (as torch's ReduceLROnPlateau; warm-up epochs not counted)", minimum=1, resumable=True),
    "lr_min": Option(0.0, "plateau: the learning rate is never cut below this", minimum=0.0, resumable=True),
    "patience": Option(None, "stop after this many epochs without a better validation objective (warm-up epochs not counted)", type="int", minimum=1, optional=True),
    "seed": Option(0, "random seed", minimum=0, maximum=SEED_MAX),
    "device": Option("cpu", "cpu or cuda[:N]", resumable=True),
    "dtype": Option("float32", "parameter dtype", choices=DTYPES),
    "eval_k": Option(1000, f"K of the test log-likelihood estimate after training, at most {K_MAX}", minimum=1, maximum=K_MAX, resumable=True),
    # The notes' "two birds with one stone" made measurable: log p(x) beside the ELBO, and the
    # gap KL(q ‖ p(z|x)) = log p(x) − ELBO between them (which can grow while both rise). Its
    # own noise stream: training is the same bits.
    "valid_k": Option(0, f"K of a log p(x) estimate of the validation rows after every epoch (0: none), at most {K_MAX}: metrics.jsonl then records valid_log_px and the gap valid_log_px − valid_elbo, and curves.png draws them", minimum=0, maximum=K_MAX, resumable=True),
    "compile": Option(False, "compile the training step with torch.compile", resumable=True),
    "compile_mode": Option("default", "torch.compile mode; reduce-overhead replays the step as a CUDA graph", choices=COMPILE_MODES, resumable=True),
    # Weights, optimizer state and every log-density stay in the model's dtype under bf16.
    # "auto" is resolved when the RunConfig is made, so config.json records what ran.
    "amp": Option("off", "mixed precision of the training step: bf16 runs the networks under bfloat16 autocast; auto picks bf16 where the hardware multiplies bfloat16 fast (CUDA from compute capability 8.0, CPUs with AMX), else off", choices=AMP, resumable=True),
    # A reduction's rounding depends on how many threads split it; 0 is resolved to PyTorch's
    # count when the RunConfig is made, so config.json records it and a rerun or --resume on a
    # machine with another core count computes the same bits (vaekit.hardware).
    "threads": Option(0, "CPU threads of the training step (0: as many as PyTorch uses here); recorded, so reruns and --resume compute the same bits", minimum=0, maximum=1024, resumable=True),
    # Evaluation always runs at "highest", so likelihoods are not affected.
    "matmul_precision": Option("highest", "float32 products in training: high (TF32 on CUDA), medium (bfloat16-based)", choices=MATMUL_PRECISIONS, resumable=True),
    # What the run reports, not what it computes: either may change on resume.
    "quiet": Option(False, "print no epoch lines and no progress on stderr", resumable=True),
    "tensorboard": Option(False, "also write each epoch's metrics as TensorBoard scalars into RUN_DIR/tensorboard/ (needs the tensorboard package)", resumable=True),
}
DATA_OPTIONS: dict[str, Option] = {
    "source": Option("digits", "a named dataset or a .npy/.npz/.csv file", choices=None),
    "data_dir": Option(None, "directory holding named datasets' files (default: $VAEKIT_DATA, then the cache), and where a relative --data file not found as named is looked for (then in $VAEKIT_DATA); refused where it would not be read", type="str", optional=True, resumable=True),
    "valid_fraction": Option(0.1, "rows held out for validation when the data has no splits", minimum=0.0),
    "test_fraction": Option(0.2, "rows held out for testing when the data has no splits", minimum=0.0),
    "split_seed": Option(0, "seed of the split permutation", minimum=0, maximum=SEED_MAX),
    # Datasets larger than memory: memory-map a .npy file and stream its rows.
    "mmap": Option(False, "memory-map a .npy file and stream its rows"),
    # The training table's column names (a DataFrame's), which later input must repeat.
    "feature_names": Option(None, "column names of the training rows", type="names", optional=True),
}
# At most this many Adam steps for the optimal per-point q* of the gap split (it stops earlier
# when its ELBO stops improving: vaekit.evaluate).
GAP_STEPS = 2000
# Where ``sample`` draws z from, and what a drawn reconstruction draws (z ~ q(z|x); x ~ p(x|z)
# too): declared once, for the API's checks and the command line's choices.
SAMPLE_SOURCES = ("prior", "aggregate", "gmm")
RECONSTRUCT_DRAWS = ("z", "x")
# What a user gets by default where the config's default is resolved from the data: the
# likelihood from every row the run reads, and standardize from that likelihood.
AUTO = {"likelihood": "auto", "standardize": "auto"}


def check_auto_option(name: str, value: Any, opt: Option | None = None) -> Any:
    """A model option's value as a user gives it, before the data make AUTO's choice: checked
    by its Option (``opt``, default the model's own option ``name``; a component's is passed),
    with the AUTO value among the choices (and named in the message)."""
    opt = MODEL_OPTIONS[name] if opt is None else opt
    if name in AUTO:
        opt = dataclasses.replace(opt, also=(AUTO[name], *opt.also))
    return opt.check(name, value)
# Inference methods whose q(z|x) comes from a network's (μ, log σ²) head.
HEADED_INFERENCE = ("amortized", "topdown", "ladder")
# Options that act only under another option's value: name -> (the option's section, the
# other's section, the other option, the values it acts under, or a test and its words). Given
# without it they would be silently ignored, so a new run (the CLI, the estimator's fit)
# refuses them; a saved config that holds such a pair still loads.
ACTS_UNDER = {
    "fixed_std": ("model", "model", "variance", ("fixed",)),
    "compile_mode": ("train", "train", "compile", (True,)),
    "refine_lr": ("model", "model", "refine_steps", (lambda v: v > 0, "> 0")),
    # vi fits a new row's q, map and autoencoder the Gaussian proposal around their point.
    "local_steps": ("model", "model", "inference", ("vi", "map", "autoencoder")),
    "local_lr": ("model", "model", "inference", ("vi", "map", "autoencoder")),
    # A point estimate's q has no noise: every sample of it is the same z.
    "n_samples": ("train", "model", "inference", (*HEADED_INFERENCE, "vi")),
    "matmul_precision": ("train", "train", "dtype", ("float32",)),
    # The rate cuts on plateaus; given at its default under another schedule it would be dropped.
    "lr_factor": ("train", "train", "lr_schedule", ("plateau",)),
    "lr_patience": ("train", "train", "lr_schedule", ("plateau",)),
    "lr_min": ("train", "train", "lr_schedule", ("plateau",)),
}


def _encoderless(model) -> str | None:
    """Why the encoder's options act on nothing: inference without an encoder (vi, map)."""
    from .registry import INFERENCE

    if INFERENCE.get(model.inference).has_encoder:
        return None
    return f"inference {model.inference} has no encoder (each row's q is a free parameter)"


def _activation_unused(model) -> str | None:
    """Why activation acts on nothing: every network the model builds is gated (the gates are
    its non-linearity) or linear (no hidden layer)."""
    from .registry import NETS

    nets = [(model.decoder_net, model.decoder_widths)]
    if _encoderless(model) is None:
        nets.append((model.encoder_net, model.hidden))
    if model.layers > 1:
        nets.append((model.downward_net, model.hidden))
    if any(NETS.get(net).uses_activation(widths) for net, widths in nets):
        return None
    return "this model's networks are gated or linear"


def _graph_without_cuda(train) -> str | None:
    """Why compile_mode acts as the default here: reduce-overhead's one addition is replaying
    the step as a CUDA graph, which a CPU run has no use for (torch.compile drops it)."""
    if train.compile and train.compile_mode == "reduce-overhead" and not train.device.startswith("cuda"):
        return f"compile_mode applies to device cuda only when it is reduce-overhead (it replays the step as a CUDA graph); this run has device {train.device}"
    return None


# Options whose effect depends on several others: name -> (its section, what it applies to,
# a test of that section's config that says why it would act on nothing here, or None where
# it acts). Without "what it applies to", the test's reason is the whole message.
ACTS_WHEN = {
    "encoder": ("model", "inference with an encoder", _encoderless),
    "hidden": ("model", "the encoder, and to the decoder when decoder_hidden is not given",
               lambda m: None if m.decoder_hidden is None or m.layers > 1 else _encoderless(m)),
    "activation": ("model", "the hidden layers of mlp and conv nets", _activation_unused),
    "compile_mode": ("train", None, _graph_without_cuda),
}  # fmt: skip


def inert_options(config, given: dict[str, set[str]]) -> list[str]:
    """'<option> applies to <other> <value> only; ...' for each option among ``given`` (names per
    section) that the RunConfig ``config`` would ignore (ACTS_UNDER, ACTS_WHEN)."""
    bad = []
    for name, (section, applies, why) in ACTS_WHEN.items():
        if name in given.get(section, ()) and (reason := why(getattr(config, section))) is not None:
            bad.append(reason if applies is None else f"{name} applies to {applies}; {reason}")
    for name, (section, other_section, other, values) in ACTS_UNDER.items():
        if name not in given.get(section, ()):
            continue
        now = getattr(getattr(config, other_section), other)
        if callable(values[0]):
            if not values[0](now):
                bad.append(f"{name} applies only when {other} {values[1]}; this run has {other} {now}")
        elif now not in values:
            if values == (True,):
                bad.append(f"{name} applies only when {other} is on; this run has {other} off")
            else:
                bad.append(f"{name} applies to {other} {' or '.join(map(str, values))} only; this run has {other} {now}")
    return bad


# Which registries' entries own options in which section.
SECTION_KINDS = {"model": ("prior", "likelihood", "inference", "net"), "train": ("objective",), "data": ()}
# Options that never become CLI flags or estimator parameters: they come from the data.
FROM_DATA = {"input_dim", "n_points", "image_shape", "input_shift", "input_scale", "feature_names"}


def component_options(section: str) -> dict[str, tuple[Option, set[tuple[str, str]]]]:
    """name -> (Option, owners {(kind, entry)}) of the components of a section, read from the
    registries' sources. Two entries may declare one name only identically."""
    found: dict[str, tuple[Option, set[tuple[str, str]]]] = {}
    for kind in SECTION_KINDS[section]:
        registry = REGISTRIES[kind]
        for entry in registry.names():
            for name, opt in registry.options(entry).items():
                if name in found and found[name][0] != opt:
                    raise RuntimeError(f"option {name!r} is declared differently by {sorted(found[name][1])} and {kind} {entry}")
                found.setdefault(name, (opt, set()))[1].add((kind, entry))
    return found


def section_options(section: str) -> dict[str, Option]:
    """Every option of a section, core and components', in declaration order."""
    core = {"model": MODEL_OPTIONS, "train": TRAIN_OPTIONS, "data": DATA_OPTIONS}[section]
    opts = dict(core)
    for name, (opt, _) in component_options(section).items():
        if name in opts:
            raise RuntimeError(f"component option {name!r} shadows a core option")
        opts[name] = opt
    return opts


class _Section:
    """What every config section shares: each field checked by its Option."""

    _section: str

    def __post_init__(self) -> None:
        for name, opt in section_options(self._section).items():
            value = getattr(self, name)
            if name == "input_dim" and value is None:
                raise ConfigError("input_dim must be set")
            setattr(self, name, opt.check(name, value))
        self._check()

    def _check(self) -> None:
        """Checks across fields (a section's own, run after every field has passed its Option)."""

    def owners_unselected(self, given: set[str] | None = None) -> list[str]:
        """'<option> applies to <kind> <entry> only' for each component option whose component
        is not selected: among ``given`` names, or else among those set away from their default."""
        bad = []
        for name, (opt, owners) in component_options(self._section).items():
            if (name not in given) if given is not None else getattr(self, name) == opt.default:
                continue
            if not any(entry in self.selected(kind) for kind, entry in owners):
                used = ", ".join(f"{kind} {entry}" for kind, entry in sorted(owners))
                bad.append(f"{name} applies to {used} only")
        return bad

    def selected(self, kind: str) -> set:
        """The entries of registry ``kind`` this config uses."""
        return {getattr(self, kind, None)}


def _make(section: str, base: type, doc: str) -> type:
    fields = []
    for name, opt in section_options(section).items():
        # input_dim has no sensible default; __post_init__ says so when it is missing.
        fields.append((name, Any, field(default=opt.default, metadata={"option": opt})))
    cls = dataclasses.make_dataclass(base.__name__[1:-4] + "Config", fields, bases=(base,), namespace={"_section": section, "__doc__": doc})
    cls.__module__ = __name__
    return cls


class _ModelBase(_Section):
    def _check(self) -> None:
        if self.image_shape is not None and math.prod(self.image_shape) != self.input_dim:
            raise ConfigError(
                f"image_shape {self.image_shape} has {math.prod(self.image_shape)} pixels, but input_dim is {self.input_dim}"
            )
        for name in ("input_shift", "input_scale"):
            value = getattr(self, name)
            if value is not None and len(value) not in (1, self.input_dim):
                raise ConfigError(f"{name} has {len(value)} entries; expected 1 or input_dim = {self.input_dim}")
        if self.input_shift is not None and self.input_scale is None:
            raise ConfigError("input_shift needs input_scale")
        if self.standardize == "on" and (self.likelihood != "gaussian" or self.input_scale is None):
            raise ConfigError(
                f"standardize=on needs the gaussian likelihood and the statistics input_shift and input_scale; "
                f"got likelihood {self.likelihood}" + ("" if self.input_scale is not None else " and no statistics")
            )
        if self.downward is not None and self.layers == 1:
            raise ConfigError(
                f"downward applies to models with several latent groups (latent_dim 40,40) only; this one has one, {self.latent_words}"
            )
        if self.downward is not None:
            from .registry import NETS

            if not NETS.get(self.downward).vector_net:
                own = [name for name, net in sorted(NETS.loaded().items()) if net.vector_net]
                raise ConfigError(
                    f"downward {self.downward}: p(z_l | z_{{l+1}}) reads latent vectors, and {self.downward} has no "
                    f"network of vectors of its own (it would be mlp's); choose {' or '.join(own)}"
                )
        if self.join == "branch":
            self._check_branches()
        self._check_logvar_bounds()
        self._check_fixed_std()
        if self.decoder_input == "all" and self.layers == 1:
            raise ConfigError(
                f"decoder_input all applies to models with several latent groups (latent_dim 40,40) only; this one has one, {self.latent_words}"
            )
        bad = self.owners_unselected()
        if bad:
            raise ConfigError(
                f"{bad[0]}; this model uses likelihood {self.likelihood}, inference {self.inference}, prior {self.prior}, "
                f"encoder {self.encoder_net}, decoder {self.decoder_net}"
            )
        from .registry import INFERENCE, NETS, PRIORS

        INFERENCE.get(self.inference).check_config(self)
        PRIORS.get(self.prior).check_config(self)
        for net in sorted(self.selected("net")):
            NETS.get(net).check_config(self)

    def _check_fixed_std(self) -> None:
        """A fixed σ whose σ² or 1/σ² float32 cannot hold would be clamped where log-densities
        bound log σ² (``distributions.logvar_floor``/``logvar_ceiling``): the model computed
        would not be the one configured."""
        if self.likelihood != "gaussian" or self.variance != "fixed":
            return
        low, high = math.exp((1.0 - math.log(FLOAT32_MAX)) / 2), math.exp((math.log(FLOAT32_MAX) - 1.0) / 4)
        if not low <= self.fixed_std <= high:
            raise ConfigError(
                f"fixed_std must lie within {low:.3g} to {high:.3g}, where float32 holds σ² and 1/σ²; got {self.fixed_std!r}"
            )

    def _check_logvar_bounds(self) -> None:
        given = [name for name in ("logvar_min", "logvar_max") if getattr(self, name) is not None]
        if not given:
            return
        if len(given) == 2 and self.logvar_min >= self.logvar_max:
            raise ConfigError(f"logvar_min must be below logvar_max, got {self.logvar_min!r} and {self.logvar_max!r}")
        # Per-point methods hold q's log σ² as free parameters, not a network's output; only a
        # hierarchy's p(z_l | z_{l+1}) would then have a head to bound.
        if self.inference not in HEADED_INFERENCE and self.layers == 1:
            raise ConfigError(
                f"{given[0]} applies to the log σ² of a network's Gaussian head (inference "
                f"{', '.join(HEADED_INFERENCE)}, or a hierarchy's p(z_l|z_{{l+1}})); this model uses inference {self.inference} with one latent layer"
            )

    def _check_branches(self) -> None:
        if self.layers == 1 or (self.decoder_input != "all" and self.inference != "topdown"):
            raise ConfigError(
                "join branch applies to networks that read several inputs of a hierarchy "
                "(latent_dim 40,40 with decoder_input all or inference topdown); "
                f"this model has latent_dim {self.latent_dim}, decoder_input {self.decoder_input}, inference {self.inference}"
            )
        if (self.decoder_input == "all" and not self.decoder_widths) or (self.inference == "topdown" and not self.hidden):
            raise ConfigError("join branch needs hidden layers: its branches are as wide as the network's layers")

    def selected(self, kind: str) -> set:
        # --encoder, --decoder and --downward pick nets of their own; --net is their default.
        if kind != "net":
            return super().selected(kind)
        return {self.encoder_net, self.decoder_net} | ({self.downward_net} if self.layers > 1 else set())

    @property
    def decoder_widths(self) -> tuple[int, ...]:
        return self.hidden[::-1] if self.decoder_hidden is None else self.decoder_hidden

    @property
    def encoder_net(self) -> str:
        return self.encoder or self.net

    @property
    def decoder_net(self) -> str:
        return self.decoder or self.net

    @property
    def latent_words(self) -> str:
        """latent_dim as the command line writes it: 20, or 40,40."""
        dims = self.latent_dim if isinstance(self.latent_dim, (tuple, list)) else (self.latent_dim,)
        return ",".join(str(d) for d in dims)

    @property
    def layers(self) -> int:
        """Stochastic layers (latent groups): latent_dim is one size or one per layer."""
        return len(self.latent_dim) if isinstance(self.latent_dim, (tuple, list)) else 1

    @property
    def downward_net(self) -> str:
        return self.downward or self.decoder_net


class _TrainBase(_Section):
    def _check(self) -> None:
        if self.amp == "bf16" and self.dtype != "float32":
            raise ConfigError(f"amp={self.amp} needs dtype float32, got {self.dtype!r}")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device must be cpu or cuda[:N], got {self.device!r}")
        if self.lr_factor >= 1:
            raise ConfigError(f"lr_factor must be < 1, got {self.lr_factor!r}")
        if self.ema >= 1:
            raise ConfigError(f"ema must be < 1 (a decay; 0 is off), got {self.ema!r}")
        if self.lr * self.weight_decay >= 1:  # each step would shrink a weight through zero
            raise ConfigError(
                f"weight_decay must be below 1/lr = {1 / self.lr:g} (a step shrinks each weight by lr·weight_decay of itself), got {self.weight_decay!r}"
            )
        if self.lr_schedule != "plateau":
            for name in ("lr_factor", "lr_patience", "lr_min"):
                if getattr(self, name) != TRAIN_OPTIONS[name].default:
                    raise ConfigError(f"{name} applies to lr_schedule plateau only; this run uses lr_schedule {self.lr_schedule}")
        elif self.lr_min > self.lr:  # a cut to max(lr · factor, lr_min) would raise the rate
            raise ConfigError(f"lr_min must not exceed lr, the starting rate: got {self.lr_min!r} above {self.lr!r}")
        if self.objective != "auto":
            bad = self.owners_unselected()
            if bad:
                raise ConfigError(f"{bad[0]}; this run trains objective {self.objective}")

    def beta_at(self, epoch: int) -> float:
        """β for a 1-based epoch under the linear warm-up (KL annealing, Bowman et al. 2016)."""
        if self.warmup <= 0:
            return self.beta
        return self.beta * min(1.0, epoch / self.warmup)


class _DataBase(_Section):
    def _check(self) -> None:
        if not self.source:
            raise ConfigError(f"source must be a dataset name or a file path, got {self.source!r}")
        for name in ("valid_fraction", "test_fraction"):
            if getattr(self, name) >= 1:
                raise ConfigError(f"{name} must be < 1, got {getattr(self, name)!r}")
        if self.valid_fraction + self.test_fraction >= 1:
            raise ConfigError(
                f"valid_fraction + test_fraction must be < 1, got {self.valid_fraction + self.test_fraction!r}"
            )


ModelConfig = _make("model", _ModelBase, "The generative model p(z) p(x|z; θ) and the inference model q(z|x; φ).")
TrainConfig = _make("train", _TrainBase, "Stochastic-gradient training of an objective jointly over φ and θ.")
DataConfig = _make("data", _DataBase, "Where the data comes from and how it is split, so a run can reload its own splits.")


def resolve_amp(train) -> str:
    """``train.amp`` made concrete: "auto" is bf16 where bfloat16 is fast on ``train.device``
    (``vaekit.hardware``) and the parameters are float32, else off."""
    if train.amp != "auto":
        return train.amp
    from .hardware import resolve_amp as on_hardware

    return on_hardware("auto", train.device) if train.dtype == "float32" else "off"


def _migrate(d: dict[str, Any]) -> dict[str, Any]:
    """Bring an older config.json to CONFIG_VERSION (each step one version)."""
    version = d.get("version")
    if version == 1:
        # Version 1 had one latent group and no objective: the autoencoder trained on its
        # reconstruction, every other method on the ELBO.
        d = json.loads(json.dumps(d))
        model = d.get("model", {})
        if isinstance(model, dict):
            d.setdefault("train", {})
            if isinstance(d["train"], dict):
                d["train"]["objective"] = "reconstruction" if model.get("inference") == "autoencoder" else "elbo"
        d["version"] = version = 2
    if version == 2:
        # Version 2 stored no input map: its models saw the values as loaded (a named
        # dataset already scaled by its loader), and reported densities of those values.
        d = json.loads(json.dumps(d))
        model = d.get("model", {})
        if isinstance(model, dict):
            model.update(standardize="off", input_shift=None, input_scale=None)
        d["version"] = version = 3
    if version == 3:
        # Version 3 moved per-point parameters (map, vi) at the shared --lr; version 4 gives
        # them point_lr, whose default is larger. Old runs keep the rate they were trained at.
        d = json.loads(json.dumps(d))
        model, train = d.get("model", {}), d.get("train", {})
        if isinstance(model, dict) and isinstance(train, dict) and model.get("inference") in ("map", "vi"):
            model.setdefault("point_lr", train.get("lr", 1e-3))
        d["version"] = version = 4
    if version == 4:
        # Version 4 built every p(z_l | z_{l+1}) as an MLP with the encoder's widths and
        # activation, whatever the net family; version 5 takes the decoder's family. Old
        # hierarchies keep the MLP, so their weights still load.
        d = json.loads(json.dumps(d))
        model = d.get("model", {})
        if isinstance(model, dict):
            latent = model.get("latent_dim")
            several = isinstance(latent, (list, tuple)) and len(latent) > 1
            model.setdefault("downward", "mlp" if several else None)
        d["version"] = version = 5
    if version == 5:
        # Version 5 files may lack options added while it was current (their defaults are
        # what those runs did); version 6 files hold every field, and a missing one is damage.
        d = json.loads(json.dumps(d))
        d["version"] = version = 6
    while version in DEFAULTED_FIELDS:
        # A field the next version added, at the value the older runs behaved by.
        section, name, value = DEFAULTED_FIELDS[version]
        d = json.loads(json.dumps(d))
        fields = d.get(section, {})
        if isinstance(fields, dict):
            fields.setdefault(name, value)
        d["version"] = version = version + 1
    if version != CONFIG_VERSION:  # from_dict checked it: only a caller that did not gets here
        raise ConfigError(f"config version must be an integer from 1 to {CONFIG_VERSION}, got {d.get('version')!r}")
    return d


def canonical_model(model: dict[str, Any]) -> dict[str, Any]:
    """A saved model section as this release names it. ``downward`` once took a family with no
    network of vectors of its own (conv): its p(z_l | z_{l+1}) was mlp's, the same modules and
    weights, under the name that is refused now."""
    downward = model.get("downward")
    if isinstance(downward, str) and downward in REGISTRIES["net"]:
        from .registry import NETS

        if not NETS.get(downward).vector_net:
            model = {**model, "downward": "mlp"}
            net = model.get("net", "mlp")
            if downward not in (model.get("encoder") or net, model.get("decoder") or net):
                # The family chosen by --downward alone: its options (conv's --channels) were
                # accepted then and act on nothing now.
                for name, (opt, owners) in component_options("model").items():
                    if owners == {("net", downward)} and name in model:
                        model[name] = opt.default
    return model


def _check_version(d: dict[str, Any]) -> None:
    """The file's top level is {model, train, data, version}, its version one this release
    reads (an integer, not a bool: JSON's true is not 1), and it holds no field a later version
    added: that file had its version edited, and the migration would rewrite fields it holds
    (an older version's input map is none at all) into another model without a word."""
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(RunConfig)})
    if unknown:
        raise ConfigError(f"unknown top-level field(s): {', '.join(map(str, unknown))}")
    version = d.get("version")
    if type(version) is int and version > CONFIG_VERSION:
        from . import __version__

        raise ConfigError(
            f"config version {version} was written by a newer vaekit (this is {__version__}, which reads versions "
            f"1 to {CONFIG_VERSION}): upgrade vaekit to read it"
        )
    if type(version) is not int or not 1 <= version <= CONFIG_VERSION:
        raise ConfigError(f"config version must be an integer from 1 to {CONFIG_VERSION}, got {version!r}")
    for later, added in sorted(ADDED_FIELDS.items()):
        for section, names in added.items():
            held = [name for name in names if version < later and isinstance(d.get(section), dict) and name in d[section]]
            if held:
                raise ConfigError(
                    f"version {version} holds the {section} field(s) {', '.join(held)}, which version {later} added: "
                    f"the version was edited (this release writes version {CONFIG_VERSION})"
                )


@dataclass
class RunConfig:
    model: Any
    train: Any = field(default_factory=lambda: TrainConfig())
    data: Any = field(default_factory=lambda: DataConfig())
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        from .registry import INFERENCE, OBJECTIVES

        for name, kind in (("model", ModelConfig), ("train", TrainConfig), ("data", DataConfig)):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(f"RunConfig.{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        method = INFERENCE.get(self.model.inference)
        if self.train.objective == "auto":
            self.train = dataclasses.replace(self.train, objective=method.default_objective)
        if self.train.amp == "auto":
            self.train = dataclasses.replace(self.train, amp=resolve_amp(self.train))
        if self.train.threads == 0:
            import torch

            self.train = dataclasses.replace(self.train, threads=torch.get_num_threads())
        OBJECTIVES.get(self.train.objective).check_inference(method)
        names, width = self.data.feature_names, self.model.input_dim
        # Both come from the same rows; a disagreement would write CSV headers that do not fit.
        if names is not None and isinstance(width, int) and len(names) != width:
            raise ConfigError(f"data.feature_names names {len(names)} columns, but model.input_dim is {width}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"config must be a JSON object, got {type(d).__name__}")
        _check_version(d)
        version = d["version"]
        strict = version >= FIRST_COMPLETE_VERSION
        if strict:
            _check_complete(d, version)
        d = _migrate(d)
        if isinstance(d.get("model"), dict):
            d = {**d, "model": canonical_model(d["model"])}
        try:
            return cls(
                model=_build(ModelConfig, d["model"]),
                train=_build(TrainConfig, d["train"] if strict else d.get("train", {})),
                data=_build(DataConfig, d["data"] if strict else d.get("data", {})),
                version=d["version"],
            )
        except KeyError as e:
            raise ConfigError(f"config is missing the section {e.args[0]!r}") from None

    def save(self, path: str | Path) -> None:
        from .files import atomic_write_bytes

        atomic_write_bytes(Path(path), self.to_bytes())

    def to_bytes(self) -> bytes:
        """config.json's contents."""
        return (json.dumps(self.to_dict(), indent=2) + "\n").encode()

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
            d = json_loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e.msg}: line {e.lineno} column {e.colno})") from None
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


def _check_complete(d: dict[str, Any], version: int = CONFIG_VERSION) -> None:
    """A config of version 6 or later holds every section and field its version had
    (``to_dict`` writes them all): one that lacks some was edited or damaged, and a default in
    its place (the data source, the likelihood, the input map) would silently make another
    model. Fields added by a later version are filled in by ``_migrate``."""
    for section, cls in (("model", ModelConfig), ("train", TrainConfig), ("data", DataConfig)):
        if not isinstance(d.get(section), dict):
            continue  # said by from_dict / _build
        later = {name for v, added in ADDED_FIELDS.items() if v > version for name in added.get(section, ())}
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in d[section] and f.name not in later]
        if missing:
            raise ConfigError(f"the {section} section is missing the field(s) {', '.join(missing)}; this version writes every field")


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
