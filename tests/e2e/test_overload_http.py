"""Overload over HTTP: a second application on the same Serve instance whose decoder has one slot and no queue.
Concurrent long answers fill it; the rest are refused at once with 503, Retry-After and an OpenAI error, instead of
waiting in an unbounded queue."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.e2e.conftest import auth_headers, e2e_args, start_app, wait_ready

pytestmark = pytest.mark.e2e
PREFIX = "/overload"


@pytest.fixture(scope="module")
def overload_url(served):
    from ray import serve

    args = e2e_args(served.artifacts)
    args["decoder"] = {**args["decoder"], "slots": 1, "max_queue": 0}
    start_app(args, "overload", PREFIX)
    url = served.url + PREFIX
    wait_ready(url)
    yield url
    serve.delete("overload")


def test_full_decoder_answers_503_with_retry_after(served, overload_url):
    body = {"model": "mmserve-tiny", "messages": [{"role": "user", "content": "a long story"}], "max_tokens": 100,
            "ignore_eos": True}

    async def burst():
        async with httpx.AsyncClient(timeout=60, headers=auth_headers(served)) as client:
            return await asyncio.gather(*(client.post(f"{overload_url}/v1/chat/completions",
                                                      json={**body, "stream": i % 2 == 0}) for i in range(8)))
    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 503 in statuses and set(statuses) <= {200, 503}, statuses
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["type"] == "server_overloaded"
    # the main application is unaffected and the overloaded one serves again once idle
    ok = httpx.post(f"{overload_url}/v1/chat/completions", json={**body, "max_tokens": 2},
                    headers=auth_headers(served), timeout=60)
    assert ok.status_code == 200
