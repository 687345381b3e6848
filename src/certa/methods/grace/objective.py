"""GrACE as an :class:`~certa.training.objective.Objective` for the shared trainer (GrACE, arXiv 2509.09438)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...errors import InputError
from ...models.tensors import left_pad, positions_from_mask
from ...models.token_rows import forward_logits
from ...records import Record
from ...training.losses import grace_calibration_loss, response_lm_loss
from ...training.targets import choose_probe_c, soft_targets
from ..answer_cache import PrefixStore, answer_ids, content_key
from .config import GraceConfig
from .readout import CNF_TOKEN, cnf_token_id, free_readout, readout_step
from .token import add_cnf_token, init_sample, mean_target, place_cnf_row, readout_states

if TYPE_CHECKING:
    from ...models import LoadedModel


class GraceObjective:
    """Soft, accuracy-linked targets for P(<CNF>) after each training answer; MSE (or BCE) to them.

    ``suffix`` mode (default): the adapter is on only for the read-out step over
    the base model's KV cache, so answers cannot move. ``full`` mode (the
    paper's): the adapter runs over the whole sequence with λ·LM loss on the
    response. ``readout="free"``: only the ``<CNF>`` row trains, read at the
    end-predicting state (pair with ``target_modules=[]``). ``build_items`` also
    places the initial ``<CNF>`` row: it is the first point where the objective sees data.
    """

    method = "grace"

    def __init__(self, config: GraceConfig):
        self.config = config
        self.cnf_id: int | None = None
        self.init_rate: float | None = None
        self.probe_c: float | None = None
        self.prefixes = PrefixStore(config.prefix_cache_gb)

    # -- Objective protocol

    def prepare(self, lm: LoadedModel, config: GraceConfig) -> None:
        self.cnf_id = add_cnf_token(lm)

    def trainable_token_ids(self, lm: LoadedModel) -> list[int]:
        return [cnf_token_id(lm.tokenizer)]

    def build_items(self, lm: LoadedModel, records: Sequence[Record], config: GraceConfig) -> list[dict[str, Any]]:
        require_hidden_states(records)
        hidden = np.asarray([r.hidden_state for r in records], dtype=float)
        correct = np.asarray([r.correct for r in records], dtype=float)
        if config.targets == "binary":
            self.probe_c = None
        elif config.probe_c == "cv":
            self.probe_c = choose_probe_c(hidden, correct, folds=config.folds, seed=config.seed)
        else:
            self.probe_c = float(config.probe_c)
        target = soft_targets(hidden, correct, kind=config.targets, bins=config.bins, folds=config.folds,
                              seed=config.seed, C=self.probe_c or 1.0)
        items = self._items(lm, records, target, config)
        self.init_rate = mean_target(items)
        sample = init_sample(items, config.init_sample, config.seed)
        states = readout_states(lm, sample, config.readout, config.batch_size,
                                prefixes=self.prefixes if config.mode == "suffix" else None)
        place_cnf_row(lm, self._cnf(lm), states, self.init_rate)
        return items

    def validation_items(self, lm: LoadedModel, records: Sequence[Record], config: GraceConfig) -> list[dict[str, Any]]:
        return self._items(lm, records, [r.correct for r in records], config)

    def _items(self, lm: LoadedModel, records: Sequence[Record], targets: Sequence[float],
               config: GraceConfig) -> list[dict[str, Any]]:
        items = []
        for record, t in zip(records, targets, strict=True):
            prompt, response = truncate(*answer_ids(lm, record), config.max_length)
            items.append({"id": content_key(prompt, response), "prompt": prompt, "response": response, "target": float(t),
                          "correct": float(record.correct), "hidden": record.hidden_state})
        self.prefixes.plan([it["id"] for it in items], [(it["prompt"], it["response"]) for it in items])
        return items

    def collate(self, lm: LoadedModel, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pad = lm.tokenizer.pad_token_id
        batch = {"target": torch.tensor([it["target"] for it in items], dtype=torch.float32)}
        if self.config.readout == "free":
            batch["hidden"] = torch.tensor([it["hidden"] for it in items], dtype=torch.float32)
        elif self.config.mode == "full":
            batch["input_ids"], batch["attention_mask"] = left_pad([it["prompt"] + it["response"] for it in items],
                                                                   pad)
            batch["labels"], _ = left_pad([[-100] * len(it["prompt"]) + it["response"] for it in items], -100)
        else:  # suffix mode: the loss takes the answers' base encoding from the prefix store
            batch["keys"] = [it["id"] for it in items]
            batch["pairs"] = [(it["prompt"], it["response"]) for it in items]
        return batch

    def loss(self, lm: LoadedModel, batch: dict[str, torch.Tensor],
             config: GraceConfig) -> tuple[torch.Tensor, dict[str, float]]:
        conf, logits = self._readout(lm, batch)
        calibration = grace_calibration_loss(conf, batch["target"], config.calibration_loss)
        scalars = {"conf_mean": conf.mean().item()}
        if logits is None:
            return calibration, scalars
        lm_loss = response_lm_loss(logits, batch["labels"])
        scalars.update(calibration=calibration.item(), lm_loss=lm_loss.item())
        return calibration + config.lm_loss_weight * lm_loss, scalars

    def confidences(self, lm: LoadedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._readout(lm, batch)[0]

    def _readout(self, lm: LoadedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """P(<CNF>) after each answer, and (full mode) the logits over the whole sequence for the LM loss."""
        cnf_id = self._cnf(lm)
        if self.config.readout == "free":
            return free_readout(lm.model, batch["hidden"], cnf_id), None
        if self.config.mode == "full":
            mask = batch["attention_mask"]
            logits = forward_logits(lm.model, batch["input_ids"], attention_mask=mask,
                                    position_ids=positions_from_mask(mask))
            return logits[:, -1].float().softmax(-1)[:, cnf_id], logits
        cache = self.prefixes.cache(lm.model, batch["keys"], batch["pairs"], lm.tokenizer.pad_token_id)
        return readout_step(lm.model, cache, cnf_id), None

    def artifact_info(self) -> dict[str, Any]:
        c = self.config
        return {"token": CNF_TOKEN, "token_id": self.cnf_id, "mode": c.mode, "readout": c.readout,
                "answers_use_adapter": c.mode == "full", "targets": c.targets, "bins": c.bins,
                "folds": c.folds, "probe_c": self.probe_c, "init_rate": self.init_rate}

    def _cnf(self, lm: LoadedModel) -> int:
        return self.cnf_id if self.cnf_id is not None else cnf_token_id(lm.tokenizer)


def truncate(prompt: list[int], response: list[int], max_length: int) -> tuple[list[int], list[int]]:
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
