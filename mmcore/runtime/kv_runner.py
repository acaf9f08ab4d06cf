"""The decoder graph over a preallocated KV cache: prefill one slot or several (ragged), decode a batch of slots,
move a slot.

Cache layout, one buffer per layer and per K/V: (slots + 1, kv_heads, max_context, head_dim); the extra row (and free
slots below it) stage long prompts prefilled in chunks while the decode slots keep stepping. The slot axis is outermost,
so the rows of slots lo..hi-1 are one contiguous memory range and `cache[lo:hi]` can be bound to the graph without a copy.
GroupQueryAttention reads past_key and writes present_key through the same pointer: the cache is updated in place
and never copied between steps.

Decode bindings are made once per batch size n and reused: their inputs are prefixes of fixed host buffers that each
step overwrites, so a step costs one ORT call and no binding work.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from mmcore.manifest import DecoderSpec, KvCacheEntry


def _map_pages(arr: np.ndarray) -> None:
    """Zero `arr` by writing it, so every page is mapped now, at load. Freshly allocated memory is mapped lazily: the
    first write into each part of the cache (a prefill into a slot never used, a compaction move, a row growing into
    new positions) would page-fault inside a step; with transparent huge pages each fault zeroes 2 MiB, and a slot's
    rows span one region per head and layer (docs/performance.md, the decode loop)."""
    arr[...] = 0


class OrtDecoderRunner:
    """The one KV-cache runner: the build's parity gate, the benchmarks and the serving engine all run this.

    Names and shapes come from the manifest's DecoderSpec: (layers, kv_heads, head_dim, cache dtype) size the cache,
    `spec.io` names every tensor, and `position_ids` is bound only when the graph has one (a rotary decoder takes
    its positions from seqlens_k). The cache lives on `device` ("cpu", or "cuda" with `device_id`) as OrtValues;
    rows are bound by address, so a slice of slots is bound without a copy on any device. The small per-step
    inputs and the logits stay in host memory (ORT copies them to the device and back).

    `cache` is the variant's own KV cache storage (manifest Variant.kv_cache: int8, or uint8 at head_dim/2 for
    4 bits); None allocates spec.cache_dtype at head_dim. The runner must allocate what the variant it runs binds.
    """

    def __init__(self, session: ort.InferenceSession, spec: DecoderSpec, slots: int, max_context: int,
                 device: str = "cpu", device_id: int = 0, cache: KvCacheEntry | None = None):
        self.session = session
        self.slots, self.max_context, self.vocab_size = slots, max_context, spec.vocab_size
        self.device, self.device_id = device, device_id
        self._io = spec.io
        self._layers = spec.layers
        self._dtype = np.dtype(spec.cache_dtype if cache is None else cache.dtype)
        last = spec.head_dim if cache is None else cache.last_dim(spec.head_dim)
        self._positions_bound = spec.io.position_ids is not None and spec.io.position_ids in {
            i.name for i in session.get_inputs()}
        shape = [slots + 1, spec.kv_heads, max_context, last]  # (slots+1,kv,T,hs) per layer and K/V
        self._row_bytes = int(np.prod(shape[1:])) * self._dtype.itemsize
        self._cache = [[ort.OrtValue.ortvalue_from_shape_and_type(shape, self._dtype, device, device_id)
                        for _ in range(spec.layers)] for _kind in ("key", "value")]
        if device == "cpu":  # host views for move(), zeroed like a fresh buffer
            self._host = [[v.numpy() for v in kind] for kind in self._cache]
            for kind in self._host:
                for arr in kind:
                    _map_pages(arr)
        width = spec.hidden_size
        self._embeds = np.zeros((slots, 1, width), np.float32)  # (n,1,D) prefix bound per step
        self._positions = np.zeros((slots, 1), np.int64)  # (n,1)
        self._seqlens = np.zeros((slots,), np.int32)  # (n,)
        self._total = np.zeros((), np.int32)
        self._logits = np.zeros((slots, spec.vocab_size), np.float32)  # (n,V)
        self._decode_bindings: dict[int, ort.IOBinding] = {}

    @property
    def cache_bytes(self) -> int:
        """Bytes of KV cache allocated (every layer, keys and values, the staging row included)."""
        return 2 * self._layers * (self.slots + 1) * self._row_bytes

    def close(self) -> None:
        """Release the KV cache (and the bindings that point into it); the runner runs nothing after this."""
        self._decode_bindings.clear()
        self._host = []
        self._cache = []

    def _bind_cache(self, io: ort.IOBinding, lo: int, hi: int) -> None:
        names = self._io
        for i in range(self._layers):
            for (past, present), values in zip(((names.past_key, names.present_key),
                                                (names.past_value, names.present_value)), self._cache):
                value = values[i]
                shp = [hi - lo, *value.shape()[1:]]
                ptr = value.data_ptr() + lo * self._row_bytes  # rows lo..hi-1: contiguous, slot axis outermost
                io.bind_input(past.format(i=i), self.device, self.device_id, self._dtype, shp, ptr)
                io.bind_output(present.format(i=i), self.device, self.device_id, self._dtype, shp, ptr)

    @staticmethod
    def _bind_array(io: ort.IOBinding, name: str, arr: np.ndarray, output: bool = False) -> None:
        bind = io.bind_output if output else io.bind_input
        bind(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)

    def _bind_step_inputs(self, io: ort.IOBinding, embeds, positions, seqlens, total) -> None:
        self._bind_array(io, self._io.inputs_embeds, embeds)
        if self._positions_bound:
            self._bind_array(io, self._io.position_ids, positions)
        self._bind_array(io, self._io.seqlens_k, seqlens)
        self._bind_array(io, self._io.total_sequence_length, total)

    def _decode_binding(self, n: int) -> ort.IOBinding:
        io = self._decode_bindings.get(n)
        if io is None:
            io = self.session.io_binding()
            self._bind_step_inputs(io, self._embeds[:n], self._positions[:n], self._seqlens[:n], self._total)
            self._bind_array(io, self._io.logits, self._logits[:n], output=True)
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
        self._bind_step_inputs(io, x, pos, seqlens, total)
        self._bind_array(io, self._io.logits, logits, output=True)
        self._bind_cache(io, slot, slot + 1)
        self.session.run_with_iobinding(io)
        return logits[0]

    def prefill_rows(self, lo: int, chunks: list[np.ndarray], starts: list[int]) -> np.ndarray:
        """Several prompts' chunks in one call, one per row of slots lo..lo+k-1: chunks[i] (c_i,D) continues the
        starts[i] positions row lo+i holds (0: a fresh row). -> (k,V) logits of each row's column S-1: the next-token
        logits of a row whose chunk is the longest (c_i = S), padding's for the others. The engine mostly feeds a
        prompt's last position through a decode step instead, so that rows of different lengths can share a call.

        Rows are right-padded to S = max c_i and each row is told it gets S new positions (seqlens_k = start + S - 1),
        because GroupQueryAttention's CPU kernel takes a row's past as total - S ("assume no padding"): every row's
        past is then right, every query attends causally within its own row, and a padded row's extra positions
        (its last embedding repeated, finite values) only write cache positions past its length, which nothing reads
        before later chunks or decode steps overwrite them. Hence start + S must fit the row; the caller splits."""
        k = len(chunks)
        s = max(c.shape[0] for c in chunks)
        if k == 0 or s == 0 or any(c.shape[0] == 0 for c in chunks):
            raise ValueError("every row of a ragged prefill needs at least one position")
        if max(starts) + s > self.max_context:
            raise ValueError(f"a ragged prefill of {s} positions past {max(starts)} exceeds the cache's "
                             f"{self.max_context}")
        x = np.empty((k, s, chunks[0].shape[1]), np.float32)  # (k,S,D)
        for i, c in enumerate(chunks):
            x[i, :c.shape[0]] = c
            x[i, c.shape[0]:] = c[-1]
        first = np.asarray(starts, np.int64)[:, None]
        pos = first + np.arange(s, dtype=np.int64)[None]  # (k,S)
        seqlens = (first[:, 0] + s - 1).astype(np.int32)
        total = np.array(max(starts) + s, np.int32)
        logits = np.empty((k, self.vocab_size), np.float32)  # the graph's head: column S-1 of each row
        io = self.session.io_binding()
        self._bind_step_inputs(io, x, pos, seqlens, total)
        self._bind_array(io, self._io.logits, logits, output=True)
        self._bind_cache(io, lo, lo + k)
        self.session.run_with_iobinding(io)
        return logits

    def decode(self, n: int, embeds: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        self._embeds[:n, 0] = embeds
        self._positions[:n, 0] = lengths  # the new token sits right after the cached ones
        self._seqlens[:n] = lengths  # tokens cached after this call, minus one
        self._total[...] = int(lengths.max()) + 1
        self.session.run_with_iobinding(self._decode_binding(n))
        return self._logits[:n]

    def move(self, src: int, dst: int, length: int) -> None:
        if self.device != "cpu":  # needs a device-side copy (a Memcpy graph or the EP's stream): not built yet
            raise NotImplementedError(f"moving cached rows on {self.device} is not implemented; prefill prompts "
                                      "whole (chunked prefill needs it)")
        for kind in self._host:
            for buf in kind:
                buf[dst, :, :length] = buf[src, :, :length]  # (kv,length,hs)


def open_kv_runner(session: ort.InferenceSession, spec: DecoderSpec, slots: int, max_context: int | None = None,
                   cache: KvCacheEntry | None = None) -> OrtDecoderRunner:
    """The runner for a session, its cache on the device of the session's first EP (CPU unless CUDA loaded) and in
    the variant's dtype (`cache`: its manifest Variant.kv_cache)."""
    device = "cuda" if session.get_providers()[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"
    return OrtDecoderRunner(session, spec, slots, max_context or spec.max_positions, device, cache=cache)
