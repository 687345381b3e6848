"""Loading is safe: safetensors only, no model-shipped code, no output outside the directory the user named."""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

import pytest
import torch

from certa.errors import InputError, ModelLoadError
from certa.models import load_model, load_policy

EVIL_CODE = '''
import pathlib
pathlib.Path({marker!r}).write_text("the model's own code ran")
from transformers import LlamaConfig, LlamaForCausalLM


class EvilConfig(LlamaConfig):
    model_type = "certa_evil"


class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig
'''


@pytest.fixture
def no_opt_ins(monkeypatch):
    # setenv first, so monkeypatch restores the variables' absence after the test (the CLI sets them).
    for name in ("CERTA_ALLOW_PICKLE", "CERTA_TRUST_REMOTE_CODE"):
        monkeypatch.setenv(name, "0")


@pytest.fixture
def pickle_dir(tiny_model_dir, tmp_path):
    """The tiny model with its weights as pytorch_model.bin (a pickle) and no safetensors."""
    out = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, out)
    from safetensors.torch import load_file

    state = load_file(str(out / "model.safetensors"))
    (out / "model.safetensors").unlink()
    torch.save(state, out / "pytorch_model.bin")
    return out


def test_pickle_weights_are_refused_in_one_line_unless_allowed(pickle_dir, no_opt_ins, monkeypatch):
    with pytest.raises(ModelLoadError, match=r"weights only as a pickle \(pytorch_model\.bin\).*--allow-pickle") as info:
        load_model(str(pickle_dir), device="cpu")
    assert "\n" not in str(info.value)
    lm = load_model(str(pickle_dir), device="cpu", allow_pickle=True)
    assert lm.model.config.vocab_size > 0
    monkeypatch.setenv("CERTA_ALLOW_PICKLE", "1")   # what `certa --allow-pickle` sets
    assert load_model(str(pickle_dir), device="cpu").name == str(pickle_dir)


def test_the_cli_refuses_pickle_weights_and_accepts_the_explicit_flag(pickle_dir, no_opt_ins, tmp_path, capsys):
    from certa.cli import main

    def run(*args: str) -> int:
        old = sys.argv
        sys.argv = ["certa", *args]
        try:
            main()
            return 0
        except SystemExit as exc:
            return int(exc.code or 0)
        finally:
            sys.argv = old

    command = ["generate", "-m", str(pickle_dir), "-d", "arithmetic", "--limit", "2", "--max-new-tokens", "2",
               "--no-hidden-states"]
    assert run(*command, "-o", str(tmp_path / "refused.jsonl")) == 2
    err = capsys.readouterr().err
    assert "pickle" in err and "--allow-pickle" in err and "Traceback" not in err
    assert not (tmp_path / "refused.jsonl").exists()
    assert run("--allow-pickle", *command, "-o", str(tmp_path / "allowed.jsonl")) == 0
    assert len((tmp_path / "allowed.jsonl").read_text().splitlines()) == 2


def _with_custom_code(tiny_model_dir: Path, out: Path, model_type: str) -> Path:
    """A model directory whose config names custom code (auto_map) that writes a marker file when imported."""
    shutil.copytree(tiny_model_dir, out)
    marker = out / "CODE_RAN"
    (out / "evil.py").write_text(EVIL_CODE.format(marker=str(marker)), encoding="utf-8")
    config = json.loads((out / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (out / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return marker


def test_a_model_that_needs_its_own_code_is_refused_and_the_code_never_runs(tiny_model_dir, tmp_path, no_opt_ins):
    marker = _with_custom_code(tiny_model_dir, tmp_path / "custom", "certa_evil")
    with pytest.raises(ModelLoadError, match="trust_remote_code=True / --trust-remote-code") as info:
        load_model(str(tmp_path / "custom"), device="cpu")
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_custom_code_is_ignored_when_transformers_has_the_architecture(tiny_model_dir, tmp_path, no_opt_ins):
    marker = _with_custom_code(tiny_model_dir, tmp_path / "custom", "llama")
    lm = load_model(str(tmp_path / "custom"), device="cpu")
    assert type(lm.model).__name__ == "LlamaForCausalLM"   # transformers' own class, not evil.EvilModel
    assert not marker.exists()


def test_the_load_policy_is_off_unless_asked_for(monkeypatch, no_opt_ins):
    assert load_policy() == load_policy(False, False)
    assert not load_policy().allow_pickle and not load_policy().trust_remote_code
    monkeypatch.setenv("CERTA_TRUST_REMOTE_CODE", "1")
    assert load_policy().trust_remote_code and not load_policy().allow_pickle
    assert not load_policy(trust_remote_code=False).trust_remote_code   # an explicit argument wins


def test_artifact_adapters_load_from_safetensors_only(tmp_path):
    from certa.models.artifact import _check_weights

    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelLoadError, match="safetensors only"):
        _check_weights(tmp_path)


# ---------------------------------------------------------------- outputs stay inside the output directory


def _config(datasets):
    from certa.study.config import RunConfig

    return RunConfig.from_dict({"model": "default", "out": "runs/x", "datasets": datasets,
                                "methods": ["sequence_likelihood"]})


@pytest.mark.parametrize("label", ["../escaped", "/tmp/escaped", "..", "a/b", "a\\b", ".hidden", ""])
def test_a_dataset_label_that_would_leave_the_output_directory_is_refused(label):
    with pytest.raises(InputError, match=r"datasets\.0\.label"):
        _config([{"name": "arithmetic", "label": label}])


@pytest.mark.parametrize("name", ["../../escaped.jsonl", "/etc/escaped.jsonl", "x/../../../escaped.jsonl",
                                  "hf:../..", "..", "/"])
def test_a_dataset_named_by_a_path_gets_a_key_that_stays_inside_the_output_directory(name):
    (ds,) = _config([{"name": name}]).datasets
    out = Path("/study/out")
    target = (out / ds.key / "test.records.jsonl").resolve()
    assert target.is_relative_to(out) and target.parent.parent == out, (name, ds.key)


def test_trained_method_names_come_from_the_registry_so_artifact_paths_stay_inside():
    """A study trains into ``out/artifacts/<method>``: ``run_study`` checks every name first."""
    from certa.errors import CertaError
    from certa.study.stages import check_methods
    from certa.study.training import trained_methods

    for method in ("../grace", "/tmp/grace", "grace/../../x", "grace+../x"):
        with pytest.raises(CertaError):
            check_methods([method])
    assert trained_methods(["grace+platt", "conftuner", "sequence_likelihood"]) == ["grace", "conftuner"]


# ---------------------------------------------------------------- corrupt weight files


@pytest.mark.parametrize("cut", ["half", "garbage"])
def test_a_truncated_or_garbage_safetensors_file_is_one_line_naming_it(tiny_model_dir, tmp_path, cut):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2] if cut == "half" else b"not a safetensors file at all")
    with pytest.raises(ModelLoadError, match="truncated or corrupt") as error:
        load_model(str(broken), device="cpu")
    assert str(weights) in str(error.value) and "\n" not in str(error.value)


def test_a_corrupt_shard_is_named(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(sharded, max_shard_size="20KB")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(sharded)
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[1].write_bytes(shards[1].read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="truncated or corrupt") as error:
        load_model(str(sharded), device="cpu")
    assert str(shards[1]) in str(error.value)


@pytest.mark.parametrize("content", [
    b"GGUFjunk",                                                                 # cut inside the fixed header
    struct.pack("<4sIQQ", b"GGUF", 3, 0, 5) + struct.pack("<Q", 40) + b"general.arch",  # inside the first key
])
def test_a_gguf_file_cut_inside_its_header_is_one_line_naming_it(tmp_path, monkeypatch, content):
    monkeypatch.setenv("CERTA_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "cut.gguf"
    gguf.write_bytes(content)
    with pytest.raises(ModelLoadError, match="cannot read GGUF file") as error:
        load_model(str(gguf), device="cpu")
    assert str(gguf) in str(error.value) and "\n" not in str(error.value)
    assert not [p for p in (tmp_path / "cache" / "models").iterdir() if p.is_dir()]  # no half conversion left
