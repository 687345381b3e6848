"""The ``certa`` command line: a thin layer over the Python API, one module per group of commands.

Every subcommand reads and writes files, so stages chain and resume. Errors a
user can fix print one line and exit with code 2; ``--debug`` shows the
traceback.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.markup import escape

from ..errors import CertaError
from . import catalog, export, monitor, serve, stages, study, uses  # noqa: F401  (each module registers its commands)
from .app import app, err_console, state

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point: one-line errors (exit 2) unless --debug."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(standalone_mode=False)
    except CertaError as exc:
        if state["debug"]:
            raise
        # escape: messages name extras such as 'certa[vllm]', which rich would take for markup and drop.
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted; finished work is saved and a re-run resumes it")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors carry their own exit code and message
        if isinstance(exc, _click_exception_types()):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, OSError) and not state["debug"]:
            err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(2)
        raise


def _click_exception_types() -> tuple[type[Exception], ...]:
    # Recent typer vendors click as ``typer._click``, whose exceptions are not ``click``'s own.
    import click

    vendored = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    return (click.ClickException, vendored)
