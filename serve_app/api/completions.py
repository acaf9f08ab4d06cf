"""Decoder chunks -> OpenAI completion objects: the streamed `chat.completion.chunk` sequence, or one
`chat.completion` for `stream: false`. Pure functions over an async iterator, so they are tested without Ray."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from serve_app.api.protocol import (AssistantMessage, ChatCompletionChunk, ChatCompletionResponse, Choice, ChoiceLogprobs,
                                ChunkChoice, Delta, Usage)
from serve_app.contract import DecodeChunk


@dataclass(frozen=True)
class CompletionMeta:
    id: str
    model: str
    prompt_tokens: int  # image tokens + text tokens, as the decoder counts them
    include_usage: bool = False
    fingerprint: str | None = None  # system_fingerprint: which artifact answered


async def stream_chunks(meta: CompletionMeta, chunks: AsyncIterator[DecodeChunk]) -> AsyncIterator[ChatCompletionChunk]:
    """The first chunk carries the assistant role; the last content chunk carries finish_reason; with
    include_usage, a final chunk with empty choices carries the usage, as OpenAI sends it. With logprobs, each
    chunk carries its tokens' entries (a chunk whose text is held back still carries them)."""
    completion_tokens, first = 0, True
    async for c in chunks:
        completion_tokens = max(completion_tokens, c.completion_tokens)
        delta = Delta(role="assistant" if first else None, content=c.text)
        first = False
        if not c.text and c.finish_reason is None and not delta.role and not c.logprobs:
            continue  # an incomplete multi-byte character: nothing to show yet
        logprobs = ChoiceLogprobs.of(c.logprobs) if c.logprobs is not None else None
        yield ChatCompletionChunk(id=meta.id, model=meta.model, system_fingerprint=meta.fingerprint, choices=[
            ChunkChoice(delta=delta, finish_reason=c.finish_reason, logprobs=logprobs)])
    if meta.include_usage:
        yield ChatCompletionChunk(id=meta.id, model=meta.model, system_fingerprint=meta.fingerprint, choices=[],
                                  usage=Usage.of(meta.prompt_tokens, completion_tokens))


async def collect(meta: CompletionMeta, chunks: AsyncIterator[DecodeChunk]) -> ChatCompletionResponse:
    text: list[str] = []
    finish, completion_tokens, logprobs = None, 0, None
    async for c in chunks:
        text.append(c.text)
        completion_tokens = max(completion_tokens, c.completion_tokens)
        finish = c.finish_reason or finish
        if c.logprobs is not None:
            logprobs = (logprobs or []) + c.logprobs
    return ChatCompletionResponse(
        id=meta.id, model=meta.model, system_fingerprint=meta.fingerprint,
        choices=[Choice(message=AssistantMessage(content="".join(text)), finish_reason=finish,
                        logprobs=ChoiceLogprobs.of(logprobs) if logprobs is not None else None)],
        usage=Usage.of(meta.prompt_tokens, completion_tokens))
