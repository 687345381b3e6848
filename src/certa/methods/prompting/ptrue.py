"""P(True): the model grades its own answer as a True/False multiple-choice question."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ...errors import CertaError
from ...models.remote import RemoteModel
from ...prompts import question_prompt
from ...records import Example, Record
from ..base import ModelReadoutMethod, Needs, register
from ..readouts import continuation_token_ids, restricted_next_token_probs
from .remote import remote_p_true

if TYPE_CHECKING:
    from ...models import LoadedModel

OPTIONS = ("A", "B")
"""(A) True, (B) False; the assistant turn starts with "(" so the next token is the letter."""


def p_true_prompt(lm: LoadedModel, example: Example, response: str) -> str:
    """The chat text after which the model picks (A) True or (B) False for ``response``."""
    user = (
        f"Question:\n{question_prompt(example)}\n\n"
        f"Proposed answer: {response.strip()}\n\n"
        "Is the proposed answer correct?\n(A) True\n(B) False\n"
        "Reply with (A) or (B)."
    )
    return lm.chat_prompt(user) + "("


@register("p_true")
class PTrue(ModelReadoutMethod):
    """Asks the model whether its answer is correct; confidence = p(A) / (p(A) + p(B)).

    After Kadavath et al. (2022), zero-shot: no few-shot examples and no
    brainstormed alternative answers in the prompt. Read with any trained
    adapter switched off, so it stays a base-model baseline.
    """

    needs = Needs.MODEL
    cost = "1 forward pass over a prompt holding question+answer"
    unreadable: int | None = None

    def diagnostics(self) -> dict:
        return {} if self.unreadable is None else {"unreadable": self.unreadable}

    def score(self, records: Sequence[Record]) -> np.ndarray:
        assert self.model is not None  # guaranteed by Needs.MODEL
        if isinstance(self.model, RemoteModel):  # a model behind a server: read from its top_logprobs
            scores, self.unreadable = remote_p_true(self.model, records)
            return scores
        lm = self.model
        texts = [p_true_prompt(lm, r.example(), r.response) for r in records]
        # Every prompt ends in the same "(": checking one shows how the letters tokenize after it.
        option_ids = continuation_token_ids(lm.tokenizer, texts[0], OPTIONS)
        if option_ids is None:
            raise CertaError(
                f"model {lm.name!r}: 'A' and 'B' are not single tokens after '(' in its tokenizer; "
                "p_true cannot read the choice from one next-token distribution"
            )
        with lm.adapter_disabled():
            probs = restricted_next_token_probs(
                lm, texts, option_ids, batch_size=self.batch_size, progress=self.progress
            )
        return probs[:, 0]
