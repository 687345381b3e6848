"""mkdocs hook: fill ``docs/cli.md`` with a reference generated from the ``certa`` command itself.

The page holds the marker ``<!-- certa-cli-reference -->``; at build time it is replaced by one
section per command (its docstring, usage and a table of its arguments and options with their
help and defaults), read in-process from the typer app ``certa.cli:app``. Nothing is written to
the source tree, and the page cannot drift from ``certa COMMAND --help``.
"""

from __future__ import annotations

from typing import Any

MARKER = "<!-- certa-cli-reference -->"


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_reference())


def cli_reference(name: str = "certa") -> str:
    """The whole reference as Markdown: global options, then every command in the app's order.

    A command group (``certa train``) gets its own section listing its subcommands, then one section
    per subcommand (``certa train grace``, with the options generated from the method's config).
    """
    import typer.main

    from certa.cli import app

    group = typer.main.get_command(app)
    root = group.make_context(name, [], resilient_parsing=True)
    lines = ["## Global options", "", f"`{name} [OPTIONS] COMMAND [ARGS]...`", "", *_table(group.params), ""]
    lines += _command_list(group, name)
    for cmd_name, command in group.commands.items():
        lines += _section(command, f"{name} {cmd_name}", root)
    return "\n".join(lines) + "\n"


def _command_list(group: Any, prefix: str) -> list[str]:
    rows = ["| command | what it does |", "|---|---|"]
    for cmd in group.commands:
        anchor = f"{prefix} {cmd}".replace(" ", "-")
        rows.append(f"| [`{cmd}`](#{anchor}) | {_cell(group.commands[cmd].get_short_help_str(limit=200))} |")
    return rows


def _section(command: Any, path: str, parent: Any) -> list[str]:
    """``## certa CMD``: help, usage, options; for a group, its subcommands and then a section for each."""
    ctx = command.make_context(path.rsplit(" ", 1)[-1], [], parent=parent, resilient_parsing=True)
    usage = command.get_usage(ctx).removeprefix("Usage: ")
    lines = ["", f"## {path}", "", (command.help or "").strip(), "", f"`{usage}`", ""]
    lines += _table(command.params)
    subcommands = getattr(command, "commands", None)
    if subcommands:
        lines += ["", *_command_list(command, path)]
        for sub_name, sub in subcommands.items():
            lines += _section(sub, f"{path} {sub_name}", ctx)
    return lines


def _table(params: list[Any]) -> list[str]:
    if not any(getattr(p, "opts", None) and p.name != "help" for p in params):
        return []
    rows = ["| argument / option | meaning | default |", "|---|---|---|"]
    for param in params:
        if not getattr(param, "opts", None) or param.name == "help":
            continue
        is_argument = type(param).__name__.endswith("Argument")
        names = [param.name.upper()] if is_argument else list(param.opts) + list(param.secondary_opts or [])
        flag = ", ".join(f"`{n}`" for n in names)
        rows.append(f"| {flag} | {_cell(param.help or '')} | {_default(param)} |")
    return rows


def _default(param: Any) -> str:
    if param.required:
        return "required"
    default = param.default
    if default is None or (getattr(param, "is_flag", False) and default is False and not param.secondary_opts):
        return ""
    if isinstance(default, bool) and param.secondary_opts:
        return f"`{param.opts[0] if default else param.secondary_opts[0]}`"
    return f"`{default}`"


def _cell(text: str) -> str:
    # Escaped, so a help text naming a token such as <CNF> is shown rather than read as an HTML tag.
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
