"""The server's limits and batching, each default stated once (the CLI's options are built from it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ServerSettings(BaseModel):
    """Per-request bounds (anything above them is a 400, never a slow or huge batch) and batching."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_queue: int = Field(256, ge=1, description="queued requests before answering 429")
    scheduler: Literal["continuous", "micro"] = Field(
        "continuous", description="continuous: a request joins the running decode loop at the next step; "
        "micro: requests are collected into batches that each decode to the end")
    max_batch: int = Field(16, ge=1, description="requests decoded together (continuous: answer rows in flight)")
    batch_wait_ms: float = Field(10.0, ge=0, description="how long a micro-batch waits to fill")
    max_prompt_tokens: int = Field(2048, ge=1, description="longest prompt accepted, in tokens")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest request body accepted, in bytes "
                                "(larger: 413 before it is read whole)")
    max_new_tokens_limit: int = Field(512, ge=1, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(128, ge=1, description="max_tokens when a request gives none")
    max_n: int = Field(8, ge=1, description="most choices per request")
