"""Context windows from real configs, and the prompt-length check made before any compute."""

import pytest
from transformers import AutoConfig, GPT2Config, LlamaConfig, MistralConfig

from certa.errors import InputError
from certa.limits import check_prompt_lengths, context_window, model_prompt_limit, prompt_token_limit


def test_context_window_of_the_tiny_model(tiny_model_dir, tiny_lm):
    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert context_window(config) == 512                          # tests/tiny.py: max_position_embeddings=512
    assert context_window(tiny_lm.model.config, tiny_lm.tokenizer) == 512
    assert model_prompt_limit(tiny_lm, max_new_tokens=12) == 500
    assert model_prompt_limit(tiny_lm, max_new_tokens=12, cap=100) == 100


def test_context_window_across_architectures():
    assert context_window(GPT2Config(n_positions=1024)) == 1024
    # a sliding window narrows attention, it does not bound the length
    assert context_window(MistralConfig(max_position_embeddings=32768, sliding_window=4096)) == 32768
    # Qwen2.5's YaRN recipe keeps max_position_embeddings at the original and stretches it by `factor`
    yarn = LlamaConfig(max_position_embeddings=32768,
                       rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768})
    assert context_window(yarn) == 131072
    # Llama 3.1 already states the stretched length
    llama3 = LlamaConfig(max_position_embeddings=131072, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0})
    assert context_window(llama3) == 131072


class _Bare:
    """A config that names no length (the tokenizer's model_max_length is then used, if set)."""


class _Tok:
    def __init__(self, n):
        self.model_max_length = n


def test_context_window_falls_back_to_a_sane_tokenizer_limit():
    assert context_window(_Bare(), _Tok(2048)) == 2048
    assert context_window(_Bare(), _Tok(int(1e30))) is None     # transformers' "unset" placeholder
    assert context_window(_Bare()) is None
    config = _Bare()
    config.n_positions, config.max_sequence_length = 4096, 2048  # several keys: the smallest bounds it
    assert context_window(config, _Tok(100)) == 2048             # the config wins over the tokenizer


def test_prompt_token_limit():
    assert prompt_token_limit(512, 12) == 500
    assert prompt_token_limit(512, 12, cap=64) == 64
    assert prompt_token_limit(None, 12, cap=64) == 64
    assert prompt_token_limit(None, 12) is None
    with pytest.raises(InputError, match="max_new_tokens is 600 but the model's context window is 512"):
        prompt_token_limit(512, 600)


def test_check_passes_and_truncates_only_when_asked():
    assert check_prompt_lengths([3, 10, 7], 10) == [0, 0, 0]
    assert check_prompt_lengths([3, 25, 12], None) == [0, 0, 0]
    assert check_prompt_lengths([3, 25, 12], 10, truncate=True) == [0, 15, 2]
    with pytest.raises(InputError) as err:
        check_prompt_lengths([3, 25, 12], 10, what="question", names=["a", "b", "c"])
    message = str(err.value)
    assert message == ("question 'b' is 25 tokens; the limit is 10 (2 of 3 questions too long); "
                       "shorten it or pass --truncate to keep the end of each prompt")
    assert "\n" not in message


def test_a_huge_question_is_measured_and_refused_with_its_length(tiny_lm):
    """The issue's 360 KB question: measured with the tokenizer (no model call), refused with length and limit."""
    from certa.prompts import question_prompt
    from certa.records import Example

    example = Example(id="huge", question="What is 2 + 2? " * 24_000, answers=["4"])  # ~360 KB
    prompt = tiny_lm.chat_prompt(question_prompt(example))
    ids = tiny_lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    limit = model_prompt_limit(tiny_lm, max_new_tokens=16)
    assert limit == 496 and len(ids) > 100_000
    with pytest.raises(InputError, match=rf"prompt 'huge' is {len(ids)} tokens; the limit is 496 \(too long\)"):
        check_prompt_lengths([len(ids)], limit, names=["huge"])
    # with truncate the kept end is exactly the limit and still ends with the answer cue
    (drop,) = check_prompt_lengths([len(ids)], limit, names=["huge"], truncate=True)
    kept = ids[drop:]
    assert len(kept) == 496 and tiny_lm.tokenizer.decode(kept).endswith("<|im_start|>assistant\n")
