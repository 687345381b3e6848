"""Command-line options built from a pydantic config class (TRL style): each default and help stated once.

``options_signature(Config)`` gives a Typer command one ``--field`` option per
config field, with the field's description as help and its default shown;
an option left out keeps the config's (or a YAML file's) value, so the CLI
only ever *overrides*.
"""

from __future__ import annotations

import inspect
import typing
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel
from rich.markup import escape


def field_options(config_class: type[BaseModel]) -> list[inspect.Parameter]:
    """One keyword-only Typer parameter per field of ``config_class``, defaulting to ``None`` (not given)."""
    params = []
    for name, field in config_class.model_fields.items():
        kind, extra = _cli_type(field.annotation)
        default = field.get_default(call_default_factory=True)
        shown = ",".join(default) if isinstance(default, list) else default
        # escaped: Typer renders help as Rich markup, which would swallow "[default: ...]" as a tag
        help_text = escape(f"{field.description or name} [default: {shown}]")
        option = typer.Option(f"--{name.replace('_', '-')}", help=help_text, show_default=False, **extra)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[kind | None, option]))
    return params


def given_values(config_class: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """The options a user gave (not ``None``), lists split at commas, ready for validation."""
    out = {}
    for name, value in values.items():
        if value is None or name not in config_class.model_fields:
            continue
        annotation = config_class.model_fields[name].annotation
        if typing.get_origin(annotation) is list and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        out[name] = value
    return out


def _cli_type(annotation: Any) -> tuple[type, dict[str, Any]]:
    """The type Typer parses for a field (a ``Literal`` becomes a choice), plus option extras."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return annotation, {}
    if origin is list:
        return str, {"metavar": "A,B,..."}
    if len(args) == 1 and origin is not None:  # X | None
        return _cli_type(args[0])
    if args and origin is not None:  # a union such as float | Literal["cv"]: the field's validator decides
        return str, {}
    return annotation if annotation in (int, float, str, bool) else str, {}
