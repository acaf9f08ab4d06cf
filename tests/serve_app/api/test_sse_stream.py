"""SSE framing and chunk building on a fake decoder stream: peek-first errors, mid-stream errors, [DONE]."""

from __future__ import annotations

import asyncio
import json

from fastapi.responses import JSONResponse, StreamingResponse

from serve_app.api.completions import CompletionMeta, collect, stream_chunks
from serve_app.api.errors import InvalidRequest
from serve_app.api.sse import sse_response
from serve_app.contract import DecodeChunk, Overloaded

META = CompletionMeta("chatcmpl-1", "m", prompt_tokens=7, include_usage=True)


async def fake_decoder(texts, fail_at=None, exc=None, closed=None):
    try:
        for i, t in enumerate(texts):
            if i == fail_at:
                raise exc
            yield DecodeChunk(text=t, token_ids=[i], finish_reason="length" if i == len(texts) - 1 else None,
                              prompt_tokens=7, completion_tokens=i + 1)
    finally:
        if closed is not None:
            closed.append(True)


async def body_of(resp: StreamingResponse) -> list[str]:
    out = []
    async for piece in resp.body_iterator:
        out.append(piece)
    return out


def events(frames: list[str]) -> list:
    assert all(f.startswith("data: ") and f.endswith("\n\n") for f in frames)
    return [f[6:-2] if f[6:-2] == "[DONE]" else json.loads(f[6:-2]) for f in frames]


def run(coro):
    return asyncio.run(coro)


def test_stream_role_content_finish_usage_done():
    async def go():
        resp = await sse_response(stream_chunks(META, fake_decoder(["Hel", "lo", "!"])))
        assert isinstance(resp, StreamingResponse) and resp.media_type == "text/event-stream"
        return events(await body_of(resp))
    ev = run(go())
    assert ev[-1] == "[DONE]"
    assert ev[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hel"}
    assert "".join(e["choices"][0]["delta"]["content"] for e in ev[:3]) == "Hello!"
    assert ev[2]["choices"][0]["finish_reason"] == "length"
    assert ev[3]["choices"] == [] and ev[3]["usage"] == {"prompt_tokens": 7, "completion_tokens": 3,
                                                         "total_tokens": 10}
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == "chatcmpl-1" for e in ev[:4])


def test_error_before_first_chunk_is_a_real_status():
    async def go():
        closed = []
        resp = await sse_response(stream_chunks(META, fake_decoder(["a"], 0, Overloaded("full", 3), closed)))
        return resp, closed
    resp, closed = run(go())
    assert isinstance(resp, JSONResponse) and resp.status_code == 503
    assert resp.headers["retry-after"] == "3" and json.loads(resp.body)["error"]["code"] == "overloaded"
    assert closed == [True]


def test_error_mid_stream_is_an_error_chunk_then_done():
    async def go():
        closed = []
        gen = stream_chunks(META, fake_decoder(["a", "b", "c"], 2, InvalidRequest("boom", None, "x"), closed))
        return events(await body_of(await sse_response(gen))), closed
    ev, closed = run(go())
    assert ev[0]["choices"][0]["delta"]["content"] == "a" and ev[1]["choices"][0]["delta"]["content"] == "b"
    assert ev[2] == {"error": {"message": "boom", "type": "invalid_request_error", "param": None, "code": "x"}}
    assert ev[3] == "[DONE]" and len(ev) == 4 and closed == [True]


def test_stream_closed_early_closes_the_source():
    async def go():
        closed = []
        resp = await sse_response(stream_chunks(META, fake_decoder(["a", "b", "c"], closed=closed)))
        it = resp.body_iterator
        await anext(it)
        await it.aclose()  # what Starlette does when the client goes away
        return closed
    assert run(go()) == [True]


def test_empty_pieces_are_skipped_but_finish_kept():
    async def go():
        async def dec():
            yield DecodeChunk(text="x", token_ids=[1], completion_tokens=1)
            yield DecodeChunk(text="", token_ids=[2], completion_tokens=2)  # half a UTF-8 character
            yield DecodeChunk(text="", token_ids=[3], finish_reason="stop", completion_tokens=3)
        return [c async for c in stream_chunks(CompletionMeta("i", "m", 1), dec())]
    chunks = run(go())
    assert [c.choices[0].finish_reason for c in chunks] == [None, "stop"]


def test_collect_non_streaming():
    async def go():
        return await collect(META, fake_decoder(["Hel", "lo"]))
    r = run(go())
    assert r.choices[0].message.content == "Hello" and r.choices[0].finish_reason == "length"
    assert r.usage.total_tokens == 9 and r.object == "chat.completion"
