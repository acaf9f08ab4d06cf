"""The official `openai` client's ordinary calls send only fields this server implements: each body it puts on the
wire goes through the ingress's real parser (unknown fields are refused, serve_app.api.unsupported)."""

from __future__ import annotations

import httpx
import pytest
from openai import OpenAI

from serve_app.api.chat import parse_request
from serve_app.api.completions import CompletionMeta
from serve_app.api.errors import to_error
from serve_app.api.protocol import (AssistantMessage, ChatCompletionChunk, ChatCompletionResponse, Choice, ChunkChoice,
                                    Delta, Usage)

IMAGE = "data:image/png;base64,iVBORw0KGgo="


def client_parsed_by_the_server() -> tuple[OpenAI, list]:
    """A client whose transport hands each request body to parse_request and answers as the ingress would."""
    parsed = []

    def handle(request: httpx.Request) -> httpx.Response:
        try:
            req = parse_request(request.content)
        except Exception as e:  # noqa: BLE001 -- the ingress's one error path
            status, body, _ = to_error(e)
            return httpx.Response(status, json=body.model_dump())
        parsed.append(req)
        meta = CompletionMeta("chatcmpl-x", "m", 3)
        if not req.stream:
            resp = ChatCompletionResponse(id=meta.id, model=meta.model, usage=Usage.of(3, 1), choices=[
                Choice(message=AssistantMessage(content="ok"), finish_reason="stop")])
            return httpx.Response(200, json=resp.model_dump())
        chunk = ChatCompletionChunk(id=meta.id, model=meta.model, choices=[
            ChunkChoice(delta=Delta(role="assistant", content="ok"), finish_reason="stop")])
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=f"data: {chunk.model_dump_json()}\n\ndata: [DONE]\n\n".encode())

    http = httpx.Client(transport=httpx.MockTransport(handle))
    return OpenAI(base_url="http://mmserve.test/v1", api_key="k", http_client=http, max_retries=0), parsed


MESSAGES = [{"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE, "detail": "auto"}},
                                         {"type": "text", "text": "what is this?"}]},
            {"role": "assistant", "content": "a shape"}, {"role": "user", "content": "which color?"}]


def test_ordinary_openai_calls_are_accepted():
    client, parsed = client_parsed_by_the_server()
    whole = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=8, temperature=0.5, top_p=0.9,
                                           seed=3, stop=["\n"], n=1)
    assert whole.choices[0].message.content == "ok"
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
        max_completion_tokens=8, extra_body={"ignore_eos": True}) if c.choices)
    assert text == "ok"
    assert [(r.stream, r.token_limit(), r.include_usage(), r.ignore_eos) for r in parsed] == \
        [(False, 8, False, False), (True, 8, True, True)]


@pytest.mark.parametrize("kwargs,param", [
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"n": 2}, "n"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"user": "someone"}, "user"),
])
def test_unimplemented_openai_options_raise_bad_request_naming_them(kwargs, param):
    import openai

    client, parsed = client_parsed_by_the_server()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="m", messages=MESSAGES, **kwargs)
    assert e.value.body["code"] == "unsupported_parameter" and e.value.body["param"] == param and not parsed
