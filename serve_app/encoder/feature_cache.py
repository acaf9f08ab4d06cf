"""Image features by content hash: an LRU bounded in bytes, and one encode for identical images in flight.

Bytes, not entries: a feature block's size depends on the model (a tiny model's is kilobytes, one LLaVA-1.5 image is
576 x 4096 float32 = 9 MiB), so an entry count says nothing about memory. An optional entry bound is kept for
configs that set one.

In flight: a second request for an image whose encode is still running awaits that encode's result instead of
starting another (a client retrying, several clients sending one image). The encode runs as its own task, so a
requester that goes away (its call cancelled) neither cancels it for the others nor loses the result for the cache.
An encode that fails fails every requester waiting on it and is not cached: the next request tries again.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import numpy as np

MIB = 2**20


class FeatureCache:
    """Lifecycle: get_or_encode(key, encode) per request; resize() on a live reconfigure."""

    def __init__(self, max_bytes: int, max_entries: int | None = None):
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()  # least recent first
        self._inflight: dict[str, asyncio.Task] = {}
        self.nbytes = 0

    def get(self, key: str) -> np.ndarray | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: np.ndarray) -> None:
        if value.nbytes > self.max_bytes or self.max_entries == 0:
            return  # larger than the whole cache (or the cache is off): keeping it would evict everything else
        old = self._items.pop(key, None)
        if old is not None:
            self.nbytes -= old.nbytes
        self._items[key] = value
        self.nbytes += value.nbytes
        self._evict()

    def resize(self, max_bytes: int, max_entries: int | None = None) -> None:
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self._evict()

    def _evict(self) -> None:
        while self._items and (self.nbytes > self.max_bytes or
                               (self.max_entries is not None and len(self._items) > self.max_entries)):
            _, value = self._items.popitem(last=False)
            self.nbytes -= value.nbytes

    def __len__(self) -> int:
        return len(self._items)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def get_or_encode(self, key: str, encode: Callable[[], Awaitable[np.ndarray]]) -> tuple[np.ndarray, str]:
        """The features for `key` and where they came from: "hit" (cached), "joined" (an encode already running
        for the same content), or "miss" (this call started the encode)."""
        cached = self.get(key)
        if cached is not None:
            return cached, "hit"
        task = self._inflight.get(key)
        if task is not None:
            return await asyncio.shield(task), "joined"
        task = asyncio.ensure_future(encode())
        self._inflight[key] = task
        task.add_done_callback(lambda done: self._settle(key, done))
        return await asyncio.shield(task), "miss"

    def _settle(self, key: str, task: asyncio.Task) -> None:
        """The encode ended: no longer in flight; cached when it succeeded."""
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled() and task.exception() is None:
            self.put(key, task.result())
