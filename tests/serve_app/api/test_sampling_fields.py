"""Sampling fields on the wire: out-of-range values are 400s naming the field; a field the request leaves out takes
the checkpoint's generation_config value, else the server default (vLLM's order); logprobs leave in OpenAI's chat
shape, as the `openai` client parses it."""

from __future__ import annotations

import asyncio
import json

import pytest

from mmcore.manifest import GenerationDefaults
from serve_app.api import chat
from serve_app.api.chat import parse_request
from serve_app.api.completions import CompletionMeta, collect, stream_chunks
from serve_app.api.errors import InvalidRequest, to_error
from serve_app.api.generation import SERVER_DEFAULTS, sampling_fields
from serve_app.api.protocol import ChatCompletionRequest
from serve_app.contract import DecodeChunk, TokenLogprob


def req(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], **kw})


@pytest.mark.parametrize("fields,param", [
    ({"top_k": -2}, "top_k"), ({"min_p": 1.5}, "min_p"), ({"min_p": -0.1}, "min_p"),
    ({"repetition_penalty": 0}, "repetition_penalty"), ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -2.1}, "frequency_penalty"), ({"stop_token_ids": [3, -1]}, "stop_token_ids.1"),
    ({"min_tokens": -1}, "min_tokens"), ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"), ({"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
    ({"top_k": "many"}, "top_k")])
def test_out_of_range_sampling_fields_are_400_naming_the_field(fields, param):
    with pytest.raises(Exception) as e:
        parse_request(json.dumps({"messages": [{"role": "user", "content": "hi"}], **fields}).encode())
    status, body, _ = to_error(e.value)
    assert status == 400 and body.error.param == param, body


def test_a_stop_token_id_outside_the_vocabulary_is_a_400_naming_it():
    with pytest.raises(InvalidRequest) as e:
        sampling_fields(req(stop_token_ids=[1, 512]), GenerationDefaults(), 512)
    assert e.value.param == "stop_token_ids.1"


def test_min_tokens_above_max_tokens_is_a_400():
    limits = chat.ModelLimits(image_tokens=4, max_positions=64, max_images=1)
    with pytest.raises(InvalidRequest) as e:
        chat.plan_tokens(10, req(max_tokens=5, min_tokens=6), limits)
    assert e.value.param == "min_tokens"


CHECKPOINT = GenerationDefaults(temperature=0.0, top_p=0.9, top_k=40, repetition_penalty=1.1, max_new_tokens=7)


def test_request_beats_checkpoint_beats_server_default():
    silent = sampling_fields(req(), CHECKPOINT, None)
    assert (silent["temperature"], silent["top_p"], silent["top_k"], silent["repetition_penalty"],
            silent["min_p"]) == (0.0, 0.9, 40, 1.1, SERVER_DEFAULTS["min_p"])
    asked = sampling_fields(req(temperature=0.5, top_k=-1, min_p=0.2, repetition_penalty=1.0), CHECKPOINT, None)
    assert (asked["temperature"], asked["top_k"], asked["min_p"], asked["repetition_penalty"], asked["top_p"]) == \
        (0.5, 0, 0.2, 1.0, 0.9)
    assert {k: v for k, v in sampling_fields(req(), GenerationDefaults(), None).items() if k in SERVER_DEFAULTS} == \
        SERVER_DEFAULTS


def test_max_new_tokens_is_the_default_max_tokens_within_the_context():
    limits = chat.ModelLimits(4, 64, 1, generation=CHECKPOINT)
    assert chat.plan_tokens(10, req(), limits) == 7
    assert chat.plan_tokens(10, req(max_tokens=20), limits) == 20
    assert chat.plan_tokens(60, req(), limits) == 4  # only 4 positions left
    assert chat.plan_tokens(10, req(), chat.ModelLimits(4, 64, 1)) == 54


def chunks_with_logprobs():
    def lp(token, logprob, top=()):
        return TokenLogprob(token, logprob, list(token.encode()), [TokenLogprob(t, v, list(t.encode())) for t, v in top])
    return [DecodeChunk("", [5], None, 3, 1, [lp("a", -0.1, [("a", -0.1), ("b", -2.5)])]),
            DecodeChunk(" red", [6, 7], "stop", 3, 3, [lp(" re", -0.5, [(" re", -0.5), ("x", -1.0)]),
                                                       lp("d", -0.2, [("d", -0.2), ("e", -3.0)])])]


async def agen(items):
    for i in items:
        yield i


def test_logprobs_in_the_openai_chat_shape_streamed_and_not():
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    meta = CompletionMeta("chatcmpl-1", "m", 3)
    full = ChatCompletion.model_validate(asyncio.run(collect(meta, agen(chunks_with_logprobs()))).model_dump())
    content = full.choices[0].logprobs.content
    assert [c.token for c in content] == ["a", " re", "d"] and content[1].bytes == list(b" re")
    assert [t.token for t in content[0].top_logprobs] == ["a", "b"] and content[2].logprob == -0.2

    async def stream():
        return [ChatCompletionChunk.model_validate(c.model_dump()) async for c in
                stream_chunks(meta, agen(chunks_with_logprobs()))]
    streamed = asyncio.run(stream())
    tokens = [e.token for c in streamed for e in (c.choices[0].logprobs.content if c.choices[0].logprobs else [])]
    assert tokens == ["a", " re", "d"]


def test_no_logprobs_unless_asked():
    meta = CompletionMeta("chatcmpl-1", "m", 3)
    out = asyncio.run(collect(meta, agen([DecodeChunk("hi", [5], "stop", 3, 1)])))
    assert out.choices[0].logprobs is None
