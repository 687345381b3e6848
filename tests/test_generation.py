"""Batched generation against full-forward recomputation on a tiny random model.

The shared tiny model's weights are so small that greedy decoding repeats one
token forever; ``lm`` below re-draws them larger and strengthens the
end-of-turn row so answers vary and some rows stop early while others run to
the limit — the case where padding, masks and cache bookkeeping go wrong.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from certa.decoding import Decoder, FinishedBatch
from certa.errors import InputError
from certa.generation import RAW_PROMPT_KEY, generate
from certa.models import end_token_ids, load_model
from certa.models.tensors import cache_parameter
from certa.records import Example, Generation, read_jsonl

MAX_NEW = 16


@pytest.fixture(scope="module")
def lm(varied_lm):
    return varied_lm


@pytest.fixture(scope="module")
def examples():
    # Questions of different lengths so batches need left padding.
    return [
        Example(id=f"q{i}", question="What is " + " plus ".join(str(k) for k in range(i + 1)) + "?",
                answers=[str(sum(range(i + 1)))], answer_type="numeric")
        for i in range(12)
    ]


@pytest.fixture(scope="module")
def greedy(lm, examples):
    return generate(lm, examples, max_new_tokens=MAX_NEW, batch_size=4, hidden_states=True, progress=False)


def _prompt_ids(lm, gen: Generation) -> list[int]:
    return lm.tokenizer(gen.prompt, add_special_tokens=False)["input_ids"]


def _full_forward(lm, ids: list[int]):
    with torch.no_grad():
        return lm.model(torch.tensor([ids]), output_hidden_states=True)


def test_fixture_has_rows_that_stop_and_rows_that_run_out(greedy):
    reasons = {g.finish_reason for g in greedy}
    assert reasons == {"stop", "length"}
    assert len({len(g.token_ids) for g in greedy}) > 2


def test_per_token_lists_agree_and_finish_reason_matches_tokens(lm, greedy):
    ends = set(end_token_ids(lm))
    for g in greedy:
        assert len(g.token_ids) == len(g.token_logprobs) == len(g.token_entropies) > 0
        if g.finish_reason == "stop":
            assert g.token_ids[-1] in ends and not ends & set(g.token_ids[:-1])
        else:
            assert len(g.token_ids) == MAX_NEW and not ends & set(g.token_ids)
        assert g.response == lm.tokenizer.decode(g.token_ids, skip_special_tokens=True).strip()
        assert "<|im_end|>" not in g.response
        assert g.model == lm.name


def test_output_follows_input_order(lm, examples, greedy):
    assert [g.id for g in greedy] == [e.id for e in examples]
    for g, e in zip(greedy, examples, strict=True):
        assert e.question in g.prompt


def test_logprobs_and_entropies_equal_full_forward(lm, greedy):
    for g in greedy:
        prompt = _prompt_ids(lm, g)
        logits = _full_forward(lm, prompt + g.token_ids).logits[0, len(prompt) - 1:-1]
        logp = torch.log_softmax(logits, dim=-1)
        expected = logp.gather(1, torch.tensor(g.token_ids)[:, None]).squeeze(1)
        entropy = -(logp.exp() * logp).sum(-1)
        assert torch.allclose(torch.tensor(g.token_logprobs), expected, atol=1e-4)
        assert torch.allclose(torch.tensor(g.token_entropies), entropy, atol=1e-4)


def test_greedy_token_is_the_argmax_of_its_logprob_row(lm, greedy):
    # Raw (not processed) logits: the greedy choice must be the most likely token.
    g = greedy[0]
    prompt = _prompt_ids(lm, g)
    logits = _full_forward(lm, prompt + g.token_ids).logits[0, len(prompt) - 1:-1]
    assert logits.argmax(-1).tolist() == g.token_ids


def test_batched_equals_unbatched(lm, examples, greedy):
    single = generate(lm, examples, max_new_tokens=MAX_NEW, batch_size=1, hidden_states=True, progress=False)
    for a, b in zip(greedy, single, strict=True):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert torch.allclose(torch.tensor(a.token_logprobs), torch.tensor(b.token_logprobs), atol=1e-4)
        assert torch.allclose(torch.tensor(a.hidden_state), torch.tensor(b.hidden_state), atol=1e-4)


def test_hidden_state_is_final_state_at_end_predicting_position(lm, greedy):
    for g in greedy:
        prompt = _prompt_ids(lm, g)
        # The position whose output is the last response token sits just before that token.
        position = len(prompt) + len(g.token_ids) - 2
        with torch.no_grad():
            final = lm.model.model(torch.tensor([prompt + g.token_ids])).last_hidden_state[0, position]
        assert torch.allclose(torch.tensor(g.hidden_state), final, atol=1e-4)
        head = lm.model.get_output_embeddings()
        assert int(head(torch.tensor(g.hidden_state)).argmax()) == g.token_ids[-1]


def test_hidden_state_omitted_unless_asked(lm, examples):
    gens = generate(lm, examples[:2], max_new_tokens=4, progress=False)
    assert all(g.hidden_state is None for g in gens)


class ExtensionHook:
    """Feeds one extra token over the finished rows' cache, as GrACE's read-out does, and keeps the logits."""

    def __init__(self, name: str, token_id: int):
        self.name, self.token_id = name, token_id
        self.batches: list[FinishedBatch] = []
        self.logits: list[torch.Tensor] = []

    def on_finished(self, lm, batch: FinishedBatch) -> list[float]:
        cache = batch.cache
        rows = len(batch.rows)
        # The cache stops before each answer's last token: feed it along with the new token.
        tokens = torch.stack([cache.last_tokens, torch.full((rows,), self.token_id)], dim=1)
        mask = torch.cat([cache.mask, torch.ones(rows, 2, dtype=torch.long)], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -2:]
        with torch.no_grad():
            out = lm.model(input_ids=tokens, attention_mask=mask, position_ids=positions,
                           **{cache_parameter(lm.model): cache.past_key_values})
        last = out.logits[:, -1].float()
        self.batches.append(batch)
        self.logits.append(last)
        return torch.softmax(last, -1)[:, self.token_id].tolist()


def test_hook_sees_each_finished_rows_cache_and_can_extend_it(lm, examples):
    extra = lm.tokenizer.convert_tokens_to_ids("<|im_start|>")
    first, second = ExtensionHook("first", extra), ExtensionHook("second", extra)
    gens = generate(lm, examples[:7], max_new_tokens=MAX_NEW, batch_size=3, hooks=[first, second],
                    hidden_states=True, progress=False)
    by_id = {g.id: g for g in gens}
    assert [len(b.rows) for b in first.batches] == [3, 3, 1]  # groups of batch_size finished rows
    checked = 0
    for batch, logits, logits_again in zip(first.batches, first.logits, second.logits, strict=True):
        # The cache is cropped after each hook, so the second hook sees exactly what the first did.
        assert torch.allclose(logits, logits_again, atol=1e-5)
        for i, row in enumerate(batch.rows):
            g = next(g for g in by_id.values() if _prompt_ids(lm, g) == row.prompt_ids)
            assert row.token_ids == g.token_ids
            # prompt + answer minus its last token, which the hook feeds itself
            assert int(batch.cache.mask[i].sum()) == len(row.prompt_ids) + len(g.token_ids) - 1
            assert int(batch.cache.last_tokens[i]) == g.token_ids[-1]
            assert torch.allclose(batch.cache.last_hidden[i], torch.tensor(g.hidden_state), atol=1e-5)
            full = _full_forward(lm, row.prompt_ids + g.token_ids + [extra]).logits[0, -1]
            assert torch.allclose(logits[i], full, atol=1e-4)
            assert g.confidence["first"] == pytest.approx(float(torch.softmax(full, -1)[extra]), abs=1e-5)
            assert g.meta["confidence_source"] == {"first": lm.artifact_id, "second": lm.artifact_id}
            checked += 1
    assert checked == 7
    assert {g.finish_reason for g in gens} == {"stop", "length"}


def test_hooks_read_sampled_rows_too(lm, examples):
    hook = ExtensionHook("ext", 5)
    gens = generate(lm, examples[:3], max_new_tokens=6, samples=2, hooks=[hook], progress=False)
    assert sum(len(b.rows) for b in hook.batches) == 9  # 3 greedy + 3 x 2 sampled rows
    for g in gens:
        assert len(g.sample_confidence["ext"]) == 2
        assert all(0 <= c <= 1 for c in g.sample_confidence["ext"])


def test_samples_count_and_seeding(lm, examples, greedy):
    a = generate(lm, examples[:4], max_new_tokens=8, samples=3, seed=1, progress=False)
    b = generate(lm, examples[:4], max_new_tokens=8, samples=3, seed=1, progress=False)
    c = generate(lm, examples[:4], max_new_tokens=8, samples=3, seed=2, progress=False)
    assert all(len(g.samples) == 3 for g in a)
    assert [g.samples for g in a] == [g.samples for g in b]
    assert [g.samples for g in a] != [g.samples for g in c]
    # Sampling extra answers leaves the greedy answer alone.
    assert [g.token_ids for g in a] == [g.token_ids[:8] for g in greedy[:4]]


class CountingAdd:
    """Counts the rows queued on the decoder."""

    def __init__(self, monkeypatch):
        original, self.rows = Decoder.add, 0

        def add(decoder, request):
            self.rows += 1
            return original(decoder, request)

        monkeypatch.setattr(Decoder, "add", add)


def test_resume_skips_finished_ids(lm, examples, tmp_path, monkeypatch):
    out = tmp_path / "gens.jsonl"
    counter = CountingAdd(monkeypatch)
    generate(lm, examples[:5], max_new_tokens=4, batch_size=2, out=out, progress=False)
    assert counter.rows == 5
    gens = generate(lm, examples, max_new_tokens=4, batch_size=2, out=out, progress=False)
    assert counter.rows == len(examples)
    assert [g.id for g in gens] == [e.id for e in examples]
    assert sorted(g.id for g in read_jsonl(out, Generation)) == sorted(e.id for e in examples)
    again = generate(lm, examples, max_new_tokens=4, out=out, progress=False)
    assert counter.rows == len(examples)
    assert [g.token_ids for g in again] == [g.token_ids for g in gens]


def test_finished_output_is_read_without_locking_or_rewriting_it(lm, examples, tmp_path, monkeypatch):
    # Two studies sharing a cache of finished answers start together: neither may take the file's lock.
    out = tmp_path / "gens.jsonl"
    gens = generate(lm, examples[:3], max_new_tokens=4, out=out, progress=False)
    before = out.stat()

    def no_appender(path):
        raise AssertionError(f"opened an appender on the finished {path}")

    monkeypatch.setattr("certa.generation.JsonlAppender", no_appender)
    again = generate(lm, examples[:3], max_new_tokens=4, out=out, progress=False)
    assert [g.token_ids for g in again] == [g.token_ids for g in gens]
    after = out.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not out.with_name(out.name + ".partial").exists()
    with pytest.raises(InputError, match="lack hidden states"):  # what it lacks is still refused
        generate(lm, examples[:3], max_new_tokens=4, hidden_states=True, out=out, progress=False)
    with pytest.raises(AssertionError, match="opened an appender"):  # an unanswered example resumes as before
        generate(lm, examples[:4], max_new_tokens=4, out=out, progress=False)


class FailAfter:
    name = "fail"

    def __init__(self, batches: int):
        self.left = batches

    def on_finished(self, lm, batch):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return [0.5] * len(batch.rows)


def test_killed_run_keeps_finished_batches(lm, examples, tmp_path):
    out = tmp_path / "gens.jsonl"
    with pytest.raises(KeyboardInterrupt):
        generate(lm, examples[:6], max_new_tokens=4, batch_size=2, hooks=[FailAfter(2)], out=out, progress=False)
    assert not out.exists()
    assert len(read_jsonl(str(out) + ".partial", Generation)) == 4
    gens = generate(lm, examples[:6], max_new_tokens=4, batch_size=2, hooks=[FailAfter(99)], out=out, progress=False)
    assert out.exists() and [g.id for g in gens] == [e.id for e in examples[:6]]


def test_raw_prompt_in_meta_is_used_verbatim(lm, examples):
    raw = "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    example = dataclasses.replace(examples[0], id="raw", meta={RAW_PROMPT_KEY: raw})
    (g,) = generate(lm, [example], max_new_tokens=2, progress=False)
    assert g.prompt == raw


def test_hidden_state_capture_under_peft_adapter(lm, examples):
    from peft import LoraConfig, get_peft_model

    fresh = load_model(lm.name, device="cpu")  # peft edits the model in place; keep the shared one clean
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                        trainable_token_indices={"embed_tokens": [5]})
    peft_lm = dataclasses.replace(fresh, model=get_peft_model(fresh.model, config))
    (g,) = generate(peft_lm, examples[:1], max_new_tokens=6, hidden_states=True, progress=False)
    prompt = _prompt_ids(lm, g)
    with torch.no_grad():
        logits = peft_lm.model(torch.tensor([prompt + g.token_ids])).logits
    head = peft_lm.model.get_output_embeddings()
    expected = logits[0, len(prompt) + len(g.token_ids) - 2]
    assert torch.allclose(head(torch.tensor(g.hidden_state)), expected, atol=1e-4)


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"max_new_tokens": 0}, {"samples": -1},
                                    {"samples": 2, "temperature": 0.0}])
def test_bad_arguments(lm, examples, kwargs):
    with pytest.raises(InputError):
        generate(lm, examples[:1], progress=False, **kwargs)


def test_duplicate_ids_rejected(lm, examples):
    with pytest.raises(InputError, match="'q0' appears more than once"):
        generate(lm, [examples[0], examples[0]], progress=False)


def test_empty_input(lm):
    assert generate(lm, [], progress=False) == []


def test_resume_refuses_generations_missing_what_is_asked(lm, examples, tmp_path):
    out = tmp_path / "gens.jsonl"
    generate(lm, examples[:2], max_new_tokens=4, out=out, progress=False)
    with pytest.raises(InputError, match="lack hidden states, 2 samples"):
        generate(lm, examples[:3], max_new_tokens=4, hidden_states=True, samples=2, out=out, progress=False)


def test_resume_refuses_answers_to_a_question_that_changed_under_its_id(lm, examples, tmp_path):
    import dataclasses

    out = tmp_path / "gens.jsonl"
    generate(lm, examples[:2], max_new_tokens=4, out=out, progress=False)
    assert [g.id for g in generate(lm, examples[:3], max_new_tokens=4, out=out, progress=False)] == \
        [ex.id for ex in examples[:3]]                                     # a larger set resumes
    edited = [dataclasses.replace(examples[0], question=examples[0].question + " (edited)"), *examples[1:3]]
    for attempt in range(2):       # from the finished file, and from a .partial left by a larger request
        with pytest.raises(InputError, match=rf"stored answer to '{examples[0].id}' was generated for another prompt"):
            generate(lm, edited if attempt == 0 else [*edited, examples[3]], max_new_tokens=4, out=out, progress=False)
