"""What the wheel must carry: package data declared in pyproject, py.typed, and ``certa --version``.

The full check (build, install the wheel into a fresh venv, run it) is ``.ci/check_wheel.sh``;
these fast tests catch a data file added to ``src/certa`` but not to ``package-data``.
"""

from __future__ import annotations

import importlib.metadata
from fnmatch import fnmatch
from pathlib import Path

import pytest
from cli_run import run_cli  # tests/cli_run.py

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "certa"


def test_every_data_file_in_the_package_is_declared_as_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["certa"]
    data_files = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*")
                  if p.is_file() and p.suffix not in {".py", ".pyc"} and "__pycache__" not in p.parts]
    assert "py.typed" in data_files
    assert any(f.startswith("data/bundled/LICENSES/") for f in data_files)
    undeclared = [f for f in data_files if not any(fnmatch(f, pattern) for pattern in patterns)]
    assert undeclared == [], f"add these to [tool.setuptools.package-data] in pyproject.toml: {undeclared}"


def test_version_option_prints_the_installed_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0
    assert out.strip() == f"certa {importlib.metadata.version('certa')}"
