"""Built-in artifacts: ``load_model("default-grace")`` loads a slim artifact shipped as package data.

The real artifacts are built by ``make artifacts``; here a tiny GrACE artifact (tiny model of
tests/tiny.py) is bundled into a temporary directory laid out like ``certa/artifacts`` and loaded
by name, and the package's own directory is held to the size budget.
"""

from __future__ import annotations

import json
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from certa.errors import InputError, ModelLoadError, UnknownNameError
from certa.models import bundled
from certa.models.bundling import bundle_artifact, main, study_metrics
from certa.models.card import read_card_metadata
from certa.records import Example, Record

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["What is the capital of France?", "What is 3 + 4?", "who wrote Hamlet?", "Answer: 42",
             "abc xyz?", "Is it True or False?", "Paris 0123", "system user"]
STUDY = {  # the parts of a study's metrics.json that bundling reads
    "n": 40, "methods": {"grace": {"ece": {"value": 0.08, "ci": [0.05, 0.12]}, "brier": {"value": 0.2, "ci": [0.17, 0.23]}},
                         "conftuner": {"ece": {"value": 0.3, "ci": [0.2, 0.4]}}},
    "extra": {"datasets": {"capitals-phrased": {"train": 30, "test": 20}, "arithmetic-easy": {"train": 30, "test": 20}},
              "by_dataset": {"capitals-phrased": {"n": 20, "methods": {"grace": {"ece": {"value": 0.1, "ci": [0.05, 0.2]}}}},
                             "arithmetic-easy": {"n": 20, "methods": {"grace": {"ece": {"value": 0.07, "ci": [0.03, 0.15]}}}}}},
}


@pytest.fixture(scope="module")
def grace_artifact(tiny_model_dir, tmp_path_factory):
    """A GrACE artifact trained (briefly) on the tiny model's own answers."""
    from certa.generation import generate
    from certa.methods.grace import GraceConfig, train_grace
    from certa.models import load_model

    lm = load_model(str(tiny_model_dir), device="cpu")
    examples = [Example(id=f"q{i}", question=q, answers=["x"]) for i, q in enumerate(QUESTIONS)]
    gens = generate(lm, examples, max_new_tokens=4, hidden_states=True, progress=False)
    records = [Record.from_generation(g, e, float(i % 2 == 0)) for i, (g, e) in enumerate(zip(gens, examples, strict=True))]
    out = train_grace(lm, records, GraceConfig(epochs=1, batch_size=4, save_every=100, seed=0),
                      tmp_path_factory.mktemp("grace") / "grace", in_place=True, progress=False)
    return out, records


@pytest.fixture
def package_root(tmp_path, monkeypatch):
    """A temporary stand-in for the package's ``certa/artifacts`` directory."""
    root = tmp_path / "certa" / "artifacts"
    monkeypatch.setattr(bundled, "ROOT", root)
    return root


def test_a_bundled_artifact_loads_by_name_and_scores_like_the_original(grace_artifact, package_root):
    import certa
    from certa.methods import get_method

    src, records = grace_artifact
    path = bundle_artifact(src, "default-grace", study=STUDY)
    assert path == package_root / "default-grace"
    # Slim: no checkpoints, logs or tokenizer files; the added token is listed in certa.json instead.
    assert sorted(p.name for p in path.iterdir()) == sorted(bundled.REQUIRED)
    info = json.loads((path / "certa.json").read_text(encoding="utf-8"))
    (token_id, token), = info["added_tokens"]
    assert token == "<CNF>"
    assert info["data"]["datasets"] == ["arithmetic-easy", "capitals-phrased"]

    assert "default-grace" in certa.models.builtin_model_names()
    assert "default-conftuner" not in certa.models.builtin_model_names()   # not built: not listed
    by_name = certa.load_model("default-grace", device="cpu")
    original = certa.load_model(str(src), device="cpu")
    assert by_name.method == "grace"
    assert by_name.tokenizer.convert_tokens_to_ids("<CNF>") == token_id
    assert len(by_name.tokenizer) == len(original.tokenizer)
    ours = get_method("grace", model=by_name).score(records)
    theirs = get_method("grace", model=original).score(records)
    # The LoRA matrices ship in float16 (half the size); the <CNF> row keeps float32.
    shipped = load_file(str(path / "adapter_model.safetensors"))
    trained = load_file(str(src / "adapter_model.safetensors"))
    assert shipped.keys() == trained.keys()
    for name, tensor in shipped.items():
        want = torch.float16 if "lora_" in name else trained[name].dtype
        assert tensor.dtype == want, name
        torch.testing.assert_close(tensor.float(), trained[name].float(), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_the_bundled_card_carries_the_studys_held_out_metrics(grace_artifact, package_root):
    path = bundle_artifact(grace_artifact[0], "default-grace", study=STUDY)
    meta = read_card_metadata(path)
    assert meta["model_name"] == "default-grace"
    assert meta["training_data"]["datasets"] == ["arithmetic-easy", "capitals-phrased"]
    assert [(e["dataset"], e["n"], e["metrics"]["ece"]["value"]) for e in meta["evaluation"]] == [
        ("pooled", 40, 0.08), ("capitals-phrased", 20, 0.1), ("arithmetic-easy", 20, 0.07)]
    names = [r["dataset"]["name"] for r in meta["model-index"][0]["results"]]
    assert names[-3:] == ["pooled", "capitals-phrased", "arithmetic-easy"]


def test_bundling_a_study_copies_each_trained_method_and_checks_the_budget(grace_artifact, tmp_path, capsys):
    study = tmp_path / "study"
    (study / "artifacts").mkdir(parents=True)
    (study / "metrics.json").write_text(json.dumps(STUDY), encoding="utf-8")
    import shutil
    shutil.copytree(grace_artifact[0], study / "artifacts" / "grace")
    root = tmp_path / "root"
    assert main([str(study), "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "skip default-conftuner" in out and "default-grace:" in out and "of 10 MB" in out
    assert sorted(p.name for p in root.iterdir()) == ["default-grace"]

    # With a tuning search, the tables used its winner, and so does bundling (not artifacts/<method>).
    winner = study / "tuning" / "grace" / "0123abcd"
    shutil.copytree(grace_artifact[0], winner)
    info = json.loads((winner / "certa.json").read_text(encoding="utf-8"))
    (winner / "certa.json").write_text(json.dumps({**info, "tuning": {"chosen": {"lr": 1}}}), encoding="utf-8")
    tuned = {**STUDY, "extra": {**STUDY["extra"], "tuning": {"grace": {"artifact": "elsewhere/tuning/grace/0123abcd"}}}}
    (study / "metrics.json").write_text(json.dumps(tuned), encoding="utf-8")
    assert main([str(study), "--root", str(root)]) == 0
    assert json.loads((root / "default-grace" / "certa.json").read_text(encoding="utf-8"))["tuning"] == {
        "chosen": {"lr": 1}}


def test_a_missing_bundled_artifact_says_how_it_is_built(package_root):
    import certa

    with pytest.raises(ModelLoadError, match=r"built-in artifact 'default-conftuner' is not in this install .*"
                                             r"`make artifacts`") as info:
        certa.load_model("default-conftuner")
    assert "\n" not in str(info.value)
    with pytest.raises(UnknownNameError):
        bundled.bundled_artifact_dir("default-gracee")


@pytest.mark.parametrize("name", ["../escaped", "/tmp/abs", "a/b", "..", "Default-Grace", ""])
def test_an_artifact_name_cannot_place_files_outside_the_artifacts_directory(grace_artifact, tmp_path, name):
    root = tmp_path / "root"
    with pytest.raises(InputError, match="artifact name"):
        bundle_artifact(grace_artifact[0], name, root=root)
    assert not (tmp_path / "escaped").exists()
    assert not root.exists() or list(root.iterdir()) == []


def test_study_metrics_pick_the_method_pooled_then_per_dataset():
    assert [(d, n) for d, _, n, _ in study_metrics(STUDY, "grace")] == [
        ("pooled", 40), ("capitals-phrased", 20), ("arithmetic-easy", 20)]
    assert [d for d, *_ in study_metrics(STUDY, "conftuner")] == ["pooled"]
    assert study_metrics(STUDY, "apricot") == []


def test_the_shipped_artifacts_fit_the_size_budget_and_are_declared_package_data():
    """What is in src/certa/artifacts now (nothing until `make artifacts` has run): ≤ 10 MB, complete, declared."""
    tomllib = pytest.importorskip("tomllib")
    package = ROOT / "src" / "certa"
    root = package / "artifacts"
    files = [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else []
    assert sum(p.stat().st_size for p in files) <= bundled.SIZE_BUDGET_BYTES
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]["certa"]
    for file in [*bundled.REQUIRED, *bundled.TOKENIZER_FILES]:   # every file bundling may write is declared
        assert any(fnmatch(f"artifacts/default-grace/{file}", p) for p in patterns), file
    for directory in (p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        assert directory.name in bundled.BUNDLED_ARTIFACTS, f"{directory.name} is not a registered built-in artifact"
        assert all((directory / f).is_file() for f in bundled.REQUIRED), directory
        assert read_card_metadata(directory)["library_name"] == "certa"


def test_certa_models_lists_base_models_and_which_built_in_artifacts_this_install_has(grace_artifact, package_root):
    from typer.testing import CliRunner

    from certa.cli import app

    bundle_artifact(grace_artifact[0], "default-grace")
    result = CliRunner().invoke(app, ["models"], terminal_width=200)
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") >= 3}
    assert "smollm2-135m (default)" in lines and "gemma3-270m" in lines
    assert "yes (" in lines["default-grace"] and "MB)" in lines["default-grace"]
    assert "make artifacts" in lines["default-conftuner"]
