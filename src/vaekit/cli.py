"""The ``vaekit`` command: train, evaluate, sample, encode, reconstruct, score.

Errors the user can cause (``VaekitError``) become one stderr line and exit 1 (2 for usage);
anything else is a bug and keeps its traceback. Heavy imports happen inside the commands,
so ``vaekit --help`` does not load torch.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ConfigError, DataError, VaekitError

SPLITS = ("train", "valid", "test", "all")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        self.exit(2, f"vaekit: error: {message} (see '{self.prog} --help')\n")


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


# -- train --------------------------------------------------------------------------------------

# CLI option -> (config section, field). Defaults are None so that we can tell what the user set.
TRAIN_OPTIONS = {
    "latent_dim": ("model", "latent_dim"),
    "hidden": ("model", "hidden"),
    "decoder_hidden": ("model", "decoder_hidden"),
    "activation": ("model", "activation"),
    "likelihood": ("model", "likelihood"),
    "variance": ("model", "variance"),
    "fixed_std": ("model", "fixed_std"),
    "prior": ("model", "prior"),
    "inference": ("model", "inference"),
    "local_steps": ("model", "local_steps"),
    "local_lr": ("model", "local_lr"),
    "refine_steps": ("model", "refine_steps"),
    "refine_lr": ("model", "refine_lr"),
    "refine_in_training": ("model", "refine_in_training"),
    "epochs": ("train", "epochs"),
    "batch_size": ("train", "batch_size"),
    "lr": ("train", "lr"),
    "beta": ("train", "beta"),
    "warmup": ("train", "warmup"),
    "n_samples": ("train", "n_samples"),
    "analytic_kl": ("train", "analytic_kl"),
    "patience": ("train", "patience"),
    "seed": ("train", "seed"),
    "device": ("train", "device"),
    "dtype": ("train", "dtype"),
    "eval_k": ("train", "eval_k"),
    "compile": ("train", "compile"),
    "compile_mode": ("train", "compile_mode"),
    "amp": ("train", "amp"),
    "matmul_precision": ("train", "matmul_precision"),
    "data": ("data", "source"),
    "data_dir": ("data", "data_dir"),
    "valid_fraction": ("data", "valid_fraction"),
    "test_fraction": ("data", "test_fraction"),
    "split_seed": ("data", "split_seed"),
    "mmap": ("data", "mmap"),
}
# What may change when a run is resumed: more epochs, another device, the final evaluation.
# Speed settings may change too (say, a run resumed on a GPU with bf16); config.json records them.
RESUMABLE = {"epochs", "device", "eval_k", "data_dir", "compile", "compile_mode", "amp", "matmul_precision"}


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="fit a VAE and write a run directory", description="Fit a VAE on DATA and write RUN_DIR (config.json, model.safetensors, last.safetensors, metrics.jsonl, pictures); prints the test ELBO and log-likelihood.")
    g = p.add_argument_group("data")
    g.add_argument("--data", help="digits (default), binarized_mnist, or a .npy/.npz/.csv file")
    g.add_argument("--data-dir", help="directory holding binarized_mnist.npz (default: $VAEKIT_DATA, then the cache)")
    g.add_argument("--valid-fraction", type=float, help="rows held out for validation when DATA has no splits (default 0.1)")
    g.add_argument("--test-fraction", type=float, help="rows held out for testing when DATA has no splits (default 0.2)")
    g.add_argument("--split-seed", type=int, help="seed of the split permutation (default 0)")
    _bool_flag(g, "--mmap", "memory-map a .npy file and stream its rows (data larger than memory)")
    g = p.add_argument_group("model")
    g.add_argument("--latent-dim", type=int, help="dimension of z (default 20)")
    g.add_argument("--hidden", type=_widths, help="encoder widths, comma-separated; '' for a linear map (default 400)")
    g.add_argument("--decoder-hidden", type=_widths, help="decoder widths (default: the encoder's, reversed)")
    g.add_argument("--activation", help="relu (default), tanh, elu, gelu, softplus, leaky_relu, silu")
    g.add_argument("--likelihood", help="auto (default), bernoulli, continuous_bernoulli, gaussian")
    g.add_argument("--variance", help="gaussian σ²: fixed, shared (default, learned), feature (learned per feature)")
    g.add_argument("--fixed-std", type=float, help="σ of the gaussian likelihood with --variance fixed (default 1.0)")
    g.add_argument("--prior", help="prior p(z) (default standard_normal)")
    g.add_argument("--inference", help="amortized (default: the encoder), vi (free (μ, σ²) per point), map (free z per point), autoencoder")
    g.add_argument("--local-steps", type=int, help="Adam steps of the per-point q found with θ fixed for new points (vi, map) and for point-estimate proposals (default 100)")
    g.add_argument("--local-lr", type=float, help="learning rate of those steps (default 0.05)")
    g.add_argument("--refine-steps", type=int, help="amortized: gradient steps on each point's ELBO from the encoder's q at evaluation (semi-amortized VI; default 0)")
    g.add_argument("--refine-lr", type=float, help="learning rate of the refinement steps (default 0.05)")
    _bool_flag(g, "--refine-in-training", "also refine during training (the decoder learns from the refined q)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, help="passes over the training set (default 10)")
    g.add_argument("--batch-size", type=int, help="default 128")
    g.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    g.add_argument("--beta", type=float, help="weight of the KL term (default 1)")
    g.add_argument("--warmup", type=int, help="epochs of linear KL warm-up from 0 to beta (default 0)")
    g.add_argument("--n-samples", type=int, help="posterior samples per datapoint (default 1)")
    _bool_flag(g, "--analytic-kl", "closed-form KL where registered (default) or Monte Carlo")
    g.add_argument("--patience", type=int, help="stop after this many epochs without a better validation ELBO")
    g.add_argument("--seed", type=int, help="random seed (default 0)")
    g.add_argument("--device", help="cpu (default) or cuda[:N]")
    g.add_argument("--dtype", help="float32 (default) or float64")
    g.add_argument("--eval-k", type=int, help="K of the test log-likelihood estimate (default 1000)")
    _bool_flag(g, "--compile", "compile the training step with torch.compile (default off)")
    g.add_argument("--compile-mode", help="torch.compile mode: default, reduce-overhead (CUDA graphs on a GPU), max-autotune, max-autotune-no-cudagraphs")
    g.add_argument("--amp", help="mixed precision of the training step: off (default) or bf16 (networks under bfloat16 autocast; weights and log-densities stay float32)")
    g.add_argument("--matmul-precision", help="float32 products in training: highest (default), high (TF32 on CUDA), medium (bfloat16-based, CUDA and CPUs with bf16)")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write")
    g.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its last checkpoint")
    g.add_argument("--overwrite", action="store_true", help="replace a run already in RUN_DIR")
    _bool_flag(g, "--progress", "progress bar on stderr (default: when stderr is a terminal)")
    g.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_train)


def _config_from_args(args) -> "Any":
    from dataclasses import replace

    from .config import DataConfig, ModelConfig, RunConfig, TrainConfig

    given = {k: getattr(args, k) for k in TRAIN_OPTIONS if getattr(args, k) is not None}
    with _option_names():
        data_cfg = DataConfig(**{f: given[o] for o, (s, f) in TRAIN_OPTIONS.items() if s == "data" and o in given})
        train_cfg = TrainConfig(**{f: given[o] for o, (s, f) in TRAIN_OPTIONS.items() if s == "train" and o in given})
        from .data import load_dataset
        from .likelihoods import choose

        data = load_dataset(data_cfg)
        model_kw = {f: given[o] for o, (s, f) in TRAIN_OPTIONS.items() if s == "model" and o in given}
        if model_kw.get("likelihood", "auto") == "auto":
            model_kw["likelihood"] = choose(data.train)
        from .inference import INFERENCE

        if INFERENCE.get(model_kw.get("inference", "amortized")).per_point:
            model_kw["n_points"] = data.train.shape[0]
        model_cfg = ModelConfig(input_dim=data.dim, image_shape=data.image_shape, **model_kw)
        return RunConfig(model=model_cfg, train=train_cfg, data=replace(data_cfg, source=data_cfg.source))


class _option_names:
    """Say '--lr must be …' rather than 'lr must be …' for errors in CLI-given values."""

    def __enter__(self):
        return self

    def __exit__(self, typ, err, tb):
        if isinstance(err, ConfigError):
            options = {f: o for o, (_, f) in TRAIN_OPTIONS.items()}
            pattern = r"\b(" + "|".join(sorted(options, key=len, reverse=True)) + r")\b(?=\s+(?:must|[+]))"
            msg = re.sub(pattern, lambda m: "--" + options[m.group(1)].replace("_", "-"), str(err))
            raise ConfigError(msg) from None
        return False


def cmd_train(args) -> int:
    from dataclasses import replace

    from . import checkpoint as ckpt
    from .config import RunConfig
    from .train import train_run

    run_dir = Path(args.out)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    if args.resume:
        if not (run_dir / ckpt.CONFIG_FILE).is_file():
            what = "no config.json" if run_dir.is_dir() else "no such directory"
            raise VaekitError(f"{run_dir}: nothing to resume ({what})")
        try:
            config = RunConfig.load(run_dir / ckpt.CONFIG_FILE)
        except ConfigError as e:
            raise VaekitError(str(e)) from None
        # Repeating the run's own value (the original command line, say) is not a change.
        changed = [
            o for o in TRAIN_OPTIONS
            if getattr(args, o) is not None and o not in RESUMABLE
            and getattr(args, o) != getattr(getattr(config, TRAIN_OPTIONS[o][0]), TRAIN_OPTIONS[o][1])
        ]  # fmt: skip
        if changed:
            o = changed[0]
            s, f = TRAIN_OPTIONS[o]
            raise ConfigError(
                f"--{o.replace('_', '-')} cannot change when resuming; {run_dir}/config.json holds {f}={getattr(getattr(config, s), f)!r}"
            )
        with _option_names():
            train = replace(config.train, **{TRAIN_OPTIONS[o][1]: getattr(args, o) for o in sorted(RESUMABLE - {"data_dir"}) if getattr(args, o) is not None})
        data = replace(config.data, data_dir=args.data_dir or config.data.data_dir)
        config = replace(config, train=train, data=data)
    else:
        if (run_dir / ckpt.CONFIG_FILE).exists() and not args.overwrite:
            raise VaekitError(f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to replace it")
        if run_dir.exists() and not run_dir.is_dir():
            raise VaekitError(f"--out {run_dir}: exists and is not a directory")
        config = _config_from_args(args)
        if args.overwrite:
            for name in (ckpt.MODEL_FILE, ckpt.LAST_FILE, ckpt.METRICS_FILE):
                (run_dir / name).unlink(missing_ok=True)
    summary = train_run(config, run_dir, resume=args.resume, progress=progress)
    if summary.get("rank", 0) != 0:  # data-parallel: rank 0 alone reports
        return 0
    _report(
        args,
        summary,
        f"run: {summary['run_dir']}  epochs: {summary['epochs']}  best epoch: {summary['best_epoch']}  "
        f"valid ELBO: {summary['valid_elbo']:.3f}\ntest {_evidence_line(summary['test'])}",
    )
    return 0


# -- commands on a trained run ------------------------------------------------------------------


def _run_parser(sub, name: str, help: str, data_required: bool, default_split: str):
    p = sub.add_parser(name, help=help, description=help)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'vaekit train'")
    p.add_argument("--data", required=data_required, help="digits, binarized_mnist, or a .npy/.npz/.csv file" + ("" if data_required else " (default: the run's own data)"))
    p.add_argument("--data-dir", help="directory holding binarized_mnist.npz")
    p.add_argument("--split", choices=SPLITS, default=default_split, help=f"rows to use (default {default_split}; 'all' keeps a file's own row order)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo noise (default 0)")
    p.add_argument("--mmap", action="store_true", help="memory-map a .npy --data and stream its rows (default: as the run was trained)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return p


def _add_run_commands(sub) -> None:
    p = _run_parser(sub, "evaluate", "ELBO, its terms and the importance-weighted log-likelihood of a split", False, "test")
    p.add_argument("--k", type=int, default=1000, help="importance samples per datapoint (default 1000; the literature uses 5000)")
    p.set_defaults(func=cmd_evaluate)

    p = _run_parser(sub, "gaps", "log p(x), the ELBO of the model's q and of the optimal q*, and the approximation and amortization gaps (Cremer et al. 2018)", False, "test")
    p.add_argument("--k", type=int, default=1000, help="importance samples per datapoint (default 1000)")
    p.add_argument("--steps", type=int, default=300, help="Adam steps of the optimal per-point q* (default 300)")
    p.add_argument("--plot", help="picture of the bound beneath the evidence (default RUN_DIR/gaps_SPLIT.png)")
    p.set_defaults(func=cmd_gaps)

    p = sub.add_parser("sample", help="draw samples from a trained model", description="Draw x ~ p(x|z) (or its mean) with z from the prior or the aggregate posterior.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("-n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--out", required=True, help=".png (image grid, image data only), .npy, .npz or .csv")
    p.add_argument("--source", choices=("prior", "aggregate"), default="prior", help="z ~ p(z) (default), or z ~ q(z|x) for random training rows x (the aggregate posterior)")
    p.add_argument("--draw", action="store_true", help="draw x ~ p(x|z) instead of returning E[x|z]")
    p.add_argument("--data", help="data for --source aggregate (default: the run's own training split)")
    p.add_argument("--data-dir", help="directory holding binarized_mnist.npz")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sample)

    p = _run_parser(sub, "encode", "posterior means and log-variances of q(z|x) for each row", True, "all")
    p.add_argument("--out", required=True, help=".npy (columns: μ then log σ²), .npz (arrays mu, logvar) or .csv")
    p.set_defaults(func=cmd_encode)

    p = _run_parser(sub, "reconstruct", "decoder means at the posterior means", True, "all")
    p.add_argument("--out", required=True, help=".npy, .npz, .csv, or .png (inputs beside reconstructions, image data only)")
    p.set_defaults(func=cmd_reconstruct)

    p = _run_parser(sub, "score", "per-row log p(x) estimates (usable as anomaly scores)", True, "all")
    p.add_argument("--out", required=True, help=".npy or .csv")
    p.add_argument("--k", type=int, default=1000, help="importance samples per row (default 1000)")
    p.set_defaults(func=cmd_score)


def _load(args):
    from .estimator import load

    return load(args.run_dir)


def _rows(est, args, split: str):
    """The rows of --data (or the run's data) for ``split``, checked against the model."""
    from dataclasses import replace

    from .data import check_data, load_array, load_dataset

    cfg = est.config_.data
    source = args.data or cfg.source
    if source == "array":
        raise DataError(f"{args.run_dir} was fitted on an in-memory array; pass --data FILE")
    data_dir = getattr(args, "data_dir", None) or cfg.data_dir
    # A run trained on a memory-mapped file streams it again; other files only when asked.
    mmap = getattr(args, "mmap", False) or (cfg.mmap and source == cfg.source)
    if split == "all" and Path(source).suffix:
        x, labels, _ = load_array(source, data_dir, mmap=mmap)
    else:
        data = load_dataset(replace(cfg, source=source, data_dir=data_dir, mmap=mmap))
        x, labels = data.split(split), data.split_labels(split)
    x = check_data(x, what=source, input_dim=est.n_features_in_, likelihood=est.model_.likelihood)
    return x, labels


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{name} must be >= 1, got {value}")


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate

    _positive("--k", args.k)
    est = _load(args)
    x, _ = _rows(est, args, args.split)
    t0 = time.perf_counter()
    result = evaluate(est.model_, x, k=args.k, seed=args.seed)
    # The cost of inference on new data: one encoder pass, or per-point optimisation.
    result.update(split=args.split, inference=est.model_.config.inference, seconds=time.perf_counter() - t0)
    _report(args, result, f"{args.split} {_evidence_line(result)}  [{result['inference']} inference, {result['seconds']:.1f} s]")
    return 0


def cmd_gaps(args) -> int:
    from .evaluate import gaps
    from .plots import bound_gap_plot

    _positive("--k", args.k)
    _positive("--steps", args.steps)
    est = _load(args)
    x, _ = _rows(est, args, args.split)
    t0 = time.perf_counter()
    result = gaps(est.model_, x, k=args.k, steps=args.steps, seed=args.seed)
    result["seconds"] = time.perf_counter() - t0
    per_point = result.pop("per_point")
    plot = Path(args.plot) if args.plot else Path(args.run_dir) / f"gaps_{args.split}.png"
    _check_out(plot, (".png",))
    bound_gap_plot(per_point["log_px"], per_point["elbo"], plot, title=f"{est.model_.config.inference} VAE, {args.split} split")
    result.update(split=args.split, plot=str(plot))
    _report(
        args,
        result,
        f"{args.split} ({result['n']} rows): log p(x) {result['log_likelihood']:.3f}  ELBO(q) {result['elbo']:.3f}  "
        f"ELBO(q*) {result['elbo_optimal']:.3f}  approximation gap {result['approximation_gap']:.3f} ± {result['approximation_gap_se']:.3f}  "
        f"amortization gap {result['amortization_gap']:.3f} ± {result['amortization_gap_se']:.3f} nats (± standard errors; "
        f"K={result['k']}, q* after {result['steps_taken']} of at most {result['steps']} steps; plot {plot})",
    )
    return 0


def cmd_sample(args) -> int:
    import torch

    _positive("-n", args.n)
    out = Path(args.out)
    _check_out(out, (".png", ".npy", ".npz", ".csv"))
    est = _load(args)
    shape = est.model_.config.image_shape
    if out.suffix == ".png" and shape is None:
        raise ConfigError(f"--out {out}: this model's data are not images; write .npy, .npz or .csv")
    model = est.model_
    g = torch.Generator().manual_seed(args.seed)
    z = None
    if args.source == "aggregate":
        x, _ = _rows(est, args, "train")
        rows = torch.randint(0, x.shape[0], (args.n,), generator=g)
        with torch.no_grad():
            z = model.evaluation_posterior(torch.as_tensor(x[rows.numpy()])).sample(generator=g)
    samples = model.sample(args.n, generator=g, mean=not args.draw, z=z).cpu().numpy()
    if out.suffix == ".png":
        from .plots import image_grid

        image_grid(samples, out, shape)
    else:
        _write_array(out, samples)
    _report(args, {"out": str(out), "n": int(args.n), "source": args.source}, f"wrote {args.n} samples to {out}")
    return 0


def cmd_encode(args) -> int:
    import numpy as np

    out = Path(args.out)
    _check_out(out, (".npy", ".npz", ".csv"))
    est = _load(args)
    x, _ = _rows(est, args, args.split)
    mu, logvar = est.encode(x)
    d = mu.shape[1]
    header = [f"mu_{i}" for i in range(d)] + [f"logvar_{i}" for i in range(d)]
    _write_array(out, np.concatenate([mu, logvar], axis=1), header=header, arrays={"mu": mu, "logvar": logvar})
    _report(args, {"out": str(out), "n": int(x.shape[0]), "latent_dim": d}, f"wrote μ and log σ² of {x.shape[0]} rows to {out}")
    return 0


def cmd_reconstruct(args) -> int:
    out = Path(args.out)
    _check_out(out, (".png", ".npy", ".npz", ".csv"))
    est = _load(args)
    shape = est.model_.config.image_shape
    if out.suffix == ".png" and shape is None:
        raise ConfigError(f"--out {out}: this model's data are not images; write .npy, .npz or .csv")
    x, _ = _rows(est, args, args.split)
    if out.suffix == ".png":
        from .plots import reconstruction_grid

        shown = x[: min(32, x.shape[0])]
        reconstruction_grid(shown, est.reconstruct(shown), out, shape, n=shown.shape[0])
    else:
        # Block by block into the file: under --mmap the n × D output need not fit in memory.
        _write_blocks(out, est.reconstruct_blocks(x), (x.shape[0], est.n_features_in_))
    _report(args, {"out": str(out), "n": int(x.shape[0])}, f"wrote reconstructions of {x.shape[0]} rows to {out}")
    return 0


def cmd_score(args) -> int:
    _positive("--k", args.k)
    out = Path(args.out)
    _check_out(out, (".npy", ".csv"))
    est = _load(args)
    x, _ = _rows(est, args, args.split)
    log_px = est.score_samples(x, k=args.k, seed=args.seed)
    _write_array(out, log_px, header=["log_px"])
    summary = {"out": str(out), "n": int(log_px.shape[0]), "k": int(args.k), "mean": float(log_px.mean()), "min": float(log_px.min()), "max": float(log_px.max())}
    _report(args, summary, f"wrote log p(x) of {log_px.shape[0]} rows to {out} (mean {summary['mean']:.3f}, min {summary['min']:.3f})")
    return 0


# -- output -------------------------------------------------------------------------------------


def _check_out(out: Path, suffixes: tuple[str, ...]) -> None:
    if out.suffix.lower() not in suffixes:
        raise ConfigError(f"--out {out}: unsupported file type; use {', '.join(suffixes)}")
    if out.parent and not out.parent.exists():
        raise DataError(f"--out {out}: directory {out.parent} does not exist")


def _write_array(out: Path, arr, header: list[str] | None = None, arrays: dict | None = None) -> None:
    import numpy as np

    from .files import atomic_write_bytes

    buf = io.BytesIO()
    suffix = out.suffix.lower()
    if suffix == ".npy":
        np.save(buf, arr)
    elif suffix == ".npz":
        np.savez(buf, **(arrays or {"x": arr}))
    else:
        a = arr.reshape(len(arr), -1)
        np.savetxt(buf, a, delimiter=",", header=",".join(header) if header else "", comments="", fmt="%.8g")
    try:
        atomic_write_bytes(out, buf.getvalue())
    except OSError as e:
        raise DataError(f"--out {out}: cannot write ({e.strerror})") from None


def _write_blocks(out: Path, blocks, shape: tuple[int, int]) -> None:
    """Write consecutive row blocks as one (n, d) array to .npy, .npz (key "x") or .csv,
    atomically, holding one block in memory at a time; the array has the blocks' dtype."""
    import itertools
    import zipfile

    import numpy as np

    from .files import atomic_write

    def npy(f) -> None:
        first = next(blocks, np.empty((0, shape[1]), np.float32))  # its dtype (the model's) goes into the header
        header = {"descr": np.lib.format.dtype_to_descr(first.dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(f, header)
        for block in itertools.chain([first], blocks):
            f.write(np.ascontiguousarray(block).tobytes())

    blocks = iter(blocks)

    def write(f) -> None:
        suffix = out.suffix.lower()
        if suffix == ".npy":
            npy(f)
        elif suffix == ".npz":
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z, z.open("x.npy", "w", force_zip64=True) as member:
                npy(member)
        else:
            for block in blocks:
                np.savetxt(f, block, delimiter=",", fmt="%.8g")

    try:
        atomic_write(out, write)
    except OSError as e:
        raise DataError(f"--out {out}: cannot write ({e.strerror})") from None


def _evidence_line(r: dict[str, Any]) -> str:
    """'(n rows): ELBO … log p(x) … bits/dim' for the result of ``evaluate.evaluate``."""
    return (
        f"({r['n']} rows): ELBO {r['elbo']:.3f} (recon {r['recon']:.3f}, KL {r['kl']:.3f})  "
        f"log p(x) {r['log_likelihood']:.3f} nats (IWAE, K={r['k']})  {r['bits_per_dim']:.4f} bits/dim"
    )


def _report(args, obj: dict[str, Any], text: str) -> None:
    print(json.dumps(obj) if args.json else text)


# -- entry point --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vaekit", description="Variational autoencoders: train, evaluate, gaps, sample, encode, reconstruct, score.")
    parser.add_argument("--version", action="version", version=f"vaekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_train(sub)
    _add_run_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except VaekitError as e:
        print(f"vaekit: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("vaekit: interrupted; the last checkpoint is intact", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
