"""``certa export``: a trained artifact as a standard model directory that other engines (vLLM, SGLang) load."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..methods.grace.export import FORMATS, export_grace
from .app import app, console


@app.command()
def export(
    artifact: Annotated[Path, typer.Argument(help="a trained GrACE artifact directory")],
    out: Annotated[Path, typer.Argument(help="the directory to write (a standard Hugging Face model)")],
    fmt: Annotated[str, typer.Option("--format", help=f"one of: {', '.join(FORMATS)}")] = "merged",
    overwrite: Annotated[bool, typer.Option(help="replace OUT if it exists")] = False,
) -> None:
    """Export a GrACE artifact for vLLM, SGLang or plain transformers: the <CNF> row in the weights, the LoRA
    merged where the read-out mode allows (else a plain LoRA beside it), and certa.json saying how to read it."""
    path = export_grace(artifact, out, fmt=fmt, overwrite=overwrite)
    console.print(f"exported {artifact} → {path} (how to read the confidence: {path / 'certa.json'})")
