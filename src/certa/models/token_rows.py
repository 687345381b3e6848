"""A forward through PEFT's trainable token rows without PEFT's merged copy of the embedding matrix.

GrACE trains its added ``<CNF>`` token as PEFT "trainable tokens"
(``LoraConfig(trainable_token_indices=...)``): the frozen embedding matrix plus
a trained row per added token. At every forward with the adapter on, PEFT
builds the matrix with the trained row written in (a copy of all V × H
weights) for the input embedding and again for the (tied) LM head, and the
backward produces a dense gradient of that copy. On the 135M default model
(V = 49,153) this was about a third of a GrACE training step, whose model
forward is a single token per answer.

:func:`trained_rows` reads the same numbers from the pieces: ordinary ids are
embedded by the frozen base embedding and a trained id gets its trained row;
the logits are the frozen head's, with each trained id's column replaced by
``hidden · trained row`` (the embedding's row when tied, the head's own when
untied). The decoder stack in between (LoRA layers included) is the model's
own. Only the trained rows and the adapter's weights get gradients, as with
PEFT's path. It applies where the causal LM's logits are known to be its
head's output (a list of model types, with Gemma's final soft-capping); any
other model, a merged or inactive adapter, or a model under a DDP-style
wrapper (whose forward must run for gradient synchronisation) gets ``None``,
and the caller runs the model's own forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .adapters import is_peft_model, unwrap

#: False runs the model's own forward everywhere (PEFT's merged matrices); tests and benchmarks compare the two.
ENABLED = True

#: Model types whose causal-LM forward is ``lm_head(decoder(inputs_embeds))``, then (True) Gemma's final
#: soft-capping ``cap · tanh(logits / cap)``; an embedding that scales (Gemma's) does so in its own module.
PLAIN_HEADS = {"llama": False, "mistral": False, "qwen2": False, "qwen3": False, "phi3": False,
               "smollm3": False, "olmo2": False, "gemma": False, "gemma2": True, "gemma3_text": True}


@dataclass(frozen=True)
class Rows:
    """Which ids a module computes from trained rows, and the rows (``[k, H]``, one per id)."""

    ids: list[int]
    rows: torch.Tensor


@dataclass(frozen=True)
class TrainedRows:
    """A causal LM split into frozen embedding, decoder stack and frozen head, plus the active trained rows."""

    decoder: torch.nn.Module
    embedding: torch.nn.Module       # embeds every other id (the frozen base module, scale included)
    embedding_rows: Rows | None
    embed_scale: torch.Tensor | None  # the factor the embedding module applies to its rows (Gemma's √H)
    head: torch.nn.Module            # computes every other column (the frozen base head)
    head_rows: Rows | None
    softcap: float | None

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings ``[..., H]`` of ``ids``, the trained rows where an id is a trained token."""
        out = self.embedding(ids)
        if self.embedding_rows is not None:
            for token, row in zip(self.embedding_rows.ids, self.embedding_rows.rows, strict=True):
                row = row.to(out.dtype)
                if self.embed_scale is not None:
                    row = row * self.embed_scale.to(out.dtype)
                out = torch.where((ids == token).unsqueeze(-1), row, out)
        return out

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's logits ``[..., V]`` at final-layer states ``hidden`` (the LM head's input)."""
        out = self.head(hidden)
        if self.head_rows is not None:
            index = torch.tensor(self.head_rows.ids, device=out.device)
            trained = torch.nn.functional.linear(hidden, self.head_rows.rows.to(self.head.weight.dtype))
            out = out.index_copy(-1, index, trained.to(out.dtype))
        if self.softcap is not None:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out


def forward_logits(model: torch.nn.Module, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """``model(input_ids=input_ids, **kwargs).logits`` in the adapter state already set, through the trained
    token rows when :func:`trained_rows` can read them apart (no merged matrix). ``kwargs`` go to the decoder
    stack as the causal LM's forward passes them (``attention_mask``, ``position_ids``, the cache,
    ``use_cache``); logits come for every position (no ``logits_to_keep``, no ``labels``)."""
    rows = trained_rows(model)
    if rows is None:
        return model(input_ids=input_ids, **kwargs).logits
    out = rows.decoder(inputs_embeds=rows.embed(input_ids), **kwargs)
    return rows.logits(out.last_hidden_state)


def trained_rows(model: torch.nn.Module) -> TrainedRows | None:
    """``model`` with its active adapter's trainable token rows taken apart, or ``None`` when the model's own
    forward must run (see the module docstring). Call it with the adapter already switched on."""
    if not ENABLED or not is_peft_model(model) or unwrap(model) is not model or not hasattr(model, "get_base_model"):
        return None  # (PEFT marks the model inside a PeftModel with its config too)
    lm = model.get_base_model()
    softcap_kind = PLAIN_HEADS.get(getattr(lm.config, "model_type", ""))
    if softcap_kind is None:
        return None
    embedding, embedding_rows, scale = _split(lm.get_input_embeddings())
    head, head_rows, _ = _split(lm.get_output_embeddings())
    if embedding is None or head is None or (embedding_rows is None and head_rows is None):
        return None
    if getattr(head, "bias", None) is not None and head_rows is not None:
        return None  # PEFT's merged head drops a bias; no causal LM of the list has one
    softcap = getattr(lm.config, "final_logit_softcapping", None) if softcap_kind else None
    # older transformers (4.56, certa's lower bound) return None from get_decoder(); the stack is ``.model``
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else None
    decoder = decoder if decoder is not None else getattr(lm, "model", None)
    if not isinstance(decoder, torch.nn.Module):
        return None
    return TrainedRows(decoder, embedding, embedding_rows, scale, head, head_rows, softcap)


def _split(module: torch.nn.Module | None) -> tuple[torch.nn.Module | None, Rows | None, torch.Tensor | None]:
    """(the module that computes the ordinary rows, the trained rows, the embedding scale) of an embedding or
    head; ``(None, None, None)`` when its trained rows cannot be read apart (merged, several adapters)."""
    from peft.tuners.trainable_tokens import TrainableTokensLayer
    from peft.utils.other import TrainableTokensWrapper

    # LoraConfig(trainable_token_indices=...) wraps the module; TrainableTokensConfig replaces it by the layer
    layer = module.token_adapter if isinstance(module, TrainableTokensWrapper) else module
    if not isinstance(layer, TrainableTokensLayer):
        return module, None, None
    adapters = layer.active_adapters
    if layer.merged or layer.disable_adapters or len(adapters) != 1 or adapters[0] not in layer.token_indices:
        return None, None, None
    base = layer.get_base_layer()
    scale = getattr(base, "embed_scale", None)
    if isinstance(scale, (int, float)):
        scale = torch.tensor(scale, device=base.weight.device, dtype=base.weight.dtype)
    if scale is not None and scale.numel() != 1:
        return None, None, None
    name = adapters[0]
    return base, Rows(list(layer.token_indices[name]), layer.trainable_tokens_delta[name]), scale
