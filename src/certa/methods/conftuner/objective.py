"""ConfTuner as an :class:`~certa.training.objective.Objective`: tokenized Brier at the verbal read-out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ...models.tensors import left_pad, positions_from_mask
from ...records import Record
from ...training.losses import IGNORE_INDEX, response_lm_loss, tokenized_brier
from ..answer_cache import PrefixStore, content_key, readout_logits
from ..prompting.verbalized import ConfidenceTokens, confidence_tokens, verbal_inputs
from ..readouts import restricted_log_softmax
from .config import ConfTunerConfig

if TYPE_CHECKING:
    from ...models import LoadedModel

log = logging.getLogger(__name__)

METHOD = "conftuner"


class ConfTunerObjective:
    """No added tokens; the restricted softmax over the confidence levels after the verbal suffix is
    trained with the tokenized Brier score, its level-spread term weighted by ``spread_weight`` (0 by default:
    the Brier score of the expected confidence; 1: the paper's loss).

    ``suffix`` mode (default): prompt and answer are encoded once without
    gradients by the base model and the adapter runs on the suffix alone — the
    same computation as the read-out, and far cheaper than a full forward.
    ``full`` mode (the paper's): the adapter runs over the whole sequence, with
    λ·LM loss on the response tokens.
    """

    method = METHOD

    def __init__(self, config: ConfTunerConfig):
        self.config = config
        self.tokens: ConfidenceTokens | None = None
        self.prefixes = PrefixStore(config.prefix_cache_gb)

    def prepare(self, lm: LoadedModel, config: ConfTunerConfig) -> None:
        self.tokens = confidence_tokens(lm.tokenizer, config.scale)

    def trainable_token_ids(self, lm: LoadedModel) -> list[int]:
        return []

    def build_items(self, lm: LoadedModel, records: Sequence[Record], config: ConfTunerConfig) -> list[dict[str, Any]]:
        """One item per graded record: prompt, answer and suffix token ids, and the label y = ``record.correct``."""
        items = []
        truncated = 0
        inputs = verbal_inputs(lm, records, self._tokens(), config.prompt)
        for record, (prompt, response, suffix) in zip(records, inputs, strict=True):
            overflow = len(prompt) + len(response) + len(suffix) - config.max_length
            if overflow > 0:  # the read-out is at the end, so the start of the prompt is what goes
                truncated += 1
                prompt = prompt[min(overflow, len(prompt)):]
            items.append({"id": content_key(prompt, response), "prompt": prompt, "response": response, "suffix": suffix,
                          "correct": float(record.correct)})
        if truncated:
            log.warning("conftuner: %d of %d training prompts cut to their last %d tokens (max_length)",
                        truncated, len(items), config.max_length)
        self.prefixes.plan([it["id"] for it in items], [(it["prompt"], it["response"]) for it in items])
        return items

    def validation_items(self, lm: LoadedModel, records: Sequence[Record], config: ConfTunerConfig
                         ) -> list[dict[str, Any]]:
        return self.build_items(lm, records, config)  # building ConfTuner's items changes nothing

    def collate(self, lm: LoadedModel, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Suffix mode: the left-padded prefix, each answer's last token and the suffixes; full mode: the whole
        left-padded sequence with LM labels on the response. Position ids count real tokens only."""
        pad = lm.tokenizer.pad_token_id
        batch: dict[str, Any] = {"correct": torch.tensor([it["correct"] for it in items], dtype=torch.float32)}
        if self.config.mode == "full":
            batch["input_ids"], batch["attention_mask"] = left_pad(
                [it["prompt"] + it["response"] + it["suffix"] for it in items], pad)
            batch["labels"], _ = left_pad([[IGNORE_INDEX] * len(it["prompt"]) + it["response"]
                                           + [IGNORE_INDEX] * len(it["suffix"]) for it in items], IGNORE_INDEX)
        else:  # suffix mode: the loss takes the answers' base encoding from the prefix store
            batch["keys"] = [it["id"] for it in items]
            batch["pairs"] = [(it["prompt"], it["response"]) for it in items]
            batch["suffixes"] = [it["suffix"] for it in items]
        return batch

    def loss(self, lm: LoadedModel, batch: dict[str, Any], config: ConfTunerConfig
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """Tokenized Brier (spread term × ``spread_weight``) over the restricted softmax at the read-out, + λ·LM loss in
        full mode."""
        probs, logits = self._levels(lm, batch)
        scores = torch.tensor(self._tokens().scores, dtype=probs.dtype, device=probs.device)
        brier = tokenized_brier(probs, batch["correct"].to(probs.device), scores, config.spread_weight)
        scalars = {"brier": float(brier.detach()), "mean_confidence": float((probs @ scores).mean().detach())}
        if logits is None:
            return brier, scalars
        lm_loss = response_lm_loss(logits, batch["labels"].to(logits.device))
        scalars["lm_loss"] = float(lm_loss.detach())
        return brier + config.lm_loss_weight * lm_loss, scalars

    def confidences(self, lm: LoadedModel, batch: dict[str, Any]) -> torch.Tensor:
        """The expected confidence Σ p_i s_i, as the method reads it."""
        probs, _ = self._levels(lm, batch)
        return probs @ torch.tensor(self._tokens().scores, dtype=probs.dtype, device=probs.device)

    def _levels(self, lm: LoadedModel, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The restricted softmax over the levels, and (full mode with an LM loss) the whole sequence's logits."""
        if self.config.mode == "full":
            mask = batch["attention_mask"]
            with_lm = self.config.lm_loss_weight > 0
            out = lm.model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions_from_mask(mask),
                           logits_to_keep=0 if with_lm else 1)
            return restricted_log_softmax(out.logits[:, -1], self._tokens().token_ids).exp(), \
                (out.logits if with_lm else None)
        cache = self.prefixes.cache(lm.model, batch["keys"], batch["pairs"], lm.tokenizer.pad_token_id)
        logits = readout_logits(lm.model, cache, batch["suffixes"])
        return restricted_log_softmax(logits, self._tokens().token_ids).exp(), None

    def artifact_info(self) -> dict[str, Any]:
        tokens = self._tokens()
        return {"readout": "expected confidence over the verbal level tokens after the follow-up 'Confidence:'",
                "mode": self.config.mode, "answers_use_adapter": self.config.mode == "full",
                "confidence_tokens": {"token_ids": [int(t) for t in tokens.token_ids],
                                      "scores": [float(s) for s in tokens.scores],
                                      "labels": list(tokens.labels), "cue": tokens.cue}}

    def _tokens(self) -> ConfidenceTokens:
        if self.tokens is None:
            raise RuntimeError("ConfTunerObjective.prepare must run before build_items/loss")
        return self.tokens
