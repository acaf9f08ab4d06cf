"""The vision stage's result cache: features by the image's content hash, so the same image sent again skips the
encoder. Counted in entries; no Ray inside."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


class FeatureCache:
    """LRU of content hash -> features (P,D): the same image sent again skips the encoder."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, key: str) -> np.ndarray | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: np.ndarray) -> None:
        if self.capacity <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        while len(self._items) > max(capacity, 0):
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
