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


def msg(**kw) -> dict:
    return {"messages": [{"role": "user", "content": "hi", **kw}]}


def parts(*part) -> dict:
    return {"messages": [{"role": "user", "content": list(part)}]}


IMAGE = {"type": "image_url", "image_url": {"url": "data:x"}}


@pytest.mark.parametrize("body,param", [
    (req(response_format={"type": "json_object"}), "response_format"),
    (req(tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),
    (req(tool_choice="auto"), "tool_choice"),
    (req(user="u"), "user"),
    (req(logit_bias={"1": 5}), "logit_bias"),
    (req(max_token=5), "max_token"),  # a typo is refused too, not ignored
    (req(parallel_tool_calls=False), "parallel_tool_calls"),
    (req(n=2), "n"),
    (msg(name="bob"), "messages.0.name"),
    (msg(tool_calls=[]), "messages.0.tool_calls"),
    (parts({"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}), "messages.0.content.0.cache_control"),
    (parts({"type": "text", "text": "a"}, {**IMAGE, "image_url": {"url": "data:x", "foo": 1}}),
     "messages.0.content.1.image_url.foo"),
    (parts({**IMAGE, "image_url": {"url": "data:x", "detail": "high"}}), "messages.0.content.0.image_url.detail"),
    (parts({**IMAGE, "extra": 1}), "messages.0.content.0.extra"),
    (req(stream=True, stream_options={"include_usage": True, "include_obfuscation": False}),
     "stream_options.include_obfuscation"),
])
def test_unsupported_fields_are_refused_by_name(body, param):
    import json
    status, err = error_of(json.dumps(body).encode())
    assert status == 400 and err["type"] == "invalid_request_error"
    assert err["code"] == "unsupported_parameter" and err["param"] == param, err
    assert param.rsplit(".", 1)[-1] in err["message"], err


def test_neutral_values_of_unimplemented_fields_are_taken():
    # the value that asks for nothing: the server does exactly that, and clients such as LangChain send it
    import json
    body = req(n=1, stream_options=None)
    body["messages"][0]["content"] = [{**IMAGE, "image_url": {"url": "data:x", "detail": "auto"}}]
    r = parse_request(json.dumps(body).encode())
    assert r.n == 1 and r.messages[0].content[0].image_url.url == "data:x"
    status, err = error_of(json.dumps(req(n=True)).encode())  # true is not 1
    assert status == 400 and err["param"] == "n"


def test_direct_validation_refuses_unknown_fields_too():
    # the wire types forbid extras themselves: a path around parse_request cannot ignore a field either
    with pytest.raises(ValidationError) as e:
        ChatCompletionRequest.model_validate(parts({"type": "text", "text": "a", "foo": 1}))
    status, body, _ = to_error(e.value)
    assert status == 400 and body.error.code == "unsupported_parameter" and body.error.param.endswith("foo")


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
    ({"messages": [{"role": "user", "content": [{"type": ["text"], "text": "x"}]}]}, "messages.0.content"),
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


def test_any_json_is_a_request_or_a_400():
    # the unsupported-field walk meets bodies of any shape before pydantic does: it must never raise anything else
    import json

    from hypothesis import given, settings
    from hypothesis import strategies as st

    values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                              st.sampled_from(["type", "text", "image_url", "url", "role", "content", "x"]), inner,
                              max_size=3), max_leaves=12)
    bodies = st.fixed_dictionaries({"messages": st.lists(st.fixed_dictionaries(
        {"role": st.just("user"), "content": st.lists(values, max_size=2) | values}), max_size=2) | values},
        optional={"stream_options": values, "n": values, "logprobs": values})

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(body=bodies)
    def check(body):
        try:
            parse_request(json.dumps(body).encode())
        except Exception as e:  # noqa: BLE001 -- classified below
            assert to_error(e)[0] == 400, e

    check()
