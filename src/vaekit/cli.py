"""The ``vaekit`` command: train, evaluate, sample, encode, reconstruct, score.

Errors the user can cause (``VaekitError``) become one stderr line and exit 1 (2 for usage);
anything else is a bug and keeps its traceback. Heavy imports happen inside the commands,
so ``vaekit --help`` does not load torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from . import __version__
from .config import AUTO, GAP_STEPS, K_MAX, RECONSTRUCT_DRAWS, SAMPLE_SOURCES, check_auto_option, check_positive_int
from .registry import STEPS_MAX
from .errors import ConfigError, DataError, VaekitError, VaekitWarning, count, first_line, out_of_memory
from .logs import emit
from .entry import missing_requirement
from .files import json_loads
from .outputs import check_out, check_room, write_array, write_blocks
from .data.containers import SPLITS


_NEGATIVE_NUMBER = re.compile(r"^-(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?$|^-inf(?:inity)?$", re.IGNORECASE)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # argparse reads an argument that starts with "-" as an option unless it matches this
        # pattern, whose own version has no exponent: "--logvar-min -1e-3" would be refused.
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def error(self, message: str):  # one line, no usage dump
        if _rank_0_reports():
            self.exit(2)
        self.exit(2, f"vaekit: error: {_by_rank(message)} (see '{self.prog} --help')\n")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but words that no option of the verb takes are refused by the verb's
        parser, whose help lists its options (argparse leaves them to the top-level one)."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            verb = self._verbs().get(getattr(parsed, "command", None), self)
            verb.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _verbs(self) -> dict[str, argparse.ArgumentParser]:
        sub = next((a for a in self._actions if isinstance(a, argparse._SubParsersAction)), None)
        return dict(sub.choices) if sub is not None else {}


def _widths(text: str) -> tuple[int, ...]:
    text = text.strip()
    if not text:
        return ()
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 400,200 (or '' for none), got {text!r}")
    if any(w < 1 for w in widths):
        raise argparse.ArgumentTypeError(f"widths must be >= 1, got {text!r}")
    return widths


def _bool_flag(p, name: str, help: str) -> None:
    p.add_argument(name, action=argparse.BooleanOptionalAction, default=None, help=help)


# -- train ----------------------------------------------------------------------------------------

# What the CLI calls an option when it is not --NAME.
FLAGS = {"source": "data"}


def train_options() -> dict[str, tuple[str, "Any"]]:
    """CLI dest -> (section, Option) for every flag of ``vaekit train``, from the declarations."""
    from .config import FROM_DATA, section_options

    out = {}
    for section in ("data", "model", "train"):
        for name, opt in section_options(section).items():
            if name not in FROM_DATA:
                out[FLAGS.get(name, name)] = (section, name, opt)
    return out


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _int_or_widths(text: str) -> int | tuple[int, ...]:
    widths = _widths(text)
    if not widths:
        raise argparse.ArgumentTypeError(f"expected an integer or comma-separated integers like 40,40, got {text!r}")
    return widths[0] if len(widths) == 1 else widths


def _data_help() -> str:
    from .registry import DATASETS

    return f"a named dataset ({', '.join(DATASETS.names())}) or a .npy/.npz file or a text table (.csv, .tsv, .txt)"


def _add_option(g, dest: str, opt) -> None:
    default = AUTO.get(dest, opt.default)
    choices = opt.choice_names()
    text = _data_help() if dest == "data" else opt.help
    if choices is not None:
        text += ": " + ", ".join(([AUTO[dest]] if dest in AUTO else []) + list(map(str, choices)))
    if default is not None:
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        text += f" (default {shown})"
    kind = opt.kind
    if kind == "bool":
        g.add_argument(_flag(dest), dest=dest, action=argparse.BooleanOptionalAction, default=None, help=text)
        return
    types = {"int": int, "float": float, "str": str, "widths": _widths, "int|widths": _int_or_widths}
    g.add_argument(_flag(dest), dest=dest, type=types[kind], default=None, help=text.replace("%", "%%"))


def _add_train(sub) -> None:
    from .config import component_options

    p = sub.add_parser("train", help="fit a VAE and write a run directory", description="Fit a VAE on DATA and write RUN_DIR (config.json, model.safetensors, last.safetensors, metrics.jsonl, pictures), logging one line per epoch on stderr; prints the test ELBO and log-likelihood.")
    owners = {name: owner for section in ("model", "train") for name, (_, owner) in component_options(section).items()}
    groups: dict[str, Any] = {}
    for dest, (section, name, opt) in train_options().items():
        if name in owners:
            title = "options of " + ", ".join(f"{kind} {entry}" for kind, entry in sorted(owners[name]))
        else:
            title = {"data": "data", "model": "model", "train": "training"}[section]
        if title not in groups:
            groups[title] = p.add_argument_group(title)
        _add_option(groups[title], dest, opt)
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write")
    g.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its last checkpoint")
    g.add_argument("--overwrite", action="store_true", help="replace a run already in RUN_DIR: once the new run has passed its checks the old one is set aside, given back if the new run fails before its first checkpoint, deleted once it has one (refused for a directory that holds no vaekit run)")
    _bool_flag(g, "--progress", "progress bars on stderr instead of the evaluation's progress lines (default: when stderr is a terminal)")
    g.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_train, data_parallel=True)


def _checked_options(args) -> dict[str, Any]:
    """The options given, by section, with the data and training ones checked, and each model
    option's value: a bad one is a usage error (exit 2) before any data is read or the run
    directory is looked at."""
    from .config import DataConfig, TrainConfig

    given = given_options(args)
    with _option_names():
        DataConfig(**given["data"])
        TrainConfig(**given["train"])
        # The model's options one by one (their values; how they combine needs the data's shape).
        for dest, (section, name, opt) in train_options().items():
            if section == "model" and name in given["model"]:
                check_auto_option(name, given["model"][name], opt)
    return given


def _config_from_args(args) -> "Any":
    from .config import DataConfig
    from .data import load_dataset
    from .data.checks import warn_channels_last
    from .registry import DATASETS

    given = _checked_options(args)
    with _option_names():
        data_cfg = DataConfig(**given["data"])
        data = load_dataset(data_cfg)
        _check_splits_used(given["data"], data)
        if data.image_shape is not None and data_cfg.source not in DATASETS:
            # Only where a run takes its image shape from the file: a verb reads rows for the
            # model's own shape, and check_image_layout refuses a layout that disagrees with it.
            warn_channels_last(Path(data.name).name, data.image_shape)
        header = _header(data_cfg.source, data_cfg.data_dir)
        if header is not None:  # a CSV's column names, which the verbs' tables must repeat
            given["data"]["feature_names"] = header
        given["data"].update(_located(data_cfg))
        if given["model"].get("prior_from") is not None:  # read again by a resume from anywhere
            given["model"]["prior_from"] = _absolute(given["model"]["prior_from"])
        return run_config(given, data.train, data.image_shape, data.scaling, held_out=(data.valid, data.test))


def _check_splits_used(given: dict[str, Any], data) -> None:
    """--valid-fraction, --test-fraction and --split-seed carve splits by fractions: refused
    for data whose splits are fixed (an .npz with its own valid and test arrays, binarized
    MNIST), where they would be recorded in config.json without acting."""
    fixed = set(data.fixed)
    for name, split in (("valid_fraction", "valid"), ("test_fraction", "test")):
        if name in given and split in fixed:
            raise ConfigError(f"{name} applies to rows split by fractions; {data.name} has a fixed {split} split of its own")
    if "split_seed" in given and fixed >= {"valid", "test"}:
        raise ConfigError(f"split_seed applies to rows split by fractions; {data.name} has fixed valid and test splits of its own")


def _located(data_cfg) -> dict[str, str]:
    """The data file and --data-dir as absolute paths, as config.json keeps them: the verbs
    and --resume read the run's data again from wherever they are started."""
    from .data.load import resolve_path

    where = {}
    if data_cfg.data_dir is not None:
        where["data_dir"] = _absolute(data_cfg.data_dir)
    if Path(data_cfg.source).suffix:  # a file; a named dataset is a bare word
        where["source"] = os.path.abspath(resolve_path(data_cfg.source, data_cfg.data_dir))
    return where


def _absolute(path) -> str:
    """A path as config.json keeps it: user-expanded and absolute, links left as they are."""
    return os.path.abspath(os.path.expanduser(path))


def _same_file(value: str, own: str, data_dir: str | None) -> bool:
    """Whether --data given on resume names the run's own data file (kept absolute, or as
    typed by versions that kept it so; found as train finds it, in --data-dir too) or dataset."""
    from .data.load import resolve_path

    if not Path(value).suffix or not Path(own).suffix:
        return value == own
    try:
        value = str(resolve_path(value, data_dir))
    except DataError:
        return False
    return _absolute(value) == _absolute(own)


def _header(source: str, data_dir: str | None):
    """The header row of a table file ``source`` (vaekit.data.readers.table_header), or None."""
    from .data.load import resolve_path
    from .data.readers import TABLES, table_header

    if Path(source).suffix.lower() not in TABLES:
        return None
    try:
        return table_header(resolve_path(source, data_dir))
    except DataError:
        return None


def given_options(args) -> dict[str, dict[str, Any]]:
    """{section: {option: value}} for the ``vaekit train`` flags given on the command line."""
    given: dict[str, dict[str, Any]] = {"data": {}, "model": {}, "train": {}}
    for dest, (section, name, _) in train_options().items():
        if getattr(args, dest) is not None:
            given[section][name] = getattr(args, dest)
    return given


def run_config(given: dict[str, dict[str, Any]], x_train, image_shape, scaling=None, held_out: tuple = ()) -> "Any":
    """The RunConfig of ``vaekit train`` from the given options (``given_options``), the
    training rows and the ``held_out`` splits (read by the auto choices, vaekit.runs.model_config);
    a component option given, even at its default, must belong to a component the run uses:
    otherwise it would be silently ignored, so it is refused."""
    from .config import DataConfig, RunConfig, TrainConfig, inert_options
    from .runs import model_config

    model_cfg = model_config(x_train, image_shape, given["model"], scaling, held_out)
    config = RunConfig(model=model_cfg, train=TrainConfig(**given["train"]), data=DataConfig(**given["data"]))
    for section in ("model", "train"):
        bad = getattr(config, section).owners_unselected(set(given[section]))
        if bad:
            raise ConfigError(bad[0])
    bad = inert_options(config, {section: set(given[section]) for section in ("model", "train")})
    if bad:
        raise ConfigError(bad[0])
    return config


def _same(opt, name: str, value: Any, own: Any) -> bool:
    """Whether a CLI value, normalised as the config would hold it, equals the run's own."""
    try:
        return opt.check(name, value) == own
    except ConfigError:
        return False


class _option_names:
    """Say '--lr must be …' rather than 'lr must be …' for errors in CLI-given values."""

    def __enter__(self):
        return self

    def __exit__(self, typ, err, tb):
        if isinstance(err, ConfigError):
            options = {name: dest for dest, (_, name, _) in train_options().items()}
            names = "|".join(sorted(options, key=len, reverse=True))
            # "lr must be", "decoder_input all applies", "... needs prior_from", "... below
            # logvar_max", "at most prior_components": the names of options. (A model's
            # description, "this run has latent_dim (4, 2)", keeps the names of its config.)
            pattern = rf"\b({names})\b(?=\s+(?:\w+\s+)?(?:[+]|(?:must|applies|cannot|needs)\b))|(?:(?<=needs )|(?<=below )|(?<=when )|(?<=at most ))({names})\b"
            msg = re.sub(pattern, lambda m: _flag(options[m.group(1) or m.group(2)]), str(err))
            raise ConfigError(msg) from None
        return False


def cmd_train(args) -> int:
    import contextlib

    from . import checkpoint as ckpt
    from .lock import RunLock
    from .logs import check_tensorboard
    from .runs import train_run

    run_dir = Path(args.out)
    if args.quiet and args.progress:
        raise ConfigError("--quiet and --progress contradict each other; give one of them")
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    # Under torchrun rank 0 alone writes the run directory, so it alone takes the lock.
    lock = RunLock(run_dir) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext()
    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite empties it; give one of them")
    if (run_dir / ckpt.REPLACED_DIR).is_dir():
        if int(os.environ.get("RANK", "0")) == 0:
            from .runs import recover_replaced

            with lock:  # an overwrite stopped by a kill: the directory holds one run again
                recover_replaced(run_dir)
        else:
            _await_recovery(run_dir)
    if args.resume:
        if not run_dir.is_dir():
            why = "a file, not a directory" if run_dir.exists() else "no such directory"
            raise VaekitError(f"{run_dir}: nothing to resume ({why})")
        # Locked before anything is read: a run being written is reported as such (it may not
        # have its config.json yet), and a writer that finishes meanwhile may change the file.
        with lock:
            if not (run_dir / ckpt.CONFIG_FILE).is_file():
                what = "config.json is not a file" if os.path.lexists(run_dir / ckpt.CONFIG_FILE) else "no config.json"
                raise VaekitError(f"{run_dir}: nothing to resume ({what})")
            config = _resume_config(args, run_dir)
            if args.progress and config.train.quiet:  # kept from the run: --progress alone would show nothing
                raise ConfigError(f"--progress: the run in {run_dir} was trained with --quiet, which --resume keeps; add --no-quiet to show progress")
            if config.data.source == "array":
                raise ConfigError(f"{run_dir} was fitted on an in-memory array (the Python API): the command line cannot read its rows again to resume it")
            if config.train.tensorboard:
                check_tensorboard()
            summary = train_run(config, run_dir, resume=True, progress=progress)
    else:
        _checked_options(args)  # a usage error is named first, whatever --out holds
        if (run_dir / ckpt.CONFIG_FILE).exists() and not args.overwrite:
            raise VaekitError(_holds_a_run(run_dir))
        if run_dir.exists() and not run_dir.is_dir():
            raise VaekitError(f"--out {run_dir}: exists and is not a directory")
        if not args.overwrite:
            _check_not_foreign(run_dir)
        config = _config_from_args(args)
        if args.overwrite:
            _check_inputs_outside(config, run_dir)
        if config.train.tensorboard:
            check_tensorboard()
        # Nothing is written before the lock is held, so a refused second writer changes nothing.
        with lock:
            # Asked again under the lock: another writer may have finished a run here meanwhile.
            if (run_dir / ckpt.CONFIG_FILE).exists() and not args.overwrite:
                raise VaekitError(_holds_a_run(run_dir))
            if args.overwrite and int(os.environ.get("RANK", "0")) == 0:
                # A directory that holds something else than a run is refused now; the old run
                # goes only once the new one has passed its checks (train_run).
                ckpt.check_clearable(run_dir)
            elif not args.overwrite:
                _check_not_foreign(run_dir)
            summary = train_run(config, run_dir, resume=False, progress=progress, overwrite=args.overwrite, data_read=True)
    if summary.get("rank", 0) != 0:  # data-parallel: rank 0 alone reports
        return 0
    _report(
        args,
        summary,
        f"run: {summary['run_dir']}  epochs: {summary['epochs']}  best epoch: {summary['best_epoch']}  "
        f"valid ELBO: {_nats(summary['valid_elbo'])}\ntest {_evidence_line(summary['test'])}",
    )
    return 0


# How long the other processes of a torchrun group wait for rank 0 to recover a run directory.
RECOVERY_WAIT_S = 120.0


def _await_recovery(run_dir: Path) -> None:
    """Under torchrun, a process other than rank 0 reads the run only once rank 0 has put back
    (or let go) what a stopped --overwrite left aside: no process group exists yet to wait on,
    so it watches the folder go (rank 0 removes it last). Past the wait it reads what is there,
    and rank 0's own error, if any, says why."""
    from . import checkpoint as ckpt

    deadline = time.monotonic() + RECOVERY_WAIT_S
    while (run_dir / ckpt.REPLACED_DIR).is_dir() and time.monotonic() < deadline:
        time.sleep(0.05)


def _holds_a_run(run_dir: Path) -> str:
    return f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to replace it"


def _check_not_foreign(run_dir: Path) -> None:
    """A new run goes into a new or empty directory, or replaces a run (--overwrite refuses
    other files itself: checkpoint.clear_run). Rank 0 alone asks: under torchrun the others
    would see the files it is writing."""
    from . import checkpoint as ckpt

    if int(os.environ.get("RANK", "0")) == 0:
        ckpt.check_not_foreign(run_dir, "train into a new or empty directory")


def _resume_config(args, run_dir: Path):
    """The run's config.json with the options that may change on resume replaced by the given
    ones; any other option given must repeat the run's own value."""
    from dataclasses import replace

    from . import checkpoint as ckpt
    from .config import RunConfig, inert_options

    try:
        config = RunConfig.load(run_dir / ckpt.CONFIG_FILE)
    except ConfigError as e:
        raise VaekitError(str(e)) from None
    # An edited model section is named before the data are read with it.
    ckpt.check_model_record(run_dir / ckpt.CONFIG_FILE, run_dir / ckpt.LAST_FILE, ckpt.read_meta(run_dir / ckpt.LAST_FILE))
    # Repeating the run's own value (the original command line, say) is not a change.
    options = train_options()
    for dest, (section, name, opt) in options.items():
        value = getattr(args, dest)
        if value is None or opt.resumable or value == AUTO.get(dest):
            continue
        own = getattr(getattr(config, section), name)
        data_dir = args.data_dir or config.data.data_dir
        if name == "source":
            same = _same_file(value, own, data_dir)
        elif name == "prior_from" and own is not None:  # a run directory, kept absolute
            same = _absolute(value) == _absolute(own)
        elif name == "objective" and value == "auto":  # the config holds what auto chose
            from .registry import INFERENCE

            same = own == INFERENCE.get(config.model.inference).default_objective
        else:
            same = _same(opt, name, value, own)
        if not same:
            raise ConfigError(f"{_flag(dest)} cannot change when resuming; the run in {run_dir} has {name}={own!r}")
    changed = {name: getattr(args, dest) for dest, (section, name, opt) in options.items() if section == "train" and opt.resumable and getattr(args, dest) is not None}
    with _option_names():
        train = replace(config.train, **changed)
        data_dir = _absolute(args.data_dir) if args.data_dir else config.data.data_dir
        config = replace(config, train=train, data=replace(config.data, data_dir=data_dir))
        bad = inert_options(config, {"train": set(changed)})
        if bad:
            raise ConfigError(bad[0])
    return config


def _check_inputs_outside(config, run_dir: Path) -> None:
    """--overwrite empties RUN_DIR: a data file, or the --prior-from run, inside it would go
    with the old run before the new one could read it."""
    inputs = (("--data", config.data.source, "the data"), ("--prior-from", config.model.prior_from, "that run"))
    for flag, source, what in inputs:
        if source is None or (flag == "--data" and not Path(source).suffix):  # a named dataset
            continue
        path = Path(source)
        if path.exists() and path.resolve().is_relative_to(run_dir.resolve()):
            raise ConfigError(f"{flag} {source} lies inside --out {run_dir}, which --overwrite empties; move {what} out first")


# -- commands on a trained run ------------------------------------------------------------------


def _run_parser(sub, name: str, help: str, data_required: bool, default_split: str, seed: str | None = "seed of the Monte Carlo noise (default 0)",
                more: str = ""):  # fmt: skip
    p = sub.add_parser(name, help=help, description=help + more)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'vaekit train'")
    p.add_argument("--data", required=data_required, help=_data_help() + ("" if data_required else " (default: the run's own data)"))
    p.add_argument("--data-dir", help="directory holding binarized_mnist.npz, or a relative --data file; refused where it would not be read")
    held = ", or all where the run held no test rows out (a model fitted in Python) and --data is a table or .npy" if default_split == "test" else ""
    p.add_argument("--split", choices=SPLITS, default=None if held else default_split,
                   help=f"rows to use (default {default_split}{held}; 'all': every row, in the data's own order)")  # fmt: skip
    if seed is not None:  # a verb without randomness has no --seed (q of new rows is a function of x and θ)
        p.add_argument("--seed", type=_seed, default=0, help=seed)
    _bool_flag(p, "--mmap", "memory-map a .npy --data and stream its rows, or read it into memory (default: streamed where the run streamed the same file, else read into memory)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return p


def _overwrite_flag(p) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace an output file that exists (refused without it, as train refuses a run directory that holds a run)")


def _seed(text: str) -> int:
    """--seed of the verbs, checked as train's (an integer in [0, 2**63))."""
    from .config import TRAIN_OPTIONS

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    try:
        return TRAIN_OPTIONS["seed"].check("seed", value)
    except ConfigError as e:  # below 0 or above the largest seed: the check says which
        raise argparse.ArgumentTypeError(str(e).removeprefix("seed ")) from None


def _progress_flag(p) -> None:
    p.add_argument("--progress", action="store_true", help="a progress bar of the rows done on stderr (a pass with a large K over many rows runs for minutes)")


def _row_progress(args, n: int, what: str):
    """The RowProgress bar of a verb's log p(x) pass with ``--progress``, else None."""
    from .logs import RowProgress

    return RowProgress(n, f"{what} (K={args.k})", bar=True) if args.progress else None


def _add_run_commands(sub) -> None:
    p = _run_parser(sub, "evaluate", "ELBO, its terms and the importance-weighted log-likelihood of a split", False, "test")
    p.add_argument("--k", type=int, default=1000, help=f"importance samples per datapoint, at most {K_MAX} (default 1000; the literature uses 5000)")
    _progress_flag(p)
    p.set_defaults(func=cmd_evaluate)

    p = _run_parser(sub, "gaps", "log p(x), the ELBO of the model's q and of the optimal q*, and the approximation and amortization gaps (Cremer et al. 2018); for a linear-Gaussian model also their exact values", False, "test")
    p.add_argument("--k", type=int, default=1000, help=f"importance samples per datapoint, at most {K_MAX} (default 1000)")
    p.add_argument("--steps", type=int, default=GAP_STEPS, help=f"at most this many Adam steps for the optimal per-point q*, which stop when its ELBO stops improving (default {GAP_STEPS}, at most {STEPS_MAX})")
    p.add_argument("--plot", help="picture of the bound beneath the evidence (default RUN_DIR/gaps_SPLIT.png)")
    p.add_argument("--bars", help="log p(x), ELBO(q*) and ELBO(q) of the first rows as bars (default RUN_DIR/gaps_SPLIT_bars.png)")
    _overwrite_flag(p)
    p.set_defaults(func=cmd_gaps)

    p = sub.add_parser("sample", help="draw samples from a trained model", description="Draw x ~ p(x|z) (or its mean) with z from the prior, the aggregate posterior, or a mixture fitted to the training latents.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'vaekit train'")
    p.add_argument("-n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--out", required=True, help=".png (image grid, image data only), .npy, .npz or .csv")
    p.add_argument("--source", choices=SAMPLE_SOURCES, default="prior", help="z ~ p(z) (default); z ~ q(z|x) for random rows x of --data, or of the training split (the aggregate posterior); or z from a Gaussian mixture fitted to those rows' posterior means (gmm)")
    p.add_argument("--components", type=int, help="components of the --source gmm mixture (default 10)")
    p.add_argument("--draw", action="store_true", help="draw x ~ p(x|z) instead of returning E[x|z]")
    p.add_argument("--data", help="data for --source aggregate or gmm: every row of a file, or a named dataset's training split (default: the run's own training split)")
    p.add_argument("--data-dir", help="directory holding binarized_mnist.npz, or a relative --data file; refused where it would not be read")
    p.add_argument("--seed", type=_seed, default=0, help="seed of z and of x ~ p(x|z) (default 0)")
    _bool_flag(p, "--mmap", "memory-map a .npy --data and read the rows it draws, or read it into memory (default: streamed where the run streamed the same file, else read into memory)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    _overwrite_flag(p)
    p.set_defaults(func=cmd_sample)

    p = _run_parser(sub, "encode", "posterior means and log-variances of q(z|x) for each row", True, "all", seed=None,
                    more="; a point estimate (--inference autoencoder or map) writes log-variances of -inf: its q is a point mass")
    p.add_argument("--out", required=True, help=".npy (columns: μ of every latent group, then log σ²), .npz (arrays mu, logvar, and mu_<group>, logvar_<group> for several groups) or .csv")
    _overwrite_flag(p)
    p.set_defaults(func=cmd_encode)

    p = _run_parser(sub, "reconstruct", "decoder means at the posterior means, or reconstructions drawn through z ~ q(z|x) (--draw)", True, "all",
                    seed="seed of the random rows a .png shows and of the --draw draws (default 0)")  # fmt: skip
    p.set_defaults(seed=None)  # given with a table out and no --draw, it would seed nothing: refused
    p.add_argument("--out", required=True, help=".npy, .npz, .csv, or .png (inputs beside reconstructions, image data only)")
    p.add_argument("--draw", choices=RECONSTRUCT_DRAWS,
                   help="draw instead of the mean: z, the decoder's mean E[x|z] at z ~ q(z|x); x, also x ~ p(x|z) (a point estimate's z is its code: z is refused there, x draws at the code)")  # fmt: skip
    _overwrite_flag(p)
    p.set_defaults(func=cmd_reconstruct)

    p = _run_parser(sub, "score", "per-row log p(x) estimates (usable as anomaly scores)", True, "all")
    p.add_argument("--out", required=True, help=".npy or .csv")
    p.add_argument("--k", type=int, default=1000, help=f"importance samples per row, at most {K_MAX} (default 1000)")
    _progress_flag(p)
    _overwrite_flag(p)
    p.set_defaults(func=cmd_score)


def _load(args):
    from .estimator import load

    est = load(args.run_dir)
    # The command line checks a table's header itself (_rows) and hands the estimator arrays,
    # which scikit-learn would warn about against recorded column names.
    est.__dict__.pop("feature_names_in_", None)
    return est


def _data_paths(args) -> tuple[Path, ...]:
    """The file that --data names and the file the run was trained on (which the verb reads
    where --data is not given, and which the run's later evaluations read), found as the loader
    finds them; none for a named dataset, an in-memory array or a missing file (which the
    loader reports)."""
    import json

    from .data.load import resolve_path
    from .files import CONFIG_FILE
    from .registry import DATASETS

    sources = [(args.data, getattr(args, "data_dir", None))] if getattr(args, "data", None) else []
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError, AttributeError):  # no readable run: loading it says why
        own = json.loads((Path(args.run_dir) / CONFIG_FILE).read_text())["data"]
        sources.append((str(own["source"]), own.get("data_dir")))
    paths = []
    for source, data_dir in sources:
        try:
            paths.append(resolve_path(source, data_dir if isinstance(data_dir, str) else None))
        except DataError:  # a named dataset's own files, or a missing file (nothing to write over)
            if source in DATASETS.names():
                paths += DATASETS.get(source).files(data_dir if isinstance(data_dir, str) else None)
    return tuple(paths)


def _rows(est, args, split: str):
    """(x, x_model, labels): the rows of --data (or the run's data) for ``split`` in the
    user's values, the same rows checked against the model and mapped into its values, and
    their labels (or None)."""
    from dataclasses import replace

    from .data import MappedRows, check_data, load_array, load_dataset
    from .data.checks import check_image_layout
    from .data.splits import TooFewRows
    from .scaling import model_rows

    cfg = est.config_.data
    source = args.data or cfg.source
    if source == "array":
        raise DataError(f"{args.run_dir} was fitted on an in-memory array; pass --data FILE")
    data_dir = getattr(args, "data_dir", None) or cfg.data_dir
    # A run trained on a memory-mapped file streams it again; other files only when asked.
    mmap = getattr(args, "mmap", None)
    if mmap is None:
        mmap = cfg.mmap and (source == cfg.source or _same_file(source, cfg.source, data_dir))
    named = None
    if split == "all" and Path(source).suffix:
        x, labels, image_shape = load_array(source, data_dir, mmap=mmap)
    else:
        try:
            data = load_dataset(replace(cfg, source=source, data_dir=data_dir, mmap=mmap))
        except TooFewRows as e:
            if not Path(source).suffix:
                raise
            raise DataError(f"{e}; --split all reads every row") from None
        x, labels, named, image_shape = data.split(split), data.split_labels(split), data.scaling, data.image_shape
        if source == cfg.source or _same_file(source, cfg.source, data_dir):
            _warn_if_changed(est, args.run_dir, data, source)
        if len(x) == 0:
            why = f"its {split} array is empty" if split in data.fixed else "under the split fractions of this run"
            raise DataError(f"{source} has no {split} rows ({why}); --split all uses every row")
    check_image_layout(source, image_shape, est.model_.config.image_shape, est.model_.config.input_dim)
    trained = cfg.feature_names
    header = _header(source, data_dir) if trained is not None else None
    if header is not None and tuple(header) != tuple(trained):
        show = lambda names: ", ".join(names[:6]) + (", …" if len(names) > 6 else "")  # noqa: E731
        raise DataError(f"{source} has the columns {show(header)}, but the model was trained on {show(trained)} (names and order must match)")
    if not isinstance(x, MappedRows):  # mapped rows are checked once, block by block, below
        x = check_data(x, what=source, input_dim=est.n_features_in_, dtype=None)
    if est.scaling_ is None and named is not None:
        # A model without an input map of its own (written before models stored one) saw the
        # named dataset as its loader scaled it.
        x = model_rows(est.model_.config, x, named)
    return x, est.model_input(x, what=source), labels


def _warn_if_changed(est, run_dir, data, source: str) -> None:
    """A warning where the run's own data now give other training or validation rows than the
    run was trained on (the hash its checkpoint keeps of them): the splits a verb reads may then
    hold rows the model was fitted to, and its numbers are not the held-out ones they claim."""
    from .checkpoint import LAST_FILE, read_meta
    from .errors import VaekitWarning
    from .train import data_fingerprint, fingerprint_rows

    kept = read_meta(Path(run_dir) / LAST_FILE).get("fingerprint")
    if not isinstance(kept, list) or len(kept) != 2:  # a checkpoint from before it was kept
        return

    def fingerprint(rows) -> str:
        # The hashed rows alone go through the input map: a split of 50 000 rows needs 32 of them.
        return data_fingerprint(est.model_input(fingerprint_rows(rows), what=source)) if len(rows) else ""

    try:
        now = [fingerprint(data.split(s)) for s in ("train", "valid")]
    except DataError:
        return  # rows the model cannot read: the verb's own check names them
    if now != kept:
        which = "training" if now[0] != kept[0] else "validation"
        warnings.warn(
            f"{source}: its {which} rows are not those {run_dir} was trained on (the data changed since); "
            "its splits may mix rows the model was fitted to with held-out ones", VaekitWarning, stacklevel=2,
        )


def _split(est, args) -> str:
    """--split, by default the test rows; every row of a --data table or .npy where the run held
    none out (test_fraction 0, as a model fitted in Python has), whose test split is always empty."""
    if args.split is not None:
        return args.split
    plain_file = bool(args.data) and Path(args.data).suffix.lower() not in ("", ".npz")
    return "all" if plain_file and est.config_.data.test_fraction == 0 else "test"


def _positive(name: str, value: int) -> None:
    from .config import check_positive_int

    check_positive_int(name, value)


def _own_rows(model, args, x):
    """The run's own training rows are the rows of a per-point method's tables, in order: their
    indices, so that they are scored with the q_i learned for each rather than a new fit (None
    for other rows and other methods)."""
    import numpy as np

    own = args.split == "train" and not args.data and model.inference.per_point and len(x) == model.config.n_points
    return np.arange(len(x)) if own else None


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate

    check_positive_int("--k", args.k, maximum=K_MAX)
    est = _load(args)
    args.split = _split(est, args)
    _, x, _ = _rows(est, args, args.split)
    t0 = time.perf_counter()
    rows = _row_progress(args, len(x), "evaluating log p(x)")
    try:
        result = evaluate(est.model_, x, k=args.k, seed=args.seed, progress=rows, idx=_own_rows(est.model_, args, x))
    finally:
        if rows is not None:
            rows.close()
    # The cost of inference on new data: one encoder pass, or per-point optimisation.
    result.update(split=args.split, inference=est.model_.config.inference, seconds=time.perf_counter() - t0)
    _report(args, result, f"{args.split} {_evidence_line(result)}  [{result['inference']} inference, {result['seconds']:.1f} s]")
    return 0


def cmd_gaps(args) -> int:
    from .evaluate import gaps
    from .plots import bound_bars_plot, bound_gap_plot

    check_positive_int("--k", args.k, maximum=K_MAX)
    check_positive_int("--steps", args.steps, maximum=STEPS_MAX)
    est = _load(args)
    args.split = _split(est, args)
    # Both pictures' paths are checked before the work and before either is written.
    plot = Path(args.plot) if args.plot else Path(args.run_dir) / f"gaps_{args.split}.png"
    bars = Path(args.bars) if args.bars else Path(args.run_dir) / f"gaps_{args.split}_bars.png"
    # The default pictures are the run's own gaps pictures, redrawn as sample redraws samples.png.
    check_out(plot, (".png",), "--plot", args.run_dir, redraws=f"gaps_{args.split}.png", overwrite=args.overwrite)
    check_out(bars, (".png",), "--bars", args.run_dir, redraws=f"gaps_{args.split}_bars.png", overwrite=args.overwrite)
    if plot.resolve() == bars.resolve():
        raise ConfigError(f"--plot and --bars both name {plot}; give them different files")
    _, x, _ = _rows(est, args, args.split)
    model = est.model_
    t0 = time.perf_counter()
    result = gaps(model, x, k=args.k, steps=args.steps, seed=args.seed, idx=_own_rows(model, args, x))
    result["seconds"] = time.perf_counter() - t0
    per_point = result.pop("per_point")
    bound_gap_plot(per_point["log_px"], per_point["elbo"], plot, title=f"{est.model_.config.inference} VAE, {args.split} split")
    bound_bars_plot({est.model_.config.inference: per_point}, bars)
    result.update(split=args.split, plot=str(plot), bars=str(bars))
    _report(
        args,
        result,
        f"{args.split} ({result['n']} row{'s' if result['n'] != 1 else ''}): log p(x) {_nats(result['log_likelihood'])}  ELBO(q) {_nats(result['elbo'])}  "
        f"ELBO(q*) {_nats(result['elbo_optimal'])}  approximation gap {_nats(result['approximation_gap'])}{_pm(result['approximation_gap_se'])}  "
        f"amortization gap {_nats(result['amortization_gap'])}{_pm(result['amortization_gap_se'])} nats "
        f"({'± standard errors; ' if result['n'] > 1 else 'one row: no standard errors; '}"
        f"K={result['k']}, q* after {result['steps_taken']} of at most {result['steps']} steps; plots {plot}, {bars})"
        + (
            f"; exact, the model being linear-Gaussian: log p(x) {_nats(result['exact_log_likelihood'])}  ELBO(q) {_nats(result['exact_elbo'])}  "
            f"gap {_nats(result['exact_gap'])}"
            if "exact_log_likelihood" in result
            else ""
        ),
    )
    return 0


def _nats(value: float, decimals: int = 3) -> str:
    """A number of the text reports: fixed-point with ``decimals``, in scientific notation once
    it is too large for that to be read (a row far off the model's scale scores -3e37 nats)."""
    return f"{value:.{decimals}f}" if not abs(value) >= 1e9 else f"{value:.{decimals + 3}g}"


def _pm(se: float) -> str:
    """' ± se', or nothing where there is no standard error (one row)."""
    return "" if math.isnan(se) else f" ± {_nats(se)}"


def cmd_sample(args) -> int:
    _positive("-n", args.n)
    if args.source == "prior" and (args.data or args.data_dir or args.mmap is not None):
        flag = "--data" if args.data else "--data-dir" if args.data_dir else "--mmap" if args.mmap else "--no-mmap"
        raise ConfigError(f"{flag} gives the rows of --source aggregate or gmm; --source prior draws z ~ p(z) and reads none")
    if args.components is not None and args.source != "gmm":
        raise ConfigError(f"--components sets the mixture of --source gmm; this draws from --source {args.source}")
    if args.components is not None:
        _positive("--components", args.components)
    out = Path(args.out)
    check_out(out, (".png", ".npy", ".npz", ".csv"), run_dir=args.run_dir, data=_data_paths(args), redraws="samples.png", overwrite=args.overwrite)
    if out.suffix.lower() == ".png" and args.n > PICTURE_SAMPLES_MAX:
        side = math.isqrt(PICTURE_SAMPLES_MAX)
        raise ConfigError(f"-n {args.n}: a .png shows at most {PICTURE_SAMPLES_MAX} samples (a {side}x{side} grid); write .npy, .npz or .csv for more")
    est = _load(args)
    shape = _picture_shape(est, out)
    # A file given is read whole; the run's own data (or a named dataset) gives its training split.
    split = "all" if args.data and Path(args.data).suffix else "train"
    x = _rows(est, args, split)[0] if args.source != "prior" else None
    components = 10 if args.components is None else args.components  # the title's
    if args.source == "gmm" and len(x) < max(components, 2):
        need = "as many rows" if components >= 2 else "2 rows"
        raise DataError(f"--components {components}: a mixture needs at least {need}, and {_rows_read(args, est, split)} has {len(x)}")
    options = dict(seed=args.seed, mean=not args.draw, source=args.source, X=x, components=args.components)
    if out.suffix.lower() == ".png":
        from .plots import image_grid

        where = "z ~ p(z)"
        if args.source != "prior":  # a picture names its file, not the path it was read from
            rows = _rows_read(args, est, split, short=True)
            where = f"z ~ q(z|x), x from {rows}" if args.source == "aggregate" else f"z ~ a {components}-component mixture fitted to q of {rows}"
        # Pictures show the values the model sees (a named dataset's [0, 1]).
        samples = est.sample(args.n, **options)
        image_grid(_model_values(est, samples), out, shape, title=f"{args.n} sample{'' if args.n == 1 else 's'}: {where}, {'drawn x ~ p(x|z)' if args.draw else 'decoder means'}")
    else:
        # Block by block into the file, as reconstruct writes: n rows need not fit in memory.
        check_room(out, args.n * est.n_features_in_ * 4)  # 4 bytes a value at least (float32)
        write_blocks(out, est.sample_blocks(args.n, **options), (args.n, est.n_features_in_), header=_columns(est))
    _report(args, {"out": str(out), "n": int(args.n), "source": args.source}, f"wrote {args.n} sample{'' if args.n == 1 else 's'} to {out}")
    return 0


# The samples one picture shows at most: a 100x100 grid, a few thousand pixels a side; more
# would be a picture no one can read, drawn in memory all at once.
PICTURE_SAMPLES_MAX = 10_000


def _rows_read(args, est, split: str, short: bool = False) -> str:
    """The rows sample's --source aggregate or gmm reads, named for the user: the file --data
    gives, else the training split of the dataset given or of the run's own data; ``short``
    names a file without its directories."""
    name = (lambda path: Path(path).name) if short else str
    if args.data and Path(args.data).suffix:
        return name(args.data)
    return f"the {split} split of {name(args.data or est.config_.data.source)}"


def _picture_shape(est, out: Path):
    """The model's image shape, refused for a .png where its rows are no pictures."""
    from .plots import picturable

    shape = est.model_.config.image_shape
    if out.suffix.lower() == ".png" and shape is None:
        raise ConfigError(f"--out {out}: this model's data are not images; write .npy, .npz or .csv")
    if out.suffix.lower() == ".png" and not picturable(shape):
        raise ConfigError(
            f"--out {out}: this model's images have shape {tuple(shape)}, and a picture needs 1 or 3 channels; write .npy, .npz or .csv"
        )
    return shape


def cmd_encode(args) -> int:
    out = Path(args.out)
    check_out(out, (".npy", ".npz", ".csv"), run_dir=args.run_dir, data=_data_paths(args), overwrite=args.overwrite)
    est = _load(args)
    x, _, _ = _rows(est, args, args.split)
    arrays = est.encoded(x)
    mu, logvar = arrays["mu"], arrays["logvar"]
    # Columns: μ of every group, then log σ² of every group, in the model's group order.
    names = [f"{g.name}_{i}" if len(est.model_.latents) > 1 else str(i) for g in est.model_.latents for i in range(g.size)]
    header = [f"mu_{c}" for c in names] + [f"logvar_{c}" for c in names]
    import numpy as np

    write_array(out, np.concatenate([mu, logvar], axis=1), header=header, arrays=arrays)
    groups = {g.name: g.size for g in est.model_.latents}
    _report(args, {"out": str(out), "n": int(x.shape[0]), "latent_dim": mu.shape[1], "groups": groups}, f"wrote μ and log σ² of {count(x.shape[0], 'row')} to {out}")
    return 0


def cmd_reconstruct(args) -> int:
    out = Path(args.out)
    check_out(out, (".png", ".npy", ".npz", ".csv"), run_dir=args.run_dir, data=_data_paths(args), redraws="reconstructions.png", overwrite=args.overwrite)
    est = _load(args)
    shape = _picture_shape(est, out)
    if args.seed is not None and out.suffix.lower() != ".png" and args.draw is None:
        raise ConfigError(f"--seed picks the rows a .png shows and seeds --draw; --out {out} holds every row, reconstructed without noise (--draw z or x draws them)")
    # A point estimate's q(z|x) is its code: --draw z would give the reconstructions of the
    # mean, word for word, under another name.
    point = est.model_.inference.point_estimate
    if point and args.draw == "z":
        raise ConfigError(f"--draw z draws z ~ q(z|x), and inference {est.config_.model.inference}'s q(z|x) is a point (the row's code): "
                          "nothing to draw; give --draw x for x ~ p(x|z) at the code, or leave --draw out")  # fmt: skip
    seed = 0 if args.seed is None else args.seed
    # The draws are seeded whatever the output, as sample's: the same command, the same file.
    drawn = dict(draw=args.draw, seed=seed) if args.draw is not None else {}
    x, _, labels = _rows(est, args, args.split)
    if out.suffix.lower() == ".png":
        import numpy as np

        from .data.stratify import stratified_rows
        from .plots import reconstruction_grid
        from .runs import RECONSTRUCTED_ROWS

        # A random sample across the rows, by class where known: a file sorted by class
        # would otherwise show its first class only.
        rows = stratified_rows(x.shape[0], RECONSTRUCTED_ROWS, labels, seed)
        shown = np.asarray(x[rows])
        how = {None: "", "z": " at z ~ q(z|x)", "x": f", drawn x ~ p(x|z) at {'the code z' if point else 'z ~ q(z|x)'}"}[args.draw]
        reconstruction_grid(
            _model_values(est, shown), _model_values(est, est.reconstruct(shown, **drawn)), out, shape, n=len(rows), labels=None if labels is None else labels[rows],
            title=f"{len(rows)} of {x.shape[0]} rows (random{', by class' if labels is not None else ''}) and their reconstructions{how}",
        )
    else:
        # Block by block into the file: under --mmap the n × D output need not fit in memory.
        write_blocks(out, est.reconstruct_blocks(x, **drawn), (x.shape[0], est.n_features_in_), header=_columns(est))
    n = len(rows) if out.suffix.lower() == ".png" else int(x.shape[0])  # a picture shows a sample of the rows
    drew = {None: "", "z": " (z drawn from q(z|x))", "x": " (x drawn from p(x|z) at the code z)" if point else " (z drawn from q(z|x), x from p(x|z))"}[args.draw]
    _report(args, {"out": str(out), "n": n, "draw": args.draw}, f"wrote reconstructions of {count(n, 'row')} to {out}{drew}")
    return 0


def _columns(est) -> list[str] | None:
    """The header of the table the model was trained on, for a .csv of rows in its units."""
    names = est.config_.data.feature_names  # set by train for a table with a header row
    return list(names) if names is not None else None


def _model_values(est, x):
    """Rows of the user's values as the model sees them (its input map), for pictures: in
    float64, since a picture asks nothing of float32's resolution."""
    import numpy as np

    from .scaling import apply

    return apply(est.scaling_, x, np.float64)


def cmd_score(args) -> int:
    check_positive_int("--k", args.k, maximum=K_MAX)
    out = Path(args.out)
    check_out(out, (".npy", ".csv"), run_dir=args.run_dir, data=_data_paths(args), overwrite=args.overwrite)
    est = _load(args)
    x, _, _ = _rows(est, args, args.split)
    rows = _row_progress(args, len(x), "scoring")
    try:
        log_px = est.score_samples(x, k=args.k, seed=args.seed, progress=rows)
    finally:
        if rows is not None:
            rows.close()
    write_array(out, log_px, header=["log_px"])
    summary = {"out": str(out), "n": int(log_px.shape[0]), "k": int(args.k), "mean": float(log_px.mean()), "min": float(log_px.min()), "max": float(log_px.max())}
    _report(args, summary, f"wrote log p(x) of {count(log_px.shape[0], 'row')} to {out} (mean {_nats(summary['mean'])}, min {_nats(summary['min'])})")
    return 0


# -- output -------------------------------------------------------------------------------------


def _evidence_line(r: dict[str, Any]) -> str:
    """'(n rows): ELBO … log p(x) … bits/dim  active units A/D' for the result of ``evaluate.evaluate``."""
    return (
        f"({count(r['n'], 'row')}): ELBO {_nats(r['elbo'])} (recon {_nats(r['recon'])}, KL {_nats(r['kl'])})  "
        f"log p(x) {_nats(r['log_likelihood'])} nats (IWAE, K={r['k']})  {_nats(r['bits_per_dim'], 4)} bits/dim  "
        f"active units {r['active_units']}/{r['latent_size']}"
    )


def _report(args, obj: dict[str, Any], text: str) -> None:
    print(json.dumps(_strict(obj), allow_nan=False) if args.json else text)


def _strict(obj: Any) -> Any:
    """``obj`` with NaN and infinities as null: strict JSON (jq, JavaScript) has no NaN, and a
    value that is not a number (the standard error of one row) is better said to be absent."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


# -- entry point --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vaekit", description="Variational autoencoders: train, evaluate, gaps, sample, encode, reconstruct, score.")
    parser.add_argument("--version", action="version", version=f"vaekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_train(sub)
    _add_run_commands(sub)
    return parser


# The section of docs/reference.md that options_reference() writes (tests/test_docs.py checks it).
OPTIONS_MARKERS = ("<!-- options: begin -->", "<!-- options: end -->")


def options_reference() -> str:
    """Every verb's options as Markdown tables, from the parser itself: the reference cannot
    drift from --help. ``write_options_reference`` puts it into docs/reference.md."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    cell = lambda text: " ".join((text or "").replace("%%", "%").replace("|", "\\|").split())  # noqa: E731
    out = []
    for verb, p in sub.choices.items():
        out += [f"### vaekit {verb}", "", cell(p.description), ""]
        for group in p._action_groups:
            actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
            if not actions:
                continue
            title = {"positional arguments": "arguments", "options": "options"}.get(group.title, group.title)
            out += [f"| {title} | |", "| --- | --- |"]
            for a in actions:
                names = " / ".join(f"`{o}`" for o in a.option_strings) or f"`{a.metavar or a.dest.upper()}`"
                out.append(f"| {names} | {cell(a.help) + (' (required)' if a.required and a.option_strings else '')} |")
            out.append("")
    return "\n".join(out).rstrip("\n")


def write_options_reference(path: str | Path = "docs/reference.md") -> None:
    """Rewrite the options section of ``path`` (between OPTIONS_MARKERS) from the parser."""
    start, end = OPTIONS_MARKERS
    doc = Path(path).read_text()
    head, rest = doc.split(start, 1)
    tail = rest.split(end, 1)[1]
    Path(path).write_text(f"{head}{start}\n{options_reference()}\n{end}{tail}")


def _one_line_warnings(previous):
    """A ``warnings.formatwarning`` that writes vaekit's own warnings as one stderr line, like
    its errors, and leaves the others to ``previous`` (the caller's, restored when main ends)."""

    def format_warning(message, category, filename, lineno, line=None) -> str:
        if issubclass(category, VaekitWarning):
            return f"vaekit: warning: {message}\n"
        return previous(message, category, filename, lineno, line)

    return format_warning


class Terminated(BaseException):
    """SIGTERM (a scheduler's or ``docker stop``'s request to stop) raised where the process
    is, like Ctrl-C's KeyboardInterrupt, so that it ends as an interrupt does: a new run
    without a checkpoint is removed and the run an ``--overwrite`` set aside comes back, the
    lock is released, and no temporary file stays."""


# Set by the SIGTERM handler: a Terminated that a clean-up caught on its way still tells
# _rank_0_reports that torchrun has stopped this process.
_SIGTERM_SEEN: list[bool] = []


def _terminate(signum, frame) -> None:
    _SIGTERM_SEEN.append(True)
    raise Terminated


# The options that name a file or directory: given empty, each would be taken as not given
# (a default path, the run's own data) or as the current directory.
PATH_OPTIONS = ("data", "data_dir", "out", "plot", "bars", "prior_from")
# The longest name of one file or directory on Linux's file systems (ext4, xfs, tmpfs, btrfs).
NAME_MAX = 255


def _check_paths(args) -> None:
    """No path option is empty, and --data-dir names a directory, whether or not the data
    given need it: a mistyped one would otherwise pass unseen until the day it is needed. Where
    the data read would not look in it (a built-in dataset such as digits, given, the run's own or
    train's default; a file found as named) it is refused, as it would do nothing."""
    for dest in PATH_OPTIONS:
        if getattr(args, dest, None) == "":
            raise ConfigError(f"--{dest.replace('_', '-')} is empty: give a path")
    if getattr(args, "run_dir", None) == "":  # Path("") is the current directory
        raise ConfigError("RUN_DIR is empty: give a path")
    for dest in (*PATH_OPTIONS, "run_dir"):
        value = getattr(args, dest, None)
        # Named here rather than by the error of a file made beside it (a temporary, the aside
        # of a replaced run), whose path the user never gave.
        long = [part for part in Path(value).parts if len(os.fsencode(part)) > NAME_MAX] if isinstance(value, str) else []
        if long:
            flag = "RUN_DIR" if dest == "run_dir" else f"--{dest.replace('_', '-')}"
            raise ConfigError(f"{flag}: the name {long[0][:40]}… is {len(os.fsencode(long[0]))} bytes, more than a file system allows ({NAME_MAX})")
    for dest in (*PATH_OPTIONS, "run_dir"):
        value = getattr(args, dest, None)
        if isinstance(value, str) and value.startswith("~"):  # a quoted ~ reaches us unexpanded
            setattr(args, dest, os.path.expanduser(value))
    data_dir = getattr(args, "data_dir", None)
    if data_dir is None:
        return
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise ConfigError(f"--data-dir {data_dir}: no such directory")
    if not path.is_dir():
        raise ConfigError(f"--data-dir {data_dir}: not a directory")
    if getattr(args, "source", None) == "prior":
        return  # sample --source prior reads no data at all, and says so
    source, what = _data_source(args)
    why = _data_dir_unused(source)
    if why:
        raise ConfigError(f"--data-dir {data_dir}: {what} {why}; drop --data-dir")


def _data_source(args) -> tuple[str | None, str]:
    """(the data the command reads, how to name it): --data, else the run's own data (its
    config.json, as far as it can be read: the verb reports one it cannot), else train's default."""
    from .config import DATA_OPTIONS

    if getattr(args, "data", None):
        return args.data, args.data
    run_dir = getattr(args, "run_dir", None) or (args.out if getattr(args, "resume", False) else None)
    if run_dir is None:
        source = DATA_OPTIONS["source"].default if args.command == "train" else None
        return source, f"{source} (the default --data)"
    try:
        source = json_loads((Path(run_dir) / "config.json").read_text())["data"]["source"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, ""
    return source, f"the run's data, {source},"


def _data_dir_unused(source) -> str | None:
    """Why --data-dir would do nothing for ``source``, or None where it is looked in: a named
    dataset that reads files (binarized_mnist), or a relative path not found as given."""
    from .registry import DATASETS

    if not isinstance(source, str) or source == "array":
        return None
    if source in DATASETS:
        return None if DATASETS.get(source).reads_data_dir else "is built in and reads no files"
    path = Path(source).expanduser()
    if path.is_absolute() or path.exists():
        return "is a file found without it"
    return None


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    # Only the main thread may set a handler, and one the caller set stays.
    handle = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    if handle:
        _SIGTERM_SEEN.clear()
        signal.signal(signal.SIGTERM, _terminate)
    if sys.stderr is None:  # started with stderr closed: the diagnostics are lost, not the work
        sys.stderr = open(os.devnull, "w")
    caller_format = warnings.formatwarning
    # What an interruption leaves: a run to --resume where one trains, else only files intact.
    intact = "what was written is intact (a run with a checkpoint continues with --resume)"
    try:
        try:
            os.getcwd()
        except FileNotFoundError:  # relative paths, and torch's own import, would fail obscurely
            raise VaekitError("the current directory no longer exists; cd to one that does") from None
        args = build_parser().parse_args(argv)
        if args.command != "train":
            intact = "what was written is intact"
        if sys.stdout is None:  # started with stdout closed: every verb's result would be lost
            raise ConfigError("standard output is closed; vaekit prints its results there (redirect it to a file or /dev/null)")
        warnings.formatwarning = _one_line_warnings(caller_format)
        if not getattr(args, "data_parallel", False) and _launched_world() > 1:
            # Under torchrun a verb that does not split its work runs on rank 0 alone, as in one
            # process: on every rank it would print its result again (--json several objects, no
            # longer JSON) and write the same files at once. The others leave before reading or
            # writing anything; refusing the verb would fail a job that starts every step with torchrun.
            if _launched_rank() != 0:
                return 0
            warnings.warn(f"{args.command} runs in one process: rank 0 does the work, and the other {_launched_world() - 1} process(es) torchrun started exit at once", VaekitWarning)
        # Before anything is read or written: a run must not stop at its pictures for want of Pillow.
        missing = missing_requirement()
        if missing:
            raise VaekitError(missing)
        _check_paths(args)
        return args.func(args)
    except VaekitError as e:
        if _rank_0_reports():
            return e.exit_code
        emit(f"vaekit: error: {_by_rank(e)}")
        return e.exit_code
    except BrokenPipeError:
        # The reader of stdout stopped (`vaekit ... --json | head`): end quietly, as a
        # pipeline's tools do on SIGPIPE, and keep Python from failing on stdout's last flush.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as e:  # the file system's refusal: a full disk, permissions, a path through a file
        # A rename's refusal names its destination (the file the user knows), not our temporary.
        name = e.filename2 or e.filename
        where = f"{name}: " if name else ""
        emit(f"vaekit: error: {where}{e.strerror or e} (what was written before is intact)")
        return 1
    except ImportError as e:  # a library that cannot be mapped (ulimit -v), or a broken install
        missing = isinstance(e, ModuleNotFoundError) and missing_requirement(e.name)
        first = first_line(e)
        emit(f"vaekit: error: {missing or f'cannot load a library ({first}); under a memory limit (ulimit -v) raise it'}")
        return 1
    except KeyboardInterrupt:
        if _launched_rank() == 0:  # every process of a torchrun group gets the signal; one says so
            emit(f"vaekit: interrupted; {intact}")
        return 130
    except Terminated:
        if _launched_rank() == 0:
            emit(f"vaekit: terminated (SIGTERM); {intact}")
        return 143
    except (MemoryError, RuntimeError) as e:
        first = first_line(e)
        if _group_broke(e):
            why = f"the data-parallel group broke, another of its processes has stopped ({first})"
            advice = intact
        elif out_of_memory(e):
            why = f"out of memory ({first})"
            advice = "ask for less at once: fewer samples or rows, a smaller --batch-size or --k (what was written is intact)"
        else:
            raise
        emit(f"vaekit: error: {why}; {advice}")
        return 1
    finally:
        warnings.formatwarning = caller_format
        if handle:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


# How long a process of a torchrun group other than rank 0 that refused the command waits for
# rank 0 to refuse it too (and torchrun to stop the rest) before it reports the refusal itself.
RANK_0_REPORT_WAIT = 30.0


def _launched_rank() -> int:
    from .launch import launched_rank_world

    return launched_rank_world()[0]


def _launched_world() -> int:
    from .launch import launched_rank_world

    return launched_rank_world()[1]



def _by_rank(e: BaseException | str) -> str:
    """The error as a process of a torchrun group other than rank 0 reports it: named by rank."""
    rank = _launched_rank()
    return f"{e}" if rank == 0 else f"(process of rank {rank}) {e}"


def _rank_0_reports() -> bool:
    """Whether a refusal in a process of a torchrun group is left to rank 0 to report. Every
    process checks the same options and data, so rank 0 refuses what another refuses; that one
    waits for it (up to RANK_0_REPORT_WAIT), so that the first process to leave is not the
    one that stays silent and torchrun's stop does not cut rank 0 off before its line. True
    when torchrun stopped this process meanwhile (rank 0 has left), False (report it) when
    the wait ran out: then the refusal was this process's own."""
    if _launched_rank() == 0:
        return False
    if _SIGTERM_SEEN:  # torchrun's stop came before the wait began
        return True
    try:
        time.sleep(RANK_0_REPORT_WAIT)
    except (Terminated, KeyboardInterrupt):
        return True
    return False


def _group_broke(e: BaseException) -> bool:
    """A collective of data-parallel training failed because a peer is gone (torch's
    DistBackendError and kin, or gloo's and NCCL's connection errors), in a process of a group."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if type(e).__name__ in ("DistBackendError", "DistNetworkError", "DistStoreError", "DistError"):
        return True
    text = str(e).lower()
    return any(word in text for word in ("gloo", "nccl", "connection reset", "connection closed"))


def run() -> None:
    """The ``vaekit`` command: ``main()``, then the process's exit with its status.

    A process that torchrun started as one of several (WORLD_SIZE > 1) leaves through
    ``os._exit`` once its output is flushed. At interpreter teardown gloo's worker threads can
    still be joinable when their destructors run, and the C++ runtime then aborts a process that
    has finished its work (SIGABRT, "terminate called without an active exception"; see
    pytorch/pytorch#179291), which torchrun reports as a failed job. By then every file the verb
    wrote is closed and its lock released; ``os._exit`` skips only the teardown."""
    status = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import logging

        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(status or 0)
    sys.exit(status)


if __name__ == "__main__":  # pragma: no cover
    run()
