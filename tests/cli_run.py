"""Running the certa CLI in-process from a test: exit code, stdout and stderr."""

from __future__ import annotations

import sys

from certa import cli


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """``certa ARGS...`` as the console script runs it; (exit code, stdout, stderr)."""
    old = sys.argv
    sys.argv = ["certa", *args]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err
