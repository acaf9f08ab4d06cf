"""Build an Engine from an artifact directory: the manifest names the decoder variants, the token embedding table
and the tokenizer; the session's actual EP picks the variant."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tokenizers import Tokenizer

from mmcore.manifest import CPU_EP, Manifest, ManifestError, Variant, check_session_io, variant_dtypes
from serve_app.engine.config import EngineConfig
from serve_app.engine.engine import Engine
from serve_app.engine.kv_plan import KvPlan, KvPlanTooBig, available_memory_bytes, plan_kv_cache
from serve_app.engine.metrics import EngineMetrics
from mmcore.runtime.kv_runner import OrtDecoderRunner, open_kv_runner
from mmcore.runtime.int8_kernels import Int8Choice, split_forced
from mmcore.runtime.ort_session import cpu_graph, open_session
from mmcore.runtime.profiling import ProfilableSession

log = logging.getLogger(__name__)

# The float KV cache first: its prefill costs about half the int8 cache's (whose GroupQueryAttention kernel is 2.7x
# slower over a prompt), and on image requests prefill is most of the decoder's work; the int8 cache (a quarter of
# the memory) where the float one would not fit the node's memory. docs/performance.md, "The decoder's default".
DEFAULT_VARIANTS = ["cpu-int8", "cpu-int8-kv8", "cpu-fp32"]


def open_runner(artifacts_dir: str | Path, config: EngineConfig, threads: int = 1,
                prefer: list[str] | None = None) -> tuple[OrtDecoderRunner, str, Manifest]:
    """The decoder runner with its cache allocated, the variant name it runs, and the manifest."""
    opened = open_planned_runner(artifacts_dir, config, threads, prefer)
    return opened.runner, opened.variant, opened.manifest


class PlannedRunner(NamedTuple):
    runner: OrtDecoderRunner
    variant: str
    manifest: Manifest
    plan: KvPlan  # the KV cache it allocated: checked (kv_plan) before the session or the cache exist
    int8: Int8Choice | None  # the int8 weight encoding the session runs, for an int8 variant (int8_kernels)


def open_planned_runner(artifacts_dir: str | Path, config: EngineConfig, threads: int = 1,
                        prefer: list[str] | None = None) -> PlannedRunner:
    """open_runner, with the KV cache plan it allocated and the int8 encoding it chose."""
    root = Path(artifacts_dir)
    manifest = Manifest.read(root)
    spec = manifest.decoder
    entry = manifest.graphs["decoder"]
    names, forced = split_forced(prefer or DEFAULT_VARIANTS)  # "cpu-int8-kv8@u8u8" forces the int8 encoding
    name, variant, plan = _fitting_variant(entry, spec, names, config)
    source, int8, again = cpu_graph(root / variant.file, variant, forced.get(name), stage="decoder")
    opened = open_session(source, [CPU_EP], threads=threads)
    # at replica start, not at the first request; a quantized-cache variant's cache tensors in its own dtype
    check_session_io(root / variant.file, entry, opened.session, variant_dtypes(spec, variant))
    session = ProfilableSession(opened.session, root / variant.file, threads, stage="decoder",
                                source=again)  # profiling switch
    runner = open_kv_runner(session, spec, plan.slots, plan.max_context, cache=variant.kv_cache)  # variant's dtype
    return PlannedRunner(runner, name, manifest, plan, int8)


def _fitting_variant(entry, spec, names: list[str], config: EngineConfig) -> tuple[str, Variant, KvPlan]:
    """The first preferred variant whose KV cache plan fits the node's available memory. A later one is taken only
    when the earlier one's cache would not fit (a float cache where the int8 one does), with a warning; any other
    plan error, or none fitting, is raised as the first variant's."""
    available, first_error = available_memory_bytes(), None
    remaining = list(names)
    while True:
        name, variant = entry.variant_for(CPU_EP, remaining)
        try:
            return name, variant, plan_kv_cache(spec, variant.kv_cache, config.slots, config.max_context,
                                                config.kv_cache_gib, available)
        except KvPlanTooBig as e:
            first_error = first_error or e
            remaining = remaining[remaining.index(name) + 1:] if name in remaining else []
            if not remaining:
                raise first_error from None
            log.warning("decoder: %s does not fit (%s); trying %s", name, e, remaining[0])


def load_engine(artifacts_dir: str | Path, config: EngineConfig, threads: int = 1, prefer: list[str] | None = None,
                metrics: EngineMetrics | None = None) -> Engine:
    root = Path(artifacts_dir)
    runner, variant, manifest, plan, int8 = open_planned_runner(root, config, threads, prefer)
    spec = manifest.decoder
    embeddings = np.load(root / spec.embeddings.name).astype(np.float32, copy=False)  # (V,D)
    if list(embeddings.shape) != [spec.vocab_size, spec.hidden_size]:
        raise ManifestError(f"{root / spec.embeddings.name}: decoder.embeddings: shape {list(embeddings.shape)}, "
                            f"the manifest declares {[spec.vocab_size, spec.hidden_size]}")
    tokenizer = Tokenizer.from_file(str(root / manifest.tokenizer_file))
    engine = Engine(runner, embeddings, tokenizer, spec.eos_token_ids, config, metrics, variant,
                    clean_up_spaces=manifest.prompt.clean_up_tokenization_spaces)
    engine.kv_plan, engine.int8 = plan, int8
    return engine
