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
    if default:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    cli_run()
