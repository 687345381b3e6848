"""ConfTuner as an :class:`~certa.training.objective.Objective`: tokenized Brier at the verbal read-out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ...models.tensors import left_pad, positions_from_mask
from ...prompts import question_prompt
from ...records import Record
from ...training.losses import IGNORE_INDEX, response_lm_loss, tokenized_brier
from ..prompting.verbalized import ConfidenceTokens, confidence_tokens, verbal_prompt
from ..readouts import restricted_log_softmax
from .config import ConfTunerConfig

if TYPE_CHECKING:
    from ...models import LoadedModel

log = logging.getLogger(__name__)

METHOD = "conftuner"


def verbal_texts(lm: LoadedModel, records: Sequence[Record], tokens: ConfidenceTokens) -> list[str]:
    """The verbal read-out prompt of each record: its question, its own response, then ``Confidence: ``."""
    return [verbal_prompt(lm, question_prompt(r.example()), r.response, tokens) for r in records]


class ConfTunerObjective:
    """No added tokens; the restricted softmax over the confidence levels after ``Confidence: `` is
    trained with the tokenized Brier score (plus λ·LM loss on the response in ``full`` mode)."""

    method = METHOD

    def __init__(self, config: ConfTunerConfig):
        self.config = config
        self.tokens: ConfidenceTokens | None = None

    def prepare(self, lm: LoadedModel, config: ConfTunerConfig) -> None:
        self.tokens = confidence_tokens(lm.tokenizer, config.scale)

    def trainable_token_ids(self, lm: LoadedModel) -> list[int]:
        return []

    def build_items(self, lm: LoadedModel, records: Sequence[Record], config: ConfTunerConfig) -> list[dict[str, Any]]:
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
        input_ids, mask = left_pad([it["input_ids"] for it in items], lm.tokenizer.pad_token_id)
        batch = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions_from_mask(mask),
                 "correct": torch.tensor([it["correct"] for it in items], dtype=torch.float32)}
        if "labels" in items[0]:
            batch["labels"], _ = left_pad([it["labels"] for it in items], IGNORE_INDEX)
        return batch

    def loss(self, lm: LoadedModel, batch: dict[str, torch.Tensor], config: ConfTunerConfig
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """Tokenized Brier over the restricted softmax at the last position (+ λ·LM loss in full mode)."""
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
                "mode": self.config.mode, "answers_use_adapter": self.config.mode == "full",
                "confidence_tokens": {"token_ids": [int(t) for t in tokens.token_ids],
                                      "scores": [float(s) for s in tokens.scores],
                                      "labels": list(tokens.labels), "cue": tokens.cue}}

    def _tokens(self) -> ConfidenceTokens:
        if self.tokens is None:
            raise RuntimeError("ConfTunerObjective.prepare must run before build_items/loss")
        return self.tokens


def _response_labels(ids: list[int], offsets: Sequence[tuple[int, int]], text: str, response: str) -> list[int]:
    """LM labels for the tokens that lie inside the response's span of ``text``; -100 elsewhere."""
    answer = response.strip()
    start = text.rfind(answer) if answer else -1
    if start < 0:
        return [IGNORE_INDEX] * len(ids)
    end = start + len(answer)
    return [t if start <= a and b <= end and b > a else IGNORE_INDEX for t, (a, b) in zip(ids, offsets, strict=True)]
