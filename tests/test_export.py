"""`certa export --format merged`: a GrACE artifact as a standard HF model directory, read with plain
transformers (+ peft for the suffix-mode LoRA) exactly as its certa.json says, against certa's own read-out."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from certa.methods.grace import GraceConfig, offline_confidence, train_grace
from certa.methods.grace.export import READOUT_LORA, export_grace
from certa.models import is_artifact, load_model
from certa.models.tensors import cache_parameter
from certa.records import Example, Record

QUESTIONS = ["What is the capital of France?", "What is 3 + 4?", "who wrote Hamlet?", "Answer: 42",
             "abc xyz?", "Is it True or False?", "Paris 0123", "system user", "What is 7 + 1?",
             "Who wrote Confidence?", "ABC DEF", "What is the answer?"]
MAX_NEW = 8
TOL = 1e-4
#: Two optimiser steps: enough to move the LoRA and the <CNF> row away from their starting values.
BASE = dict(max_steps=2, batch_size=4, lr=5e-2, token_lr=5e-2, validation_fraction=0.0, folds=2, lora_dropout=0.0,
            seed=1)
MODES = {"suffix": {}, "full": {"mode": "full"}, "free": {"readout": "free"}}


def _examples():
    return [Example(id=f"q{i}", question=q, answers=["x"]) for i, q in enumerate(QUESTIONS)]


@pytest.fixture(scope="module")
def lively(tiny_model_dir, tmp_path_factory):
    """The tiny model with larger weights, so that answers vary in text and length."""
    lm = load_model(str(tiny_model_dir), device="cpu")
    with torch.no_grad():
        for param in lm.model.parameters():
            if param.dim() == 2:
                param.mul_(8)
    path = tmp_path_factory.mktemp("lively")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def records(lively):
    from certa.generation import generate

    gens = generate(load_model(str(lively), device="cpu"), _examples(), max_new_tokens=MAX_NEW, hidden_states=True,
                    progress=False)
    return [Record.from_generation(g, e, float(i % 3 == 0)) for i, (g, e) in enumerate(zip(gens, _examples(),
                                                                                          strict=True))]


@pytest.fixture(scope="module", params=sorted(MODES))
def exported(request, lively, records, tmp_path_factory):
    """(mode, artifact path, export path) for a GrACE artifact trained 2 steps in that read-out mode."""
    root = tmp_path_factory.mktemp(f"grace-{request.param}")
    artifact = train_grace(load_model(str(lively), device="cpu"), records,
                           GraceConfig(**BASE, **MODES[request.param]), root / "artifact", in_place=True,
                           progress=False)
    return request.param, artifact, export_grace(artifact, root / "merged")


def _plain(path):
    """The exported directory loaded with plain transformers: no certa code involved."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval(), \
        AutoTokenizer.from_pretrained(path)


def _ids(tokenizer, record):
    return tokenizer(record.prompt, add_special_tokens=False)["input_ids"], list(record.token_ids)


@torch.no_grad()
def plain_confidence(path, records) -> np.ndarray:
    """The confidence as certa.json describes it, computed with transformers (and peft for the LoRA)."""
    spec = json.loads((path / "certa.json").read_text())
    model, tokenizer = _plain(path)
    cnf = spec["token_id"]
    assert tokenizer.convert_ids_to_tokens(cnf) == spec["token"] == "<CNF>"
    adapter = spec["read"]["adapter"]
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(path / adapter["path"])).eval()
    values = []
    for record in records:
        prompt, answer = _ids(tokenizer, record)
        if adapter is not None:  # the base's cache of prompt + answer[:-1], then the last token with the LoRA
            with model.disable_adapter():
                cache = model(input_ids=torch.tensor([prompt + answer[:-1]]), use_cache=True).past_key_values
            logits = model(input_ids=torch.tensor([answer[-1:]]), **{cache_parameter(model): cache}).logits
        else:
            fed = prompt + answer if spec["read"]["input"] == "prompt+answer" else prompt + answer[:-1]
            logits = model(input_ids=torch.tensor([fed])).logits
        values.append(float(logits[0, -1].float().softmax(-1)[cnf]))
    return np.array(values)


def test_the_exported_model_reads_certas_confidence(exported, records):
    mode, artifact, out = exported
    lm = load_model(str(artifact), device="cpu")
    info = lm.artifact["method_info"]
    ours = offline_confidence(lm, records, readout=info["readout"], adapter_for_answer=info["answers_use_adapter"])
    theirs = plain_confidence(out, records)
    np.testing.assert_allclose(theirs, ours, atol=TOL, rtol=0)
    assert np.ptp(ours) > 1e-3  # the answers get different confidences: the comparison is not vacuous
    spec = json.loads((out / "certa.json").read_text())
    assert (spec["mode"], spec["readout"]) == (info["mode"], info["readout"])
    assert (out / READOUT_LORA).is_dir() == (mode == "suffix")
    assert spec["recalibration"] == lm.artifact.get("recalibration")


def test_the_exported_model_answers_as_certa_does(exported, records):
    """Greedy answers of the export with <CNF> suppressed: the base's (suffix, free) or the adapter's (full)."""
    from certa.generation import generate

    mode, artifact, out = exported
    certa_answers = generate(load_model(str(artifact), device="cpu"), _examples(), max_new_tokens=MAX_NEW,
                             hooks=(), progress=False)
    model, tokenizer = _plain(out)
    spec = json.loads((out / "certa.json").read_text())
    for record, expected in zip(records, certa_answers, strict=True):
        prompt, _ = _ids(tokenizer, record)
        output = model.generate(torch.tensor([prompt]), max_new_tokens=MAX_NEW, do_sample=False,
                                suppress_tokens=spec["suppress_token_ids"], pad_token_id=tokenizer.pad_token_id)
        produced = output[0, len(prompt):].tolist()
        assert produced[:len(expected.token_ids)] == expected.token_ids, record.id
    if mode != "full":
        assert [g.token_ids for g in certa_answers] == [r.token_ids for r in records]  # the base's answers


def test_an_export_loads_as_a_plain_model_and_refuses_to_overwrite(exported):
    from certa.errors import InputError

    mode, artifact, out = exported
    assert not is_artifact(out)
    lm = load_model(str(out), device="cpu")
    assert lm.method == "grace" and lm.tokenizer.convert_ids_to_tokens(len(lm.tokenizer) - 1) == "<CNF>"
    with pytest.raises(InputError, match="exists and is not empty"):
        export_grace(artifact, out)
    # --overwrite onto the artifact itself (or around it) refuses before touching anything: it deleted the artifact
    for target in (artifact, artifact.parent, artifact / "inside"):
        with pytest.raises(InputError, match="would replace or sit inside the artifact"):
            export_grace(artifact, target, overwrite=True)
    assert is_artifact(artifact) and not (artifact / "inside").exists()


def test_a_loaded_export_suppresses_cnf_and_reads_the_confidence_as_the_artifact_does(exported):
    """``load_model(OUT)`` of an export: <CNF> (its certa.json's suppress_token_ids) never in an answer, the answers
    the artifact's, and the GrACE confidence read while generating as the export's certa.json says."""
    from certa.generation import added_token_ids, generate

    mode, artifact, out = exported
    spec = json.loads((out / "certa.json").read_text())
    lm = load_model(str(out), device="cpu")
    assert spec["suppress_token_ids"] == [spec["token_id"]] and spec["token_id"] in added_token_ids(lm)
    ours = generate(lm, _examples(), max_new_tokens=MAX_NEW, progress=False)
    theirs = generate(load_model(str(artifact), device="cpu"), _examples(), max_new_tokens=MAX_NEW, progress=False)
    assert [g.token_ids for g in ours] == [g.token_ids for g in theirs]
    assert not any(spec["token_id"] in g.token_ids for g in ours)
    np.testing.assert_allclose([g.confidence["grace"] for g in ours], [g.confidence["grace"] for g in theirs],
                               atol=TOL, rtol=0)


def _copy(artifact, where, *, old_format=False):
    """A copy of ``artifact``; ``old_format``: its certa.json as artifacts written before base facts were recorded."""
    import shutil

    shutil.copytree(artifact, where, ignore=shutil.ignore_patterns("checkpoints"))
    if old_format:
        info = json.loads((where / "certa.json").read_text())
        for key in ("base_config", "base_fingerprint"):
            info.pop(key)
        (where / "certa.json").write_text(json.dumps(info))
    return where


@pytest.fixture(scope="module")
def wide_base(tmp_path_factory):
    """The tiny model's tokenizer and architecture with hidden size 64 instead of 32."""
    from tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("wide"), hidden_size=64)


@pytest.mark.parametrize("exported", ["suffix"], indirect=True)  # one artifact is enough
def test_an_artifact_on_a_base_of_another_shape_is_one_line_naming_its_base(exported, wide_base, tmp_path):
    """Recorded shape (new artifacts): refused before attaching. Older artifacts, without it: PEFT's 10-line size
    mismatch becomes one line saying the artifact was probably trained on another base."""
    from certa.errors import ModelLoadError
    from certa.models import attach_artifacts
    from certa.models.sources import load_base_model

    _, artifact, _ = exported
    info = json.loads((artifact / "certa.json").read_text())
    assert info["base_config"] == {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2}
    with pytest.raises(ModelLoadError, match=r"hidden_size 32\), but .* has hidden_size 64") as error:
        attach_artifacts(load_base_model(str(wide_base), device="cpu"), {"grace": artifact})
    assert "\n" not in str(error.value) and info["base_model"] in str(error.value)
    old = _copy(artifact, tmp_path / "old", old_format=True)
    with pytest.raises(ModelLoadError, match="probably trained on another base") as error:
        attach_artifacts(load_base_model(str(wide_base), device="cpu"), {"grace": old})
    assert "\n" not in str(error.value) and info["base_model"] in str(error.value)
    assert "size mismatch" in str(error.value)


@pytest.mark.parametrize("exported", ["suffix"], indirect=True)  # one artifact is enough
def test_an_artifact_on_other_weights_of_the_same_shape_warns(exported, tiny_model_dir, lively, tmp_path, caplog):
    from certa.models import attach_artifacts
    from certa.models.sources import load_base_model

    _, artifact, _ = exported
    with caplog.at_level("WARNING", logger="certa.models.artifact"):
        attach_artifacts(load_base_model(str(lively), device="cpu", dtype="bfloat16"), {"grace": artifact})
        assert not [r for r in caplog.records if "differ" in r.getMessage()]  # its own base, in bfloat16: fine
        attach_artifacts(load_base_model(str(tiny_model_dir), device="cpu"), {"grace": artifact})
    assert any("weights of base model" in r.getMessage() and "differ" in r.getMessage() for r in caplog.records)
    old = _copy(artifact, tmp_path / "old", old_format=True)  # older artifacts still load
    assert load_model(str(old), device="cpu").method == "grace"


@pytest.mark.parametrize("exported", ["suffix"], indirect=True)  # one artifact is enough
def test_a_corrupt_adapter_file_is_one_line_naming_it(exported, tmp_path):
    from certa.errors import ModelLoadError

    _, artifact, _ = exported
    for content in (b"xx", (artifact / "adapter_model.safetensors").read_bytes()[:200]):
        broken = _copy(artifact, tmp_path / f"broken-{len(content)}")
        (broken / "adapter_model.safetensors").write_bytes(content)
        with pytest.raises(ModelLoadError, match="truncated or corrupt") as error:
            load_model(str(broken), device="cpu")
        assert str(broken / "adapter_model.safetensors") in str(error.value) and "\n" not in str(error.value)


def test_vllm_style_lora_over_the_whole_sequence_is_an_approximation(exported, records):
    """What vLLM's multi-LoRA serving would read in suffix mode (the LoRA over prompt and answer): a probability,
    not certa's exact read-out; benchmarks/vllm_check.sh measures the gap on a real model."""
    mode, _, out = exported
    if mode != "suffix":
        pytest.skip("only suffix-mode exports carry a separate LoRA")
    from peft import PeftModel

    model, tokenizer = _plain(out)
    model = PeftModel.from_pretrained(model, str(out / READOUT_LORA)).eval()
    with torch.no_grad():
        approx = [float(model(input_ids=torch.tensor([sum(_ids(tokenizer, r), [])])).logits[0, -1].softmax(-1)[
            json.loads((out / "certa.json").read_text())["token_id"]]) for r in records]
    exact = plain_confidence(out, records)
    assert all(0 <= a <= 1 for a in approx)
    print(f"suffix mode, LoRA over the whole sequence vs exact: max |diff| = {np.max(np.abs(exact - approx)):.4f}")


@pytest.mark.skipif(__import__("importlib").util.find_spec("vllm") is not None, reason="vLLM is installed here")
@pytest.mark.parametrize("command", [["generate", "-o", "g.jsonl"], ["serve"]])
def test_engine_vllm_without_vllm_names_the_extra(command, tiny_model_dir, tmp_path, capsys, monkeypatch):
    import sys

    from certa import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["certa", *command, "-m", str(tiny_model_dir), "--engine", "vllm"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--engine vllm needs vLLM: pip install 'certa[vllm]'" in err
    assert "Traceback" not in err
