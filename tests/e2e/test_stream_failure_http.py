"""A failure after streaming started: the decoder replica dies mid-answer. The client gets the chunks already
sent, then one error event, then [DONE]; Serve replaces the replica and the service answers again."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.e2e.conftest import APP_NAME, auth_headers, replica_pids, wait_ready

pytestmark = pytest.mark.e2e


def decoder_replica_names() -> list[str]:
    return list(replica_pids(APP_NAME, "Decoder"))


def never_finished(events: list) -> bool:
    return not any(isinstance(e, dict) and e.get("choices") and e["choices"][0].get("finish_reason")
                   for e in events)


def wait_for_new_decoder(old_name: str, url: str, timeout_s: float = 120.0) -> None:
    """Until Serve has replaced the killed replica (its name changes) and /ready says every stage runs again."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        names = decoder_replica_names()
        if names and old_name not in names:
            wait_ready(url, deadline - time.monotonic())
            return
        time.sleep(0.5)
    raise TimeoutError("the killed decoder replica was not replaced")


def stream_killing_the_decoder(served, body: dict) -> list:
    """One streamed request; the decoder replica is SIGKILLed when the first chunk arrives. -> the events read."""
    import os
    import signal

    ((victim_name, victim_pid),) = replica_pids(APP_NAME, "Decoder").items()
    events = []
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", json=body, headers=auth_headers(served),
                      timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line:
                continue
            payload = line.removeprefix("data: ")
            events.append(payload if payload == "[DONE]" else json.loads(payload))
            if len(events) == 1:
                # The first chunk arrived: the stream has started. SIGKILL acts at once, where ray.kill's round
                # trip through the GCS can let a 120-token answer finish first.
                os.kill(victim_pid, signal.SIGKILL)
    wait_for_new_decoder(victim_name, served.url)
    return events


ATTEMPTS = 3  # a try whose answer was whole before the kill landed did not test a death mid-answer


def test_decoder_dies_mid_stream_error_chunk_then_done(served):
    # The tiny decoder can produce all 120 tokens (its context is 128) before the first chunk has reached this
    # client, and then the kill lands on an idle replica: that try proves nothing, so it is made again. A try cut
    # short is the case under test and is checked in full; ATTEMPTS whole answers in a row fail the test.
    body = {"model": "mmserve-tiny", "messages": [{"role": "user", "content": "go"}],
            "max_tokens": 120, "ignore_eos": True, "stream": True}
    for attempt in range(1, ATTEMPTS + 1):
        events = stream_killing_the_decoder(served, body)
        print(f"try {attempt}: {len(events)} events, cut short: {never_finished(events)}")
        if never_finished(events):
            break
    else:
        pytest.fail(f"every one of {ATTEMPTS} answers finished before the decoder's kill landed")
    assert events[-1] == "[DONE]"
    assert "choices" in events[0]
    errors = [e for e in events[:-1] if "error" in e]
    assert len(errors) == 1 and events[-2] is errors[0], events[-3:]
    assert set(errors[0]["error"]) == {"message", "type", "param", "code"}
    streamed = sum(1 for e in events if isinstance(e, dict) and e.get("choices"))
    assert 1 <= streamed  # the chunks sent before the death reached the client

    r = httpx.post(f"{served.url}/v1/chat/completions", headers=auth_headers(served), timeout=60,
                   json={**body, "stream": False, "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
