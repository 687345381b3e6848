"""The ``certa`` Typer app, its consoles and the options several commands share."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..errors import InputError
from ..versions import certa_version

app = typer.Typer(
    name="certa",
    help="Calibrated confidence for every answer a language model gives.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# A pipe reports 80 columns, which wraps every metric cell; logs and CI get a wider page.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True)
state = {"debug": False}

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="'default', a built-in artifact such as 'default-grace' "
                                      "(see `certa models`), an HF id or path, a .gguf file, or a certa artifact.")]
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="bundled name (see `certa datasets`), a JSONL path, or hf:owner/name.")]
SplitOpt = Annotated[str, typer.Option("--split", help="train, calibration, test or all (deterministic by id hash).")]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="use at most this many questions (a stable subset).")]


def _show_version(value: bool) -> None:
    if value:
        console.print(f"certa {certa_version()}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks and debug logs")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show progress logs")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                          help="print certa's version and exit")] = False,
    allow_pickle: Annotated[bool, typer.Option(
        "--allow-pickle", help="also load model weights stored as a Python pickle (pytorch_model.bin), which "
                               "can run code when read; default: safetensors only")] = False,
    trust_remote_code: Annotated[bool, typer.Option(
        "--trust-remote-code", help="run the Python code a model repository ships (auto_map); default: never")] = False,
) -> None:
    state["debug"] = debug
    # Every command (and the study, the server) loads models through certa.models, which reads these.
    if allow_pickle:
        os.environ["CERTA_ALLOW_PICKLE"] = "1"
    if trust_remote_code:
        os.environ["CERTA_TRUST_REMOTE_CODE"] = "1"
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def check_output(path: Path, *, directory: bool, option: str = "--out") -> Path:
    """Refuse an output path that cannot be written, before any work starts.

    Without it a command could query models for minutes and only then fail on
    ``OUT`` (a file where a directory belongs, a read-only folder). ``directory``:
    ``path`` is a folder the command fills, else a file it writes.
    """
    if path.exists():
        if directory and not path.is_dir():
            raise InputError(f"{option} {path}: exists and is not a directory")
        if not directory and path.is_dir():
            raise InputError(f"{option} {path}: is a directory; name a file to write")
    folder = path if directory and path.is_dir() else path.parent
    while not folder.exists():  # the nearest folder that exists is the one the command must create in
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"{option} {path}: {folder} is a file, not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: {folder} is not writable")
    return path


def print_rows(title: str, rows: dict, columns: tuple[str, ...]) -> None:
    """A small table of named rows (strategies, a self-correction result)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("")
    for col in columns:
        table.add_column(col, justify="right")
    for name, values in rows.items():
        table.add_row(name, *(f"{values[c]:.3f}" if isinstance(values[c], float) else str(values[c]) for c in columns))
    console.print(table)
