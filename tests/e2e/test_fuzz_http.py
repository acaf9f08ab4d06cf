"""Property-based fuzz over real HTTP: whatever the body or the image bytes, the answer is a 2xx or a 4xx with an
OpenAI error object -- never a 5xx -- and the service keeps serving. Bounded in examples and time."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import auth_headers
from tests.serve_app.image_samples import data_url
from tests.serve_app.corrupt_images import FORGED_EXIF, REAL, corrupt_images

pytestmark = pytest.mark.e2e
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
roles = st.sampled_from(["user", "assistant", "system", "tool", "robot", "", None])
parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=30) | json_values}),
    st.fixed_dictionaries({"type": st.just("image_url"),
                           "image_url": st.fixed_dictionaries({"url": st.text(max_size=40) | json_values})}),
    json_values)
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": st.text(max_size=30) | st.lists(parts, max_size=3)
                                           | json_values}), max_size=3)
bodies = st.fixed_dictionaries({"messages": messages | json_values}, optional={
    "model": st.just("mmserve-tiny") | st.text(max_size=10), "max_tokens": st.integers(-5, 200) | json_values,
    "temperature": st.floats(-1, 3) | json_values, "top_p": st.floats(-1, 2), "stream": st.booleans(),
    "stop": json_values, "seed": st.integers() | json_values})

# Real images truncated, bit-flipped or header-forged (as in the preprocess unit fuzz), or random bytes.
image_bytes = corrupt_images() | st.binary(max_size=200)


def post(served, content: bytes) -> httpx.Response:
    headers = {**auth_headers(served), "Content-Type": "application/json"}
    return httpx.post(f"{served.url}/v1/chat/completions", content=content, headers=headers, timeout=60)


def assert_not_5xx(r: httpx.Response) -> None:
    assert r.status_code < 500, r.text[:500]
    if r.status_code >= 400:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["type"]


@FUZZ
@given(body=bodies)
def test_fuzzed_json_bodies_never_5xx(served, body):
    # max_tokens capped so a valid body that streams does not take long
    if isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 4:
        body["max_tokens"] = 4
    assert_not_5xx(post(served, json.dumps(body).encode()))


@FUZZ
@given(raw=st.binary(max_size=300) | st.text(max_size=100).map(str.encode))
def test_fuzzed_raw_bytes_never_5xx(served, raw):
    assert_not_5xx(post(served, raw))


@FUZZ
@given(raw=image_bytes, mime=st.sampled_from(["image/png", "image/jpeg", "image/webp", "image/gif", "text/plain"]))
def test_fuzzed_image_bytes_never_5xx(served, raw, mime):
    assert_not_5xx(post(served, image_request(f"data:{mime};base64,{base64.b64encode(raw).decode()}")))


def image_request(url: str) -> bytes:
    return json.dumps({"model": "mmserve-tiny", "max_tokens": 2, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what?"}]}]}).encode()


@pytest.mark.parametrize("name,raw", [*sorted(FORGED_EXIF.items()), ("png-cut", REAL["png"][:60]),
                                      ("jpeg-cut", REAL["jpeg"][:len(REAL["jpeg"]) // 2])])
def test_corrupt_images_are_400_invalid_image(served, name, raw):
    r = post(served, image_request(data_url(raw)))
    assert r.status_code == 400, r.text[:500]
    err = r.json()["error"]
    assert err["code"] == "invalid_image" and err["param"] == "messages.0.content.0.image_url", err
    assert "truncated or corrupt" in err["message"]


def test_service_still_serves_after_fuzzing(served):
    r = post(served, json.dumps({"model": "mmserve-tiny", "max_tokens": 2,
                                 "messages": [{"role": "user", "content": "hi"}]}).encode())
    assert r.status_code == 200
    assert httpx.get(f"{served.url}/ready").status_code == 200
