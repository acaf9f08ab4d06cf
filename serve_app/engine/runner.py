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

    def prefill(self, slot: int, embeds: np.ndarray, start: int = 0) -> np.ndarray:
        """Prompt positions start..start+S-1, embeds (S,D), into a slot holding the first `start` of them
        (0: an empty slot) -> logits (V,) at the last position. Slot `slots` is the staging row."""

    def decode(self, n: int, embeds: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """One new token for slots 0..n-1: embeds (n,D), lengths (n,) tokens cached before -> logits (n,V).
        The result may be a view that the next call overwrites."""

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` cached positions of slot src into slot dst."""
