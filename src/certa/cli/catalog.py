"""What certa knows by name: ``methods``, ``datasets`` and ``models``."""

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


@app.command()
def models() -> None:
    """List the models certa knows by name: built-in base models and built-in trained artifacts."""
    import importlib.util

    from ..models import BUILTIN_MODELS, BUNDLED_ARTIFACTS
    from ..models.bundled import bundled_artifact_dir, is_present
    from ..models.sources import ALIASES

    table = Table(title="models by name (certa.load_model(NAME), -m NAME)")
    for col in ("name", "what", "in this install"):
        table.add_column(col)
    aliases = {target: alias for alias, target in ALIASES.items()}
    for name, entry in BUILTIN_MODELS.items():
        shown = f"{name} ({aliases[name]})" if name in aliases else name
        installed = importlib.util.find_spec(entry.package) is not None
        table.add_row(shown, f"base model {entry.hub_id or entry.filename}", "yes" if installed else entry.install)
    for name, artifact in BUNDLED_ARTIFACTS.items():
        if is_present(name):
            size = sum(p.stat().st_size for p in bundled_artifact_dir(name).iterdir() if p.is_file())
            status = f"yes ({size / 1e6:.1f} MB)"
        else:
            status = "no: built by `make artifacts`"
        table.add_row(name, f"{artifact.description} (trained {artifact.method} on {artifact.base})", status)
    console.print(table)
