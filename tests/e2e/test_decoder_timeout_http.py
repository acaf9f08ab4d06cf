"""The ingress's decoder timeout over HTTP, on a real decoder that stalls. A second application on the same Serve
instance, its decoder made slow by its own knobs (no test hook):
  - first chunk: `scheduling: run_to_completion` with `batch_wait_s` 30 and 2 slots holds a lone request in the
    queue, waiting for a full batch: no first token for 30 s;
  - between chunks: `stream_interval_s` 1.0 holds every chunk after the first a second after the one before.
`ingress.decoder_timeout_s` is 0.6 s: a lone request answers 504 decoder_timeout and leaves the decoder's queue (its
call cancelled); two requests together fill the batch, get their first chunk at once, then time out on the second:
a streamed one ends with an error event and [DONE], a whole one answers 504."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.e2e.conftest import auth_headers, e2e_args, start_app, wait_ready

pytestmark = pytest.mark.e2e
APP, PREFIX = "slow-decoder", "/slow-decoder"
TIMEOUT_S = 0.6


@pytest.fixture(scope="module")
def slow_url(served):
    from ray import serve

    args = e2e_args(served.artifacts)
    args["ingress"] = {**args["ingress"], "decoder_timeout_s": TIMEOUT_S}
    args["decoder"] = {**args["decoder"], "slots": 2, "max_queue": 4, "scheduling": "run_to_completion",
                       "batch_wait_s": 30.0, "stream_interval_s": 1.0}
    start_app(args, APP, PREFIX)
    url = served.url + PREFIX
    wait_ready(url)
    yield url
    serve.delete(APP)


def decoder_info() -> dict:
    from ray import serve

    return serve.get_deployment_handle("Decoder", APP).info.remote().result()


def body(stream: bool, max_tokens: int = 60) -> dict:
    return {"model": "mmserve-tiny", "messages": [{"role": "user", "content": "a long story"}],
            "max_tokens": max_tokens, "ignore_eos": True, "stream": stream}


def assert_decoder_timeout(err: dict) -> None:
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "timeout" and err["code"] == "decoder_timeout" and "decoder_timeout_s" in err["message"]


async def stream_events(client: httpx.AsyncClient, url: str) -> tuple[int, list]:
    events = []
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body(True)) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                payload = line.removeprefix("data: ")
                events.append(payload if payload == "[DONE]" else json.loads(payload))
    return r.status_code, events


def drained() -> dict:
    """The decoder's info once nothing waits in its queue (within 10 s)."""
    deadline = time.monotonic() + 10
    while (info := decoder_info())["waiting"] and time.monotonic() < deadline:
        time.sleep(0.1)
    return info


def test_no_first_token_is_504_and_the_queued_call_is_cancelled(served, slow_url):
    cancelled = decoder_info()["cancelled"]
    for n, stream in enumerate((False, True), start=1):
        began = time.monotonic()
        r = httpx.post(f"{slow_url}/v1/chat/completions", json=body(stream), headers=auth_headers(served),
                       timeout=60)
        assert r.status_code == 504, r.text[:300]
        assert_decoder_timeout(r.json()["error"])
        assert time.monotonic() - began < 10  # the timeout, not the batch wait (30 s) or Serve's
        # cancelled: it left the queue (else the next lone request would fill the batch with it)
        info = drained()
        assert info["waiting"] == 0 and info["active"] == 0 and info["cancelled"] == cancelled + n, info


def test_stall_between_chunks_streamed_error_event_whole_504(served, slow_url):
    async def pair():  # two requests fill the 2-slot batch: both start at once
        async with httpx.AsyncClient(timeout=60, headers=auth_headers(served)) as client:
            return await asyncio.gather(stream_events(client, slow_url),
                                        client.post(f"{slow_url}/v1/chat/completions", json=body(False)))

    (status, events), whole = asyncio.run(pair())
    assert status == 200 and events[-1] == "[DONE]", events
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"  # the first chunk came through
    assert "error" in events[-2] and all("choices" in e for e in events[:-2]), events
    assert_decoder_timeout(events[-2]["error"])
    assert whole.status_code == 504, whole.text[:300]
    assert_decoder_timeout(whole.json()["error"])


def test_answers_within_the_timeout_still_served(served, slow_url):
    # two chunks (the first and the last are never held back): no gap comes near the timeout
    async def pair():
        async with httpx.AsyncClient(timeout=60, headers=auth_headers(served)) as client:
            return await asyncio.gather(*(client.post(f"{slow_url}/v1/chat/completions", json=body(False, 2))
                                          for _ in range(2)))

    for r in asyncio.run(pair()):
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2, r.text[:300]
    info = decoder_info()
    assert info["active"] == 0 and info["waiting"] == 0
