"""The decoder graph over a preallocated KV cache: prefill one slot, decode a batch of slots, move a slot.

Cache layout, one buffer per layer and per K/V: (slots + 1, nh, max_context, hs); the extra row stages a long prompt
prefilled in chunks while the decode slots keep stepping. The slot axis is outermost, so the
rows of slots lo..hi-1 are one contiguous memory range and `cache[lo:hi]` can be bound to the graph without a copy.
GroupQueryAttention reads past_key and writes present_key through the same pointer: the cache is updated in place
and never copied between steps.

Decode bindings are made once per batch size n and reused: their inputs are prefixes of fixed host buffers that each
step overwrites, so a step costs one ORT call and no binding work.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import onnxruntime as ort


class StepRunner(Protocol):
    """What the engine needs from a decoder: the ORT runner below, or a fake in unit tests."""

    slots: int
    max_context: int
    vocab_size: int

    def prefill(self, slot: int, embeds: np.ndarray, start: int = 0) -> np.ndarray:
        """Prompt positions start..start+S-1, embeds (S,D), into a slot holding the first `start` of them
        (0: an empty slot) -> logits (V,) at the last position. Slot `slots` is the staging row."""

    def decode(self, n: int, embeds: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """One new token for slots 0..n-1: embeds (n,D), lengths (n,) tokens cached before -> logits (n,V).
        The result may be a view that the next call overwrites."""

    @property
    def cache_bytes(self) -> int:
        """Bytes of KV cache allocated (every layer, keys and values, the staging row included)."""
        return sum(b.nbytes for b in (*self._key, *self._value))

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` cached positions of slot src into slot dst."""


def _resident_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """Zeros whose pages are mapped now, once, at load. np.zeros maps them lazily, so the first write into each part of
    the cache (a prefill into a slot never used, a compaction move, a row growing into new positions) would page-fault
    inside a step; with transparent huge pages each such fault zeroes 2 MiB, and a slot's rows span one region per
    head and layer (docs/performance.md: a first-touch move costs two orders of magnitude more than a warm one)."""
    buf = np.zeros(shape, dtype)
    buf.fill(0)
    return buf


class OrtDecoderRunner:
    def __init__(self, session: ort.InferenceSession, layers: int, heads: int, head_dim: int, width: int,
                 vocab_size: int, slots: int, max_context: int, cache_dtype: str = "float32",
                 cache_last_dim: int | None = None):
        """cache_dtype / cache_last_dim: the variant's KV cache storage (manifest kv_cache): float32 with head_dim,
        int8 with head_dim, or uint8 with head_dim / 2 (4 bits)."""
        self.session = session
        self.slots, self.max_context, self.vocab_size = slots, max_context, vocab_size
        self._layers = layers
        shape = (slots + 1, heads, max_context, cache_last_dim or head_dim)
        self._key = [_resident_zeros(shape, cache_dtype) for _ in range(layers)]  # (slots+1,nh,T,hs) each
        self._value = [_resident_zeros(shape, cache_dtype) for _ in range(layers)]
        self._embeds = np.zeros((slots, 1, width), np.float32)  # (n,1,D) prefix bound per step
        self._positions = np.zeros((slots, 1), np.int64)  # (n,1)
        self._seqlens = np.zeros((slots,), np.int32)  # (n,)
        self._total = np.zeros((), np.int32)
        self._logits = np.zeros((slots, vocab_size), np.float32)  # (n,V)
        self._decode_bindings: dict[int, ort.IOBinding] = {}

    def _bind_cache(self, io: ort.IOBinding, lo: int, hi: int) -> None:
        for i in range(self._layers):
            for kind, buf in (("key", self._key[i]), ("value", self._value[i])):
                rows = buf[lo:hi]  # contiguous: slot axis outermost
                ptr, shp = rows.ctypes.data, list(rows.shape)
                io.bind_input(f"past_{kind}.{i}", "cpu", 0, rows.dtype, shp, ptr)
                io.bind_output(f"present_{kind}.{i}", "cpu", 0, rows.dtype, shp, ptr)

    @staticmethod
    def _bind_array(io: ort.IOBinding, name: str, arr: np.ndarray, output: bool = False) -> None:
        bind = io.bind_output if output else io.bind_input
        bind(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)

    def _decode_binding(self, n: int) -> ort.IOBinding:
        io = self._decode_bindings.get(n)
        if io is None:
            io = self.session.io_binding()
            self._bind_array(io, "inputs_embeds", self._embeds[:n])
            self._bind_array(io, "position_ids", self._positions[:n])
            self._bind_array(io, "seqlens_k", self._seqlens[:n])
            self._bind_array(io, "total_sequence_length", self._total)
            self._bind_array(io, "logits", self._logits[:n], output=True)
            self._bind_cache(io, 0, n)
            self._decode_bindings[n] = io
        return io

    def prefill(self, slot: int, embeds: np.ndarray, start: int = 0) -> np.ndarray:
        s = embeds.shape[0]
        if start + s > self.max_context:
            raise ValueError(f"prompt of {start + s} positions exceeds the cache's {self.max_context}")
        io = self.session.io_binding()
        x = np.ascontiguousarray(embeds, np.float32)[None]  # (1,S,D)
        pos = np.arange(start, start + s, dtype=np.int64)[None]  # (1,S)
        seqlens = np.array([start + s - 1], np.int32)  # cached after this call, minus one
        total = np.array(start + s, np.int32)
        logits = np.empty((1, self.vocab_size), np.float32)
        for name, arr in (("inputs_embeds", x), ("position_ids", pos), ("seqlens_k", seqlens),
                          ("total_sequence_length", total)):
            self._bind_array(io, name, arr)
        self._bind_array(io, "logits", logits, output=True)
        self._bind_cache(io, slot, slot + 1)
        self.session.run_with_iobinding(io)
        return logits[0]

    def decode(self, n: int, embeds: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        self._embeds[:n, 0] = embeds
        self._positions[:n, 0] = lengths  # the new token sits right after the cached ones
        self._seqlens[:n] = lengths  # tokens cached after this call, minus one
        self._total[...] = int(lengths.max()) + 1
        self.session.run_with_iobinding(self._decode_binding(n))
        return self._logits[:n]

    @property
    def cache_bytes(self) -> int:
        """Bytes of KV cache allocated (every layer, keys and values, the staging row included)."""
        return sum(b.nbytes for b in (*self._key, *self._value))

    def move(self, src: int, dst: int, length: int) -> None:
        for buf in (*self._key, *self._value):
            buf[dst, :, :length] = buf[src, :, :length]  # (nh,length,hs)
