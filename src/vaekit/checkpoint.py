"""Run directories: config.json beside safetensors weights, written atomically.

RUN_DIR/
  config.json          RunConfig (everything needed to rebuild the model)
  model.safetensors    the best model's weights (by validation ELBO)
  last.safetensors     the last epoch's full training state, for --resume
  metrics.jsonl        one JSON object per epoch
  .vaekit.lock         while a process writes the directory (vaekit.lock)

Nothing is unpickled on load: tensors are read by safetensors and everything else is JSON.
Every file carries the SHA-256 of its tensors in its header, so a truncated or edited file
is refused instead of silently loading different numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from .config import DEFAULTED_FIELDS, RunConfig, _migrate
from .errors import CheckpointError, ConfigError, VaekitWarning
from .files import CONFIG_FILE, LAST_FILE, METRICS_FILE, MODEL_FILE, RUN_FILES, atomic_write_bytes, atomic_write_together, json_loads

FORMAT = "vaekit-1"


def _digest(tensors: dict[str, torch.Tensor], meta: str) -> str:
    """SHA-256 over the tensors (name, dtype, shape, bytes) and the metadata JSON."""
    h = hashlib.sha256(meta.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:
    atomic_write_bytes(Path(path), tensor_bytes(tensors, meta))


def tensor_bytes(tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> bytes:
    """The safetensors file of ``tensors`` with its format, checksum and ``meta`` in the header."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta_json = json.dumps(meta or {})
    header = {"format": FORMAT, "sha256": _digest(tensors, meta_json), "meta": meta_json}
    return _canonical(save(tensors, metadata=header))


def _canonical(blob: bytes) -> bytes:
    """The safetensors file ``blob`` with its header's ``__metadata__`` keys in sorted order:
    safetensors writes them from a hash map, in an order that changes from process to process,
    so that the same weights and metadata would give files that differ in their bytes."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data that follows stays 8-byte aligned, as safetensors keeps it
    return len(text).to_bytes(8, "little") + text + blob[8 + n :]


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    try:
        tensors = load(data)
        header = _read_header(data)
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a vaekit checkpoint or truncated ({e})") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a vaekit checkpoint (format {header.get('format')!r}, expected {FORMAT!r})")
    if "meta" not in header or header.get("sha256") != _digest(tensors, header["meta"]):
        raise CheckpointError(f"{path}: checksum mismatch, the file was modified or corrupted")
    try:
        meta = json_loads(header["meta"])
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: corrupt metadata") from None
    return tensors, meta


def metrics_bytes(history: list[dict[str, Any]]) -> bytes:
    """metrics.jsonl's text: one JSON object per epoch, a line each."""
    return "".join(json.dumps(r) + "\n" for r in history).encode()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of RUN_DIR/metrics.jsonl ([] without one); a last line cut short
    by a kill is dropped, the lines before it are whole."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    out = []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    for i, line in enumerate(lines):
        try:
            record = json_loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            # A kill mid-append cuts the last line short (no newline after it): dropped quietly.
            # Anything else is damage, said once; the records before it are read.
            if i < len(lines) - 1 or text.endswith("\n"):
                warnings.warn(f"{path}: line {i + 1} is not an epoch's record (damaged); read the {i} before it", VaekitWarning, stacklevel=2)
            break
        out.append(record)
    return out


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete the temporary files that a kill between write and rename left behind (they
    carry the prefix ``.NAME.`` of a run file or of a picture training draws); no writer of
    the run is running while it is resumed."""
    for pattern in (*(f".{name}.*.tmp" for name in RUN_FILES), ".*.png.*.tmp"):
        for tmp in Path(run_dir).glob(pattern):
            tmp.unlink(missing_ok=True)


# What ``files.atomic_write`` leaves behind when killed between write and rename.
_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")


def run_entries(run_dir: str | Path) -> list[str]:
    """The names in RUN_DIR, sorted, less the lock file and the temporaries of interrupted
    writes ([] when RUN_DIR does not exist)."""
    from .lock import LOCK_FILE

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE and not _TEMPORARY.match(p.name))


def shown(names: list[str], most: int = 3) -> str:
    """The first ``most`` names of a listing for a message, "…" for the rest."""
    return ", ".join(names[:most]) + (", …" if len(names) > most else "")


def check_not_foreign(run_dir: str | Path, advice: str) -> None:
    """Refuse (CheckpointError) a RUN_DIR that holds files but no run: a run written among them
    would make them part of it, and a later overwrite would delete them."""
    entries = run_entries(run_dir)
    if entries and CONFIG_FILE not in entries:
        raise CheckpointError(f"{run_dir} holds files but no vaekit run ({shown(entries)}); {advice}")


def clear_run(run_dir: str | Path) -> None:
    """Empty RUN_DIR of the run it holds, so that a new one starts clean: checkpoints, metrics,
    pictures, outputs written into it and TensorBoard events all go; the lock file stays (the
    caller holds it). A directory that does not look like a vaekit run, one with entries but
    no config.json that loads, is refused with a CheckpointError and left as it is."""
    from .lock import LOCK_FILE

    run_dir = Path(run_dir)
    check_clearable(run_dir)
    if not run_dir.is_dir():
        return
    # config.json goes last: a kill midway leaves a directory that still looks like a run, so
    # the next --overwrite finishes the job instead of refusing it.
    for path in sorted(run_dir.iterdir(), key=lambda p: p.name == CONFIG_FILE):
        if path.name == LOCK_FILE:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


# Where --overwrite keeps the run it replaces until the new run has its first checkpoint.
REPLACED_DIR = ".vaekit-replaced"


def set_aside(run_dir: Path) -> None:
    """Move the run RUN_DIR holds into RUN_DIR/.vaekit-replaced/ (renames within one file
    system), so that a new run starts in an empty directory while the old one can still come
    back: ``end_aside`` restores it if the new run fails before its first checkpoint, and
    deletes it otherwise. A directory that is no run is refused as ``clear_run`` refuses it.

    The folder appears with the marker ``SETTING`` already in it (made under another name,
    then renamed) and loses it once every file has moved: a move cut short by a kill is one
    ``runs.recover_replaced`` undoes, since nothing of the new run exists yet."""
    from .lock import LOCK_FILE

    run_dir = Path(run_dir)
    check_clearable(run_dir)
    aside = run_dir / REPLACED_DIR
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside)
    making = run_dir / (REPLACED_DIR + ".new")
    shutil.rmtree(making, ignore_errors=True)
    making.mkdir()
    (making / SETTING).touch()
    making.replace(aside)
    for path in list(run_dir.iterdir()):
        if path.name not in (LOCK_FILE, REPLACED_DIR):
            path.replace(aside / path.name)
    (aside / SETTING).unlink()


# Markers inside REPLACED_DIR: while the old run moves in (a move cut short is undone), and
# while it moves back (a restore cut short is finished).
SETTING = ".setting"
RESTORING = ".restoring"
MARKERS = (SETTING, RESTORING)


def end_aside(run_dir: Path, restore: bool) -> None:
    """Restore the run ``set_aside`` kept (``restore``: the new run left nothing to keep and
    has been removed), or delete it."""
    aside = Path(run_dir) / REPLACED_DIR
    if not aside.is_dir():
        return
    if restore:
        (aside / RESTORING).touch()
        for path in list(aside.iterdir()):
            if path.name not in MARKERS:
                path.replace(Path(run_dir) / path.name)
        for marker in MARKERS:
            (aside / marker).unlink(missing_ok=True)
        aside.rmdir()
    else:
        shutil.rmtree(aside)


def replaced_hint(run_dir: Path) -> str:
    """For the messages of readers that find no run, or no best model, where an --overwrite
    left the run it replaces aside: what the next writer will do with it; '' otherwise."""
    run_dir = Path(run_dir)
    aside = run_dir / REPLACED_DIR
    if not aside.is_dir():
        return ""
    if (run_dir / LAST_FILE).is_file() and not (aside / SETTING).exists() and not (aside / RESTORING).exists():
        return (
            f"; the run an --overwrite replaced is in {aside} until the next 'vaekit train --out {run_dir}', "
            "which deletes it (the new run has a checkpoint: --resume continues it)"
        )
    return (
        f"; an --overwrite is running, or was stopped before its new run's first checkpoint, and the run it replaces "
        f"is in {aside}: the next 'vaekit train --out {run_dir}' (with --resume to continue it) puts it back"
    )


def check_clearable(run_dir: Path) -> None:
    """What ``clear_run`` refuses, asked on its own: ``--overwrite`` asks it before reading the
    data and empties the directory only once the new run has passed every check."""
    entries = run_entries(run_dir)
    if entries:
        if CONFIG_FILE not in entries:
            raise CheckpointError(f"{run_dir} does not look like a vaekit run (no {CONFIG_FILE}; it holds {shown(entries)}); not deleting it")
        try:
            RunConfig.load(run_dir / CONFIG_FILE)
        except ConfigError as e:
            raise CheckpointError(f"{run_dir} does not look like a vaekit run ({e}); not deleting it") from None
        inner = _runs_inside(run_dir)
        if inner:
            raise CheckpointError(
                f"{run_dir} holds another run, {inner[0]}; replacing {run_dir} would delete it (and a process may be "
                "writing it): move it out first"
            )


def _runs_inside(run_dir: Path) -> list[Path]:
    """Run directories below RUN_DIR (a config.json or a lock file of their own), links not
    followed: what emptying RUN_DIR would delete with it."""
    from .lock import LOCK_FILE

    found = []
    for top, dirs, files in os.walk(run_dir):
        if Path(top) == run_dir:
            dirs[:] = [d for d in dirs if d != REPLACED_DIR]  # the old run an overwrite set aside: its own
        elif CONFIG_FILE in files or LOCK_FILE in files:
            found.append(Path(top))
            dirs.clear()
    return sorted(found)


def _read_header(data: bytes) -> dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise ValueError("bad header length")
    return json_loads(data[8 : 8 + n]).get("__metadata__") or {}


# ---- model weights -------------------------------------------------------------------------


def save_model(
    run_dir: Path, model: torch.nn.Module, config: RunConfig, path: Path | None = None, history: list[dict[str, Any]] | None = None
) -> None:
    """config.json and the weights, written together (and metrics.jsonl from ``history``, the
    per-epoch records, where given): a failure writing any leaves all as they were (a new
    config beside old weights would no longer load)."""
    run_dir = Path(run_dir)
    weights = tensor_bytes(model.state_dict(), {"model_config": model_record(config)})
    files = {run_dir / CONFIG_FILE: config.to_bytes(), Path(path or run_dir / MODEL_FILE): weights}
    if history is not None:
        files[run_dir / METRICS_FILE] = metrics_bytes(history)
    atomic_write_together(files)


def model_record(config: RunConfig) -> dict[str, Any]:
    """config.json's model section as written, kept in the metadata of the weights saved with
    it: the checksums cover the weights, and this covers what they are read with (a changed
    input scale or likelihood would make another model of the same weights)."""
    return json.loads(config.to_bytes())["model"]


def read_meta(path: Path) -> dict[str, Any]:
    """The metadata of a vaekit safetensors file from its header alone, unverified (the
    checksum needs the tensors: ``load_tensors``); {} for a file without it."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n < 100_000_000:
                return {}
            meta = json_loads(f.read(n)).get("__metadata__", {}).get("meta", "{}")
        meta = json_loads(meta) if isinstance(meta, str) else {}
        # Valid JSON but no object ("null", a list): damage that load_tensors' checksum names.
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}


def fixed_record(config: RunConfig) -> dict[str, dict[str, Any]]:
    """config.json's train and data fields that a resume may not change (``Option.resumable``
    false), kept in the metadata of last.safetensors: an edit of config.json between two
    sessions (another batch size, dtype or seed) would otherwise continue the run as another
    one. The data source is left to the checkpoint's data fingerprint, which sees through its
    spelling."""
    from .config import section_options

    d = json.loads(config.to_bytes())
    # Every option of the section, the components' too (the objective's β, K, free bits).
    return {
        section: {k: d[section][k] for k, opt in section_options(section).items() if not opt.resumable and k != "source" and k in d[section]}
        for section in ("train", "data")
    }


def check_model_record(config_path: Path, weights_path: Path, meta: dict[str, Any]) -> None:
    """Refuse (CheckpointError) a config.json whose model section differs from the one the
    weights were saved with (``model_record``), or whose fixed train and data fields differ
    from those a training checkpoint was saved with (``fixed_record``): edited or damaged
    after they were written. Weights saved without a record pass; fields only one side has
    (another config version) are not compared, except a field that a later version added with
    the default older runs behaved by (``DEFAULTED_FIELDS``): taken out of the file, it reads
    as that default, and is compared as such."""
    saved = {"model": meta.get("model_config")}
    fixed = meta.get("fixed_config")
    if isinstance(fixed, dict):
        saved.update(fixed)
    saved = {section: fields for section, fields in saved.items() if isinstance(fields, dict)}
    if not saved:
        return
    try:
        raw = json_loads(Path(config_path).read_bytes())
        current = {section: raw[section] for section in saved}
    except (OSError, ValueError, KeyError, TypeError):
        return  # RunConfig.load says what is wrong with the file itself
    try:  # the migration's value of each such field the file lacks
        migrated = _migrate(raw)
    except (ConfigError, AttributeError, TypeError):
        migrated = {}
    for section, name, _ in DEFAULTED_FIELDS.values():
        fields, filled = current.get(section), migrated.get(section)
        if isinstance(fields, dict) and name not in fields and isinstance(filled, dict) and name in filled:
            current[section] = {**fields, name: filled[name]}
    from .config import canonical_model

    if isinstance(saved.get("model"), dict) and isinstance(current.get("model"), dict):
        saved["model"], current["model"] = canonical_model(saved["model"]), canonical_model(current["model"])
    for section, fields in saved.items():
        for key, value in fields.items():
            if isinstance(current[section], dict) and key in current[section] and current[section][key] != value:
                raise CheckpointError(
                    f"{config_path}: {section}.{key} is {_short(current[section][key])}, but {Path(weights_path).name} "
                    f"was saved with {_short(value)} (the file was edited or damaged); put the saved value back"
                )


def _short(value: Any, most: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= most else text[: most - 1] + "…"


def load_state_into(model: torch.nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    """Copy ``state`` into ``model``, refusing missing, unexpected or misshapen tensors."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{where}: weights do not fit the model in config.json ({what})")
    for k, v in sorted(state.items()):
        if v.shape != own[k].shape:
            raise CheckpointError(
                f"{where}: tensor {k} has shape {tuple(v.shape)}, config.json implies {tuple(own[k].shape)}"
            )
        if v.dtype != own[k].dtype:
            # load_state_dict would cast in silence: a config.json whose train.dtype was edited.
            raise CheckpointError(
                f"{where}: tensor {k} is {str(v.dtype).removeprefix('torch.')}, config.json implies "
                f"{str(own[k].dtype).removeprefix('torch.')} (train.dtype edited or damaged)"
            )
    model.load_state_dict(state)


def run_path(run_dir: str | Path) -> Path:
    """RUN_DIR as a Path; ConfigError for what is no path (None, bytes, a number)."""
    if not isinstance(run_dir, (str, os.PathLike)):
        raise ConfigError(f"a run directory is a path (str or os.PathLike), got {type(run_dir).__name__}")
    return Path(run_dir)


def load_run(run_dir: str | Path, which: str = MODEL_FILE):
    """(RunConfig, VAEModel) rebuilt from RUN_DIR's config.json and weights, on the CPU."""
    from .hardware import check_model_fits
    from .model import build_model

    run_dir = run_path(run_dir)
    if not run_dir.is_dir():
        why = "a file, not a directory" if run_dir.exists() else "no such directory"
        raise CheckpointError(f"{run_dir}: not a run directory ({why})")
    if not (run_dir / CONFIG_FILE).is_file():
        if os.path.lexists(run_dir / CONFIG_FILE):
            raise CheckpointError(f"{run_dir / CONFIG_FILE}: not a file (a folder, a broken link or a device); a run keeps its settings in a file there")
        raise CheckpointError(f"{run_dir}: not a run directory (no {CONFIG_FILE}){replaced_hint(run_dir)}")
    if not (run_dir / which).is_file():
        if replaced_hint(run_dir):
            raise CheckpointError(f"{run_dir}: no {which}{replaced_hint(run_dir)}")
        if os.path.lexists(run_dir / which):
            raise CheckpointError(f"{run_dir / which}: not a file (a folder, a broken link or a device); a run keeps its weights in a file there")
        if which == MODEL_FILE and (run_dir / LAST_FILE).is_file():
            raise CheckpointError(
                f"{run_dir}: no {which} (the run stopped between its checkpoint and its best model): "
                f"'vaekit train --out {run_dir} --resume' writes it again"
            )
        if which == MODEL_FILE and not os.path.lexists(run_dir / LAST_FILE):
            raise CheckpointError(
                f"{run_dir}: no {which} and no {LAST_FILE} (the run stopped before its first epoch ended, or they were "
                f"removed); train it again ('vaekit train --out {run_dir} --overwrite' with its options, or VAE.fit then save)"
            )
    try:
        config = RunConfig.load(run_dir / CONFIG_FILE)
    except ConfigError as e:  # a damaged run directory, not a usage error
        raise CheckpointError(str(e)) from None
    try:  # a config.json edited to widths no machine holds is refused before the allocation
        check_model_fits(config.model, config.train.dtype, copies=1)
    except ConfigError as e:
        raise CheckpointError(f"{run_dir / CONFIG_FILE}: {e}") from None
    tensors, meta = load_tensors(run_dir / which)
    check_model_record(run_dir / CONFIG_FILE, run_dir / which, meta)
    # Its random start is overwritten at once: drawn on a fork of torch's stream, so that
    # loading a model leaves the caller's draws as they were.
    with torch.random.fork_rng(devices=[]):
        model = build_model(config.model, config.train).to(getattr(torch, config.train.dtype))
    load_state_into(model, {k.removeprefix("model."): v for k, v in tensors.items() if not k.startswith(("optim.", "rng.", "average."))}, run_dir / which)
    model.eval()
    return config, model


# ---- training state for --resume -----------------------------------------------------------


def training_state(model, optimizers, meta: dict[str, Any], average=None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten model, optimizer(s), RNG state and the weights' average (``optim.WeightAverage``,
    if the run keeps one) into safetensors-compatible tensors + JSON."""
    optimizers = optimizers if isinstance(optimizers, (list, tuple)) else [optimizers]
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if average is not None:
        tensors.update({f"average.{k}": v for k, v in average.state().items()})
        meta = dict(meta, average_updates=average.updates)
    groups, scalars = [], {}
    for j, optimizer in enumerate(optimizers):
        opt = optimizer.state_dict()
        groups.append(opt["param_groups"])
        for pid, st in opt["state"].items():
            for key, val in st.items():
                if torch.is_tensor(val):
                    tensors[f"optim.{j}.{pid}.{key}"] = val
                else:
                    scalars[f"{j}.{pid}.{key}"] = val
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = dict(meta, param_groups=groups, optim_scalars=scalars)
    return tensors, meta


def restore_training_state(path: Path, model, optimizers, average=None) -> dict[str, Any]:
    """Load ``training_state``'s tensors back into model, optimizer(s), RNG and ``average``;
    the metadata. CheckpointError where they do not fit."""
    optimizers = optimizers if isinstance(optimizers, (list, tuple)) else [optimizers]
    tensors, meta = load_tensors(path)
    load_state_into(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    if average is not None:
        p = next(model.parameters())
        try:
            average.load({k[8:]: v.to(p.device) for k, v in tensors.items() if k.startswith("average.")}, meta.get("average_updates"))
        except ValueError as e:
            raise CheckpointError(f"{path}: the weights' average does not fit the model ({e}); was the run trained without --ema?") from None
    states: list[dict[int, dict[str, Any]]] = [{} for _ in optimizers]
    try:
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, j, pid, key = k.split(".", 3)
                states[int(j)].setdefault(int(pid), {})[key] = v
        for k, v in meta.get("optim_scalars", {}).items():
            j, pid, key = k.split(".", 2)
            states[int(j)].setdefault(int(pid), {})[key] = v
        groups = meta["param_groups"]
        if len(groups) != len(optimizers):
            raise ValueError(f"{len(groups)} optimizers saved, {len(optimizers)} expected")
        for optimizer, state, group in zip(optimizers, states, groups):
            optimizer.load_state_dict({"state": state, "param_groups": group})
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(f"{path}: optimizer state does not fit the model ({e})") from None
    if "rng.cpu" in tensors:
        torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return meta
