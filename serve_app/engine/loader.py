"""Build an Engine from an artifact directory: the manifest names the decoder variants, the token embedding table
and the tokenizer; the session's actual EP picks the variant."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from graphs.manifest import CPU_EP, Manifest
from graphs.tokenizer import load_tokenizer
from serve_app.engine.config import EngineConfig
from serve_app.engine.engine import Engine
from serve_app.engine.metrics import EngineMetrics
from serve_app.engine.runner import OrtDecoderRunner
from serve_app.ort_session import open_session
from serve_app.profiling import ProfilableSession

DEFAULT_VARIANTS = ["cpu-int8-kv8", "cpu-int8", "cpu-fp32"]  # int8 KV cache first: docs/performance.md


def open_runner(artifacts_dir: str | Path, config: EngineConfig, threads: int = 1,
                prefer: list[str] | None = None) -> tuple[OrtDecoderRunner, str, Manifest]:
    """The decoder runner with its cache allocated, the variant name it runs, and the manifest."""
    root = Path(artifacts_dir)
    manifest = Manifest.read(root)
    dec = manifest.model["decoder"]
    max_pos = int(dec["max_positions"])
    max_context = config.max_context or max_pos
    if max_context > max_pos:
        raise ValueError(f"max_context {max_context} exceeds the model's {max_pos} positions")
    name, variant = manifest.graphs["decoder"].variant_for(CPU_EP, prefer or DEFAULT_VARIANTS)
    opened = open_session(str(root / variant.file), [CPU_EP], threads=threads)
    session = ProfilableSession(opened.session, root / variant.file, threads, stage="decoder")  # profiling switch
    width, heads = int(dec["width"]), int(dec["heads"])
    kv = variant.kv_cache  # the cache is allocated in the variant's dtype: int8 holds 4x the slots per GiB
    runner = OrtDecoderRunner(session, layers=int(dec["layers"]), heads=heads, head_dim=width // heads,
                              width=width, vocab_size=int(dec["vocab_size"]), slots=config.slots,
                              max_context=max_context, cache_dtype=kv.dtype, cache_last_dim=kv.last_dim(width // heads))
    return runner, name, manifest


def load_engine(artifacts_dir: str | Path, config: EngineConfig, threads: int = 1, prefer: list[str] | None = None,
                metrics: EngineMetrics | None = None) -> Engine:
    root = Path(artifacts_dir)
    runner, variant, manifest = open_runner(root, config, threads, prefer)
    embeddings = np.load(root / manifest.token_embeddings.name).astype(np.float32, copy=False)  # (V,D)
    tokenizer = load_tokenizer(root / manifest.tokenizer.file)
    return Engine(runner, embeddings, tokenizer, manifest.tokenizer.eos_token_id, config, metrics, variant)
