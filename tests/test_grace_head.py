"""GrACE's read-out through the trained token rows (no PEFT merged matrix) equals PEFT's own forward."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from certa.methods.answer_cache import encode_answers, extend
from certa.methods.grace import GraceConfig, train_grace
from certa.methods.grace.readout import free_readout, readout_step
from certa.models import adapters, load_model, token_rows
from certa.models.token_rows import forward_logits, trained_rows
from certa.records import Example, Record

ADAPTERS = ("first", "second")
PROMPTS = ["What is the capital of France?", "What is 3 + 4?", "who wrote Hamlet?", "abc"]
ANSWERS = ["Paris.", "7", "William Shakespeare wrote it", "x"]


def _with_two_adapters(model: torch.nn.Module, token_ids: list[int], seed: int = 0) -> torch.nn.Module:
    """``model`` with two named LoRA + trainable-token adapters, both moved away from their (no-op) start."""
    from peft import LoraConfig, get_peft_model

    from certa.training.trainer import embedding_module_names

    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                        trainable_token_indices={name: token_ids for name in embedding_module_names(model)})
    peft_model = get_peft_model(model, config, adapter_name=ADAPTERS[0])
    peft_model.add_adapter(ADAPTERS[1], config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "trainable_tokens_delta" in name:
                param.add_(torch.randn(param.shape, generator=gen) * 0.5)
    return peft_model


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def lm(request, tmp_path_factory):
    """The tiny model (tied or untied embeddings) with <CNF> added and two named GrACE-style adapters."""
    from tiny import build_tiny_model

    from certa.methods.grace.token import add_cnf_token

    torch.set_num_threads(1)
    loaded = load_model(str(build_tiny_model(tmp_path_factory.mktemp("head"), tie_embeddings=request.param)),
                        device="cpu")
    cnf = add_cnf_token(loaded)
    loaded.model = _with_two_adapters(loaded.model, [cnf])
    return loaded, cnf


def _pairs(lm):
    tok = lm.tokenizer
    return [(tok(lm.chat_prompt(q), add_special_tokens=False)["input_ids"],
             tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]) for q, a in zip(PROMPTS, ANSWERS, strict=True)]


@pytest.fixture
def merged_calls(monkeypatch):
    """How often PEFT built a merged embedding matrix (its ``get_merged_weights``) during the test."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    calls = []
    original = TrainableTokensLayer.get_merged_weights

    def counting(self, active):
        calls.append(1)
        return original(self, active)

    monkeypatch.setattr(TrainableTokensLayer, "get_merged_weights", counting)
    return calls


def _peft_readout(model, cache, cnf, name):
    """The read-out as PEFT computes it: the model's own forward, merged matrices and all."""
    return extend(model, cache, adapter_name=name).logits[:, 0].float().softmax(-1)[:, cnf]


def test_step_readout_equals_the_peft_forward_for_each_named_adapter(lm, merged_calls):
    lm, cnf = lm
    pairs = _pairs(lm)
    assert len({len(p) + len(r) for p, r in pairs}) == len(pairs)  # the cache is left-padded
    cache = encode_answers(lm.model, pairs, lm.tokenizer.pad_token_id)
    lm.model.eval()
    got = {}
    with torch.no_grad():
        for name in ADAPTERS:
            fast = readout_step(lm.model, cache, cnf, adapter_name=name)
            assert not merged_calls, "the read-out built PEFT's merged matrix"
            np.testing.assert_allclose(fast, _peft_readout(lm.model, cache, cnf, name), rtol=0, atol=1e-6)
            assert merged_calls  # the reference did take PEFT's path
            merged_calls.clear()
            got[name] = fast
    assert not torch.allclose(got["first"], got["second"], atol=1e-3)  # each adapter reads its own row
    assert lm.model.active_adapter == ADAPTERS[0]  # switched back


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_step_readout_gradients_equal_the_peft_forwards(lm, merged_calls):
    """Training is unchanged: the same gradients reach the LoRA weights and the <CNF> rows."""
    lm, cnf = lm
    target = torch.tensor([0.1, 0.9, 0.4, 0.7])

    def cache():  # a fresh one per backward, as each training step assembles its own
        return encode_answers(lm.model, _pairs(lm), lm.tokenizer.pad_token_id)

    lm.model.train()
    try:
        with adapters.adapter_state(lm.model, True, "second"):  # the trainable adapter, as in training
            fast = _grads(lm.model, ((readout_step(lm.model, cache(), cnf) - target) ** 2).sum())
            assert not merged_calls
            slow = _grads(lm.model, ((_peft_readout(lm.model, cache(), cnf, None) - target) ** 2).sum())
    finally:
        lm.model.eval()
        lm.model.zero_grad(set_to_none=True)
    assert sorted(fast) == sorted(slow)
    assert any("trainable_tokens_delta.second" in n for n in fast) and any("lora_A.second" in n for n in fast)
    assert not any(".first" in n for n in fast)
    for name in fast:
        torch.testing.assert_close(fast[name], slow[name], atol=1e-6, rtol=1e-5, msg=name)


def test_free_readout_equals_the_peft_head(lm, merged_calls):
    lm, cnf = lm
    hidden = torch.randn(5, lm.model.get_base_model().config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for name in ADAPTERS:
            fast = free_readout(lm.model, hidden, cnf, adapter_name=name)
            assert not merged_calls
            with adapters.adapter_state(lm.model, True, name):
                slow = lm.model.get_output_embeddings()(hidden).softmax(-1)[:, cnf]
            merged_calls.clear()
            np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-6)


def test_a_fed_cnf_token_gets_its_trained_embedding(lm, merged_calls):
    """Every logit, not only <CNF>'s, when <CNF> itself is among the inputs (no read-out feeds it today)."""
    lm, cnf = lm
    ids = torch.tensor([[5, 9, cnf, 11], [cnf, 3, 4, cnf]])
    with torch.no_grad(), adapters.adapter_state(lm.model, True, "second"):
        fast = forward_logits(lm.model, ids)
        assert not merged_calls
        slow = lm.model(input_ids=ids).logits
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_gemma_scaled_embedding_and_soft_capping(tiny_model_dir, merged_calls):
    """Gemma 3's embedding multiplies by √H in its own module and its logits are soft-capped: both kept."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                              final_logit_softcapping=3.0, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    base = Gemma3ForCausalLM(config).eval()
    assert float(base.get_input_embeddings().embed_scale) > 1
    model = _with_two_adapters(base, [7, 12], seed=2)
    ids = torch.tensor([[7, 20, 12, 30], [21, 7, 7, 22]])
    with torch.no_grad(), adapters.adapter_state(model, True, "second"):
        rows = trained_rows(model)
        assert rows is not None and rows.softcap == 3.0 and rows.embed_scale is not None
        fast = forward_logits(model, ids)
        assert not merged_calls
        slow = model(input_ids=ids).logits
    assert slow.abs().max() < 3.0  # the cap is in play
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_the_model_forward_runs_where_rows_cannot_be_read_apart(lm, monkeypatch):
    lm, _ = lm
    with adapters.adapter_state(lm.model, True, "first"):
        assert trained_rows(lm.model) is not None
        monkeypatch.setattr(token_rows, "PLAIN_HEADS", {})  # a model type whose logits are not its head's
        assert trained_rows(lm.model) is None
        monkeypatch.undo()

        class Wrapper(torch.nn.Module):  # DDP-style: its forward must run
            def __init__(self, module):
                super().__init__()
                self.module = module

        assert trained_rows(Wrapper(lm.model)) is None
        layer = lm.model.get_base_model().get_input_embeddings().token_adapter
        layer.merge(adapter_names=["first"])  # as an export does: the row is in the base weights now
        try:
            assert trained_rows(lm.model) is None
        finally:
            layer.unmerge()
        assert trained_rows(lm.model) is not None
    assert trained_rows(lm.model.get_base_model()) is None  # not a PEFT model


# ── training: the same trajectory through either path ───────────────────────────────────────


def _records(lm, n: int = 16) -> list[Record]:
    from certa.generation import generate

    examples = [Example(id=f"q{i}", question=f"Is {i} a number? {PROMPTS[i % 4]}", answers=["x"]) for i in range(n)]
    gens = generate(lm, examples, max_new_tokens=4, hidden_states=True, progress=False)
    return [Record.from_generation(g, e, float(i % 3 == 0)) for i, (g, e) in enumerate(zip(gens, examples, strict=True))]


def _trajectory(path, records, config, out, monkeypatch, enabled: bool, merged_calls) -> list[tuple[float, float]]:
    """(loss, mean c) of each step, training with the trained-rows read-out (``enabled``) or PEFT's forward."""
    monkeypatch.setattr(token_rows, "ENABLED", enabled)
    merged_calls.clear()
    train_grace(load_model(str(path), device="cpu"), records, config, out, progress=False)
    assert (len(merged_calls) == 0) == enabled  # no step built a merged matrix, or every step did
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line.strip()]
    return [(r["loss"], r["conf_mean"]) for r in rows if "step" in r]


@pytest.mark.parametrize("setting", [{}, {"mode": "full"}, {"readout": "free"}], ids=["suffix", "full", "free"])
def test_training_follows_the_same_loss_trajectory(tiny_model_dir, tmp_path, monkeypatch, setting, merged_calls):
    records = _records(load_model(str(tiny_model_dir), device="cpu"))
    config = GraceConfig(epochs=2, batch_size=4, lr=1e-2, token_lr=5e-2, validation_fraction=0, save_every=1000,
                         seed=4, **setting)
    before = _trajectory(tiny_model_dir, records, config, tmp_path / "peft", monkeypatch, False, merged_calls)
    after = _trajectory(tiny_model_dir, records, config, tmp_path / "rows", monkeypatch, True, merged_calls)
    assert len(before) == 8 and len({round(loss, 6) for loss, _ in before}) > 1  # it trains
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-5)


def test_a_causal_lm_whose_get_decoder_returns_none_uses_its_model_stack(lm, merged_calls, monkeypatch):
    """transformers 4.56 (certa's lower bound) returns None from ``get_decoder()`` for most causal LMs."""
    lm, cnf = lm
    base = lm.model.get_base_model()
    monkeypatch.setattr(type(base), "get_decoder", lambda self: None)
    rows = trained_rows(lm.model)
    assert rows is not None and rows.decoder is base.model
    cache = encode_answers(lm.model, _pairs(lm), lm.tokenizer.pad_token_id)
    lm.model.eval()
    with torch.no_grad():
        fast = readout_step(lm.model, cache, cnf, adapter_name=ADAPTERS[1])
        assert not merged_calls
        np.testing.assert_allclose(fast, _peft_readout(lm.model, cache, cnf, ADAPTERS[1]), rtol=0, atol=1e-6)
