"""The docs site: the generated CLI reference covers the whole CLI, and ``mkdocs build --strict`` passes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from certa.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _hook(name: str = "cli_reference"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _commands(group, prefix="certa"):
    """(``certa train grace``, command) for every command, subcommands of groups included."""
    for name, command in group.commands.items():
        yield f"{prefix} {name}", command
        if hasattr(command, "commands"):
            yield from _commands(command, f"{prefix} {name}")


def test_cli_reference_documents_every_command_and_option():
    text = _hook().cli_reference()
    found = list(_commands(typer.main.get_command(app)))
    assert {"certa train grace", "certa train conftuner", "certa serve", "certa run"} <= {path for path, _ in found}
    for path, command in found:
        section = text.split(f"\n## {path}\n", 1)[1].split("\n## ", 1)[0]   # this command's own section
        for param in command.params:
            shown = param.name.upper() if type(param).__name__.endswith("Argument") else param.opts[0]
            assert f"`{shown}`" in section, f"{path}: {shown} is not in its section of the CLI reference"
    grace = text.split("\n## certa train grace\n", 1)[1]
    assert "| `--token-lr` |" in grace and "| `--calibration-loss` |" in grace   # generated from GraceConfig
    assert "`--version`" in text and "`--allow-pickle`" in text and "`--trust-remote-code`" in text
    assert "| `--in`, `-i` | graded records JSONL (or answers + --dataset) | required |" in text


def test_the_marker_is_replaced_only_on_the_page_that_has_it():
    hook = _hook()
    assert hook.on_page_markdown("# other page", page=None) == "# other page"
    assert "## certa score" in hook.on_page_markdown(f"# CLI\n\n{hook.MARKER}\n", page=None)


def test_every_method_has_a_page_in_the_same_shape_and_in_the_navigation():
    from certa.methods.base import method_names

    hook = _hook("method_pages")
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for name in method_names():
        page = ROOT / "docs" / "methods" / f"{name}.md"
        assert page.is_file(), f"docs/methods/{name}.md is missing"
        text = page.read_text(encoding="utf-8")
        assert [line[3:] for line in text.splitlines() if line.startswith("## ")] == list(hook.SECTIONS), name
        assert f"<!-- certa-method-cost {name} -->" in text and f"<!-- certa-method-knobs {name} -->" in text
        assert f"<!-- certa-method-results {name} -->" in text, f"{name}: no marker for its measured numbers"
        assert f": methods/{name}.md\n" in nav, f"{name} is not in mkdocs.yml's nav"
    rendered = hook.on_page_markdown("<!-- certa-method-knobs grace -->\n<!-- certa-method-cost p_true -->", page=None)
    assert "| `token_lr` (`--token-lr`) |" in rendered and "&lt;CNF&gt;" in rendered   # no raw <CNF> tag
    assert 'certa.get_method("p_true", model=lm)' in rendered


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli_page = (tmp_path / "site" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "certa score" in cli_page and "--method" in cli_page
    assert "certa train grace" in cli_page and "--token-lr" in cli_page
    api = {name: (tmp_path / "site" / "api" / name / "index.html").read_text(encoding="utf-8")
           for name in ("records", "models", "methods", "evaluation", "study", "uses")}
    assert "read_jsonl" in api["records"]  # docstrings rendered by mkdocstrings
    assert "add_evaluation_to_card" in api["models"] and "load_model" in api["models"]
    assert "get_method" in api["methods"] and "EvaluationResult" in api["evaluation"]
    assert "RunConfig" in api["study"] and "self_correct" in api["uses"]
    grace = (tmp_path / "site" / "methods" / "grace" / "index.html").read_text(encoding="utf-8")
    assert "certa-method-" not in grace and "token_lr" in grace   # the markers were filled


def test_method_pages_show_the_studys_numbers_for_that_method(tmp_path):
    hook = _hook("method_pages")
    block = {"n": 10, "accuracy": {"value": 0.4, "ci": [0.1, 0.7]},
             "methods": {"grace": {"ece": {"value": 0.05, "ci": [0.01, 0.1]}, "brier": {"value": 0.2, "ci": None},
                                   "auroc": {"value": 0.81, "ci": [0.7, 0.9]}}}}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({**block, "n": 20, "extra": {"by_dataset": {"capitals": block}}}))
    table = hook.results("grace", path)
    assert "| pooled | 20 | 0.400 [0.100, 0.700] | 0.050 [0.010, 0.100] | 0.200 | 0.810 [0.700, 0.900] |" in table
    assert "| capitals | 10 |" in table
    assert "was not among the methods" in hook.results("p_true", path)
    assert "No study results" in hook.results("grace", tmp_path / "absent.json")
    page = hook.on_page_markdown("x\n<!-- certa-method-results grace -->\n", page=None)
    assert "<!--" not in page
