"""The docs site: the generated CLI reference covers the whole CLI, and ``mkdocs build --strict`` passes."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from certa.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _hook():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "docs" / "hooks" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_documents_every_command_and_option():
    text = _hook().cli_reference()
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert f"\n## certa {name}\n" in text
        for param in command.params:
            shown = param.name.upper() if type(param).__name__.endswith("Argument") else param.opts[0]
            assert f"`{shown}`" in text, f"certa {name}: {shown} is not in the CLI reference"
    assert "`--version`" in text
    assert "| `--in`, `-i` | graded records JSONL (or answers + --dataset) | required |" in text


def test_the_marker_is_replaced_only_on_the_page_that_has_it():
    hook = _hook()
    assert hook.on_page_markdown("# other page", page=None) == "# other page"
    assert "## certa score" in hook.on_page_markdown(f"# CLI\n\n{hook.MARKER}\n", page=None)


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli_page = (tmp_path / "site" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "certa score" in cli_page and "--method" in cli_page
    api_page = (tmp_path / "site" / "api" / "records" / "index.html").read_text(encoding="utf-8")
    assert "read_jsonl" in api_page  # docstrings rendered by mkdocstrings
