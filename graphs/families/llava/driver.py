"""Driving the built decoder through serving's own KV runner (serve_app.engine.runner.OrtDecoderRunner), so the
parity gate proves the runner that serves, on the same per-slot buffer, chunked prefill and ragged decode.

The only difference from today's decoder contract is that this family's graph has no `position_ids` input
(GroupQueryAttention derives positions from seqlens_k), so the runner's binding of it is skipped.
"""

from __future__ import annotations

import numpy as np

from graphs.families.llava.checkpoint import Checkpoint
from serve_app.engine.runner import OrtDecoderRunner


class RotaryDecoderRunner(OrtDecoderRunner):
    def __init__(self, session, ck: Checkpoint, slots: int, max_context: int):
        t = ck.text
        self._graph_inputs = {i.name for i in session.get_inputs()}
        super().__init__(session, t.layers, t.kv_heads, t.head_dim, t.hidden, t.vocab_size, slots, max_context)

    def _bind_array(self, io, name: str, arr: np.ndarray, output: bool = False) -> None:
        if output or name in self._graph_inputs:
            OrtDecoderRunner._bind_array(io, name, arr, output)


def embed(ids: list[int], table: np.ndarray, image_token_id: int, features: np.ndarray | None) -> np.ndarray:
    """Prompt embeddings (S,D): token rows, with the image's features (P,D) at its placeholder positions in order."""
    x = table[np.asarray(ids, np.int64)].astype(np.float32)
    at = np.flatnonzero(np.asarray(ids) == image_token_id)
    if features is not None:
        if len(at) != features.shape[0]:
            raise ValueError(f"{len(at)} image placeholders for {features.shape[0]} image features")
        x[at] = features
    return x
