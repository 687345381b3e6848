"""The shared trainer, driven by a minimal objective defined here (independent of GrACE)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from certa.models.artifact import read_artifact_info
from certa.records import Record
from certa.training.config import TrainConfig
from certa.training.trainer import build_optimizer, checkpoint_dirs, train

TOKEN = "<YES>"


class ToyObjective:
    """Teach P(<YES> | prompt) = correct: a one-token confidence, the smallest real objective."""

    method = "toy"

    def prepare(self, lm, config):
        lm.tokenizer.add_tokens([TOKEN], special_tokens=True)
        lm.model.resize_token_embeddings(len(lm.tokenizer), mean_resizing=False)

    def trainable_token_ids(self, lm):
        return [lm.tokenizer.convert_tokens_to_ids(TOKEN)]

    def build_items(self, lm, records, config):
        return [{"ids": lm.tokenizer(r.prompt, add_special_tokens=False)["input_ids"], "y": r.correct}
                for r in records]

    def collate(self, lm, items):
        width = max(len(it["ids"]) for it in items)
        pad = lm.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(it["ids"])) + it["ids"] for it in items])
        mask = torch.tensor([[0] * (width - len(it["ids"])) + [1] * len(it["ids"]) for it in items])
        return {"input_ids": ids, "attention_mask": mask, "y": torch.tensor([it["y"] for it in items])}

    def loss(self, lm, batch, config):
        mask = batch["attention_mask"]
        logits = lm.model(input_ids=batch["input_ids"], attention_mask=mask,
                          position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
        p = logits.softmax(-1)[:, self.trainable_token_ids(lm)[0]]
        loss = ((p - batch["y"]) ** 2).mean()
        return loss, {"p_mean": p.mean().item()}

    def artifact_info(self) -> dict[str, Any]:
        return {"token": TOKEN}


class Interrupted(Exception):
    pass


class InterruptAfter(ToyObjective):
    """Raises on the n-th loss call, like a job killed mid-run."""

    def __init__(self, calls: int):
        self.calls = calls

    def loss(self, lm, batch, config):
        self.calls -= 1
        if self.calls < 0:
            raise Interrupted
        return super().loss(lm, batch, config)


def make_records(lm, n: int = 12) -> list[Record]:
    questions = [f"What is {i} + {i % 5}?" for i in range(n)]
    return [Record(id=str(i), prompt=lm.chat_prompt(q), response="x", correct=float(i % 3 == 0), question=q)
            for i, q in enumerate(questions)]


@pytest.fixture
def fresh_lm(tiny_model_dir):
    from certa.models import load_model

    def load():
        torch.manual_seed(123)  # the state train() must not depend on: it seeds itself
        return load_model(str(tiny_model_dir), device="cpu")

    return load


class ToyConfig(TrainConfig):
    """A method's config adds its own fields, as GraceConfig adds the <CNF> row's learning rate."""

    token_lr: float = 5e-2

    def token_learning_rate(self) -> float:
        return self.token_lr


CONFIG = ToyConfig(epochs=2, batch_size=4, save_every=2, lr=1e-2, lora_dropout=0.1, seed=7)


def _adapter(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter_model.safetensors"))


def test_train_writes_log_checkpoints_and_artifact(fresh_lm, tmp_path):
    lm = fresh_lm()
    base_rows = lm.model.get_input_embeddings().weight.detach().clone()
    out = train(ToyObjective(), lm, make_records(lm), CONFIG, tmp_path / "run", progress=False)

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == list(range(1, 7))  # 12 records / batch 4 × 2 epochs
    assert all(row["loss"] >= 0 and "p_mean" in row for row in log)
    # checkpoints at steps 2, 4, 6; only the last two kept; no temp dirs left behind
    assert [p.name for p in checkpoint_dirs(out)] == ["step-4", "step-6"]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    info = read_artifact_info(out)
    assert info["method"] == "toy" and info["data"]["records"] == 12
    assert info["train_config"]["seed"] == 7 and info["method_info"] == {"token": TOKEN}
    assert (out / "tokenizer_config.json").exists()

    # only the added row moved; every original row is bit-identical
    token = lm.tokenizer.convert_tokens_to_ids(TOKEN)
    rows = effective_embeddings(lm.model)
    with lm.model.disable_adapter():
        initial = effective_embeddings(lm.model)
    assert torch.equal(rows[:token], base_rows) and torch.equal(initial[:token], base_rows)
    assert not torch.equal(rows[token], initial[token])


def effective_embeddings(model) -> torch.Tensor:
    """Every row as the model uses it (adapter's trained rows included)."""
    emb = model.get_input_embeddings()
    with torch.no_grad():
        return emb(torch.arange(emb.weight.shape[0] if hasattr(emb, "weight") else model.config.vocab_size))


def test_resume_after_interruption_matches_uninterrupted_run(fresh_lm, tmp_path):
    lm = fresh_lm()
    straight = train(ToyObjective(), lm, make_records(lm), CONFIG, tmp_path / "straight", progress=False)

    lm = fresh_lm()
    with pytest.raises(Interrupted):  # dies during step 5, after the step-4 checkpoint
        train(InterruptAfter(4), lm, make_records(lm), CONFIG, tmp_path / "resumed", progress=False)
    assert [p.name for p in checkpoint_dirs(tmp_path / "resumed")] == ["step-2", "step-4"]
    lm = fresh_lm()
    counting = InterruptAfter(10**6)
    resumed = train(counting, lm, make_records(lm), CONFIG, tmp_path / "resumed", resume=True,
                    progress=False)

    a, b = _adapter(straight), _adapter(resumed)
    assert a.keys() == b.keys() and len(a) > 1
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert counting.calls == 10**6 - 2  # only steps 5 and 6 were run again
    steps = [json.loads(line)["step"] for line in (resumed / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))


def test_resume_refuses_a_checkpoint_of_another_config(fresh_lm, tmp_path):
    from certa.errors import InputError

    lm = fresh_lm()
    with pytest.raises(Interrupted):
        train(InterruptAfter(4), lm, make_records(lm), CONFIG, tmp_path / "run", progress=False)
    other = CONFIG.model_copy(update={"lr": CONFIG.lr * 10, "save_every": 3})
    lm = fresh_lm()
    with pytest.raises(InputError, match=r"step-4: checkpoint was trained with lr="):
        train(ToyObjective(), lm, make_records(lm), other, tmp_path / "run", resume=True, progress=False)


def test_optimizer_has_separate_token_learning_rate(fresh_lm):
    from certa.training.trainer import attach_adapter

    lm = fresh_lm()
    ToyObjective().prepare(lm, CONFIG)
    attach_adapter(lm, CONFIG, ToyObjective().trainable_token_ids(lm))
    groups = build_optimizer(lm.model, CONFIG).param_groups
    assert [g["lr"] for g in groups] == [CONFIG.lr, CONFIG.token_lr]
    assert len(groups[1]["params"]) == 1 and groups[1]["params"][0].shape[0] == 1


def test_all_linear_puts_lora_on_every_linear_layer_but_the_head_and_conftuner_defaults_to_it(fresh_lm):
    from certa.methods.conftuner.config import ConfTunerConfig
    from certa.training.trainer import attach_adapter

    lm = fresh_lm()
    linear = {name.rsplit(".", 1)[-1] for name, m in lm.model.named_modules() if isinstance(m, torch.nn.Linear)}
    attach_adapter(lm, CONFIG.model_copy(update={"target_modules": ["all-linear"]}), [])
    adapted = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in lm.model.named_parameters() if "lora_A" in name}
    assert adapted == linear - {"lm_head"} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"}
    assert ConfTunerConfig().target_modules == ["all-linear"] and CONFIG.target_modules == ["q_proj", "v_proj"]
    with pytest.raises(ValueError, match="list it alone"):
        ConfTunerConfig(target_modules=["all-linear", "q_proj"])


def test_wrapping_and_loading_adapters_print_no_deprecation_notice_of_peft_but_keep_others(fresh_lm, tmp_path):
    import warnings

    from certa.models import load_model
    from certa.models.adapters import quiet_peft_wrapping

    lm = fresh_lm()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = train(ToyObjective(), lm, make_records(lm), CONFIG.model_copy(update={"epochs": 1}), tmp_path / "run",
                    progress=False)
        load_model(str(out), device="cpu")
        with quiet_peft_wrapping():
            warnings.warn("a notice of the caller's own", FutureWarning, stacklevel=1)
    messages = [str(w.message) for w in seen]
    assert not [m for m in messages if "is_gradient_checkpointing" in m]
    assert "a notice of the caller's own" in messages


def test_empty_records_is_an_input_error(fresh_lm, tmp_path):
    from certa.errors import InputError

    with pytest.raises(InputError, match="no training records"):
        train(ToyObjective(), fresh_lm(), [], CONFIG, tmp_path)


def test_a_single_process_trains_on_the_cuda_device_the_model_was_loaded_on(monkeypatch):
    """accelerate places the model on the current CUDA device: it must be the model's (cuda:1 stays cuda:1)."""
    import types

    from certa.training import trainer

    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    import accelerate

    monkeypatch.setattr(accelerate, "Accelerator", lambda **kwargs: kwargs)  # no shared accelerate state made
    made = trainer._make_accelerator(types.SimpleNamespace(device=torch.device("cuda", 1)), TrainConfig())
    assert chosen == [torch.device("cuda", 1)] and made["cpu"] is False
    monkeypatch.setenv("WORLD_SIZE", "2")  # under `accelerate launch` each rank's device is accelerate's
    chosen.clear()
    trainer._make_accelerator(types.SimpleNamespace(device=torch.device("cuda", 1)), TrainConfig())
    assert chosen == []
