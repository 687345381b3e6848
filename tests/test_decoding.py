"""The continuous-batching decoder against per-example ``model.generate`` and full forwards, on a tiny model.

The shared tiny model repeats one token forever; ``lm`` re-draws its weights
larger and strengthens the end-of-turn row so that answers vary and some rows
stop early while others run to the limit: rows leave the batch at different
steps and queued prompts of other lengths join it, which is where padding,
positions and cache surgery go wrong.
"""

from __future__ import annotations

import functools

import pytest
import torch

from certa import decoding
from certa.decoding import Decoder, Request, answer_cache
from certa.errors import InputError
from certa.generation import generate
from certa.models import end_token_ids, load_model
from certa.records import Example

MAX_NEW = 16
QUESTIONS = ["What is " + " plus ".join(str(k) for k in range(i + 1)) + "?" for i in range(10)] + [
    "Who wrote Hamlet?", "abc", "What is the capital of France? Answer briefly, in one or two words please."]


@pytest.fixture(scope="module")
def lm(varied_lm):
    return varied_lm


@pytest.fixture(scope="module")
def prompts(lm):
    return [lm.tokenizer(lm.chat_prompt(q), add_special_tokens=False)["input_ids"] for q in QUESTIONS]


def reference(lm, prompt: list[int], max_new_tokens: int = MAX_NEW) -> tuple[list[int], torch.Tensor]:
    """One prompt alone through ``model.generate``: its greedy tokens and the raw logits of each step."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=end_token_ids(lm), do_sample=False,
                              pad_token_id=lm.tokenizer.pad_token_id, return_dict_in_generate=True,
                              output_logits=True)
    with torch.no_grad():
        out = lm.model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                                dtype=torch.long), generation_config=config)
    tokens = out.sequences[0, len(prompt):].tolist()
    return tokens, torch.stack([step[0] for step in out.logits[:len(tokens)]]).float()


@pytest.fixture(scope="module")
def references(lm, prompts):
    return [reference(lm, p) for p in prompts]


def assert_matches_reference(lm, row, ref_tokens: list[int], ref_logits: torch.Tensor) -> None:
    assert row.token_ids == ref_tokens
    logp = torch.log_softmax(ref_logits, -1)
    expected = logp.gather(1, torch.tensor(ref_tokens)[:, None]).squeeze(1)
    entropy = -(logp.exp() * logp).sum(-1)
    torch.testing.assert_close(torch.tensor(row.logprobs), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(row.entropies), entropy, atol=1e-5, rtol=0)
    stopped = ref_tokens[-1] in end_token_ids(lm)
    assert row.finish_reason == ("stop" if stopped else "length")


def test_fixture_mixes_prompt_and_answer_lengths(prompts, references):
    assert len({len(p) for p in prompts}) > 5
    assert len({len(tokens) for tokens, _ in references}) > 3
    assert any(len(t) == MAX_NEW for t, _ in references) and any(len(t) < MAX_NEW for t, _ in references)


@pytest.mark.parametrize("max_rows", [1, 3, 5, 16])
def test_greedy_answers_equal_per_example_generate(lm, prompts, references, max_rows):
    decoder = Decoder(lm, max_rows=max_rows)
    rows = {r.key: r for r in decoder.run(Request(p, max_new_tokens=MAX_NEW, key=i) for i, p in enumerate(prompts))}
    assert sorted(rows) == list(range(len(prompts)))
    for i, (tokens, logits) in enumerate(references):
        assert_matches_reference(lm, rows[i], tokens, logits)
        assert rows[i].prompt_ids == prompts[i] and rows[i].vocab_size == logits.shape[-1]
    assert decoder.idle


def test_rows_join_a_running_batch_shorter_and_longer(lm, prompts, references):
    # Two rows run; then a longer and a shorter prompt join mid-decode (the cache is realigned both ways).
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    short, middle, long_ = order[0], order[len(order) // 2], order[-1]
    decoder = Decoder(lm, max_rows=4)
    decoder.add(Request(prompts[middle], max_new_tokens=MAX_NEW, key=middle))
    finished = {r.key: r for r in decoder.step()}
    decoder.add(Request(prompts[long_], max_new_tokens=MAX_NEW, key=long_))
    for _ in range(2):
        finished.update((r.key, r) for r in decoder.step())
    assert decoder.running == 2  # both in flight together
    decoder.add(Request(prompts[short], max_new_tokens=MAX_NEW, key=short))
    finished.update((r.key, r) for r in decoder.run())
    for i in (short, middle, long_):
        assert_matches_reference(lm, finished[i], *references[i])


def schedule(lengths: list[int], max_rows: int) -> list[int]:
    """Rows in flight after each step when a finished row's slot goes to the next prompt at the next step.

    When the prefilled rows cannot fill the free slots, up to ``max_rows`` queued prompts are prefilled
    together (their first token comes from the prefill); prefilled rows join as slots free up, and
    every row in flight then gets one token.
    """
    queue, pool, running, trace = list(lengths), [], [], []
    while queue or pool or running:
        free = max_rows - len(running)
        if free > len(pool) and queue:
            count = max(max_rows, free - len(pool))
            pool += [n - 1 for n in queue[:count] if n > 1]
            queue = queue[count:]
        running += pool[:free]
        pool = pool[free:]
        running = [n - 1 for n in running if n > 1]
        trace.append(len(running))
    return trace


def test_queued_rows_take_free_slots_as_rows_finish(lm, prompts, references):
    decoder = Decoder(lm, max_rows=3)
    decoder.extend(Request(p, max_new_tokens=MAX_NEW, key=i) for i, p in enumerate(prompts))
    in_flight, rows = [], {}
    while not decoder.idle:
        rows.update((r.key, r) for r in decoder.step())
        in_flight.append(decoder.running)
    lengths = [len(t) for t, _ in references]
    assert in_flight == schedule(lengths, 3)
    waiting_for_the_longest = sum(max(lengths[i:i + 3]) for i in range(0, len(lengths), 3))
    assert len(in_flight) < waiting_for_the_longest
    for i, (tokens, logits) in enumerate(references):
        assert_matches_reference(lm, rows[i], tokens, logits)


def test_max_new_tokens_is_per_row(lm, prompts, references):
    limits = [1 + i % 5 for i in range(len(prompts))]
    rows = {r.key: r for r in Decoder(lm, max_rows=4).run(
        Request(p, max_new_tokens=n, key=i) for i, (p, n) in enumerate(zip(prompts, limits, strict=True)))}
    for i, ((tokens, logits), n) in enumerate(zip(references, limits, strict=True)):
        kept = tokens[:n]
        assert rows[i].token_ids == kept
        torch.testing.assert_close(torch.tensor(rows[i].logprobs),
                                   torch.log_softmax(logits[:len(kept)], -1).gather(
                                       1, torch.tensor(kept)[:, None]).squeeze(1), atol=1e-5, rtol=0)
        ended = kept[-1] in end_token_ids(lm)
        assert rows[i].finish_reason == ("stop" if ended else "length")


def test_stop_strings_end_a_row_at_the_token_that_completes_them(lm, prompts, references):
    i = next(k for k, (t, _) in enumerate(references) if len(t) == MAX_NEW)
    tokens = references[i][0]
    # A stop string made of the 4th token's text and the start of the 5th: it is complete only at token 5.
    fourth = lm.tokenizer.decode(tokens[3:4])
    fifth = lm.tokenizer.decode(tokens[:5])[len(lm.tokenizer.decode(tokens[:4])):]
    stop = fourth + fifth[:1]
    cut = next(n for n in range(1, len(tokens) + 1) if stop in lm.tokenizer.decode(tokens[:n]))
    assert cut <= 5
    [row] = Decoder(lm).run([Request(prompts[i], max_new_tokens=MAX_NEW, stop_strings=[stop])])
    assert row.token_ids == tokens[:cut] and row.finish_reason == "stop"
    [row] = Decoder(lm).run([Request(prompts[i], max_new_tokens=MAX_NEW, stop_token_ids=[tokens[2]])])
    assert row.token_ids == tokens[:tokens.index(tokens[2]) + 1] and row.finish_reason == "stop"


def test_hidden_state_is_the_full_forward_state_that_predicted_the_last_token(lm, prompts):
    rows = list(Decoder(lm, max_rows=4).run(Request(p, max_new_tokens=MAX_NEW, hidden_state=True) for p in prompts))
    for row in rows:
        ids = row.prompt_ids + row.token_ids
        with torch.no_grad():
            final = lm.model.model(torch.tensor([ids])).last_hidden_state[0, len(ids) - 2]
        torch.testing.assert_close(row.hidden_state, final, atol=1e-4, rtol=1e-5)
        assert int(lm.model.get_output_embeddings()(row.hidden_state).argmax()) == row.token_ids[-1]
    assert all(r.hidden_state is None for r in Decoder(lm).run([Request(prompts[0], max_new_tokens=2)]))


def test_kept_cache_is_the_full_forward_cache_of_prompt_and_answer_minus_its_last_token(lm, prompts):
    rows = list(Decoder(lm, max_rows=4).run(Request(p, max_new_tokens=MAX_NEW, keep_cache=True, key=i)
                                            for i, p in enumerate(prompts)))
    for row in rows:
        ids = row.prompt_ids + row.token_ids[:-1]
        with torch.no_grad():
            full = lm.model(torch.tensor([ids]), use_cache=True).past_key_values
        for (keys, values), layer in zip(row.kv, full.layers, strict=True):
            assert keys.shape == layer.keys.shape  # no padding slots
            torch.testing.assert_close(keys, layer.keys, atol=1e-4, rtol=1e-5)
            torch.testing.assert_close(values, layer.values, atol=1e-4, rtol=1e-5)
    # Merged for a hook: each row's real slots, left-padded, its last token unfed.
    cache = answer_cache(rows)
    assert cache.mask.sum(1).tolist() == [len(r.prompt_ids) + len(r.token_ids) - 1 for r in rows]
    assert cache.last_tokens.tolist() == [r.token_ids[-1] for r in rows]


def test_added_tokens_are_suppressed_but_log_probs_stay_raw(lm, prompts, references):
    tokens, logits = references[0]
    banned = tokens[0]
    [row] = Decoder(lm, suppress_token_ids=[banned]).run([Request(prompts[0], max_new_tokens=6)])
    assert banned not in row.token_ids
    raw = torch.log_softmax(logits[0], -1)
    assert row.token_ids[0] == int(raw.clone().index_fill_(0, torch.tensor([banned]), -float("inf")).argmax())
    assert row.logprobs[0] == pytest.approx(float(raw[row.token_ids[0]]), abs=1e-5)


def test_seeded_sampling_does_not_depend_on_the_rest_of_the_batch(lm, prompts):
    def sampled(seed, top_p=1.0):
        return Request(prompts[2], max_new_tokens=MAX_NEW, temperature=1.3, top_p=top_p, seed=seed, key="mine")

    alone = list(Decoder(lm).run([sampled(7)]))[0].token_ids
    crowd = [Request(p, max_new_tokens=MAX_NEW, temperature=1.0, seed=i, key=i) for i, p in enumerate(prompts)]
    rows = {r.key: r for r in Decoder(lm, max_rows=5).run(crowd[:6] + [sampled(7)] + crowd[6:])}
    assert rows["mine"].token_ids == alone
    others = [list(Decoder(lm).run([sampled(seed)]))[0].token_ids for seed in range(8, 14)]
    assert any(o != alone for o in others)
    nucleus = list(Decoder(lm).run([sampled(3, top_p=0.5)]))[0].token_ids
    rows = {r.key: r for r in Decoder(lm, max_rows=3).run(crowd[:4] + [sampled(3, top_p=0.5)])}
    assert rows["mine"].token_ids == nucleus


def test_nucleus_sampling_keeps_to_the_top_p_mass(lm, prompts, references):
    # top_p tiny: only the most likely token survives, so sampling is greedy.
    [row] = Decoder(lm).run([Request(prompts[0], max_new_tokens=MAX_NEW, temperature=1.0, top_p=1e-6, seed=1)])
    assert row.token_ids == references[0][0]


def test_shared_prefix_gives_the_same_answers(lm, prompts, references):
    shared = Decoder(lm, max_rows=3)
    rows = {r.key: r for r in shared.run(Request(p, max_new_tokens=MAX_NEW, key=i) for i, p in enumerate(prompts))}
    assert shared._prefix is not None and len(shared._prefix[0]) >= 8  # the chat template's common start
    plain = Decoder(lm, max_rows=3, share_prefix=False)
    alone = {r.key: r for r in plain.run(Request(p, max_new_tokens=MAX_NEW, key=i) for i, p in enumerate(prompts))}
    assert plain._prefix is None
    for i, (tokens, logits) in enumerate(references):
        assert_matches_reference(lm, rows[i], tokens, logits)
        assert_matches_reference(lm, alone[i], tokens, logits)


def test_identical_prompts_are_encoded_once_and_decode_alike(lm, prompts, references, monkeypatch):
    seen: list[int] = []
    forward = lm.model.forward

    @functools.wraps(forward)
    def counting(*args, **kwargs):
        seen.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    monkeypatch.setattr(lm.model, "forward", counting)
    which = [1, 4, 1, 4, 1]
    rows = list(Decoder(lm, max_rows=5, share_prefix=False).run(
        Request(prompts[i], max_new_tokens=MAX_NEW, key=i) for i in which))
    assert seen[0] == 2  # one prefill row per distinct prompt
    for row in rows:
        assert_matches_reference(lm, row, *references[row.key])


def test_cancel_drops_a_row_and_leaves_the_others(lm, prompts, references):
    decoder = Decoder(lm, max_rows=3)
    decoder.extend(Request(p, max_new_tokens=MAX_NEW, key=i) for i, p in enumerate(prompts[:5]))
    rows = {r.key: r for r in decoder.step()}
    decoder.cancel(0)
    decoder.cancel(4)  # still queued
    rows.update((r.key, r) for r in decoder.run())
    assert 0 not in rows and 4 not in rows
    for i in (1, 2, 3):
        assert_matches_reference(lm, rows[i], *references[i])


@pytest.mark.parametrize("request_", [Request([]), Request([1], max_new_tokens=0), Request([1], temperature=-1),
                                      Request([1], top_p=0.0), Request([1], top_p=1.5)])
def test_bad_requests_are_refused(lm, request_):
    with pytest.raises(InputError):
        Decoder(lm).add(request_)


def test_generate_samples_do_not_depend_on_what_else_is_generated(lm):
    examples = [Example(id=f"q{i}", question=q, answers=["x"]) for i, q in enumerate(QUESTIONS[:5])]
    together = generate(lm, examples, max_new_tokens=8, samples=3, batch_size=2, seed=5, progress=False)
    alone = generate(lm, examples[3:4], max_new_tokens=8, samples=3, batch_size=1, seed=5, progress=False)
    assert together[3].samples == alone[0].samples and len(set(together[3].samples)) > 1
    for g in together:
        assert set(g.meta["seconds"]) == {"answer", "confidence", "samples"}
        assert all(v >= 0 for v in g.meta["seconds"].values()) and g.meta["seconds"]["answer"] > 0


def test_a_failed_step_drops_the_rows_in_flight_and_the_decoder_goes_on(lm, prompts, references, monkeypatch):
    decoder = Decoder(lm, max_rows=2)
    decoder.extend(Request(p, max_new_tokens=MAX_NEW, key=i) for i, p in enumerate(prompts[:4]))
    decoder.step()
    monkeypatch.setattr(lm.model, "forward", lambda *a, **k: (_ for _ in ()).throw(MemoryError("boom")))
    with pytest.raises(MemoryError):
        decoder.step()
    monkeypatch.undo()
    assert decoder.lost_keys == [0, 1] and decoder.running == 0 and decoder.queued == 2
    rows = {r.key: r for r in decoder.run()}
    assert sorted(rows) == [2, 3]
    for i in (2, 3):
        assert_matches_reference(lm, rows[i], *references[i])


def test_a_failed_step_also_reports_the_rows_it_had_finished_or_was_merging(lm, prompts, monkeypatch):
    decoder = Decoder(lm, max_rows=3)
    decoder.extend(Request(p, max_new_tokens=MAX_NEW, key=i) for i, p in enumerate(prompts[:2]))
    decoder.step()
    decoder.extend([Request(prompts[2], max_new_tokens=1, key="first-token")])   # ends in its prefill
    forward, calls = lm.model.forward, []

    def fails_after_the_prefill(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise MemoryError("boom")
        return forward(*args, **kwargs)

    monkeypatch.setattr(lm.model, "forward", fails_after_the_prefill)
    with pytest.raises(MemoryError):
        decoder.step()
    monkeypatch.undo()
    assert sorted(map(str, decoder.lost_keys)) == ["0", "1", "first-token"]

    decoder = Decoder(lm, max_rows=2)
    decoder.extend(Request(p, max_new_tokens=MAX_NEW, key=i) for i, p in enumerate(prompts[:2]))
    monkeypatch.setattr(decoding, "_merge", lambda *a: (_ for _ in ()).throw(MemoryError("boom")))
    with pytest.raises(MemoryError):
        decoder.step()                                   # both prefilled, then lost while joining the batch
    monkeypatch.undo()
    assert sorted(decoder.lost_keys) == [0, 1] and decoder.running == 0


def test_a_vanishing_temperature_samples_the_most_likely_token_instead_of_failing_the_batch(lm, prompts, references):
    crowd = [Request(p, max_new_tokens=MAX_NEW, key=i) for i, p in enumerate(prompts[:3])]
    tiny = [Request(prompts[i], max_new_tokens=MAX_NEW, temperature=t, seed=1, key=f"t{i}")
            for i, t in ((3, 1e-300), (4, 1e-40), (5, 1e-7))]
    rows = {r.key: r for r in Decoder(lm, max_rows=6).run(crowd + tiny)}
    for i, key in ((3, "t3"), (4, "t4"), (5, "t5")):
        assert rows[key].token_ids == references[i][0]
    for i in range(3):
        assert_matches_reference(lm, rows[i], *references[i])


@pytest.fixture(scope="module")
def sliding_lm(tiny_model_dir, tmp_path_factory):
    """A tiny Gemma-3 (one sliding-window layer of 6 tokens, one full layer): prompts and answers run far
    past the window, so a row that sees the wrong slots through it answers differently."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=6,
                              layer_types=["sliding_attention", "full_attention"],
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                              bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0, 0.3)
    path = tmp_path_factory.mktemp("sliding")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return load_model(str(path), device="cpu")


def test_sliding_window_models_decode_as_alone(sliding_lm):
    lm = sliding_lm
    prompts = [lm.tokenizer(lm.chat_prompt(q), add_special_tokens=False)["input_ids"] for q in QUESTIONS[:8]]
    decoder = Decoder(lm, max_rows=3)
    assert not decoder.share_prefix  # its padding between prefix and suffix would count against the window
    rows = {r.key: r for r in decoder.run(Request(p, max_new_tokens=12, key=i) for i, p in enumerate(prompts))}
    for i, p in enumerate(prompts):
        assert_matches_reference(lm, rows[i], *reference(lm, p, 12))
