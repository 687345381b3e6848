"""What certa knows by name: ``methods`` and ``datasets``."""

from __future__ import annotations

from rich.table import Table

from ..data import dataset_names, describe_dataset
from ..methods.base import method_class, method_names
from .app import app, console


@app.command()
def methods() -> None:
    """List every confidence method with what it is and what it costs."""
    table = Table(title="confidence methods")
    for col in ("name", "what", "cost", "needs"):
        table.add_column(col)
    for name in method_names():
        cls = method_class(name)
        table.add_row(name, cls.describe(), cls.cost, ", ".join(cls.needs.labels()) or "-")
    console.print(table)
    console.print("Any method can be wrapped in a post-hoc calibrator: e.g. 'sequence_likelihood+platt'.")


@app.command()
def datasets() -> None:
    """List the bundled datasets."""
    for name in dataset_names():
        console.print(f"[bold]{name}[/]: {describe_dataset(name)}")
