"""Running the built graphs with ONNX Runtime the way serving does: the decoder over a preallocated per-slot cache.

Used by the parity gate and the benchmark, so both exercise the same in-place cache contract serving relies on.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort


def cpu_session(path_or_bytes, threads: int = 1, profile_prefix: str | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path_or_bytes, so, providers=["CPUExecutionProvider"])


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8}


class CachedDecoder:
    """A decoder session plus its KV cache: per layer, one (slots, nh, max_cache, hs) key and value buffer.

    Lifecycle: prefill(slot, embeds) once per sequence (batch 1, into the slot's row), then step(slots, ...) for
    decode steps over any set of slots, each row at its own length. past and present are bound to the same memory,
    so GroupQueryAttention appends in place and nothing is copied between calls.
    """

    def __init__(self, session: ort.InferenceSession, layers: int, heads: int, head_dim: int, slots: int,
                 max_cache: int):
        self.session = session
        self.layers = layers
        past = next(i for i in session.get_inputs() if i.name == "past_key.0")  # the variant's cache dtype and width
        self.dtype = np.dtype(_ORT_TYPES[past.type])
        last = past.shape[-1] if isinstance(past.shape[-1], int) else head_dim
        self.keys = np.zeros((layers, slots, heads, max_cache, last), self.dtype)
        self.values = np.zeros_like(self.keys)
        self.lengths = np.zeros(slots, np.int64)  # tokens in each slot's cache

    def _run(self, embeds: np.ndarray, positions: np.ndarray, rows: slice,
             new_lengths: np.ndarray) -> np.ndarray:
        io = self.session.io_binding()
        io.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds, np.float32))
        io.bind_cpu_input("position_ids", np.ascontiguousarray(positions, np.int64))
        io.bind_cpu_input("seqlens_k", (new_lengths - 1).astype(np.int32))
        io.bind_cpu_input("total_sequence_length", np.array(new_lengths.max(), np.int32))
        io.bind_output("logits")  # first, so it is output 0 below
        for i in range(self.layers):
            for past, present, buf in ((f"past_key.{i}", f"present_key.{i}", self.keys[i, rows]),
                                       (f"past_value.{i}", f"present_value.{i}", self.values[i, rows])):
                io.bind_input(past, "cpu", 0, self.dtype, list(buf.shape), buf.ctypes.data)
                io.bind_output(present, "cpu", 0, self.dtype, list(buf.shape), buf.ctypes.data)
        self.session.run_with_iobinding(io)
        # Only the logits: copy_outputs_to_cpu() would also copy every bound cache buffer (tens of MB per step).
        return io.get_outputs()[0].numpy()

    def prefill(self, slot: int, embeds: np.ndarray) -> np.ndarray:
        """embeds (1,S,D) into an empty slot -> logits (1,V) at the last position."""
        s = embeds.shape[1]
        out = self._run(embeds, np.arange(s)[None], slice(slot, slot + 1), np.array([s]))
        self.lengths[slot] = s
        return out

    def step(self, first_slot: int, embeds: np.ndarray) -> np.ndarray:
        """One token for each of the contiguous slots first_slot.. (B,1,D) -> logits (B,V)."""
        b = embeds.shape[0]
        rows = slice(first_slot, first_slot + b)
        lengths = self.lengths[rows]
        out = self._run(embeds, lengths[:, None], rows, lengths + 1)
        self.lengths[rows] += 1
        return out
