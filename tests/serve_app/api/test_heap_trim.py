"""The ingress's heap trimmer gives freed heap pages back to the kernel, and stops with the replica."""

from __future__ import annotations

import time

import pytest

from serve_app.api.heap_trim import HeapTrimmer, _malloc_trim
from serve_app.api.ingress import Ingress
from serve_app.observability.memory_trace import native_heap, rss_bytes

pytestmark = pytest.mark.skipif(_malloc_trim() is None, reason="glibc's malloc_trim is needed")


def wait_for(predicate, timeout_s=5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_freed_heap_pages_below_a_live_block_go_back_to_the_kernel():
    blocks = [bytes(4000) for _ in range(20_000)]  # ~80 MB from malloc's heap (above pymalloc's sizes)
    pinned = blocks[-1]  # still in use at the top of the heap: glibc cannot give the pages below back on its own
    del blocks
    held = rss_bytes()
    assert native_heap()["free_bytes"] > 60 * 2**20  # freed, but kept by the heap
    trimmer = HeapTrimmer(period_s=0.01).start()
    try:
        assert wait_for(lambda: trimmer.trims >= 1)
    finally:
        trimmer.stop()
    assert held - rss_bytes() > 60 * 2**20 and not trimmer.running()
    assert len(pinned) == 4000


def test_the_ingress_stops_its_heap_trimmer_when_serve_stops_the_replica():
    user_class = Ingress.func_or_class.__mro__[1]  # the class under serve.ingress's ASGI wrapper
    ingress = user_class.__new__(user_class)
    ingress.heap_trim = HeapTrimmer(period_s=0.01).start()
    user_class.__del__(ingress)
    assert not ingress.heap_trim.running()
