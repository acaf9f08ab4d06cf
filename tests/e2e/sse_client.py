"""A minimal SSE reader for the tests: the raw events a client sees, [DONE] included."""

from __future__ import annotations

import json

import httpx


def read_events(response: httpx.Response) -> list:
    """`data:` payloads in order: dicts, and the string "[DONE]"."""
    events = []
    for line in response.iter_lines():
        if not line.startswith("data: "):
            assert line == "", f"unexpected SSE line {line!r}"
            continue
        payload = line[len("data: "):]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def stream_chat(url: str, headers: dict, body: dict, timeout: float = 60) -> tuple[int, list]:
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, headers=headers,
                      timeout=timeout) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, [r.json()]
        assert r.headers["content-type"].startswith("text/event-stream")
        return 200, read_events(r)


def content_of(events: list) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                   if isinstance(e, dict) and e.get("choices"))
