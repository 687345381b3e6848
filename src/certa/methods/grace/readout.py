"""GrACE's read-out: c = softmax(W·z)[<CNF>] after the answer, one function for every caller.

Training, the generation hook and offline scoring all compute the confidence
through :func:`readout_step` (one adapter-on decoding step over the answer's
KV cache, :mod:`certa.methods.answer_cache`: feed the last response token,
which HF ``generate`` never feeds, and read P(<CNF>) at that position) or
:func:`free_readout` (the ``<CNF>`` row alone, applied to the final-layer state
generation already computed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...errors import CertaError
from ...models.adapters import adapter_state, unwrap
from ...models.token_rows import trained_rows
from ...records import Record
from ..answer_cache import AnswerCache, answer_ids, step_logits
from ..shared_encodings import encode_or_reuse
from .config import Readout

if TYPE_CHECKING:
    from ...models import LoadedModel

CNF_TOKEN = "<CNF>"


def cnf_token_id(tokenizer: Any) -> int:
    """Id of ``<CNF>`` in ``tokenizer``; a clear error when the model was not trained with GrACE."""
    token_id = tokenizer.convert_tokens_to_ids(CNF_TOKEN)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise CertaError(f"the tokenizer has no {CNF_TOKEN} token: load a trained GrACE artifact")
    return int(token_id)


# ---------------------------------------------------------------- the read-out


def readout_step(model: torch.nn.Module, cache: AnswerCache, cnf_id: int, *,
                 adapter_name: str | None = None) -> torch.Tensor:
    """GrACE's read-out: c = P(<CNF> next) after feeding each row's last answer token, adapter on.

    Gradients flow when called outside ``no_grad`` (training); the cache is left as it was. The trained
    ``<CNF>`` rows enter without PEFT's merged embedding matrix (:func:`certa.models.token_rows.trained_rows`).
    """
    return step_logits(model, cache, adapter_name=adapter_name).float().softmax(-1)[:, cnf_id]


def free_readout(model: torch.nn.Module, hidden: torch.Tensor, cnf_id: int, *,
                 adapter_name: str | None = None) -> torch.Tensor:
    """Zero-overhead read-out: c = softmax(W·z)[<CNF>] at the state that already predicted the end."""
    with adapter_state(model, True, adapter_name):
        rows = trained_rows(model)
        if rows is not None:  # the trained <CNF> column without PEFT's merged head matrix
            logits = rows.logits(hidden.to(rows.head.weight.dtype))
        else:
            head = unwrap(model).get_output_embeddings()
            logits = head(hidden.to(head.weight.dtype))
    return logits.float().softmax(-1)[..., cnf_id]


def offline_confidence(lm: LoadedModel, records: Sequence[Record], *, readout: Readout = "step",
                       adapter_for_answer: bool = False, batch_size: int = 16) -> np.ndarray:
    """GrACE confidence of existing answers (ours or another model's), batched."""
    cnf_id = cnf_token_id(lm.tokenizer)
    out: list[np.ndarray] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        with torch.no_grad():
            if readout == "free" and all(r.hidden_state for r in chunk):
                hidden = torch.tensor([r.hidden_state for r in chunk], device=lm.device)
                conf = free_readout(lm.model, hidden, cnf_id, adapter_name=lm.adapter)
            else:
                cache = encode_or_reuse(lm, [answer_ids(lm, r) for r in chunk], hidden=readout == "free",
                                        adapter_enabled=adapter_for_answer, adapter_name=lm.adapter)
                conf = (free_readout(lm.model, cache.last_hidden, cnf_id, adapter_name=lm.adapter)
                        if readout == "free" else readout_step(lm.model, cache, cnf_id, adapter_name=lm.adapter))
        out.append(conf.cpu().numpy())
    return np.concatenate(out).astype(float)


# ---------------------------------------------------------------- generation hook


class GraceHook:
    """Generation hook: reads GrACE's confidence from the finished answers' KV cache, with no re-encoding.

    Generation calls it on groups of finished rows (``certa.generate`` does so on
    its own for a GrACE artifact) with a :class:`certa.decoding.FinishedBatch`:
    ``batch.cache`` is an :class:`AnswerCache` over prompt + answer minus its last
    token, exactly what :func:`offline_confidence` encodes, so both read the same
    number. The confidences land in ``Generation.confidence["grace"]`` (and
    ``sample_confidence["grace"]`` for samples), tagged with the artifact that read them.
    """

    name = "grace"

    def __init__(self, readout: Readout | None = None, calibrate: Callable[[np.ndarray], np.ndarray] | None = None):
        self.readout = readout
        self.calibrate = calibrate

    def on_finished(self, lm: LoadedModel, batch: Any) -> list[float]:
        cnf_id = cnf_token_id(lm.tokenizer)
        readout = self.readout or (lm.artifact or {}).get("method_info", {}).get("readout", "step")
        cache: AnswerCache = batch.cache
        with torch.no_grad():
            if readout == "free":
                conf = free_readout(lm.model, cache.last_hidden, cnf_id, adapter_name=lm.adapter)
            else:  # extend() leaves the cache as it found it
                conf = readout_step(lm.model, cache, cnf_id, adapter_name=lm.adapter)
        values = conf.float().cpu().numpy().astype(float)
        return (self.calibrate(values) if self.calibrate else values).tolist()
