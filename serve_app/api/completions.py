"""Decoder chunks -> OpenAI completion objects: the streamed `chat.completion.chunk` sequence, or one
`chat.completion` for `stream: false`. Pure functions over an async iterator, so they are tested without Ray."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from serve_app.api.protocol import (AssistantMessage, ChatCompletionChunk, ChatCompletionResponse, Choice, ChunkChoice,
                                Delta, Usage)
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
    include_usage, a final chunk with empty choices carries the usage, as OpenAI sends it."""
    completion_tokens, first = 0, True
    async for c in chunks:
        completion_tokens = max(completion_tokens, c.completion_tokens)
        delta = Delta(role="assistant" if first else None, content=c.text)
        first = False
        if not c.text and c.finish_reason is None and not delta.role:
            continue  # an incomplete multi-byte character: nothing to show yet
        yield ChatCompletionChunk(id=meta.id, model=meta.model, system_fingerprint=meta.fingerprint, choices=[
            ChunkChoice(delta=delta, finish_reason=c.finish_reason)])
    if meta.include_usage:
        yield ChatCompletionChunk(id=meta.id, model=meta.model, system_fingerprint=meta.fingerprint, choices=[],
                                  usage=Usage.of(meta.prompt_tokens, completion_tokens))


async def collect(meta: CompletionMeta, chunks: AsyncIterator[DecodeChunk]) -> ChatCompletionResponse:
    text: list[str] = []
    finish, completion_tokens = None, 0
    async for c in chunks:
        text.append(c.text)
        completion_tokens = max(completion_tokens, c.completion_tokens)
        finish = c.finish_reason or finish
    return ChatCompletionResponse(
        id=meta.id, model=meta.model, system_fingerprint=meta.fingerprint,
        choices=[Choice(message=AssistantMessage(content="".join(text)), finish_reason=finish)],
        usage=Usage.of(meta.prompt_tokens, completion_tokens))
