"""The ``vaekit`` command's entry point (``python -m vaekit`` too).

The command's modules take a few tenths of a second to import; a Ctrl-C in that window would
end it with a traceback of whatever was being imported, and a SIGTERM with no word at all. Here
both end it as they do later (``cli.main``): one line, exit 130 or 143. Nothing has been read
or written yet."""

from __future__ import annotations

import contextlib
import os
import signal
import sys


# The modules vaekit imports from its required dependencies, and the distribution that provides
# each (pyproject.toml's dependencies): a missing one is named with the command that installs it.
REQUIRED = {
    "torch": "torch",
    "numpy": "numpy",
    "safetensors": "safetensors",
    "sklearn": "scikit-learn",
    "matplotlib": "matplotlib",
    "PIL": "pillow",
    "tqdm": "tqdm",
}


def missing_requirement(module: str | None = None) -> str | None:
    """One line naming a required package that is not installed (``module``'s, or the first of
    ``REQUIRED`` that cannot be found), or None. A package installed but broken is found here;
    its import error is reported where it happens."""
    import importlib.util

    names = [module.partition(".")[0]] if module else list(REQUIRED)
    for name in names:
        if name not in REQUIRED:
            continue
        try:
            found = importlib.util.find_spec(name) is not None
        except ValueError:  # imported already, with no __spec__ (a stub): there
            found = True
        except ImportError:
            found = False
        if not found:
            return f"the package {REQUIRED[name]} (module {name}) is not installed; vaekit needs it: pip install {REQUIRED[name]}"
    return None


def _stop(status: int, what: str) -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):  # stderr closed: the status still tells
        sys.stderr.write(f"vaekit: {what} before it started; nothing was written\n")
        sys.stderr.flush()
    os._exit(status)


def run() -> None:
    # Only a handler nobody else set is replaced, and it is put back before ``cli.main`` looks
    # for it (main installs its own where it finds the default).
    default = signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    if default:
        signal.signal(signal.SIGTERM, lambda signum, frame: _stop(143, "terminated (SIGTERM)"))
    try:
        from .cli import run as cli_run
    except KeyboardInterrupt:
        _stop(130, "interrupted")
    except ModuleNotFoundError as e:  # an install without its dependencies (pip install --no-deps)
        why = missing_requirement(e.name) or f"cannot import {e.name} ({e})"
        sys.stderr.write(f"vaekit: error: {why}\n")
        sys.exit(1)
    if default:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    cli_run()
