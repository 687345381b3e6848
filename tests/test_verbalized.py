"""Verbalized confidence: level tokens, the read-out prompt, the method, and the text parser."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import AddedToken
from transformers import AutoTokenizer

from certa.errors import CertaError, InputError
from certa.methods import get_method
from certa.methods.prompting.verbalized import (
    ConfidenceTokens,
    confidence_instruction,
    confidence_tokens,
    expected_confidence,
    format_confidence,
    parse_confidence,
    verbal_prompt,
    verbal_suffix,
)
from certa.prompts import question_prompt
from certa.records import Record


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture
def tiny_tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _records() -> list[Record]:
    return [
        Record(id="q1", prompt="", response="4", question="What is 2 + 2?", answers=["4"], answer_type="numeric"),
        Record(id="q2", prompt="", response="Paris, the capital.", question="What is the capital of France?",
               answers=["Paris"]),
        Record(id="q3", prompt="", response="B", question="Which is a fruit?", answers=["B"],
               answer_type="choice", choices=["car", "apple"]),
    ]


# --- confidence tokens -----------------------------------------------------------------------


def test_tiny_tokenizer_gets_bare_digit_levels(tiny_tokenizer):
    tokens = confidence_tokens(tiny_tokenizer)
    assert tokens.labels == [str(i) for i in range(10)]
    assert tokens.scale == 9 and tokens.lead == " "
    assert tokens.token_ids == [_ids(tiny_tokenizer, str(i))[0] for i in range(10)]
    np.testing.assert_allclose(tokens.scores, np.arange(10) / 9)


def test_single_token_numbers_up_to_100_give_t100(tiny_tokenizer):
    # Stand-in for a tokenizer that keeps "0".."100" whole: add "10".."100" as tokens.
    tiny_tokenizer.add_tokens([str(i) for i in range(10, 101)])
    tokens = confidence_tokens(tiny_tokenizer)
    assert tokens.scale == 100 and len(tokens.token_ids) == 101
    assert tiny_tokenizer.convert_ids_to_tokens(tokens.token_ids[100]) == "100"
    np.testing.assert_allclose(tokens.scores, np.arange(101) / 100)


def test_digits_that_carry_the_space_end_the_prompt_at_the_colon(tiny_tokenizer):
    # Stand-in for GPT-2-style tokenizers, where " 7" is one token.
    tiny_tokenizer.add_tokens([AddedToken(f" {i}", normalized=False) for i in range(10)])
    tokens = confidence_tokens(tiny_tokenizer)
    assert tokens.lead == "" and tokens.cue == "\nConfidence:"
    assert tiny_tokenizer.convert_ids_to_tokens(tokens.token_ids[7]) == " 7"


class _SplitDigits:
    """A tokenizer in which every digit takes two tokens: no single-token levels exist."""

    name_or_path = "split-digits"

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [i for ch in text for i in ((ord(ch), 0) if ch.isdigit() else (ord(ch),))]}


def test_tokenizer_without_single_token_levels_is_an_error():
    with pytest.raises(CertaError, match="split-digits"):
        confidence_tokens(_SplitDigits())


# --- prompt and read-out ---------------------------------------------------------------------


def test_verbal_prompt_is_the_answer_then_a_follow_up_turn_ending_before_the_level(tiny_lm):
    record = _records()[1]
    tokens = confidence_tokens(tiny_lm.tokenizer)
    text = verbal_prompt(tiny_lm, record, tokens)
    answered = tiny_lm.chat_prompt(question_prompt(record.example())) + "Paris, the capital.<|im_end|>"
    follow_up = f"\n<|im_start|>user\n{confidence_instruction(tokens)}<|im_end|>\n<|im_start|>assistant\nConfidence: "
    assert text == answered + follow_up
    for label, token_id in zip(tokens.labels, tokens.token_ids, strict=True):
        assert _ids(tiny_lm.tokenizer, text + label) == _ids(tiny_lm.tokenizer, text) + [token_id]


def test_an_answer_cut_at_the_length_limit_gets_its_turn_closed_first(tiny_lm):
    tokens = confidence_tokens(tiny_lm.tokenizer)
    suffix = verbal_suffix(tiny_lm, tokens)
    assert suffix.after_cut == "<|im_end|>" + suffix.after_end
    cut = Record(id="c", prompt="", response="Par", question="Capital of France?", answers=["Paris"],
                 token_ids=_ids(tiny_lm.tokenizer, "Par"))  # no end-of-turn token: cut off
    text = verbal_prompt(tiny_lm, cut, tokens)
    assert "Par<|im_end|>\n<|im_start|>user\n" in text and text.endswith("Confidence: ")


def test_expected_confidence_is_the_mean_level():
    tokens = ConfidenceTokens(token_ids=[10, 11, 12], scores=np.array([0.0, 0.5, 1.0]), labels=["0", "1", "2"])
    probs = np.array([[0, 0, 1.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0]])
    np.testing.assert_allclose(expected_confidence(probs, tokens), [1.0, 0.5, 0.25])
    with pytest.raises(InputError, match="shape"):
        expected_confidence(np.ones((2, 4)) / 4, tokens)


def test_suffix_readout_equals_a_full_forward_over_the_same_text(tiny_lm):
    records = _records()
    scores = get_method("verbalized", model=tiny_lm, batch_size=2)(records)
    tokens = confidence_tokens(tiny_lm.tokenizer)
    expected = []
    for record in records:
        ids = _ids(tiny_lm.tokenizer, verbal_prompt(tiny_lm, record, tokens))
        with torch.no_grad():
            logits = tiny_lm.model(torch.tensor([ids])).logits[0, -1]
        probs = torch.softmax(logits[tokens.token_ids].double(), -1).numpy()
        expected.append(float(probs @ tokens.scores))
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    assert np.ptp(expected) > 1e-6  # the comparison would be empty if all three were identical


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "scale", "expected"),
    [
        ("Confidence: 80%", None, 0.8),
        ("Paris\nConfidence: 80%", None, 0.8),
        ("80 %", None, 0.8),
        ("I am 95% sure it is Paris.", None, 0.95),
        ("0.8", None, 0.8),
        (".25", None, 0.25),
        ("Confidence: 0.35", None, 0.35),
        ("confidence 7", 9, 7 / 9),
        ("Confidence: 7", 10, 0.7),
        ("Confidence: 80", None, 0.8),
        ("My confidence is about 60%.", None, 0.6),
        ("Confidence level: 8/10", None, 0.8),
        ("confidence = 100%", None, 1.0),
        ("Confidence: 0", 9, 0.0),
        ("Confidence: N. Let me think. Confidence: 9", 9, 1.0),  # the last mention counts
        ("Confidence: high", None, 0.75),
        ("Confidence: very low", None, 0.1),
        ("Medium", None, 0.5),
        ("Confidence: X", None, None),
        ("Confidence: X%", None, None),
        ("Confidence: [number]", 9, None),
        ("Confidence: 150%", None, None),
        ("Confidence: 12", 9, None),
        ("The answer is 42", None, None),
        ("Paris", None, None),
        ("", None, None),
        ("1, where the answer", 9, None),
    ],
)
def test_parse_confidence(text, scale, expected):
    result = parse_confidence(text, scale=scale)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


@given(st.floats(min_value=0.0, max_value=1.0))
def test_format_then_parse_round_trips_percent(confidence):
    text = format_confidence(confidence)
    assert text.startswith("Confidence: ") and text.endswith("%")
    assert abs(parse_confidence(text) - confidence) <= 0.005 + 1e-12


@given(st.floats(min_value=0.0, max_value=1.0), st.sampled_from([9, 10]))
def test_format_then_parse_round_trips_coarse_levels(confidence, scale):
    text = format_confidence(confidence, scale=scale)
    assert abs(parse_confidence(text, scale=scale) - confidence) <= 0.5 / scale + 1e-12


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan])
def test_format_rejects_values_outside_unit_interval(bad):
    with pytest.raises(InputError, match="confidence must be in"):
        format_confidence(bad)


@pytest.mark.slow
def test_default_model_reads_bare_digits_after_a_space_token():
    import certa

    lm = certa.load_model("default")
    tokens = confidence_tokens(lm.tokenizer)
    assert tokens.scale == 9 and tokens.lead == " "  # SmolLM2: "Confidence: 7" is Conf|idence|:|Ġ|7
    assert lm.tokenizer.convert_ids_to_tokens(tokens.token_ids) == [str(i) for i in range(10)]
    scores = get_method("verbalized", model=lm)(_records())
    assert scores.shape == (3,) and np.all((scores > 0) & (scores < 1))
