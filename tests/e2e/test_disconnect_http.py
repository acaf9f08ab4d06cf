"""A client that goes away mid-stream: the ingress closes its decoder stream, the decoder replica drops the
sequence, and its slot is free for the next request long before the answer would have finished."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.e2e.conftest import APP_NAME, auth_headers

pytestmark = pytest.mark.e2e


def decoder_info() -> dict:
    from ray import serve

    return serve.get_deployment_handle("Decoder", APP_NAME).info.remote().result()


def wait_idle(timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = decoder_info()
        if info["active"] == 0 and info["waiting"] == 0:
            return info
        time.sleep(0.05)
    raise TimeoutError(f"decoder still busy: {info}")


def test_disconnect_mid_stream_stops_decoding(served):
    wait_idle()
    body = {"model": "mmserve-tiny", "messages": [{"role": "user", "content": "go on"}], "max_tokens": 110,
            "ignore_eos": True, "stream": True}
    steps_before = decoder_info()["steps"]
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", json=body, headers=auth_headers(served),
                      timeout=60) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # the first chunk: decoding has started; then hang up
    info = wait_idle()
    steps = info["steps"] - steps_before
    print(f"decode steps run for the abandoned request: {steps}")
    assert steps < 100
