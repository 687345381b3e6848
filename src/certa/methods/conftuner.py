"""ConfTuner: verbalized confidence after tuning with the tokenized Brier score (SPEC §2, §6).

The read-out is the verbalized one (``certa.methods.verbalized``): the model
sees the question and an answer followed by ``Confidence: `` and the next
token is a confidence level t_i standing for a score s_i. ConfTuner trains a
LoRA adapter so that the restricted softmax p over those level tokens
minimises the tokenized Brier score Σ_i p_i (y − s_i)², a proper scoring rule;
the confidence reported is the expected score Σ_i p_i s_i.

Answers are fixed text here: they come from the base model with the adapter
off (or from any other model), so one forward pass with the adapter on over
the verbal prompt is the whole read-out, and scoring a black-box model's
answers is the same code path. ``mode="full"`` adds the paper's LM loss on the
response tokens; answers should then be generated with the adapter on.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ..records import Record, from_dict, iter_jsonl
from .base import ModelReadoutMethod, Needs, register

if TYPE_CHECKING:
    import torch

    from ..models import LoadedModel
    from ..training.objective import TrainConfig
    from .verbalized import ConfidenceTokens

log = logging.getLogger(__name__)

METHOD = "conftuner"


def verbal_texts(lm: LoadedModel, records: Sequence[Record], tokens: ConfidenceTokens) -> list[str]:
    """The verbal read-out prompt of each record: its question, its own response, then ``Confidence: ``."""
    from ..prompts import question_prompt
    from .verbalized import verbal_prompt

    return [verbal_prompt(lm, question_prompt(r.example()), r.response, tokens) for r in records]


# ── training objective ────────────────────────────────────────────────────────────────────────


@dataclass
class ConfTunerObjective:
    """ConfTuner as the shared trainer sees it: no added tokens, tokenized Brier at the read-out."""

    method: str = METHOD
    tokens: ConfidenceTokens | None = None

    def prepare(self, lm: LoadedModel, config: TrainConfig) -> None:
        from .verbalized import confidence_tokens

        self.tokens = confidence_tokens(lm.tokenizer)

    def trainable_token_ids(self, lm: LoadedModel) -> list[int]:
        return []

    def build_items(self, lm: LoadedModel, records: Sequence[Record], config: TrainConfig) -> list[dict[str, Any]]:
        """One item per graded record: the verbal prompt's token ids and the label y = ``record.correct``.

        In ``full`` mode each item also carries LM labels on its response tokens.
        """
        items = []
        truncated = 0
        for record, text in zip(records, verbal_texts(lm, records, self._tokens()), strict=True):
            encoded = lm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=config.mode == "full")
            ids = list(encoded["input_ids"])
            item: dict[str, Any] = {"input_ids": ids, "correct": float(record.correct)}
            if config.mode == "full":
                item["labels"] = _response_labels(ids, encoded["offset_mapping"], text, record.response)
            if len(ids) > config.max_length:
                # The read-out is the last position, so the start of the prompt is what goes.
                truncated += 1
                item = {k: v[-config.max_length:] if isinstance(v, list) else v for k, v in item.items()}
            items.append(item)
        if truncated:
            log.warning("conftuner: %d of %d training prompts cut to their last %d tokens (max_length)",
                        truncated, len(items), config.max_length)
        return items

    def collate(self, lm: LoadedModel, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Left-pad to the longest item; position ids count real tokens only, as in generation."""
        import torch

        from ..training.losses import IGNORE_INDEX

        width = max(len(it["input_ids"]) for it in items)
        pad = lm.tokenizer.pad_token_id

        def left_pad(values: list[int], fill: int) -> list[int]:
            return [fill] * (width - len(values)) + values

        mask = torch.tensor([left_pad([1] * len(it["input_ids"]), 0) for it in items])
        batch = {
            "input_ids": torch.tensor([left_pad(it["input_ids"], pad) for it in items]),
            "attention_mask": mask,
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
            "correct": torch.tensor([it["correct"] for it in items], dtype=torch.float32),
        }
        if "labels" in items[0]:
            batch["labels"] = torch.tensor([left_pad(it["labels"], IGNORE_INDEX) for it in items])
        return batch

    def loss(self, lm: LoadedModel, batch: dict[str, torch.Tensor], config: TrainConfig
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """Tokenized Brier over the restricted softmax at the last position (+ λ·LM loss in full mode)."""
        import torch

        from ..scoring import restricted_log_softmax
        from ..training.losses import response_lm_loss, tokenized_brier

        tokens = self._tokens()
        full = "labels" in batch
        out = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"], logits_to_keep=0 if full else 1)
        probs = restricted_log_softmax(out.logits[:, -1], tokens.token_ids).exp()
        scores = torch.tensor(tokens.scores, dtype=probs.dtype, device=probs.device)
        brier = tokenized_brier(probs, batch["correct"].to(probs.device), scores)
        scalars = {"brier": float(brier.detach()), "mean_confidence": float((probs @ scores).mean().detach())}
        if not full:
            return brier, scalars
        lm_loss = response_lm_loss(out.logits, batch["labels"].to(out.logits.device))
        scalars["lm_loss"] = float(lm_loss.detach())
        return brier + config.lm_loss_weight * lm_loss, scalars

    def artifact_info(self) -> dict[str, Any]:
        tokens = self._tokens()
        return {"readout": "expected confidence over the verbal level tokens after 'Confidence: '",
                "confidence_tokens": {"token_ids": [int(t) for t in tokens.token_ids],
                                      "scores": [float(s) for s in tokens.scores],
                                      "labels": list(tokens.labels), "cue": tokens.cue}}

    def _tokens(self) -> ConfidenceTokens:
        if self.tokens is None:
            raise RuntimeError("ConfTunerObjective.prepare must run before build_items/loss")
        return self.tokens


def _response_labels(ids: list[int], offsets: Sequence[tuple[int, int]], text: str, response: str) -> list[int]:
    """LM labels for the tokens that lie inside the response's span of ``text``; -100 elsewhere."""
    from ..training.losses import IGNORE_INDEX

    answer = response.strip()
    start = text.rfind(answer) if answer else -1
    if start < 0:
        return [IGNORE_INDEX] * len(ids)
    end = start + len(answer)
    return [t if start <= a and b <= end and b > a else IGNORE_INDEX for t, (a, b) in zip(ids, offsets, strict=True)]


def train_conftuner(lm: LoadedModel, records: Sequence[Record], config: TrainConfig | None,
                    out_dir: str | os.PathLike[str], resume: bool = False, *, in_place: bool = False,
                    progress: bool = True) -> Path:
    """Train ConfTuner on graded records of the model's own answers; returns the artifact directory.

    The trainer attaches the adapter to the model it is given, so by default
    a copy of ``lm``'s weights is trained and ``lm`` stays the base model
    (``in_place=True`` saves that memory on large models). ``lm`` must be a
    base model without an adapter (``InputError`` otherwise). Load the result
    with ``certa.load_model(out_dir)``.
    """
    from ..training.objective import TrainConfig
    from ..training.trainer import train

    if hasattr(lm.model, "peft_config"):
        raise InputError(f"train_conftuner: model {lm.name!r} already has an adapter attached; "
                         "pass a freshly loaded base model")
    config = config or TrainConfig()
    target = lm if in_place else dataclasses.replace(lm, model=copy.deepcopy(lm.model))
    return train(ConfTunerObjective(), target, records, config, out_dir, resume=resume, progress=progress)


# ── read-out ──────────────────────────────────────────────────────────────────────────────────


def level_probabilities(lm: LoadedModel, records: Sequence[Record], batch_size: int = 16,
                        progress: bool = False) -> tuple[np.ndarray, ConfidenceTokens]:
    """The restricted softmax over the confidence-level tokens for each record, [N, levels]."""
    from ..scoring import restricted_next_token_probs
    from .verbalized import confidence_tokens

    tokens = confidence_tokens(lm.tokenizer)
    texts = verbal_texts(lm, records, tokens)
    probs = restricted_next_token_probs(lm, texts, tokens.token_ids, batch_size=batch_size, progress=progress)
    return np.asarray(probs, dtype=float), tokens


def level_diagnostics(probs: np.ndarray, tokens: ConfidenceTokens) -> dict[str, Any]:
    """Collapse check (SPEC §6): the argmax level's confidence per answer and how many levels are used."""
    scores = np.asarray(tokens.scores, dtype=float)
    top = probs.argmax(axis=1)
    used, counts = np.unique(top, return_counts=True)
    return {
        "argmax_confidence": [float(scores[i]) for i in top],
        "distinct_levels": int(len(used)),
        "level_counts": {str(tokens.labels[i]): int(c) for i, c in zip(used, counts, strict=True)},
    }


@register(METHOD)
class ConfTuner(ModelReadoutMethod):
    """ConfTuner: expected verbalized confidence Σ p_i s_i after tokenized-Brier tuning."""

    needs = Needs.MODEL
    cost = "one forward pass over prompt + answer + 'Confidence: ' per answer (adapter on)"

    def __init__(self, model: LoadedModel | None = None, **options: Any):
        super().__init__(model, **options)
        self.last_diagnostics: dict[str, Any] = {}
        method = (model.artifact or {}).get("method") if model is not None else None
        if model is not None and method != METHOD:
            log.warning("model %r is not a ConfTuner artifact (method %r): this is the untrained "
                        "verbalized read-out", model.name, method)

    def score(self, records: Sequence[Record]) -> np.ndarray:
        from .verbalized import expected_confidence

        probs, tokens = level_probabilities(self.model, records, self.batch_size, self.progress)
        self.last_diagnostics = level_diagnostics(probs, tokens)
        return np.asarray(expected_confidence(probs, tokens), dtype=float)


# ── black-box answers ─────────────────────────────────────────────────────────────────────────


def read_answers(path: str | os.PathLike[str]) -> list[Record]:
    """Read a JSONL of answers produced elsewhere: ``{id, question, response, ...}`` per line.

    ``answer_type`` / ``choices`` shape the prompt as for certa's own answers;
    ``answers`` and ``correct`` are optional (needed only to evaluate).
    """
    records = []
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object")
        for name in ("id", "question", "response"):
            if name not in row:
                raise InputError(f"{where}: missing field {name!r}")
            if not isinstance(row[name], (str, int)) or (name != "id" and not str(row[name]).strip()):
                raise InputError(f"{where}: field {name!r} must be a non-empty string")
        record = from_dict(Record, {"prompt": "", **row, "id": str(row["id"])}, where=where)
        if record.answer_type == "choice" and not record.choices:
            raise InputError(f"{where}: answer_type 'choice' needs a non-empty 'choices' list")
        records.append(record)
    if not records:
        raise InputError(f"{path}: no answers")
    return records


def score_answers(lm: LoadedModel, answers: str | os.PathLike[str] | Sequence[Record],
                  batch_size: int = 16) -> np.ndarray:
    """ConfTuner confidences for answers any model gave (a JSONL path or records), one per answer."""
    records = read_answers(answers) if isinstance(answers, (str, os.PathLike)) else list(answers)
    return ConfTuner(model=lm, batch_size=batch_size)(records)


# ── text read-out ─────────────────────────────────────────────────────────────────────────────


@dataclass
class TextConfidences:
    """Confidences the model wrote as text: NaN where the text could not be parsed."""

    values: np.ndarray
    texts: list[str]

    @property
    def failures(self) -> int:
        return int(np.isnan(self.values).sum())

    @property
    def failure_rate(self) -> float:
        return self.failures / max(1, len(self.texts))


def generate_confidence_text(lm: LoadedModel, records: Sequence[Record], *, max_new_tokens: int = 4,
                             batch_size: int = 16) -> TextConfidences:
    """Let the model write its confidence after ``Confidence: `` (greedy) and parse it.

    Unparseable texts are kept as NaN and counted (``failures``), never dropped.
    """
    import torch

    from .verbalized import confidence_tokens, parse_confidence

    tokens = confidence_tokens(lm.tokenizer)
    texts = verbal_texts(lm, records, tokens)
    written: list[str] = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        enc = lm.tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
        with torch.no_grad():
            # input ids and mask only: some tokenizers add token_type_ids, which generate() refuses
            out = lm.model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                    max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=lm.tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        written.extend(lm.tokenizer.batch_decode(new, skip_special_tokens=True))
    # The prompt ends inside "Confidence: N", so the cue is put back in front before parsing.
    values = [parse_confidence(tokens.cue + w, scale=tokens.scale) for w in written]
    parsed = np.array([np.nan if v is None else float(v) for v in values])
    result = TextConfidences(parsed, written)
    if result.failures:
        log.warning("conftuner: %d of %d written confidences could not be parsed", result.failures, len(written))
    return result
