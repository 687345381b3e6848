"""GrACE: confidence as the probability of a learned ``<CNF>`` token (SPEC §1).

A ``<CNF>`` token is added to the vocabulary and trained so that the model's
probability of emitting it right after an answer is the answer's chance of
being correct: c = softmax(W·z)[<CNF>].

certa reads c in one of three ways, all through the functions below so that
training, the generation hook and offline scoring run the same computation:

* ``mode="suffix"`` (default): the answer comes from the base model (adapter
  off), so accuracy cannot move; the adapter is switched on for one extra step
  over the answer's KV cache: feed the last response token (HF ``generate``
  never feeds its last token) and read P(<CNF>) at that position
  (:func:`readout_step`).
* ``mode="full"`` (paper-faithful): the adapter is on for the whole sequence,
  trained with MSE plus λ·LM loss on the response; same read-out step.
* ``readout="free"``: no LoRA, only the ``<CNF>`` row trains, and c is read
  from the final-layer state generation already computed (zero extra passes,
  :func:`free_readout`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from ..errors import CertaError, InputError
from ..records import Record
from .base import ConfidenceMethod, Needs, register

if TYPE_CHECKING:
    from ..models import LoadedModel
    from ..training.objective import TrainConfig

log = logging.getLogger(__name__)

CNF_TOKEN = "<CNF>"
Readout = Literal["step", "free"]
_INIT_SAMPLE = 64  # records used to place the initial <CNF> row


# ---------------------------------------------------------------- the token


def cnf_token_id(tokenizer: Any) -> int:
    """Id of ``<CNF>`` in ``tokenizer``; a clear error when the model was not trained with GrACE."""
    token_id = tokenizer.convert_tokens_to_ids(CNF_TOKEN)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise CertaError(f"the tokenizer has no {CNF_TOKEN} token: load a trained GrACE artifact")
    return int(token_id)


def add_cnf_token(lm: LoadedModel) -> int:
    """Add ``<CNF>`` as a special token and grow the embeddings (new row = mean row); return its id."""
    from ..training.artifact import resize_embeddings

    if CNF_TOKEN not in lm.tokenizer.get_vocab():
        lm.tokenizer.add_tokens([CNF_TOKEN], special_tokens=True)
    resize_embeddings(lm.model, len(lm.tokenizer))
    return cnf_token_id(lm.tokenizer)


# ---------------------------------------------------------------- adapter switches


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The PEFT/HF model inside a DDP-style wrapper (accelerate prepares models that way)."""
    return getattr(model, "module", model)


def _tuner_layers(model: torch.nn.Module) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in _unwrap(model).modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def adapter_state(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Run with the adapter on or off, whatever the caller's context was; restore it afterwards.

    A no-op for a model without an adapter. Unlike ``PeftModel.disable_adapter``
    it can also switch an adapter *on* inside a disabled block (the generation
    hook may be called while answers are generated with the adapter off).
    """
    layers = _tuner_layers(model)
    before = [layer.disable_adapters for layer in layers]
    for layer in layers:
        layer.enable_adapters(enabled)
    try:
        yield
    finally:
        for layer, was_disabled in zip(layers, before, strict=True):
            layer.enable_adapters(not was_disabled)


# ---------------------------------------------------------------- the read-out (one function for all callers)


@dataclass
class Prefix:
    """An encoded prompt+response[:-1] batch, ready for the read-out step."""

    past_key_values: Any        # KV cache over the prefix
    cache_mask: torch.Tensor    # [B, L] 1 on real tokens of the cache
    last_tokens: torch.Tensor   # [B] the last response token of each row (not yet fed)
    last_hidden: torch.Tensor   # [B, H] final-layer state at the last prefix position (end-predicting)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into (input_ids, attention_mask)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(list(row), dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """RoPE position of each slot = real tokens before it, as HF ``generate`` computes them.

    Without explicit positions a left-padded forward would start each row at
    the pad count instead of 0 and disagree with generation.
    """
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def encode_prefix(model: torch.nn.Module, prefixes: Sequence[Sequence[int]], last_tokens: Sequence[int],
                  pad_id: int, *, adapter: bool) -> Prefix:
    """Run prompt+response[:-1] once (no gradient) to get the KV cache the read-out step extends."""
    device = next(model.parameters()).device
    ids, mask = left_pad(prefixes, pad_id, device)
    with torch.no_grad(), adapter_state(model, adapter):
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                    use_cache=True, output_hidden_states=True, logits_to_keep=1)
    return Prefix(out.past_key_values, mask, torch.tensor(list(last_tokens), device=device),
                  out.hidden_states[-1][:, -1])


def _step_forward(model: torch.nn.Module, past_key_values: Any, cache_mask: torch.Tensor,
                  last_tokens: torch.Tensor, *, hidden: bool = False) -> Any:
    position = cache_mask.long().sum(-1, keepdim=True)
    mask = torch.cat([cache_mask.long(), torch.ones_like(position)], dim=-1)
    with adapter_state(model, True):
        return model(input_ids=last_tokens.view(-1, 1), attention_mask=mask, position_ids=position,
                     past_key_values=past_key_values, use_cache=True, output_hidden_states=hidden)


def readout_step(model: torch.nn.Module, past_key_values: Any, cache_mask: torch.Tensor,
                 last_tokens: torch.Tensor, cnf_id: int) -> torch.Tensor:
    """GrACE's read-out: c = P(<CNF> next) after feeding each row's last response token, adapter on.

    ``past_key_values`` covers the slots of ``cache_mask`` (1 = real token, 0 =
    padding or a slot to ignore); the token is fed at one fresh slot whose
    position id is the number of real tokens before it. Gradients flow when
    called outside ``no_grad`` (training). The cache grows by one slot.
    """
    out = _step_forward(model, past_key_values, cache_mask, last_tokens)
    return out.logits[:, -1].float().softmax(-1)[:, cnf_id]


def free_readout(model: torch.nn.Module, hidden: torch.Tensor, cnf_id: int) -> torch.Tensor:
    """Zero-overhead read-out: c = softmax(W·z)[<CNF>] at the state that already predicted the end."""
    with adapter_state(model, True):
        head = _unwrap(model).get_output_embeddings()
        logits = head(hidden.to(head.weight.dtype))
    return logits.float().softmax(-1)[..., cnf_id]


# ---------------------------------------------------------------- records → token ids


def prompt_ids(lm: LoadedModel, record: Record) -> list[int]:
    """Token ids of the exact prompt text the answer was generated from (chat template included)."""
    return lm.tokenizer(record.prompt, add_special_tokens=False)["input_ids"]


def response_ids(lm: LoadedModel, record: Record) -> list[int]:
    """The answer's own token ids when generation stored them (no re-tokenisation), else its text's."""
    if record.token_ids:
        return list(record.token_ids)
    from ..models import end_token_ids

    # A bare answer text (e.g. from another model) is taken as a finished turn, as generation records it.
    ids = lm.tokenizer(record.response, add_special_tokens=False)["input_ids"]
    return ids + end_token_ids(lm)[-1:]


def _split(lm: LoadedModel, record: Record) -> tuple[list[int], list[int]]:
    response = response_ids(lm, record)
    if not response:
        raise InputError(f"record {record.id!r}: empty response, nothing to read a confidence after")
    return prompt_ids(lm, record), response


def offline_confidence(lm: LoadedModel, records: Sequence[Record], *, readout: Readout = "step",
                       adapter_for_answer: bool = False, batch_size: int = 16) -> np.ndarray:
    """GrACE confidence of existing answers (ours or another model's), batched."""
    cnf_id = cnf_token_id(lm.tokenizer)
    pad_id = lm.tokenizer.pad_token_id
    out: list[np.ndarray] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        if readout == "free" and all(r.hidden_state for r in chunk):
            hidden = torch.tensor([r.hidden_state for r in chunk], device=lm.device)
            with torch.no_grad():
                out.append(free_readout(lm.model, hidden, cnf_id).cpu().numpy())
            continue
        pairs = [_split(lm, r) for r in chunk]
        prefix = encode_prefix(lm.model, [p + r[:-1] for p, r in pairs], [r[-1] for _, r in pairs], pad_id,
                               adapter=adapter_for_answer)
        with torch.no_grad():
            if readout == "free":
                conf = free_readout(lm.model, prefix.last_hidden, cnf_id)
            else:
                conf = readout_step(lm.model, prefix.past_key_values, prefix.cache_mask, prefix.last_tokens, cnf_id)
        out.append(conf.cpu().numpy())
    return np.concatenate(out).astype(float)


# ---------------------------------------------------------------- generation hook


def _decode_state_inputs(state: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(cache mask, last tokens) for the read-out step from a generation's ``DecodeState``.

    The cache covers every column but the last. A row that used all T steps
    has its last token in that final, unfed column. A row that finished early
    has its last token inside the cache, computed without the adapter: mask
    that slot and re-feed the token at the fresh slot (its position id is
    still the count of real tokens before it).
    """
    sequences, mask = state.sequences, state.attention_mask
    cache_len = sequences.shape[1] - 1
    cache_mask = mask[:, :cache_len].clone()
    lengths = torch.tensor(state.response_lengths, device=sequences.device)
    last_col = state.prompt_length + lengths - 1
    rows = torch.arange(sequences.shape[0], device=sequences.device)
    inside = last_col < cache_len
    cache_mask[rows[inside], last_col[inside]] = 0
    return cache_mask, sequences[rows, last_col]


def _cache_length(cache: Any) -> int | None:
    getter = getattr(cache, "get_seq_length", None)
    return int(getter()) if getter else None


def _crop(cache: Any, length: int | None) -> None:
    """Drop the slots a read-out step appended (``crop(-n)`` removes n slots in transformers 5)."""
    now = _cache_length(cache)
    if length is not None and now is not None and now > length and hasattr(cache, "crop"):
        cache.crop(-(now - length))


class GraceHook:
    """Generation hook: reads GrACE's confidence from the decoding state, with no re-encoding.

    Pass it to ``certa.generation.generate(hooks=[GraceHook()])``; the
    confidences land in ``Generation.confidence["grace"]`` (and
    ``sample_confidence["grace"]`` for samples).
    """

    name = "grace"

    def __init__(self, readout: Readout | None = None):
        self.readout = readout

    def on_batch_end(self, lm: LoadedModel, state: Any) -> list[float]:
        cnf_id = cnf_token_id(lm.tokenizer)
        readout = self.readout or artifact_readout(lm)
        with torch.no_grad():
            if readout == "free":
                conf = free_readout(lm.model, state.last_hidden, cnf_id)
            else:
                cache = state.past_key_values
                before = _cache_length(cache)
                cache_mask, last = _decode_state_inputs(state)
                conf = readout_step(lm.model, cache, cache_mask, last, cnf_id)
                _crop(cache, before)  # leave generate's cache as we found it
        return conf.float().cpu().tolist()


# ---------------------------------------------------------------- artifact facts


def _method_info(lm: LoadedModel) -> dict[str, Any]:
    artifact = lm.artifact or {}
    if artifact.get("method") != "grace":
        raise CertaError(f"method 'grace' needs a trained GrACE artifact, but model {lm.name!r} is not one: "
                         "train with `certa train grace` and load the artifact directory")
    return artifact.get("method_info", {})


def artifact_readout(lm: LoadedModel) -> Readout:
    return _method_info(lm).get("readout", "step")


def answers_use_adapter(lm: LoadedModel) -> bool:
    """Whether answers are generated with the adapter on (full mode) or off (suffix/free)."""
    return bool(_method_info(lm).get("answers_use_adapter", False))


# ---------------------------------------------------------------- the registered method


@register("grace")
class Grace(ConfidenceMethod):
    """GrACE: P(<CNF>) after the answer, from a trained artifact (read during generation when possible)."""

    needs = Needs.MODEL
    cost = "one decoding step over the answer's KV cache (zero when read during generation or readout=free)"

    def score(self, records: Sequence[Record]) -> np.ndarray:
        lm = self.model
        _method_info(lm)
        scores = np.array([r.confidence.get(self.name, np.nan) for r in records], dtype=float)
        todo = np.flatnonzero(np.isnan(scores))
        if len(todo):
            scores[todo] = offline_confidence(
                lm, [records[i] for i in todo], readout=artifact_readout(lm),
                adapter_for_answer=answers_use_adapter(lm), batch_size=int(self.options.get("batch_size", 16)))
        return scores


def stream_with_confidence(lm: LoadedModel, prompt_text: str, max_new_tokens: int = 256) -> Iterator[str | float]:
    """Greedy-decode ``prompt_text`` token by token, yielding text pieces, then the GrACE confidence (a float).

    ``prompt_text`` is the full prompt (chat template applied). Uses the same
    read-out step as training and the generation hook.
    """
    from ..models import end_token_ids

    tok = lm.tokenizer
    cnf_id = cnf_token_id(tok)
    readout, on = artifact_readout(lm), answers_use_adapter(lm)
    stops = {cnf_id, *end_token_ids(lm)}
    ids = tok(prompt_text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(lm.device)
    mask = torch.ones_like(ids)
    generated: list[int] = []
    emitted = 0
    with torch.no_grad():
        with adapter_state(lm.model, on):
            out = lm.model(input_ids=ids, attention_mask=mask, use_cache=True, output_hidden_states=True)
        cache, logits, hidden = out.past_key_values, out.logits[:, -1], out.hidden_states[-1][:, -1]
        end_hidden = hidden
        for step in range(max_new_tokens):
            if step:  # feed the previous token; the last one stays unfed for the read-out step
                last = torch.tensor([[generated[-1]]], device=lm.device)
                position = mask.sum(-1, keepdim=True)
                mask = torch.cat([mask, torch.ones_like(position)], dim=-1)
                with adapter_state(lm.model, on):
                    out = lm.model(input_ids=last, attention_mask=mask, position_ids=position,
                                   past_key_values=cache, use_cache=True, output_hidden_states=True)
                cache, logits, hidden = out.past_key_values, out.logits[:, -1], out.hidden_states[-1][:, -1]
            logits = logits.clone()
            logits[:, cnf_id] = -math.inf  # the answer itself never contains <CNF>
            token = int(logits.argmax(-1))
            generated.append(token)
            end_hidden = hidden
            if token in stops:
                break
            text = tok.decode(generated, skip_special_tokens=True)
            # A byte-level token can end mid-character; hold it back until the character is whole.
            if len(text) > emitted and not text.endswith("\ufffd"):
                yield text[emitted:]
                emitted = len(text)
        # As generation does: the stop token is part of the answer (its text vanishes when it is special).
        rest = tok.decode(generated, skip_special_tokens=True)[emitted:]
        if rest:
            yield rest
        if readout == "free":
            conf = free_readout(lm.model, end_hidden, cnf_id)
        else:
            conf = readout_step(lm.model, cache, mask, torch.tensor([generated[-1]], device=lm.device), cnf_id)
    yield float(conf[0])


# ---------------------------------------------------------------- training objective


class GraceObjective:
    """GrACE as an :class:`~certa.training.objective.Objective` for the shared trainer.

    ``targets``: ``"soft"`` (ActCab-style binned probe accuracy, default) or
    ``"binary"``. ``readout``: ``"step"`` (one adapter-on step after the
    answer) or ``"free"`` (the ``<CNF>`` row alone, read at the end-predicting
    state; pair with ``target_modules=[]``). ``build_items`` also places the
    initial ``<CNF>`` row: it is the first point where the objective sees data.
    """

    method = "grace"

    def __init__(self, *, targets: Literal["soft", "binary"] = "soft", bins: int = 10, folds: int = 5,
                 readout: Readout = "step"):
        if readout not in ("step", "free"):
            raise InputError(f"grace: readout is {readout!r}; expected 'step' or 'free'")
        self.targets, self.bins, self.folds, self.readout = targets, bins, folds, readout
        self.mode = "suffix"
        self.cnf_id: int | None = None
        self.init_rate: float | None = None

    # -- Objective protocol

    def prepare(self, lm: LoadedModel, config: TrainConfig) -> None:
        self.mode = config.mode
        self.cnf_id = add_cnf_token(lm)

    def trainable_token_ids(self, lm: LoadedModel) -> list[int]:
        return [cnf_token_id(lm.tokenizer)]

    def build_items(self, lm: LoadedModel, records: Sequence[Record], config: TrainConfig) -> list[dict[str, Any]]:
        from ..training.targets import soft_targets

        require_hidden_states(records)
        target = soft_targets([r.hidden_state for r in records], [r.correct for r in records],
                              kind=self.targets, bins=self.bins, folds=self.folds, seed=config.seed)
        items = []
        for record, t in zip(records, target, strict=True):
            prompt, response = _split(lm, record)
            prompt, response = _truncate(prompt, response, config.max_length)
            items.append({"prompt": prompt, "response": response, "target": float(t),
                          "hidden": record.hidden_state})
        self._init_cnf_row(lm, items)
        return items

    def collate(self, lm: LoadedModel, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pad = lm.tokenizer.pad_token_id
        batch = {"target": torch.tensor([it["target"] for it in items], dtype=torch.float32)}
        if self.readout == "free":
            batch["hidden"] = torch.tensor([it["hidden"] for it in items], dtype=torch.float32)
        elif self.mode == "full":
            full = [it["prompt"] + it["response"] for it in items]
            batch["input_ids"], batch["attention_mask"] = left_pad(full, pad, torch.device("cpu"))
            labels = [[-100] * len(it["prompt"]) + it["response"] for it in items]
            batch["labels"], _ = left_pad(labels, -100, torch.device("cpu"))
        else:
            prefixes = [it["prompt"] + it["response"][:-1] for it in items]
            batch["input_ids"], batch["attention_mask"] = left_pad(prefixes, pad, torch.device("cpu"))
            batch["last_tokens"] = torch.tensor([it["response"][-1] for it in items])
        return batch

    def loss(self, lm: LoadedModel, batch: dict[str, torch.Tensor],
             config: TrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
        from ..training.losses import grace_calibration_loss, response_lm_loss

        cnf_id = self.cnf_id if self.cnf_id is not None else cnf_token_id(lm.tokenizer)
        target = batch["target"]
        if self.readout == "free":
            conf = free_readout(lm.model, batch["hidden"], cnf_id)
            return grace_calibration_loss(conf, target, config.calibration_loss), {"conf_mean": conf.mean().item()}
        if self.mode == "full":
            mask = batch["attention_mask"]
            out = lm.model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions_from_mask(mask))
            conf = out.logits[:, -1].float().softmax(-1)[:, cnf_id]
            calibration = grace_calibration_loss(conf, target, config.calibration_loss)
            lm_loss = response_lm_loss(out.logits, batch["labels"])
            return calibration + config.lm_loss_weight * lm_loss, {
                "calibration": calibration.item(), "lm_loss": lm_loss.item(), "conf_mean": conf.mean().item()}
        mask = batch["attention_mask"]
        with torch.no_grad(), adapter_state(lm.model, False):
            out = lm.model(input_ids=batch["input_ids"], attention_mask=mask,
                           position_ids=positions_from_mask(mask), use_cache=True, logits_to_keep=1)
        conf = readout_step(lm.model, out.past_key_values, mask, batch["last_tokens"], cnf_id)
        return grace_calibration_loss(conf, target, config.calibration_loss), {"conf_mean": conf.mean().item()}

    def artifact_info(self) -> dict[str, Any]:
        return {"token": CNF_TOKEN, "token_id": self.cnf_id, "mode": self.mode, "readout": self.readout,
                "answers_use_adapter": self.mode == "full", "targets": self.targets, "bins": self.bins,
                "folds": self.folds, "init_rate": self.init_rate}

    # -- initial <CNF> row

    def _init_cnf_row(self, lm: LoadedModel, items: Sequence[dict[str, Any]]) -> None:
        """Place the <CNF> row so c starts near the mean target instead of ~1e-8.

        From a fresh mean row, softmax(W·z)[<CNF>] is saturated near zero and
        the MSE gradient vanishes (SPEC §5). We set row = mean + α·u with u the
        unit mean read-out state, α solved so the average c equals the mean target.
        """
        rate = float(np.clip(np.mean([it["target"] for it in items]), 1e-3, 1 - 1e-3))
        sample = list(items[:_INIT_SAMPLE])
        z = self._readout_states(lm, sample).float()
        cnf_id = self.cnf_id
        head = _unwrap(lm.model).get_output_embeddings()
        with torch.no_grad():
            logits = (z @ head.weight.float().T)
            others = torch.cat([logits[:, :cnf_id], logits[:, cnf_id + 1:]], dim=-1).logsumexp(-1)
            base_row = head.weight[cnf_id].float()
            u = z.mean(0) / z.mean(0).norm().clamp(min=1e-8)
            alpha = solve_offset(z @ base_row - others, z @ u, rate)
            row = base_row + alpha * u
            for matrix in _matrices(lm.model):
                matrix[cnf_id] = row.to(matrix.dtype)
        self.init_rate = rate

    def _readout_states(self, lm: LoadedModel, items: Sequence[dict[str, Any]]) -> torch.Tensor:
        """Final-layer states at the read-out position, before training."""
        if self.readout == "free":
            return torch.tensor([it["hidden"] for it in items], device=lm.device)
        prefix = encode_prefix(lm.model, [it["prompt"] + it["response"][:-1] for it in items],
                               [it["response"][-1] for it in items], lm.tokenizer.pad_token_id, adapter=False)
        with torch.no_grad():
            out = _step_forward(lm.model, prefix.past_key_values, prefix.cache_mask, prefix.last_tokens, hidden=True)
        return out.hidden_states[-1][:, -1]


def solve_offset(a: torch.Tensor, b: torch.Tensor, rate: float, iters: int = 50) -> float:
    """α with mean(sigmoid(a + α·b)) = rate, by bisection (monotone in α when b > 0 on average)."""
    def mean_conf(alpha: float) -> float:
        return float(torch.sigmoid(a + alpha * b).mean())

    lo, hi = -1.0, 1.0
    while mean_conf(hi) < rate and hi < 1e6:
        hi *= 2
    while mean_conf(lo) > rate and lo > -1e6:
        lo *= 2
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_conf(mid) < rate else (lo, mid)
    return (lo + hi) / 2


def _matrices(model: torch.nn.Module) -> list[torch.Tensor]:
    from ..training.artifact import _embedding_matrices

    return _embedding_matrices(_unwrap(model))


def _truncate(prompt: list[int], response: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Keep the end of over-long sequences: the read-out needs the answer's last tokens."""
    overflow = len(prompt) + len(response) - max_length
    if overflow > 0:
        cut = min(overflow, len(prompt))
        prompt = prompt[cut:]
        response = response[overflow - cut:]
    return prompt, response


def require_hidden_states(records: Sequence[Record]) -> None:
    """GrACE's soft targets need each record's hidden state: fail early, naming the first record without one."""
    for record in records:
        if not record.hidden_state:
            raise InputError(f"record {record.id!r} has no hidden_state: generate the training split with "
                             "hidden_states=True (certa generate --hidden-states)")


def train_grace(lm: LoadedModel, records: Sequence[Record], config: TrainConfig | None = None,
                out_dir: str | os.PathLike[str] = "grace-artifact", resume: bool = False, *,
                readout: Readout = "step", targets: Literal["soft", "binary"] = "soft", bins: int = 10,
                progress: bool = True) -> Path:
    """Train GrACE on the base model's own graded greedy answers and save an artifact; return its path.

    ``records`` must come from ``generate(..., hidden_states=True)`` on the
    training split, graded. ``readout="free"`` trains the ``<CNF>`` row only.
    """
    from ..training.objective import TrainConfig
    from ..training.trainer import train

    require_hidden_states(records)
    config = config or TrainConfig()
    if readout == "free":
        config = config.model_copy(update={"target_modules": [], "mode": "suffix"})
    objective = GraceObjective(targets=targets, bins=bins, readout=readout)
    return train(objective, lm, records, config, out_dir, resume=resume, progress=progress)
