"""Request bodies of the OpenAI-compatible endpoints, as pydantic models.

Only the fields certa acts on are declared; other OpenAI fields (``user``,
``seed``, ``presence_penalty``…) are accepted and ignored, so stock clients
work unchanged. Type errors in declared fields become OpenAI-style 400s.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    # Accepted for compatibility; decoding is greedy because confidences are calibrated for that answer.
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stop: str | list[str] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str] | None:
        # OpenAI accepts one string or up to four; empty strings would stop at once.
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop must be a non-empty string or a list of up to 4 non-empty strings")
        return stops

    @property
    def stops(self) -> list[str]:
        return list(self.stop or [])


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict] = ""

    def text(self) -> str:
        """The message text; list content keeps only its ``text`` parts (no images here)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class ChatCompletionRequest(_Request):
    """Body of ``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream_options: dict | None = None

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Request):
    """Body of ``POST /v1/completions`` (legacy text completion; one prompt per request)."""

    prompt: str
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens
