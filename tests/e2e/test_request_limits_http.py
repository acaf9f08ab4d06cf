"""The body limit over real HTTP: a declared Content-Length over it is refused before the body is sent, a chunked
body as soon as it passes it; both 413 request_too_large as an OpenAI error object, and the service keeps serving."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import httpx
import pytest

from serve_app.api.request_limits import default_max_request_bytes
from tests.e2e.conftest import MAX_IMAGE_BYTES, MAX_IMAGES, auth_headers

pytestmark = pytest.mark.e2e
LIMIT = default_max_request_bytes(MAX_IMAGE_BYTES, MAX_IMAGES)  # what build_app derives for the e2e args


def assert_413(status: int, body: dict) -> None:
    assert status == 413, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == "request_too_large" and err["type"] == "invalid_request_error"
    assert str(LIMIT) in err["message"]


def text_request(pad: int = 0) -> bytes:
    return json.dumps({"model": "mmserve-tiny", "max_tokens": 2,
                       "messages": [{"role": "user", "content": "hi" + " " * pad}]}).encode()


def test_declared_length_over_limit_is_refused_before_the_body_is_sent(served):
    host, port = urlsplit(served.url).hostname, urlsplit(served.url).port
    declared = 60 * 1024 * 1024
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {served.key}\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n")
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(head.encode() + b'{"model": ')  # a few bytes of the 60 MB, then wait for the answer
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert_413(int(status_line.split()[1]), body)


def test_chunked_body_over_limit_is_413(served):
    def chunks():
        yield text_request()[:-1] + b', "pad": "'
        for _ in range(LIMIT // 65536 + 2):
            yield b"y" * 65536
        yield b'"}'

    r = httpx.post(f"{served.url}/v1/chat/completions", content=chunks(), timeout=60,
                   headers={**auth_headers(served), "Content-Type": "application/json"})
    assert "content-length" not in r.request.headers  # really chunked
    assert_413(r.status_code, r.json())


def test_body_under_limit_is_served_and_service_keeps_serving(served):
    headers = {**auth_headers(served), "Content-Type": "application/json"}
    r = httpx.post(f"{served.url}/v1/chat/completions", content=text_request(), headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    big = text_request(LIMIT + 10)
    r = httpx.post(f"{served.url}/v1/chat/completions", content=big, headers=headers, timeout=60)
    assert_413(r.status_code, r.json())
    assert httpx.post(f"{served.url}/v1/chat/completions", content=text_request(), headers=headers,
                      timeout=60).status_code == 200
