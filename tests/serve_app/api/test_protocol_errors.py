"""Wire types and the one error path: what the client sends is parsed strictly, every failure maps to a status
and an OpenAI error object."""

from __future__ import annotations

import pickle

import pytest
from pydantic import ValidationError

from serve_app.api.errors import ContextLengthExceeded, Unauthorized, to_error
from serve_app.contract import InvalidImage, unwrap
from serve_app.api.chat import parse_request
from serve_app.api.protocol import ChatCompletionRequest
from serve_app.contract import Overloaded


def req(**kw) -> dict:
    return {"messages": [{"role": "user", "content": "hi"}], **kw}


def error_of(body: bytes) -> tuple[int, dict]:
    with pytest.raises(Exception) as e:
        parse_request(body)
    status, resp, _ = to_error(e.value)
    return status, resp.model_dump()["error"]


def test_content_parts_parse():
    r = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is"}, {"type": "image_url", "image_url": {"url": "data:x"}},
        {"type": "text", "text": "this?"}]}], "stream": True, "stream_options": {"include_usage": True},
        "stop": "\n", "seed": 3, "ignore_eos": True, "max_tokens": 5})
    m = r.messages[0]
    assert m.text() == "what is\nthis?" and [p.image_url.url for p in m.content if p.type == "image_url"] == ["data:x"]
    assert r.include_usage() and r.stop_list() == ["\n"] and r.token_limit() == 5 and r.ignore_eos


def test_unknown_fields_are_ignored_like_openai():
    assert ChatCompletionRequest.model_validate(req(logprobs=False, user="u", n=1)).messages[0].role == "user"


@pytest.mark.parametrize("body,param", [
    (req(max_tokens=0), "max_tokens"),
    (req(max_tokens=-3), "max_tokens"),
    (req(temperature=2.5), "temperature"),
    (req(temperature=-0.1), "temperature"),
    (req(top_p=0), "top_p"),
    (req(top_p=1.5), "top_p"),
    (req(max_tokens="many"), "max_tokens"),
    (req(n=2), "n"),
    ({"messages": "hello"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]}, "messages.0.content"),
])
def test_bad_fields_are_400_naming_the_field(body, param):
    import json
    status, err = error_of(json.dumps(body).encode())
    assert status == 400 and err["type"] == "invalid_request_error"
    assert err["param"].startswith(param), err


def test_malformed_json_and_non_object():
    status, err = error_of(b'{"messages": [')
    assert status == 400 and err["code"] == "invalid_json"
    status, err = error_of(b"[1, 2]")
    assert status == 400 and err["code"] == "invalid_json"


def test_api_errors_keep_fields_across_pickling():
    # Stages raise these in other processes: Ray pickles them, so param and code must survive.
    e = pickle.loads(pickle.dumps(InvalidImage("bad", "messages.0.content.1.image_url", "invalid_image")))
    status, body, _ = to_error(e)
    assert status == 400 and body.error.param == "messages.0.content.1.image_url" and body.error.code == "invalid_image"


def test_unwrap_ray_style_cause():
    class Wrapper(Exception):
        def __init__(self, cause):
            self.cause = cause
    inner = ContextLengthExceeded("too long")
    assert unwrap(Wrapper(Wrapper(inner))) is inner
    assert isinstance(unwrap(Wrapper("not an exception")), Wrapper)  # only exceptions are causes
    status, body, _ = to_error(Wrapper(inner))
    assert status == 400 and body.error.code == "context_length_exceeded"


def test_statuses():
    assert to_error(Unauthorized())[0] == 401
    status, body, headers = to_error(Overloaded("busy", retry_after_s=2.4))
    assert status == 503 and headers == {"Retry-After": "2"} and body.error.type == "server_overloaded"
    status, body, _ = to_error(RuntimeError("secret /path"))
    assert status == 500 and "secret" not in body.error.message


def test_infrastructure_failures_are_retryable_statuses():
    from ray.exceptions import ActorDiedError
    from ray.serve.exceptions import BackPressureError

    status, body, headers = to_error(ActorDiedError())
    assert status == 503 and body.error.code == "stage_unavailable" and headers == {"Retry-After": "1"}
    status, body, headers = to_error(BackPressureError(num_queued_requests=3, max_queued_requests=2))
    assert status == 503 and body.error.type == "server_overloaded" and "Retry-After" in headers
    status, body, headers = to_error(TimeoutError())
    assert status == 504 and body.error.code == "stage_timeout" and headers == {}


def test_validation_error_maps_to_first_field():
    with pytest.raises(ValidationError) as e:
        ChatCompletionRequest.model_validate(req(top_p=3))
    assert to_error(e.value)[1].error.param == "top_p"
