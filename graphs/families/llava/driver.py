"""The manifest's DecoderSpec for a LLaVA checkpoint, and prompt embedding for the parity gate.

The parity gate, the benchmark and serving all drive the decoder through serving's one KV runner
(mmcore.runtime.kv_runner.OrtDecoderRunner) built from this spec: its `io.position_ids` is None because this
family's graph takes no positions (GroupQueryAttention rotates by seqlens_k), so the runner binds none.
"""

from __future__ import annotations

import numpy as np

from graphs.families.llava.checkpoint import Checkpoint
from mmcore.manifest import DecoderIO, DecoderSpec, GenerationDefaults, Positions, TensorSpec

TOKEN_EMBEDDINGS = "token_embeddings.npy"


def decoder_spec(ck: Checkpoint, embeddings_file: str = TOKEN_EMBEDDINGS) -> DecoderSpec:
    t = ck.text
    return DecoderSpec(layers=t.layers, heads=t.heads, kv_heads=t.kv_heads, head_dim=t.head_dim, hidden_size=t.hidden,
                       vocab_size=t.vocab_size, max_positions=t.max_positions,
                       positions=Positions(scheme="rotary", theta=t.rope_theta, scaling=t.rope_scaling),
                       eos_token_ids=list(ck.eos_token_ids),
                       embeddings=TensorSpec(name=embeddings_file, dtype="float32", shape=[t.vocab_size, t.hidden]),
                       io=DecoderIO(position_ids=None), generation=GenerationDefaults(**ck.generation))


def open_runner(session, ck: Checkpoint, slots: int, max_context: int, cache=None):
    """`cache`: the variant's quantized KV cache (manifest KvCacheEntry), None for a float32 cache."""
    from mmcore.runtime.kv_runner import OrtDecoderRunner

    return OrtDecoderRunner(session, decoder_spec(ck), slots, max_context, cache=cache)


def embed(ids: list[int], table: np.ndarray, image_token_id: int, features: np.ndarray | None) -> np.ndarray:
    """Prompt embeddings (S,D): token rows, with the image's features (P,D) at its placeholder positions in order."""
    x = table[np.asarray(ids, np.int64)].astype(np.float32)
    at = np.flatnonzero(np.asarray(ids) == image_token_id)
    if features is not None:
        if len(at) != features.shape[0]:
            raise ValueError(f"{len(at)} image placeholders for {features.shape[0]} image features")
        x[at] = features
    return x
