"""The engine's own interface to a decoder. The engine owns it: mmcore's ORT runner (`OrtDecoderRunner`) satisfies
it structurally without knowing it exists, and unit tests pass a fake."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class StepRunner(Protocol):
    """What the engine needs from a decoder: mmcore.runtime.kv_runner.OrtDecoderRunner, or a fake in unit tests."""

    slots: int
    max_context: int
    vocab_size: int

    def prefill_rows(self, lo: int, chunks: list[np.ndarray], starts: list[int]) -> np.ndarray:
        """Cache chunks[i] (c_i,D) after the first starts[i] positions of slot lo+i, for every i, in one call.
        Either every start is 0 or there is one row (ORT's CPU GroupQueryAttention takes no batch of chunks over a
        cached past), and max(starts) + max(c_i) must fit the cache. Slots past `slots - 1` are staging rows.
        -> (k,V): row i's next-token logits where c_i is the longest chunk (a padded row's are the padding's)."""

    def decode(self, n: int, embeds: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """One new token for slots 0..n-1: embeds (n,D), lengths (n,) tokens cached before -> logits (n,V).
        The result may be a view that the next call overwrites."""

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` cached positions of slot src into slot dst."""
