"""Abstention, feedback and online recalibration in the server, and what ``certa serve`` serves by default.

Through the official ``openai`` client (answers, abstention, streams) and plain HTTP (the feedback
route), on the scripted engine of ``test_server`` whose confidence is 1 / (number of prompt words),
so every expected number is known in advance.
"""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import openai
import pytest
from sklearn.isotonic import IsotonicRegression
from test_server import TIMEOUT, ScriptedEngine, client, serving

from certa.errors import CertaError, InputError
from certa.metrics import ece
from certa.records import Record
from certa.serving.abstention import (
    ARTIFACT_KEY,
    DEFAULT_REFUSAL,
    Abstention,
    calibration_data,
    fit_abstention,
    stored_abstention,
)
from certa.serving.app import create_app
from certa.serving.feedback import FeedbackStore
from certa.serving.loop import FeedbackLoop, parse_recalibrate
from certa.serving.server import DEFAULT_ARTIFACT, build_abstention, choose_served
from certa.uses.selective import select_threshold


def _ask(api, words: str, **kw):
    return api.chat.completions.create(model="scripted", messages=[{"role": "user", "content": words}], **kw)


# ---- abstention --------------------------------------------------------------------------------------


@pytest.fixture
def abstaining():
    # confidence = 1 / words: "a b" -> 0.5 answered, "a b c d" -> 0.25 withheld
    with serving(create_app(ScriptedEngine(), abstention=Abstention(0.3, "I cannot say."))) as url:
        yield url


def test_answer_below_the_threshold_is_withheld(abstaining):
    api = client(abstaining)
    kept = _ask(api, "a b").choices[0]
    assert (kept.message.content, kept.abstained, kept.confidence) == ("b ok", False, 0.5)
    assert kept.message.refusal is None
    withheld = _ask(api, "a b c d", logprobs=True).choices[0]
    assert (withheld.message.content, withheld.message.refusal) == ("I cannot say.", "I cannot say.")
    assert withheld.abstained is True and withheld.confidence == 0.25
    assert withheld.logprobs is None                        # the log-probs would give the answer away
    assert getattr(withheld, "abstained_answer", None) is None
    asked = _ask(api, "a b c d", logprobs=True, extra_body={"include_abstained_answer": True}).choices[0]
    assert (asked.message.content, asked.abstained_answer) == ("I cannot say.", "d ok")
    assert [t.token for t in asked.logprobs.content] == ["d", " ok"]


def test_streams_never_send_a_withheld_answer(abstaining):
    api = client(abstaining)
    chunks = list(_ask(api, "a b c d", stream=True))
    raw = json.dumps([c.model_dump() for c in chunks])
    assert "d ok" not in raw and '"d"' not in raw
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "I cannot say."
    last = chunks[-1].choices[0]
    assert (last.finish_reason, last.abstained, last.confidence) == ("stop", True, 0.25)
    shown = list(_ask(api, "a b", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in shown) == "b ok"
    assert shown[-1].choices[0].abstained is False
    legacy = list(api.completions.create(model="scripted", prompt="w x y z", stream=True,
                                         extra_body={"include_abstained_answer": True}))
    assert "".join(c.choices[0].text for c in legacy) == "I cannot say."
    assert legacy[-1].choices[0].abstained is True and legacy[-1].choices[0].abstained_answer == "z ok"


def test_fitted_threshold_is_select_thresholds(tmp_path):
    rng = np.random.default_rng(0)
    conf = rng.random(600)
    correct = (rng.random(600) > 0.3 * (1 - conf) ** 2).astype(float)
    scores = tmp_path / "scores.jsonl"
    scores.write_text("".join(json.dumps({"id": str(i), "correct": y, "scores": {"word_count": c, "other": 0.5}}) + "\n"
                              for i, (c, y) in enumerate(zip(conf, correct, strict=True))))
    c, y = calibration_data(scores, "word_count")
    found = fit_abstention(c, y, 0.1, 0.05, source="scores.jsonl")
    reference = select_threshold(conf, correct, 0.1, 0.05)
    assert found.threshold == reference.threshold and found.certified == reference
    assert found.to_dict()["applied_to"] == "raw confidence" and found.to_dict()["target_error"] == 0.1
    with pytest.raises(InputError, match="no scores for method 'grace'"):
        calibration_data(scores, "grace")
    with pytest.raises(InputError, match="lowest error this calibration set certifies"):
        fit_abstention(c, y, 0.001)


def test_graded_records_are_scored_by_the_served_method(tmp_path):
    records = tmp_path / "records.jsonl"
    rows = [Record(id=f"r{i}", prompt="p", response="x" * (i % 7 + 1), correct=float(i % 3 != 0)) for i in range(40)]
    records.write_text("".join(json.dumps(r.__dict__) + "\n" for r in rows))
    seen = []

    def score(recs):
        seen.extend(recs)
        return [1 / len(r.response) for r in recs]

    conf, correct = calibration_data(records, "word_count", score)
    assert [r.id for r in seen] == [r.id for r in rows]
    np.testing.assert_allclose(conf, [1 / len(r.response) for r in rows])
    np.testing.assert_allclose(correct, [r.correct for r in rows])


def test_threshold_stored_in_an_artifact():
    stored = select_threshold(np.linspace(0, 1, 500), (np.linspace(0, 1, 500) > 0.2).astype(float), 0.1).to_dict()
    got = stored_abstention({ARTIFACT_KEY: stored}, target_error=0.1)
    assert got.threshold == stored["threshold"] and got.refusal == DEFAULT_REFUSAL
    assert stored_abstention({ARTIFACT_KEY: stored}, target_error=0.2, delta=0.1).threshold == stored["threshold"]
    with pytest.raises(InputError, match="does not meet error 0.05"):
        stored_abstention({ARTIFACT_KEY: stored}, target_error=0.05)
    with pytest.raises(InputError, match="stores no abstention threshold"):
        stored_abstention({"method": "grace"}, target_error=0.1)


def test_build_abstention_options_exclude_each_other():
    class Engine:
        method_name = "word_count"
        lm = type("LM", (), {"artifact": None, "name": "m"})()
        score_records = None

    assert build_abstention(Engine(), None, calibration=None) is None
    assert build_abstention(Engine(), None, calibration=None, threshold=0.4).threshold == 0.4
    with pytest.raises(InputError, match="not both"):
        build_abstention(Engine(), 0.1, calibration=None, threshold=0.4)
    with pytest.raises(InputError, match="--abstain-target-error too"):
        build_abstention(Engine(), None, calibration="x.jsonl")
    with pytest.raises(InputError, match="stores no abstention threshold"):
        build_abstention(Engine(), 0.1, calibration=None)
    with pytest.raises(InputError, match="in \\[0, 1\\]"):
        Abstention(1.5)


# ---- feedback -------------------------------------------------------------------------------------------


@pytest.fixture
def with_feedback(tmp_path):
    db = tmp_path / "feedback.db"
    loop = FeedbackLoop(FeedbackStore(db), method="word_count", model="scripted")
    with serving(create_app(ScriptedEngine(), feedback=loop, abstention=Abstention(0.3))) as url:
        yield url, db


def _label(url, body):
    return httpx.post(f"{url}/v1/feedback", json=body, timeout=TIMEOUT)


def test_every_answer_is_recorded_and_can_be_labelled(with_feedback):
    url, db = with_feedback
    api = client(url)
    reply = _ask(api, "a b", n=2, temperature=0)
    withheld = _ask(api, "a b c d")
    ok = _label(url, {"id": reply.id, "choice": 1, "correct": True})
    assert ok.status_code == 200
    assert ok.json() | {"labelled_at": 0} == {"object": "feedback", "id": reply.id, "choice": 1, "correct": 1.0,
                                              "labelled_at": 0}
    assert _label(url, {"id": withheld.id, "correct": 0.25}).status_code == 200          # choice defaults to 0
    with FeedbackStore(db) as store:
        first = store.answer(reply.id, 0)
        assert (first.confidence, first.raw_confidence, first.method, first.model) == (0.5, 0.5, "word_count",
                                                                                         "scripted")
        assert (first.question, first.answer, first.abstained) == ("a b", "b ok", False)
        assert store.answer(withheld.id).abstained is True
        assert store.answer(withheld.id).answer == "d ok"                 # the original, not the refusal
        assert store.label(reply.id, 1).correct == 1.0 and store.label(reply.id, 0) is None
        assert (store.answer_count(), store.label_count()) == (3, 2)


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"id": "chatcmpl-nope", "choice": 0, "correct": True}, 404, "answer_not_found"),
    ({"id": "REPLY", "choice": 5, "correct": True}, 404, "answer_not_found"),
    ({"id": "REPLY", "choice": 0, "correct": "true"}, 400, "invalid_value"),
    ({"id": "REPLY", "choice": 0, "correct": 1.5}, 400, "invalid_value"),
    ({"id": "REPLY", "choice": -1, "correct": 1}, 400, "invalid_value"),
    ({"id": "REPLY", "choice": False, "correct": 1}, 400, "invalid_value"),
    ({"id": "REPLY", "choice": "0", "correct": 1}, 400, "invalid_value"),
    ({"id": "REPLY", "correct": None}, 400, "invalid_value"),
    ({"id": "", "correct": True}, 400, "invalid_value"),
    ({"id": "REPLY", "choice": 0, "correct": True, "extra": 1}, 400, "invalid_value"),
])
def test_bad_labels_are_4xx_and_change_nothing(with_feedback, body, status, code):
    url, db = with_feedback
    reply = _ask(client(url), "a b")
    body = {k: (reply.id if v == "REPLY" else v) for k, v in body.items()}
    bad = _label(url, body)
    assert bad.status_code == status and bad.json()["error"]["code"] == code
    with FeedbackStore(db) as store:
        assert store.label_count() == 0


def test_a_label_is_write_once(with_feedback):
    url, db = with_feedback
    reply = _ask(client(url), "a b")
    assert _label(url, {"id": reply.id, "correct": False}).status_code == 200
    again = _label(url, {"id": reply.id, "correct": True})
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_labelled"
    with FeedbackStore(db) as store:
        assert store.label(reply.id).correct == 0.0


def test_feedback_is_off_without_a_database():
    with serving(create_app(ScriptedEngine())) as url:
        off = _label(url, {"id": "x", "correct": True})
        report = httpx.get(f"{url}/v1/calibration", timeout=TIMEOUT).json()
    assert off.status_code == 404 and off.json()["error"]["code"] == "feedback_disabled"
    assert report["feedback"] is False and report["labels"] is None and report["abstention"] is None


# ---- recalibration ------------------------------------------------------------------------------------


WORDS = ["a", "a b", "a b c", "a b c d", "a b c d e"]   # raw confidence 1, .5, .33, .25, .2


def _wait_refits(url, refits):
    deadline = time.monotonic() + TIMEOUT
    while True:
        report = httpx.get(f"{url}/v1/calibration", timeout=TIMEOUT).json()
        if (report["recalibration"] or {}).get("refits", 0) >= refits:
            return report
        assert time.monotonic() < deadline, f"no refit: {report}"
        time.sleep(0.02)


def test_recalibration_refits_after_every_n_labels_and_maps_later_answers(tmp_path):
    db = tmp_path / "feedback.db"
    loop = FeedbackLoop(FeedbackStore(db), parse_recalibrate("every=10,min=20"), method="word_count", model="scripted")
    raws, labels = [], []
    with serving(create_app(ScriptedEngine(), feedback=loop)) as url:
        api = client(url)
        for i in range(30):
            words = WORDS[i % 5]
            reply = _ask(api, words)
            raw = 1 / len(words.split())                                # what the method said; served may differ
            correct = (i % 4 == 0) if raw < 1 else (i % 10 != 5)     # the short prompts are right far more often
            assert _label(url, {"id": reply.id, "correct": correct}).status_code == 200
            raws.append(raw)
            labels.append(float(correct))
            if i == 18:   # 19 labels: below the minimum, nothing fitted, answers stay raw
                assert loop.wait_idle()
                before = httpx.get(f"{url}/v1/calibration", timeout=TIMEOUT).json()
                assert before["recalibration"]["refits"] == 0 and before["labels"] == 19
            if i == 19:   # the 20th label: the first fit
                first = _wait_refits(url, 1)
                assert first["recalibration"]["n_labels_at_fit"] == 20
        report = _wait_refits(url, 2)                                 # the 30th: every=10 labels later
        assert loop.wait_idle()
        mapped = _ask(api, "a b c d").choices[0].confidence
    fitted = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(raws, labels)
    assert mapped == pytest.approx(float(fitted.predict([0.25])[0]), abs=1e-9)
    rec = report["recalibration"]
    assert (rec["kind"], rec["every"], rec["min_labels"], rec["n_labels_at_fit"]) == ("isotonic", 10, 20, 30)
    assert rec["ece_before"] == pytest.approx(ece(np.array(raws), np.array(labels)))
    assert rec["ece_after"] == pytest.approx(ece(fitted.predict(raws), np.array(labels)), abs=1e-9)
    assert rec["ece_after"] < rec["ece_before"]
    assert report["labels"] == 30 and report["answers"] == 30
    assert report["ece_raw"] == pytest.approx(rec["ece_before"])
    with FeedbackStore(db) as store:                                   # the store keeps both numbers
        last = store.labelled()
        assert last.raw_confidence.tolist() == raws


def test_a_restarted_server_keeps_its_calibration(tmp_path):
    db = tmp_path / "feedback.db"
    with FeedbackStore(db) as store:
        for i in range(60):
            store.record_answer(f"c{i}", 0, (i % 6) / 5, method="word_count", model="scripted", created=float(i))
            store.record_label(f"c{i}", 0, i % 2 == 0)
    loop = FeedbackLoop(FeedbackStore(db), parse_recalibrate("every=50,kind=platt"), method="word_count",
                        model="scripted")
    with serving(create_app(ScriptedEngine(), feedback=loop, abstention=Abstention(0.3))) as url:
        report = httpx.get(f"{url}/v1/calibration", timeout=TIMEOUT).json()
        answer = _ask(client(url), "a b c d").choices[0]
    assert report["recalibration"]["refits"] == 1 and report["recalibration"]["map"]["kind"] == "platt"
    # labels are a coin flip whatever the confidence: the map is nearly flat at 0.5, above the threshold; the
    # decision is still taken on the raw confidence (0.25) the threshold was fitted on
    assert answer.confidence == pytest.approx(loop.recalibrator.apply([0.25])[0]) and answer.confidence > 0.4
    assert answer.abstained is True


@pytest.mark.parametrize(("spec", "message"), [
    ("every=5,min=1", "min_labels must be an integer of at least 2"),
    ("min=3", "needs every=N"),
    ("every=x", "every must be an integer"),
    ("every=5,bins=3", "unknown key 'bins'"),
    ("every", "key=value"),
    ("every=5,kind=spline", "spline"),
])
def test_recalibrate_spec_errors(spec, message):
    with pytest.raises(CertaError, match=message):
        parse_recalibrate(spec)


def test_recalibrate_spec():
    rec = parse_recalibrate("every=25, kind=platt, max=400")
    assert (rec.kind, rec.every, rec.min_labels, rec.max_labels) == ("platt", 25, 50, 400)
    with pytest.raises(InputError, match="--db"):
        FeedbackLoop(None, rec, method="m", model="x")


# ---- what `certa serve` serves by default ------------------------------------------------------------------


def test_default_serves_the_bundled_grace_artifact_when_installed():
    plan = choose_served(None, None, available=lambda name: name == DEFAULT_ARTIFACT)
    assert (plan.model, plan.method) == ("default-grace", None)
    assert choose_served(None, "grace", available=lambda name: True).model == "default-grace"


def test_default_falls_back_to_likelihood_and_says_it_is_uncalibrated():
    plan = choose_served(None, None, available=lambda name: False)
    assert (plan.model, plan.method) == ("default", "sequence_likelihood")
    assert "not installed" in plan.note and "NOT calibrated" in plan.note
    with pytest.raises(InputError, match="needs a trained GrACE artifact"):
        choose_served(None, "grace", available=lambda name: False)


def test_explicit_choices_are_kept():
    assert choose_served("runs/art", None, available=lambda name: True) == choose_served("runs/art", None)
    plan = choose_served("runs/art", "p_true", available=lambda name: True)
    assert (plan.model, plan.method, plan.note) == ("runs/art", "p_true", "")
    assert choose_served(None, "p_true", available=lambda name: True).model == "default"


def test_openai_client_sees_the_decision_fields(abstaining):
    with pytest.raises(openai.BadRequestError):
        _ask(client(abstaining), "a b", extra_body={"include_abstained_answer": "maybe"})
