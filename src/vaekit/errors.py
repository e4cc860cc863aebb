"""Errors a user can cause. The library raises these and never prints or exits;
``vaekit.cli`` turns them into one stderr line and an exit code. Anything else is a bug."""


class VaekitError(Exception):
    """Base class of every error caused by input, options or files (not by a bug)."""

    exit_code = 1


class ConfigError(VaekitError, ValueError):
    """An option or configuration value is invalid."""

    exit_code = 2


class DataError(VaekitError, ValueError):
    """Data is missing, unreadable, or does not fit the model (shape, NaN, support)."""


class NotNumbersError(DataError, TypeError):
    """Entries of a type that is no number (text, dates, a dict): a TypeError too, as numpy's
    own for such entries (scikit-learn's checks expect one)."""


class CheckpointError(VaekitError):
    """A run directory or checkpoint is missing, truncated, tampered with, or not one."""


class TrainingError(VaekitError):
    """Training cannot go on (e.g. the loss became NaN)."""


class RunLockedError(VaekitError):
    """Another process is writing the run directory (``vaekit.lock``)."""


class VaekitWarning(UserWarning):
    """Something works but not as the user likely expects (e.g. an option that slows training
    down on this hardware). ``vaekit.cli`` prints it as one stderr line."""


def out_of_memory(e: BaseException) -> bool:
    """Python's MemoryError, torch's CPU allocator failing, or CUDA out of memory (a
    RuntimeError subclass)."""
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(e)


def first_line(e: BaseException, width: int = 200) -> str:
    """The first line of an exception's message (at most ``width`` characters), or its type's
    name where it has none: torch's and the C++ runtime's messages run over many lines."""
    text = str(e).strip()
    return text.splitlines()[0][:width] if text else type(e).__name__


def count(n: int, noun: str) -> str:
    """"1 row", "2 rows": a number of things in a message."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
