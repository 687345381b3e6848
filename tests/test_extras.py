"""Every extra of pyproject.toml installs on its own, into a fresh venv, and what it promises imports and runs.

Each case builds a clean venv with ``uv`` (torch first: the CPU build of TORCH_SPEC), installs
certa's wheel with one extra (``certa[serve]``, ...) and runs a few lines that use it. Installing
needs the package index, so this runs only when asked: ``CERTA_TEST_EXTRAS=1`` (``make extras``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
TORCH_SPEC = os.environ.get("TORCH_SPEC_UV", "torch==2.13.0+cpu")
FIND_LINKS = os.environ.get("FIND_LINKS", "/opt/wheels")
installs = pytest.mark.skipif(os.environ.get("CERTA_TEST_EXTRAS") != "1",
                              reason="installs packages: run with CERTA_TEST_EXTRAS=1 (make extras)")

#: What each extra must make work: Python run in the venv it was installed into.
CHECKS = {
    "": """
        import certa, importlib.util
        from certa.cli import app
        assert importlib.util.find_spec("fastapi") is None   # the core install stays small
        from certa.errors import MissingDependencyError
        try:
            certa.evaluate([1.0, 0.0], {"m": [0.9, 0.2]}, n_bootstrap=0).to_pandas()
        except MissingDependencyError as exc:
            print("without pandas:", exc)
        else:
            raise AssertionError("to_pandas worked without pandas")
    """,
    "serve": """
        import fastapi, uvicorn
        from certa.serving.app import create_app
        from certa.serving.server import serve
    """,
    "hf": """
        import datasets
        from certa.data import load_dataset
        table = datasets.Dataset.from_dict({"id": ["a", "b"], "question": ["1+1?", "2+2?"], "answers": [["2"], ["4"]]})
        examples = load_dataset(table, split="all")
        assert [e.id for e in examples] == ["a", "b"], examples
    """,
    "pandas": """
        import pandas, certa
        frame = certa.evaluate([1.0, 0.0, 1.0], {"m": [0.9, 0.2, 0.7]}, n_bootstrap=0).to_pandas()
        assert "m" in frame.index and "ece" in frame.columns, frame
    """,
    "docs": """
        import mkdocs, mkdocstrings, material, mkdocstrings_handlers.python
        from mkdocs.commands.build import build
    """,
    "dev": """
        import pytest, hypothesis, openai, fastapi, uvicorn, datasets, shutil, sys
        from pathlib import Path
        assert (Path(sys.executable).parent / "ruff").exists()
    """,
    "vllm": """
        import vllm
        from certa.vllm_engine import require_vllm
        require_vllm()
    """,
}

#: Extras whose install pulls a CUDA build of torch (gigabytes): checked on a GPU box by
#: benchmarks/vllm_check.sh, never installed by this test.
GPU_ONLY = {"vllm"}


def _extras() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return sorted(project["optional-dependencies"])


def test_every_extra_has_a_check():
    assert set(_extras()) == set(CHECKS) - {""}


def _uv() -> list[str]:
    found = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    if not Path(found).exists():
        pytest.skip("uv is not installed (pip install uv)")
    return [found]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([*_uv(), "build", "--wheel", "--out-dir", str(out), str(ROOT)], check=True, capture_output=True)
    (found,) = out.glob("certa-*.whl")
    return found


@installs
@pytest.mark.parametrize("extra", ["", *sorted(CHECKS.keys() - {""} - GPU_ONLY)])
def test_the_extra_installs_alone_and_works(extra, wheel, tmp_path):
    uv = _uv()
    venv = tmp_path / "venv"
    links = ["--find-links", FIND_LINKS] if Path(FIND_LINKS).is_dir() else []
    subprocess.run([*uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    python = str(venv / "bin" / "python")
    target = f"certa[{extra}] @ {wheel.as_uri()}" if extra else f"certa @ {wheel.as_uri()}"
    install = subprocess.run([*uv, "pip", "install", "-q", "--python", python, *links, TORCH_SPEC, target],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    env = {**os.environ, "CERTA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    run = subprocess.run([python, "-c", textwrap.dedent(CHECKS[extra])], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"certa[{extra}]: {run.stderr[-3000:]}"
