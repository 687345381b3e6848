"""ConfTuner's confidence as the model writes it: greedy text after ``Confidence: ``, parsed.

For models certa cannot see inside this is the only read-out; for the others
it shows how the tuned model *says* its confidence (ConfTuner, arXiv 2508.18847), beside the
expected value over the level tokens that certa reports.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ...models.tensors import left_pad
from ...records import Record
from ..prompting.verbalized import confidence_tokens, parse_confidence, verbal_inputs

if TYPE_CHECKING:
    from ...models import LoadedModel

log = logging.getLogger(__name__)


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
    trained_with = (lm.artifact or {}).get("train_config") or {}
    tokens = confidence_tokens(lm.tokenizer, trained_with.get("scale"))
    sequences = [p + r + s for p, r, s in verbal_inputs(lm, records, tokens, trained_with.get("prompt", "cue"))]
    written: list[str] = []
    for start in range(0, len(sequences), batch_size):
        ids, mask = left_pad(sequences[start:start + batch_size], lm.tokenizer.pad_token_id, lm.device)
        with torch.no_grad(), lm.adapter_enabled():
            out = lm.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                    do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
        written.extend(lm.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True))
    # The prompt ends inside "Confidence: N", so the cue is put back in front before parsing.
    values = [parse_confidence(tokens.cue + w, scale=tokens.scale) for w in written]
    parsed = np.array([np.nan if v is None else float(v) for v in values])
    result = TextConfidences(parsed, written)
    if result.failures:
        log.warning("conftuner: %d of %d written confidences could not be parsed", result.failures, len(written))
    return result
