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
    assert lm.artifact is None and lm.tokenizer.convert_ids_to_tokens(len(lm.tokenizer) - 1) == "<CNF>"
    with pytest.raises(InputError, match="exists and is not empty"):
        export_grace(artifact, out)
    # --overwrite onto the artifact itself (or around it) refuses before touching anything: it deleted the artifact
    for target in (artifact, artifact.parent, artifact / "inside"):
        with pytest.raises(InputError, match="would replace or sit inside the artifact"):
            export_grace(artifact, target, overwrite=True)
    assert is_artifact(artifact) and not (artifact / "inside").exists()


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
