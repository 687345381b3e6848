"""Batch plumbing every forward pass shares: left padding, positions from a mask, KV-cache lengths.

Batched decoding pads on the left, so every row's last token sits in the final
column; a forward over such a batch must give each row the positions it would
have alone (counting real tokens only), or RoPE models disagree with
generation. These helpers are the one place that does it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into ``(input_ids, attention_mask)``, both ``[rows, longest]``."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, width - len(row):] = torch.as_tensor(list(row), dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position of each slot = real tokens before it, as HF ``generate`` computes them.

    Without explicit positions a left-padded forward would start each row at
    the pad count instead of 0 and disagree with generation.
    """
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def cache_length(cache: Any) -> int | None:
    """Slots a KV cache holds (``None`` for a cache that cannot say)."""
    getter = getattr(cache, "get_seq_length", None)
    return int(getter()) if getter else None


def crop_cache(cache: Any, length: int | None) -> None:
    """Drop the slots appended after ``length``, so the next reader sees the cache as it was."""
    now = cache_length(cache)
    if length is None or now is None or now <= length or not hasattr(cache, "crop"):
        return
    cache.crop(-(now - length))  # a negative count removes that many slots (transformers 4 and 5)


def cache_parameter(model: torch.nn.Module) -> str:
    """The forward argument that takes a KV cache: ``cache`` from transformers 5.24, else ``past_key_values``.

    Read from the forward's signature rather than the version number, because a
    4.x ``forward(**kwargs)`` would silently swallow ``cache=`` and decode without it.
    """
    import inspect

    inner = getattr(model, "module", model)  # a DDP-style wrapper (accelerate)
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    try:
        parameters = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def output_cache(output: Any) -> Any:
    """The KV cache a forward or ``generate`` returned, under whichever name this transformers uses."""
    fields = getattr(type(output), "__dataclass_fields__", {})
    return output.cache if "cache" in fields else output.past_key_values


@contextlib.contextmanager
def head_inputs(model: torch.nn.Module, enabled: bool = True) -> Iterator[list[torch.Tensor]]:
    """The LM head's input at the newest position of each forward in the block, ``[rows, hidden]`` each.

    The LM head's input *is* the last-layer, post-norm hidden state, whatever the architecture, so this
    costs a reference per forward and no extra pass (``output_hidden_states`` would keep every layer's).
    """
    seen: list[torch.Tensor] = []
    if not enabled:
        yield seen
        return
    handle = model.get_output_embeddings().register_forward_pre_hook(
        lambda _module, args: seen.append(args[0][:, -1, :].detach()))
    try:
        yield seen
    finally:
        handle.remove()
