"""OpenAI wire types: every request, response, chunk and error the HTTP API speaks, in one place.

Requests reject unknown fields, unknown roles, wrong types and out-of-range sampling values at parse time, so the
ingress only checks what needs the model (context length, image count). Responses follow the OpenAI shapes that the official
`openai` client parses: `chat.completion`, `chat.completion.chunk`, `list` of `model`, and `{"error": {...}}`.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class OpenAIBase(BaseModel):
    # A field this server does not implement is refused by name, never silently ignored (serve_app.api.unsupported
    # refuses it with a clean path before validation; forbidding extras here is the backstop).
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- request


class TextPart(OpenAIBase):
    type: Literal["text"]
    text: str


class ImageURL(OpenAIBase):
    url: str = Field(description="a data: URL (base64 PNG/JPEG/WebP) or, when the server allows it, http(s)")
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(OpenAIBase):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class ChatMessage(OpenAIBase):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content if isinstance(p, TextPart))


class StreamOptions(OpenAIBase):
    include_usage: bool = False


class ChatCompletionRequest(OpenAIBase):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)  # the newer OpenAI name for max_tokens
    # Sampling: a field left out (None) takes the checkpoint's generation_config value, else the server default
    # (serve_app/api/generation.py), as vLLM does.
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    ignore_eos: bool = False  # vLLM extension: generate exactly max_tokens, for benchmarks
    n: int = Field(default=1, ge=1, le=1)  # one choice per request: refuse n > 1 rather than answer with one
    # vLLM's extensions and OpenAI's penalties, with their semantics (serve_app/engine/penalties.py)
    top_k: int | None = Field(default=None, ge=-1, description="keep the k most likely tokens; -1 or 0 = all")
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, description="over prompt and output tokens")
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    min_tokens: int = Field(default=0, ge=0, description="eos and stop_token_ids cannot end the completion before")
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v):
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, v, info: ValidationInfo):
        if v is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return v

    def logprobs_count(self) -> int | None:
        """None: no logprobs; n: each token's logprob and the n most likely tokens'."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# ---------------------------------------------------------------- responses


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class Usage(OpenAIBase):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt: int, completion: int) -> "Usage":
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class AssistantMessage(OpenAIBase):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(OpenAIBase):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(OpenAIBase):
    content: list[ChatLogprob] | None = None

    @classmethod
    def of(cls, entries) -> "ChoiceLogprobs":
        """From the engine's TokenLogprob entries."""
        return cls(content=[ChatLogprob(token=e.token, logprob=e.logprob, bytes=e.bytes, top_logprobs=[
            TopLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in e.top]) for e in entries])


class Choice(OpenAIBase):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionResponse(OpenAIBase):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    system_fingerprint: str | None = Field(default=None, description="the artifact that answered (its manifest "
                                                                      "sha256, shortened): tells models apart "
                                                                      "across an upgrade")
    choices: list[Choice]
    usage: Usage


class Delta(OpenAIBase):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(OpenAIBase):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(OpenAIBase):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    system_fingerprint: str | None = None  # as in ChatCompletionResponse
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(OpenAIBase):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "mmserve"


class ModelList(OpenAIBase):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(OpenAIBase):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(OpenAIBase):
    error: ErrorInfo
