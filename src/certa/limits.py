"""How long a prompt may be: the model's context window, and the check made before any compute.

A prompt longer than the model was built for either crashes deep inside the
forward pass (learned absolute positions) or runs for minutes and answers
nonsense (rotary positions past training length). So every prompt is measured
first and an over-long one is refused with its length and the limit, unless the
user chose ``truncate`` (keep the END of the prompt: the question and the
answer cue sit there, while the start is instructions or context).

``context_window`` reads the limit from a Hugging Face config (and the
tokenizer's ``model_max_length`` when the config names none);
``prompt_token_limit`` subtracts the tokens that will be generated;
``check_prompt_lengths`` applies it to a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import InputError

#: Config attributes that bound the sequence length, across Hugging Face architectures
#: (Llama/Qwen/Mistral: max_position_embeddings; GPT-2: n_positions / n_ctx; others below).
CONTEXT_KEYS: tuple[str, ...] = (
    "max_position_embeddings",
    "n_positions",
    "n_ctx",
    "max_sequence_length",
    "max_seq_len",
    "max_seq_length",
    "seq_length",
)

#: Rope-scaling types whose ``factor`` stretches ``original_max_position_embeddings`` at load time
#: while ``max_position_embeddings`` is left at the original (Qwen2.5's YaRN recipe). Llama 3.1's
#: ``llama3`` and Phi-3's ``longrope`` already state the stretched length in max_position_embeddings.
_STRETCHING_ROPE_TYPES = ("linear", "dynamic", "yarn")

#: ``PreTrainedTokenizer.model_max_length`` is ``int(1e30)`` when nobody set it; anything above this is "unset".
_SANE_TOKENIZER_LIMIT = 10_000_000


def context_window(config: Any, tokenizer: Any = None) -> int | None:
    """The longest sequence (prompt + generated tokens) the model is built for, or ``None`` if unknown.

    Reads ``config`` (a ``transformers.PretrainedConfig`` or anything with the same
    attributes; for multimodal configs, the text sub-config): the smallest of the
    length attributes in :data:`CONTEXT_KEYS` that is set, stretched by a YaRN /
    linear / dynamic rope-scaling ``factor`` when the config states the original
    length. ``sliding_window`` is NOT a limit: it narrows what each token attends
    to, not how long the sequence may be. When the config names no length, the
    tokenizer's ``model_max_length`` is used if it was set (not the 1e30 placeholder).
    """
    text_config = _text_config(config)
    lengths = [v for v in (_positive_int(getattr(text_config, key, None)) for key in CONTEXT_KEYS) if v]
    if lengths:
        return _rope_stretched(text_config, min(lengths))
    limit = _positive_int(getattr(tokenizer, "model_max_length", None)) if tokenizer is not None else None
    return limit if limit is not None and limit <= _SANE_TOKENIZER_LIMIT else None


def prompt_token_limit(context: int | None, max_new_tokens: int, cap: int | None = None) -> int | None:
    """Tokens a prompt may have so that it plus ``max_new_tokens`` fits ``context``, and at most ``cap``.

    ``None`` when neither bound is known. Raises :class:`InputError` when
    ``max_new_tokens`` alone fills the context (no prompt could fit).
    """
    limits = []
    if context is not None:
        room = context - max_new_tokens
        if room < 1:
            raise InputError(f"max_new_tokens is {max_new_tokens} but the model's context window is {context} "
                             "tokens; lower max_new_tokens")
        limits.append(room)
    if cap is not None:
        if cap < 1:
            raise InputError(f"the prompt-length cap must be at least 1 token, got {cap}")
        limits.append(cap)
    return min(limits) if limits else None


def check_prompt_lengths(lengths: Sequence[int], limit: int | None, *, what: str = "prompt",
                         names: Sequence[str] | None = None, truncate: bool = False,
                         hint: str = "pass --truncate to keep the end of each prompt") -> list[int]:
    """Check every prompt length against ``limit`` BEFORE any compute; the tokens to cut from each one's start.

    Args:
        lengths: prompt lengths in tokens.
        limit: the most tokens a prompt may have (see :func:`prompt_token_limit`); ``None`` = no limit.
        what: how the message names a prompt (``"prompt"``, ``"question"``).
        names: an id per prompt for the message (e.g. example ids); default: its position.
        truncate: the user's explicit choice to keep the last ``limit`` tokens of a long prompt.
        hint: what the message suggests (the CLI's flag, a library argument...).

    Returns:
        For each prompt, how many tokens to drop from its start: all 0 unless ``truncate``.

    Raises:
        InputError: a prompt is longer than ``limit`` and ``truncate`` is off. The one-line
            message names the longest offending prompt, its length, the limit and how many
            prompts are too long, e.g. ``question 'q7' is 90210 tokens; the limit is 8144
            (1 of 64 prompts too long); shorten it or pass --truncate ...``.
    """
    if names is not None and len(names) != len(lengths):
        raise ValueError(f"{len(names)} names for {len(lengths)} prompts")
    if limit is None:
        return [0] * len(lengths)
    if limit < 1:
        raise InputError(f"the {what} length limit must be at least 1 token, got {limit}")
    over = [i for i, n in enumerate(lengths) if n > limit]
    if over and not truncate:
        worst = max(over, key=lambda i: lengths[i])
        name = repr(str(names[worst])) if names is not None else f"#{worst + 1}"
        count = f"{len(over)} of {len(lengths)} {what}s too long" if len(lengths) > 1 else "too long"
        raise InputError(f"{what} {name} is {lengths[worst]} tokens; the limit is {limit} ({count}); "
                         f"shorten it or {hint}")
    return [max(0, n - limit) for n in lengths]


def _text_config(config: Any) -> Any:
    getter = getattr(config, "get_text_config", None)
    if callable(getter):
        try:
            return getter()
        except Exception:  # pragma: no cover - exotic configs
            return config
    return getattr(config, "text_config", None) or config


def _rope_stretched(config: Any, length: int) -> int:
    rope = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None)
    if not isinstance(rope, dict):
        return length
    kind = rope.get("rope_type", rope.get("type"))
    factor, original = rope.get("factor"), _positive_int(rope.get("original_max_position_embeddings"))
    if kind in _STRETCHING_ROPE_TYPES and isinstance(factor, (int, float)) and factor > 1 and original == length:
        return int(original * factor)
    return length


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 1:
        return None
    if value == float("inf"):
        return None
    return int(value)


def model_prompt_limit(lm: Any, max_new_tokens: int, cap: int | None = None) -> int | None:
    """:func:`prompt_token_limit` for a loaded model (``lm.model.config``, ``lm.tokenizer``)."""
    return prompt_token_limit(context_window(lm.model.config, lm.tokenizer), max_new_tokens, cap)
