"""Request and response bodies of the OpenAI-compatible endpoints, as pydantic models.

Requests declare the fields certa acts on; other OpenAI fields (``user``,
``presence_penalty``…) are accepted and ignored, so stock clients work
unchanged. Type errors in declared fields become OpenAI-style 400s.

The response models are the documented shape of what the server returns: they
feed the OpenAPI schema (``/openapi.json``), which the fuzz test
(``tests/test_server_fuzz.py``) checks every response against. The handlers
build plain dicts, so a field listed here that a handler forgets shows up as a
schema violation there.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

#: OpenAI's default sampling temperature when a request gives none.
OPENAI_DEFAULT_TEMPERATURE = 1.0

_INT64 = 2**63


def _a_json_number(value: Any) -> Any:
    # Pydantic's lax mode reads true as 1 and "5" as 5; a request that sends them has a bug, and OpenAI
    # rejects both. A whole number stays a valid float and 2.0 a valid int, as in JSON Schema.
    if isinstance(value, (bool, str)):
        raise ValueError("must be a JSON number")
    return value


class Sampling(BaseModel):
    """How a request's answers are decoded, after certa's rules for absent fields (see :func:`sampling_of`)."""

    model_config = ConfigDict(frozen=True)

    temperature: float  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def sampling_of(temperature: float | None, top_p: float | None, seed: int | None, n: int) -> Sampling:
    """The decoding certa runs for a request's ``temperature``, ``top_p``, ``seed`` and ``n``.

    - ``temperature`` absent: greedy when ``n == 1`` — certa's confidences (trained methods,
      recalibration maps, abstention thresholds) are fitted on greedy answers, so the default answer
      is the one they are calibrated for — and OpenAI's default 1.0 when ``n > 1``, since ``n``
      copies of one greedy answer are never what a client asking for several answers wants.
    - ``temperature`` 0, or ``top_p`` 0 (only the most likely token is left): greedy.
    - otherwise: sampled at ``temperature`` with nucleus mass ``top_p`` (default 1), seeded by ``seed``.

    ``seed`` is kept only for sampled decoding (greedy needs none).
    """
    t = (OPENAI_DEFAULT_TEMPERATURE if n > 1 else 0.0) if temperature is None else float(temperature)
    p = 1.0 if top_p is None else float(top_p)
    if t == 0.0 or p == 0.0:
        return Sampling(temperature=0.0)
    return Sampling(temperature=t, top_p=p, seed=seed)


# ---- requests ------------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: StrictBool = Field(False, description="a last chunk with the token usage, before [DONE]")


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(
        None, ge=0.0, le=2.0,
        description="0 or absent: greedy (absent with n > 1: 1.0, OpenAI's default); otherwise sampled")
    top_p: float | None = Field(None, ge=0.0, le=1.0, description="nucleus sampling mass (default 1)")
    seed: int | None = Field(None, ge=-_INT64, lt=_INT64, description="makes sampled answers reproducible")
    n: int = Field(1, ge=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    include_abstained_answer: StrictBool = Field(
        False, description="certa: when an answer is withheld (abstained), return it in 'abstained_answer'")

    _numbers = field_validator("max_tokens", "temperature", "top_p", "seed", "n", mode="before")(_a_json_number)

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

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk (``stream_options.include_usage``)."""
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def sampling(self) -> Sampling:
        return sampling_of(self.temperature, self.top_p, self.seed, self.n)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = ""

    def text(self) -> str:
        """The message text; list content keeps only its ``text`` parts (no images here)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part["text"] for part in self.content
                       if part.get("type") == "text" and isinstance(part.get("text"), str))


class ChatCompletionRequest(_Request):
    """Body of ``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    _chat_numbers = field_validator("max_completion_tokens", "top_logprobs", mode="before")(_a_json_number)

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Request):
    """Body of ``POST /v1/completions`` (legacy text completion; one prompt per request)."""

    prompt: str
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: StrictBool = False

    _completion_numbers = field_validator("logprobs", mode="before")(_a_json_number)

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class FeedbackRequest(BaseModel):
    """Body of ``POST /v1/feedback``: a grade of one served choice (labels are write-once)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=256, description="the completion id the server returned")
    choice: int = Field(0, ge=0, le=2**31 - 1, description="the choice index")
    correct: StrictBool | Annotated[float, Field(ge=0.0, le=1.0, strict=True)] = Field(
        description="true / false, or partial credit in [0, 1]")

    _choice_number = field_validator("choice", mode="before")(_a_json_number)


# ---- responses (documentation and the fuzz test's schema) ------------------------------------------

FinishReason = Literal["stop", "length"]


class _Confidence(BaseModel):
    confidence: float = Field(ge=0.0, le=1.0, description="the served (possibly recalibrated) confidence")
    confidence_method: str
    abstained: bool = Field(description="the answer was withheld: its confidence is below the abstention threshold")
    abstained_answer: str | None = Field(
        None, description="the withheld answer, only when the request set include_abstained_answer")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatTokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[Any]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None
    refusal: list[Any] | None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None = Field(None, description="the refusal text when the answer was withheld")


class ChatChoice(_Confidence):
    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage


class TextLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[Any] | None
    text_offset: list[int]


class TextChoice(_Confidence):
    index: int
    text: str
    logprobs: TextLogprobs | None
    finish_reason: FinishReason


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[TextChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class FeedbackAck(BaseModel):
    """The stored label: when this response arrives the label is on disk (fsynced)."""

    object: Literal["feedback"]
    id: str
    choice: int
    correct: float
    labelled_at: float


class CalibrationReportOut(BaseModel):
    """``GET /v1/calibration``: the recalibration map and the abstention threshold in use."""

    object: Literal["calibration"]
    model: str
    confidence_method: str
    feedback: bool = Field(description="answers and labels are stored (--db)")
    answers: int | None
    labels: int | None
    ece_raw: float | None = Field(description="ECE of the method's raw confidence on every stored label")
    ece_served: float | None = Field(description="ECE of the confidence as served, on every stored label")
    recalibration: dict[str, Any] | None
    abstention: dict[str, Any] | None


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody
