"""Graders, answer extraction, ``grade`` and the LLM judge (through httpx.MockTransport)."""

from __future__ import annotations

import json

import httpx
import pytest

from certa.data import LLMJudge, extract_answer, get_grader, grade, grader_names, register_grader, token_f1
from certa.data.answers import canonical_number
from certa.data.grading import gold_letter
from certa.errors import CertaError, InputError, UnknownNameError
from certa.http import Retry
from certa.records import Example, Generation


def numeric(answer: str) -> Example:
    return Example(id="n", question="What is 1 + 2?", answers=[answer], answer_type="numeric")


def short(answers: list[str], question: str = "Who painted the Mona Lisa?") -> Example:
    return Example(id="s", question=question, answers=answers, answer_type="short")


def choice(answers: list[str], choices: list[str]) -> Example:
    return Example(id="c", question="Pick one.", answers=answers, answer_type="choice", choices=choices)


MMLU = choice(["B", "4"], ["0", "4", "2", "6"])
YES_NO_NO = choice(["B", "No"], ["Yes", "No"])


@pytest.mark.parametrize(("text", "expected"), [
    ("3", "3"),
    ("1 + 2 = 3 in mathematics.", "3"),
    ("The answer is $18.", "18"),
    ("She makes $18 every day.", "18"),
    ("18.0", "18"),
    ("x = 7", "7"),
    ("The total is 1,000 dollars.", "1000"),
    ("23 - 45 = -22", "-22"),
    ("5-3=2", "2"),
    ("It is −4.", "-4"),
    ("0.50", "0.5"),
    ("The answer is 68 because we add 23 and 45.", "68"),
    ("Answer: 23 + 45 = 68", "68"),
    ("Answer: 7\n\nWhat is 5 + 5? 10", "7"),
    ("16 - 3 - 4 = 9 eggs, 9 * 2 = 18\n#### 18", "18"),
    ("So \\boxed{42} is it, not 41.", "42"),
    ("Counting 3, 4, 5", "5"),
    ("H2O has no numbers worth reading", None),
    ("I don't know.", None),
])
def test_extract_number(text, expected):
    assert extract_answer(text, "numeric") == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("1,000", "1000"), ("18.0", "18"), ("-0.50", "-0.5"), ("1e3", "1000"), ("abc", None), ("nan", None),
])
def test_canonical_number(text, expected):
    assert canonical_number(text) == expected


@pytest.mark.parametrize(("response", "gold", "correct"), [
    ("1 + 2 = 3 in mathematics.", "3", 1.0),
    ("The sum of 1 and 2 is 3.", "3", 1.0),
    ("3.0000001", "3", 1.0),            # within the float tolerance
    ("3.01", "3", 0.0),
    ("The result is 4.", "3", 0.0),
    ("$1,234.50", "1234.5", 1.0),
    ("no number here", "3", 0.0),
    ("1450001", "1450000", 0.0),        # whole numbers compare exactly (a relative tolerance accepted it)
    ("1000000", "1000001", 0.0),
    ("42\nConfidence: 80%", "42", 1.0),  # a stated confidence is not the answer
    ("42\n**Confidence:** 80 %", "80", 0.0),
])
def test_numeric_grader(response, gold, correct):
    assert get_grader("numeric")(response, numeric(gold)) == correct


@pytest.mark.parametrize(("text", "expected"), [
    ("B", "B"), ("(b)", "B"), ("B.", "B"),
    ("Answer: C", "C"), ("The correct answer is (D).", "D"), ("The answer is option A", "A"),
    ("B. 4", "B"), ("(C) 2", "C"), ("A) 0", "A"),
    ("I would pick (B) here.", "B"),
    ("The correct answer is B. A is wrong because it is zero.", "B"),
    ("(A) or (B), hard to say", None),         # two options named: ambiguous
    ("A cat sat on the mat", None),            # the article "A" is not a letter answer
    ("It has degree 4.", "B"),                 # option text, mentioned once
    ("Either 4 or 6.", None),                  # option texts of two options
    ("24", None),                              # "4" is not a whole word inside "24"
    # reviewed: a first line that is a letter decides, whatever the explanation after it names
    ("B\n4 is the degree, not (A) 0.", "B"), ("B\nConfidence: 90%", "B"),
    ("The answer is B or C", None), ("Answer: B, C", None), ("Answer: B or maybe C", None),  # hedges
    ("Answer: b", "B"), ("Answer: (b)", "B"), ("Answer: **B**", "B"), ("The answer is a number", None),
    ("B is correct", "B"), ("The correct option is B", "B"),
    ("2 + 2 = 4", "B"),                        # numeric options: a calculation's result, not its first number
])
def test_extract_choice_mmlu(text, expected):
    assert extract_answer(text, "choice", MMLU.choices) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("No, jellyfish have no arteries.", "B"),
    ("Yes. Nobody doubts it.", "A"),           # leading option wins over a later "no" word
    ("I think yes, but also no.", None),
    ("Probably not.", None),
])
def test_extract_choice_yes_no(text, expected):
    assert extract_answer(text, "choice", ["Yes", "No"]) == expected


def test_choice_mentions_keep_only_the_longest_option():
    options = ["Yes", "Yes, always", "No"]
    assert extract_answer("I'd say yes, always.", "choice", options) == "B"
    assert extract_answer("Clearly: yes, always", "choice", options) == "B"


@pytest.mark.parametrize(("response", "correct"), [
    ("B", 1.0), ("The answer is B.", 1.0), ("4", 1.0), ("A", 0.0), ("A or B", 0.0), ("", 0.0),
])
def test_choice_grader(response, correct):
    assert get_grader("choice")(response, MMLU) == correct


def test_gold_letter_from_text_when_no_letter_given():
    assert gold_letter(choice(["No"], ["Yes", "No"])) == "B"
    with pytest.raises(InputError, match="name none of its 2 choices"):
        gold_letter(choice(["Maybe"], ["Yes", "No"]))


@pytest.mark.parametrize(("text", "expected"), [
    ("Paris", "paris"),
    ("Paris.", "paris"),
    ("The capital of France is Paris.", "paris"),
    ("It is Paris.", "paris"),
    ("Paris is the capital of France.", "paris is capital of france"),
    ("The answer is: Leonardo da Vinci", "leonardo da vinci"),
    ("Washington, D.C. is the capital.", "washington dc is capital"),
    ("Kyiv. It used to be spelled Kiev.", "kyiv"),
    ("Bogotá\nMore text", "bogota"),
    ("   ", None),
])
def test_extract_short(text, expected):
    assert extract_answer(text, "short") == expected


@pytest.mark.parametrize(("response", "answers", "correct"), [
    ("Leonardo da Vinci painted it.", ["Leonardo da Vinci", "Leonardo"], 1.0),
    ("It was painted by LEONARDO.", ["Leonardo da Vinci", "Leonardo"], 1.0),
    ("Michelangelo", ["Leonardo da Vinci", "Leonardo"], 0.0),
    ("Leonardos everywhere", ["Leonardo"], 0.0),            # whole words only
    ("The capital is Kiev.", ["Kyiv", "Kiev"], 1.0),
    ("Bogota", ["Bogotá"], 1.0),                             # accents folded
    ("N'Djamena", ["Ndjamena"], 1.0),                        # apostrophes joined
    ("Denmark's capital is Copenhagen.", ["Denmark"], 1.0),   # possessive dropped
    ("The U.S.A.", ["USA"], 1.0),                             # dotted initials are one word
    ("The N.B. Hockey League", ["N.B.A."], 0.0),              # was "n b" and the article "a"
    ("Washington DC", ["Washington, D.C."], 1.0),
    ("Washington D. C.", ["Washington, D.C."], 1.0),
    ("By J. R. R. Tolkien.", ["J.R.R. Tolkien"], 1.0),
])
def test_short_grader_containment(response, answers, correct):
    assert get_grader("short")(response, short(answers)) == correct


def test_short_grader_ignores_aliases_the_question_contains():
    ex = short(["Agatha Christie", "Christie", "Mary Westmacott"],
               question="Which author also wrote as Mary Westmacott?")
    grader = get_grader("short")
    assert grader("Mary Westmacott was a pen name.", ex) == 0.0
    assert grader("Agatha Christie", ex) == 1.0


def test_short_grader_falls_back_to_exact_match_when_every_alias_is_in_the_question():
    ex = short(["Earth"], question="Which is bigger, the Moon or Earth?")
    grader = get_grader("short")
    assert grader("Earth", ex) == 1.0
    assert grader("The Moon is bigger than Earth.", ex) == 0.0


def test_exact_match_grader():
    ex = short(["Leonardo da Vinci"])
    grader = get_grader("exact_match")
    assert grader("The painter is Leonardo da Vinci.", ex) == 1.0
    assert grader("Leonardo da Vinci, probably, or Raphael", ex) == 0.0


def test_token_f1_hand_values():
    # "the" is dropped; prediction {leonardo, vinci} vs reference {leonardo, da, vinci}:
    # precision 2/2, recall 2/3 → F1 = 0.8
    assert token_f1("the Leonardo Vinci", "Leonardo da Vinci") == pytest.approx(0.8)
    assert token_f1("Raphael", "Leonardo") == 0.0
    assert token_f1("", "Leonardo") == 0.0
    assert get_grader("f1")("It is Leonardo Vinci.", short(["Leonardo da Vinci", "Raphael"])) == pytest.approx(0.8)


def test_contrast_f1_grader_compares_true_and_false_references():
    ex = Example(id="t", question="What happens if you eat watermelon seeds?",
                 answers=["Nothing happens", "The seeds pass through your digestive system"],
                 meta={"incorrect_answers": ["You grow watermelons in your stomach"]})
    grader = get_grader("contrast_f1")
    assert grader("The seeds pass through your digestive system.", ex) == 1.0
    assert grader("Watermelons grow in your stomach.", ex) == 0.0
    no_contrast = Example(id="u", question="q?", answers=["nothing happens"])
    assert grader("Nothing happens at all", no_contrast) == 1.0   # F1 0.8 ≥ 0.5
    assert grader("Something else entirely", no_contrast) == 0.0


def test_registry_names_and_errors():
    assert {"numeric", "short", "choice", "exact_match", "f1", "contrast_f1", "llm_judge"} <= set(grader_names())
    with pytest.raises(UnknownNameError, match="Did you mean 'numeric'"):
        get_grader("numerc")
    with pytest.raises(InputError, match="takes no options"):
        get_grader("numeric", tolerance=1)
    with pytest.raises(InputError, match="grader 'llm_judge'"):
        get_grader("llm_judge")        # base_url and model are required


def gen(id_: str, response: str, samples: list[str] | None = None) -> Generation:
    return Generation(id=id_, prompt="p", response=response, samples=samples or [])


def test_grade_joins_by_id_and_grades_samples():
    examples = [numeric("3"), short(["Leonardo"]), MMLU]
    gens = [gen("c", "B"), gen("n", "1 + 2 = 3", ["3", "4", "three"])]
    records = grade(gens, examples)
    assert [r.id for r in records] == ["c", "n"]
    assert [r.correct for r in records] == [1.0, 1.0]
    assert records[1].sample_correct == [1.0, 0.0, 0.0]
    assert records[0].choices == MMLU.choices and records[0].answer_type == "choice"
    assert records[1].question == "What is 1 + 2?"


def test_grade_uses_the_grader_an_example_names():
    ex = Example(id="s", question="q?", answers=["Leonardo da Vinci"], meta={"grader": "f1"})
    [record] = grade([gen("s", "Leonardo")], [ex])
    assert record.correct == pytest.approx(0.5)   # precision 1, recall 1/3: 2·(1/3)/(4/3)


def test_grade_accepts_a_grader_name_or_callable():
    ex = short(["Leonardo"])
    assert grade([gen("s", "Leonardo!")], [ex], grader="exact_match")[0].correct == 1.0
    assert grade([gen("s", "Leonardo!")], [ex], grader=lambda r, e: 0.25)[0].correct == 0.25
    with pytest.raises(CertaError, match="must return a value in \\[0, 1\\]"):
        grade([gen("s", "x")], [ex], grader=lambda r, e: 2.0)


def test_grade_errors_name_the_id():
    with pytest.raises(InputError, match="generation 'zzz' has no example"):
        grade([gen("zzz", "1")], [numeric("3")])
    with pytest.raises(InputError, match="'n' appears twice"):
        grade([gen("n", "1")], [numeric("3"), numeric("4")])


def test_register_grader_adds_a_name():
    @register_grader("always_right_for_tests")
    def always(response: str, example: Example) -> float:
        return 1.0

    assert grade([gen("n", "wrong")], [numeric("3")], grader="always_right_for_tests")[0].correct == 1.0


# --- LLM judge --------------------------------------------------------------------------------

def judge_with(reply: str | None, calls: list[dict], status: int = 200) -> LLMJudge:
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append({"url": str(request.url), "auth": request.headers.get("authorization"),
                      "body": json.loads(request.content)})
        if status != 200:
            return httpx.Response(status, text="rate limited")
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": reply}}]})
    return LLMJudge("http://judge.test/v1/", "judge-model", api_key="sk-test",
                    retry=Retry(attempts=2, backoff=0.0), transport=httpx.MockTransport(handler))


def test_judge_sends_an_openai_chat_request_and_parses_yes():
    calls: list[dict] = []
    judge = judge_with("Yes.", calls)
    ex = short(["Leonardo da Vinci"])
    assert judge("Da Vinci painted it", ex) == 1.0
    [call] = calls
    assert call["url"] == "http://judge.test/v1/chat/completions"
    assert call["auth"] == "Bearer sk-test"
    assert call["body"]["model"] == "judge-model" and call["body"]["temperature"] == 0
    user = call["body"]["messages"][-1]["content"]
    assert "Who painted the Mona Lisa?" in user and "Leonardo da Vinci" in user and "Da Vinci painted it" in user


def test_judge_caches_repeated_pairs_and_reads_no():
    calls: list[dict] = []
    judge = judge_with("no", calls)
    ex = short(["Leonardo"])
    assert [judge("Raphael", ex), judge("Raphael", ex)] == [0.0, 0.0]
    assert len(calls) == 1


def test_judge_counts_unparseable_replies_as_wrong():
    judge = judge_with("Maybe, it depends", [])
    assert judge("Raphael", short(["Leonardo"])) == 0.0
    assert judge.failures == 1


def test_judge_http_error_is_a_certa_error():
    calls: list[dict] = []
    judge = judge_with(None, calls, status=429)
    with pytest.raises(CertaError, match=r"HTTP 429 \('rate limited'\) after 2 attempts"):
        judge("Raphael", short(["Leonardo"]))
    assert len(calls) == 2   # a rate limit is retried (certa.http), up to the attempts allowed


def test_judge_lists_options_for_choice_examples():
    calls: list[dict] = []
    judge_with("yes", calls)("B", MMLU)
    assert "A. 0\nB. 4\nC. 2\nD. 6" in calls[0]["body"]["messages"][-1]["content"]


def test_judge_through_get_grader_and_grade():
    calls: list[dict] = []
    transport = httpx.MockTransport(lambda request: (
        calls.append(1),
        httpx.Response(200, json={"choices": [{"message": {"content": "yes"}}]}))[1])
    grader = get_grader("llm_judge", base_url="http://judge.test/v1", model="m", transport=transport)
    records = grade([gen("s", "Leo", ["Leo", "Raph"])], [short(["Leonardo"])], grader=grader)
    assert records[0].correct == 1.0 and records[0].sample_correct == [1.0, 1.0]
    assert len(calls) == 2   # "Leo" asked once, reused for the identical sample
