"""The soak's memory trace: off by default, and when on it names the line whose allocations grew."""

from __future__ import annotations

import tracemalloc

import pytest

from serve_app.observability.memory_trace import ENV, MemoryTrace

HELD = []


def test_off_unless_the_environment_asks(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert MemoryTrace.start_if_asked() is None
    monkeypatch.setenv(ENV, "0")
    assert MemoryTrace.start_if_asked() is None


def test_growth_names_the_allocating_line_and_the_heap_account(monkeypatch):
    monkeypatch.setenv(ENV, "5")
    trace = MemoryTrace.start_if_asked()
    try:
        with pytest.raises(RuntimeError, match="baseline"):
            trace.growth()
        trace.baseline()
        HELD.extend(bytearray(1000) for _ in range(2000))  # ~2 MB still held at the next snapshot
        growth = trace.growth(limit=3)
    finally:
        tracemalloc.stop()
        HELD.clear()
    top = growth["top"][0]
    assert top["size_diff"] > 1_900_000 and any(__file__ in frame for frame in top["traceback"])
    assert {"rss_bytes"} <= set(growth["native"])
