"""The vision stage's feature cache: LRU evicting by bytes, identical images in flight encoded once, and a failed
encode failing every waiter without being cached."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serve_app.encoder.feature_cache import FeatureCache


def block(kib: int) -> np.ndarray:
    return np.zeros(kib * 256, np.float32)  # kib KiB


def test_eviction_is_by_bytes_least_recent_first():
    c = FeatureCache(max_bytes=10 * 1024)
    c.put("a", block(4))
    c.put("b", block(4))
    c.get("a")  # a becomes most recent: b goes first
    c.put("c", block(4))  # 12 KiB > 10: one block must go
    assert c.get("b") is None and c.get("a") is not None and c.get("c") is not None
    assert c.nbytes == 8 * 1024 and len(c) == 2
    c.put("big", block(9))  # room only after both others go
    assert (len(c), c.nbytes) == (1, 9 * 1024)


def test_a_block_larger_than_the_cache_is_not_kept_and_evicts_nothing():
    c = FeatureCache(max_bytes=10 * 1024)
    c.put("a", block(4))
    c.put("huge", block(11))
    assert c.get("huge") is None and c.get("a") is not None


def test_an_entry_bound_and_a_live_resize_apply_too():
    c = FeatureCache(max_bytes=100 * 1024, max_entries=2)
    for k in "abc":
        c.put(k, block(1))
    assert c.get("a") is None and len(c) == 2
    c.resize(max_bytes=1024)
    assert len(c) == 1 and c.get("c") is not None
    c.resize(max_bytes=0)  # off
    assert len(c) == 0 and c.nbytes == 0
    c.put("d", block(1))
    assert len(c) == 0


def test_identical_images_in_flight_are_encoded_once_and_every_waiter_gets_the_result():
    c = FeatureCache(max_bytes=2**20)
    calls = []

    async def main():
        release = asyncio.Event()

        async def encode():
            calls.append(1)
            await release.wait()  # still encoding while the others arrive
            return block(1) + 1

        waiters = [asyncio.create_task(c.get_or_encode("same", encode)) for _ in range(5)]
        await asyncio.sleep(0.01)
        assert c.in_flight == 1 and len(calls) == 1
        release.set()
        results = await asyncio.gather(*waiters)
        again = await c.get_or_encode("same", encode)
        return results, again

    results, again = asyncio.run(main())
    assert len(calls) == 1
    assert sorted(source for _, source in results) == ["joined"] * 4 + ["miss"]
    assert all(r is results[0][0] for r, _ in results) and again == (results[0][0], "hit")
    assert c.in_flight == 0


def test_a_failed_encode_fails_every_waiter_and_is_not_cached():
    c = FeatureCache(max_bytes=2**20)
    calls = []

    async def main():
        release = asyncio.Event()

        async def failing():
            calls.append(1)
            await release.wait()
            raise RuntimeError("encoder broke")

        waiters = [asyncio.create_task(c.get_or_encode("img", failing)) for _ in range(3)]
        await asyncio.sleep(0.01)
        release.set()
        outcomes = await asyncio.gather(*waiters, return_exceptions=True)
        assert c.in_flight == 0 and len(c) == 0

        async def working():
            calls.append(1)
            return block(1)
        return outcomes, await c.get_or_encode("img", working)  # tried again: the failure was not cached

    outcomes, (_, source) = asyncio.run(main())
    assert all(isinstance(o, RuntimeError) and "encoder broke" in str(o) for o in outcomes)
    assert source == "miss" and len(calls) == 2


def test_a_requester_going_away_does_not_cancel_the_encode_for_the_others():
    c = FeatureCache(max_bytes=2**20)

    async def main():
        release = asyncio.Event()

        async def encode():
            await release.wait()
            return block(1)

        first = asyncio.create_task(c.get_or_encode("img", encode))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(c.get_or_encode("img", encode))
        await asyncio.sleep(0.01)
        first.cancel()  # its client disconnected
        await asyncio.sleep(0.01)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await second

    features, source = asyncio.run(main())
    assert source == "joined" and features.nbytes == 1024 and len(c) == 1  # and the result was cached
