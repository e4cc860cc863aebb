"""Running the CLI in-process from tests."""

from __future__ import annotations

from vaekit.cli import main


def cli(capsys, *argv) -> tuple[int, str, str]:
    """``vaekit ARGV`` in-process: (exit code, stdout, stderr). An exception other than
    SystemExit (argparse) propagates, so a traceback where an error line is due fails the test."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
