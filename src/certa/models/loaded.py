"""``LoadedModel``: a causal LM and its tokenizer, ready for batched decoding and read-outs.

A ``LoadedModel`` is a *view*: several views can share one set of weights in
memory, each naming the adapter it runs with (``adapter=None``: the base model,
every adapter off). A study loads its base model once, attaches each trained
artifact as a named adapter and hands every method the view it needs; nothing
is loaded twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError, one_line
from ..prompts import ANSWER_STOP, SYSTEM_PROMPT, few_shot_prompt
from .adapters import adapter_state, is_peft_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class LoadedModel:
    """A model ready for certa: weights on ``device``, tokenizer padded on the left.

    ``artifact`` is the ``certa.json`` of the trained artifact this view reads
    with (``None`` for a base model) and ``adapter`` the name of its PEFT
    adapter in ``model``; ``artifact_id`` digests the artifact's files, so
    confidences can name the artifact that produced them.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    device: torch.device
    dtype: torch.dtype
    artifact: dict[str, Any] | None = None
    adapter: str | None = None
    artifact_id: str | None = None
    #: Adapters attached to ``model`` (name → artifact info); shared by every view of the same weights.
    adapters: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def method(self) -> str | None:
        """The confidence method of this view's artifact (``None`` for a base model)."""
        return (self.artifact or {}).get("method")

    def view(self, adapter: str | None) -> LoadedModel:
        """The same weights run with another attached adapter (``None``: the base model)."""
        if adapter is not None and adapter not in self.adapters:
            raise KeyError(f"no adapter {adapter!r} attached to {self.name!r} (attached: {sorted(self.adapters)})")
        info = self.adapters.get(adapter) if adapter is not None else None
        return dataclasses.replace(self, adapter=adapter, artifact=info,
                                   artifact_id=(info or {}).get("artifact_id"))

    def chat_prompt(self, user: str, system: str | None = SYSTEM_PROMPT) -> str:
        """The full prompt text for one user turn, ending where the assistant starts answering.

        The system message is always passed explicitly (when not None) because
        some templates (SmolLM2's) insert their own default otherwise. Models
        without a chat template (base models) get a plain ``Question: ... Answer:`` prompt,
        few-shot for certa's question prompts (:func:`certa.prompts.few_shot_prompt`), led by
        the BOS token when the tokenizer adds one (prompts are tokenized without special tokens).
        """
        return render_chat(self.tokenizer, [("user", user)], system=system)

    def adapter_disabled(self) -> AbstractContextManager[Any]:
        """Run the base model: every adapter off for the block; a no-op without adapters."""
        return adapter_state(self.model, False)

    def adapter_enabled(self) -> AbstractContextManager[Any]:
        """Run this view's own adapter (the base model when the view has none)."""
        if self.adapter is None:
            return self.adapter_disabled()
        return adapter_state(self.model, True, self.adapter)

    def answering(self) -> AbstractContextManager[Any]:
        """The state answers are generated in: the base model, so a trained confidence read-out never
        moves an answer — unless the artifact was trained with its adapter over the answer (``full`` mode).
        A model loaded without certa's artifact (a user's own PEFT fine-tune) answers as it is."""
        if self.artifact is None:
            return self.adapter_disabled() if self.adapters else contextlib.nullcontext()
        info = self.artifact.get("method_info", {})
        return self.adapter_enabled() if info.get("answers_use_adapter") else self.adapter_disabled()

    @property
    def has_adapters(self) -> bool:
        return is_peft_model(self.model)

    @property
    def runs_an_adapter(self) -> bool:
        """Whether this view's read-outs run with an adapter: its named one, or the model's only one (a
        model being trained, a user's own PEFT model); never for the base view of a model with named adapters."""
        return self.adapter is not None or (self.has_adapters and not self.adapters)


def render_chat(tokenizer: PreTrainedTokenizerBase, turns: list[tuple[str, str]],
                system: str | None = SYSTEM_PROMPT) -> str:
    """Prompt text for ``(role, text)`` turns, ending where the assistant answers next.

    The one renderer every stage uses (generation, read-outs, training and the
    server): the chat template when the tokenizer has one, else a plain
    ``Question: … Answer:`` layout (few-shot for certa's question prompts) led by
    BOS when the tokenizer adds one. ``system=None`` leaves the system turn out;
    a ``system`` or ``developer`` turn among ``turns`` replaces the default.
    """
    turns = [("system" if role == "developer" else role, text) for role, text in turns]
    if turns and turns[0][0] == "system":
        system, turns = turns[0][1], turns[1:]
    if getattr(tokenizer, "chat_template", None):
        return _templated(tokenizer, turns, system)
    return _leading_bos(tokenizer) + _plain_dialogue(turns, system)


def _templated(tokenizer: PreTrainedTokenizerBase, turns: list[tuple[str, str]], system: str | None) -> str:
    """The chat template's prompt. A template that refuses a system turn (Gemma-it, Mistral-Instruct-v0.1:
    "System role not supported") gets the system text folded into the first user turn instead."""
    messages = [{"role": role, "content": text} for role, text in turns]
    try:
        try:
            head = [{"role": "system", "content": system}] if system is not None else []
            return tokenizer.apply_chat_template(head + messages, tokenize=False, add_generation_prompt=True)
        except Exception:
            first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
            if system is None or not system.strip() or first_user is None:
                raise
            messages[first_user] = {"role": "user", "content": f"{system}\n\n{messages[first_user]['content']}"}
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # jinja2 TemplateError (raise_exception), or whatever the template trips on
        name = getattr(tokenizer, "name_or_path", "") or "this model"
        detail = one_line(exc)
        raise InputError(f"{name}: its chat template cannot render this conversation "
                         f"({type(exc).__name__}: {detail})") from None


def _plain_dialogue(turns: list[tuple[str, str]], system: str | None) -> str:
    """A template-less model's prompt: certa's few-shot ``Question/Answer`` layout, earlier exchanges of
    the dialogue as answered questions before the last user turn."""
    history: list[tuple[str, str]] = []
    pending: str | None = None
    for role, text in turns:
        if role == "user":
            if pending is not None:
                history.append((pending, ""))
            pending = text
        elif role == "assistant" and pending is not None:
            history.append((pending, text))
            pending = None
    return few_shot_prompt(pending or "", system, history=history)


def end_token_ids(lm: LoadedModel) -> list[int]:
    """Token ids that end an assistant turn: EOS plus the template's end-of-turn token (e.g. ``<|im_end|>``)."""
    tokenizer = lm.tokenizer
    ids: list[int] = []
    config_eos = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, config_eos, _template_end_token(tokenizer)):
        for token_id in value if isinstance(value, (list, tuple)) else [value]:
            if token_id is not None and token_id not in ids:
                ids.append(int(token_id))
    return ids


def answer_stop_strings(lm: LoadedModel) -> list[str]:
    """Text that ends an answer besides :func:`end_token_ids`: the end of the answer line for models
    without a chat template, which answer few-shot and would go on to invent the next question."""
    return [] if getattr(lm.tokenizer, "chat_template", None) else [ANSWER_STOP]


def _template_end_token(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The special token a chat template puts right after an assistant message, if any."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "\x00certa-end\x00"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}], tokenize=False
        )
    except Exception:  # templates may reject this shape (e.g. require a system turn); EOS still applies
        return None
    after = text.split(marker, 1)[-1] if marker in text else ""
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    if ids and ids[0] in set(tokenizer.all_special_ids) | _added_special_ids(tokenizer):
        return int(ids[0])
    return None


def _leading_bos(tokenizer: PreTrainedTokenizerBase) -> str:
    """The BOS token text when the tokenizer puts BOS first on its own, else ``""``.

    certa tokenizes prompts without special tokens (chat templates write their own), so a prompt
    built without a template must spell BOS out; Gemma, for one, answers nonsense without it.
    """
    bos = tokenizer.bos_token
    if bos is None or tokenizer.bos_token_id is None:
        return ""
    ids = tokenizer("x")["input_ids"]
    return bos if ids and ids[0] == tokenizer.bos_token_id else ""


def _added_special_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {int(i) for i, tok in decoder.items() if getattr(tok, "special", False)}
