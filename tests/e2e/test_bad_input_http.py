"""Every kind of bad input answers 4xx with an OpenAI error object over real HTTP, and the service keeps serving."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from tests.e2e.conftest import MAX_IMAGE_BYTES, MAX_IMAGES, auth_headers, e2e_args, start_app, wait_ready
from tests.serve_app.image_samples import bomb_png, data_url, encode, gradient_rgb, png_url

pytestmark = pytest.mark.e2e
MODEL = "mmserve-tiny"


def with_image(url: str, text: str = "what is this?") -> dict:
    return {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}]}


def text_body(**kw) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **kw}


def noise_png_over(limit: int) -> str:
    side = 8
    while True:
        raw = encode(gradient_rgb(side, side, seed=3))
        if len(raw) > limit:
            return data_url(raw)
        side *= 2


def truncated_png() -> str:
    raw = encode(gradient_rgb(64, 64))
    return data_url(raw[: len(raw) // 2])


def cut_jpeg(where: str) -> str:
    """A real JPEG cut inside its header segments (fails in Image.open) or inside its scan data (fails in load)."""
    raw = encode(gradient_rgb(64, 64), "JPEG")
    return data_url(raw[:200] if where == "header" else raw[: len(raw) * 2 // 3], "image/jpeg")


BAD = {
    # name: (body bytes or dict, status, param prefix or None, code or None)
    "malformed json": (b'{"model": "mmserve-tiny", "messages": [', 400, None, "invalid_json"),
    "json not an object": (b'["hi"]', 400, None, "invalid_json"),
    "messages wrong type": ({"model": MODEL, "messages": "hi"}, 400, "messages", None),
    "max_tokens wrong type": (text_body(max_tokens="lots"), 400, "max_tokens", None),
    "temperature wrong type": (text_body(temperature=[1]), 400, "temperature", None),
    "unknown role": ({"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}, 400,
                     "messages.0.role", None),
    "unknown content part": ({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "video", "video": {}}]}]}, 400, "messages.0.content", None),
    "not an image": (with_image(data_url(b"just some text, not pixels")), 400,
                     "messages.0.content.0.image_url", "invalid_image"),
    "bad base64": (with_image("data:image/png;base64,!!notbase64!!"), 400,
                   "messages.0.content.0.image_url", "invalid_base64"),
    "truncated image": (with_image(truncated_png()), 400, "messages.0.content.0.image_url", "invalid_image"),
    "jpeg cut in its header": (with_image(cut_jpeg("header")), 400, "messages.0.content.0.image_url",
                               "invalid_image"),
    "jpeg cut in its scan": (with_image(cut_jpeg("scan")), 400, "messages.0.content.0.image_url", "invalid_image"),
    "100k nested arrays": (b"[" * 100_000 + b"]" * 100_000, 400, None, "json_too_deep"),
    "over byte limit": (with_image(noise_png_over(MAX_IMAGE_BYTES)), 400, "messages.0.content.0.image_url",
                        "image_too_large"),
    "decompression bomb": (with_image(data_url(bomb_png(30000))), 400, "messages.0.content.0.image_url",
                           "image_too_many_pixels"),
    "unsupported format": (with_image(data_url(encode(gradient_rgb(), "GIF"), "image/gif")), 400,
                           "messages.0.content.0.image_url", "unsupported_image_format"),
    "remote url refused": (with_image("https://example.com/cat.png"), 400, "messages.0.content.0.image_url",
                           "remote_url_disabled"),
    "too many images": ({"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_url(seed=i)}} for i in range(MAX_IMAGES + 1)]}]}, 400,
        "messages", "too_many_images"),
    "prompt + max_tokens over context": (text_body(max_tokens=128), 400, "messages", "context_length_exceeded"),
    "long prompt alone over context": (text_body(messages=[{"role": "user", "content": "word " * 300}],
                                                 max_tokens=None), 400, "messages", "context_length_exceeded"),
    "max_tokens zero": (text_body(max_tokens=0), 400, "max_tokens", None),
    "max_tokens negative": (text_body(max_tokens=-1), 400, "max_tokens", None),
    "temperature too high": (text_body(temperature=2.1), 400, "temperature", None),
    "temperature negative": (text_body(temperature=-1), 400, "temperature", None),
    "top_p zero": (text_body(top_p=0), 400, "top_p", None),
    "top_p over one": (text_body(top_p=1.01), 400, "top_p", None),
    "unknown model": (text_body(model="gpt-9"), 404, "model", "model_not_found"),
}


def post_raw(served, body, stream: bool) -> httpx.Response:
    if isinstance(body, dict):
        body = json.dumps({**body, "stream": stream}).encode()
    headers = {**auth_headers(served), "Content-Type": "application/json"}
    return httpx.post(f"{served.url}/v1/chat/completions", content=body, headers=headers, timeout=60)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_an_openai_error(served, name, stream):
    body, status, param, code = BAD[name]
    r = post_raw(served, body, stream)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    if param is not None:
        assert (err["param"] or "").startswith(param), err
    if code is not None:
        assert err["code"] == code, err


def test_service_keeps_serving_after_bad_input(served):
    for body, *_ in BAD.values():
        post_raw(served, body, stream=False)
    r = post_raw(served, with_image(png_url()), stream=False)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None
    assert httpx.get(f"{served.url}/ready").status_code == 200


def test_bomb_is_small_on_the_wire():
    raw = bomb_png(30000)
    assert len(base64.b64encode(raw)) < MAX_IMAGE_BYTES  # refused by the pixel limit, not the byte limit


SHORT_CONTEXT = 40  # the decoder's cache length, shorter than the tiny model's 128 positions
IMAGE_TOKEN_LIMIT = 15  # one request's image tokens on that app: one short of the tiny model's 16 per image


@pytest.fixture(scope="module")
def short_context_url(served):
    from ray import serve

    args = e2e_args(served.artifacts)
    args["decoder"] = {**args["decoder"], "max_context": SHORT_CONTEXT}
    args["ingress"] = {**args["ingress"], "max_image_tokens_per_request": IMAGE_TOKEN_LIMIT}
    start_app(args, "short-context", "/short")
    url = served.url + "/short"
    wait_ready(url)
    yield url
    serve.delete("short-context")


@pytest.mark.parametrize("body", [
    text_body(messages=[{"role": "user", "content": "word " * 60}]),  # the prompt alone is past the cache
    text_body(max_tokens=SHORT_CONTEXT),  # a short prompt, but max_tokens would be cut by the cache
    with_image(png_url(), text="describe " * 20),  # 16 image tokens + the text + max_tokens 4: past 40
])
def test_the_decoders_max_context_is_the_limit_clients_are_told(served, short_context_url, body):
    r = httpx.post(f"{short_context_url}/v1/chat/completions", json=body, headers=auth_headers(served), timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and f"context of {SHORT_CONTEXT} tokens" in err["message"]


def test_images_past_the_requests_image_token_limit_are_refused_naming_it(served, short_context_url):
    r = httpx.post(f"{short_context_url}/v1/chat/completions", json=with_image(png_url(), text="hi"),
                   headers=auth_headers(served), timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["code"], err["param"]) == ("too_many_image_tokens", "messages")
    assert f"images make 16 image tokens; the limit is {IMAGE_TOKEN_LIMIT}" in err["message"]
    r = httpx.post(f"{short_context_url}/v1/chat/completions", json=text_body(), headers=auth_headers(served),
                   timeout=60)
    assert r.status_code == 200, r.text  # the app keeps serving what fits
