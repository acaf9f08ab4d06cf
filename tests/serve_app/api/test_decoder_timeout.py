"""The ingress's decoder timeout, on a decoder stream that stalls (a fake handle; tests/e2e/test_decoder_timeout_http.py
stalls a real decoder): before the first chunk the request answers 504 decoder_timeout, after it the stream ends
with an error event and [DONE]; either way the stalled decoder call is cancelled, and a stream that keeps moving
is never cut, however long it runs."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from fastapi.responses import StreamingResponse

from serve_app.api import chat
from serve_app.api.completions import CompletionMeta, collect, stream_chunks
from serve_app.api.errors import DecoderTimeout
from serve_app.api.sse import error_response, sse_response
from serve_app.contract import DecodeChunk, DecodeRequest, TokenSegment

TIMEOUT_S = 0.2
META = CompletionMeta("chatcmpl-1", "m", prompt_tokens=3)
REQUEST = DecodeRequest(request_id="r", segments=[TokenSegment([1, 2, 3])], max_tokens=8)


class StallingStream:
    """A DeploymentResponseGenerator stand-in: `chunks` chunks `every_s` apart, then nothing until cancelled
    (`stall`), or the end of the stream."""

    def __init__(self, chunks: int, every_s: float = 0.0, stall: bool = True):
        self.left, self.every_s, self.stall, self.cancelled = chunks, every_s, stall, False

    def __aiter__(self):
        return self

    async def __anext__(self) -> DecodeChunk:
        if self.left == 0:
            if not self.stall:
                raise StopAsyncIteration
            await asyncio.Event().wait()  # stuck: never answers
        await asyncio.sleep(self.every_s)
        self.left -= 1
        return DecodeChunk("tok", [1], None if self.left or self.stall else "length", 3, 1)

    def cancel(self):
        self.cancelled = True


class Decoder:
    def __init__(self, stream):
        self.stream = stream

    def options(self, stream):
        return self

    @property
    def generate(self):
        return self

    def remote(self, request):
        return self.stream


def stages(stream) -> chat.Stages:
    return chat.Stages(None, None, Decoder(stream), decoder_timeout_s=TIMEOUT_S)


def run(coro):
    """A stalled stream must fail the test, not hang it."""
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_no_first_chunk_is_a_504_and_the_call_is_cancelled():
    stream = StallingStream(chunks=0)

    async def go():
        began = time.monotonic()
        with pytest.raises(DecoderTimeout) as e:
            await chat.open_stream(stages(stream), REQUEST)
        return e.value, time.monotonic() - began

    err, waited = run(go())
    assert TIMEOUT_S <= waited < TIMEOUT_S + 1.0 and stream.cancelled
    resp = error_response(err)
    body = json.loads(resp.body)["error"]
    assert resp.status_code == 504 and body["type"] == "timeout" and body["code"] == "decoder_timeout"
    assert "decoder_timeout_s" in body["message"]


def test_stall_after_streaming_started_is_an_error_event_then_done():
    stream = StallingStream(chunks=2)

    async def go():
        resp = await sse_response(stream_chunks(META, await chat.open_stream(stages(stream), REQUEST)))
        assert isinstance(resp, StreamingResponse)
        return [piece async for piece in resp.body_iterator]

    frames = run(go())
    assert frames[-1] == "data: [DONE]\n\n" and len(frames) == 4, frames
    assert [json.loads(f[6:])["choices"][0]["delta"]["content"] for f in frames[:2]] == ["tok", "tok"]
    error = json.loads(frames[2][6:])["error"]
    assert error["code"] == "decoder_timeout" and error["type"] == "timeout"
    assert stream.cancelled


def test_stall_in_a_whole_answer_is_a_504():
    stream = StallingStream(chunks=1)

    async def go():
        try:
            await collect(META, await chat.open_stream(stages(stream), REQUEST))
        except Exception as e:  # noqa: BLE001 -- the ingress's one error path
            return error_response(e)

    resp = run(go())
    assert resp.status_code == 504 and json.loads(resp.body)["error"]["code"] == "decoder_timeout"
    assert stream.cancelled


def test_a_stream_that_keeps_moving_is_never_cut():
    # each chunk within the timeout, the whole answer well past it
    stream = StallingStream(chunks=8, every_s=TIMEOUT_S / 2, stall=False)

    async def go():
        began = time.monotonic()
        answer = await collect(META, await chat.open_stream(stages(stream), REQUEST))
        return answer, time.monotonic() - began

    answer, took = run(go())
    assert answer.choices[0].message.content == "tok" * 8 and took > 2 * TIMEOUT_S and not stream.cancelled
