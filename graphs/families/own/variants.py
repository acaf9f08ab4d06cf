"""The registry of graph variants: name -> how to build it, which EPs it is for, its precision.

Order matters: GraphEntry.variant_for falls back to manifest order, so for each EP the fastest variant built for
it comes first (cpu-int8 before cpu-fp32 before the portable graphs, which list the CPU EP only as a last resort).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from graphs.families.base import VariantSpec
from graphs.families.own.decoder_graph import build_decoder
from graphs.families.own.kv_calibration import cache_entry
from graphs.families.own.vision_graph import build_vision
from mmcore.manifest import CPU_EP, CUDA_EP, TENSORRT_EP


def _quantized(builder: Callable, scheme: str = "Int8Weights") -> Callable:
    """`builder` with int8 weights: Int8Weights (per-column weights, per-tensor activations: fastest) or
    BlockInt8Weights (per-block weights, per-row activations: a row never depends on its batch); graphs/emit/quantize.py."""
    def build(model):
        from graphs.emit import quantize
        return builder(model, quantize=getattr(quantize, scheme)())
    return build


def _kv_quantized(scheme: str, bits: int) -> Callable:
    """The decoder with int8 weights (`scheme`) and a `bits` KV cache whose static scales are calibrated on the
    model being built (graphs/families/own/kv_calibration.py)."""
    def build(model):
        from graphs.families.own.kv_calibration import calibrate
        return _quantized(lambda m, quantize: build_decoder(m, quantize=quantize, kv_cache=calibrate(m, bits)),
                          scheme)(model)
    return build


VARIANTS: dict[str, dict[str, VariantSpec]] = {
    "vision": {
        "cpu-int8": VariantSpec("vision", "int8", (CPU_EP,), _quantized(lambda m, quantize: build_vision(
            m, "cpu", quantize=quantize)), contrib=True),
        "cpu-fp32": VariantSpec("vision", "fp32", (CPU_EP,), lambda m: build_vision(m, "cpu"), contrib=True),
        "portable-fp16": VariantSpec("vision", "fp16", (TENSORRT_EP, CUDA_EP),
                                     lambda m: build_vision(m, "portable", np.float16), contrib=False),
        "portable-fp32": VariantSpec("vision", "fp32", (TENSORRT_EP, CUDA_EP, CPU_EP),
                                     lambda m: build_vision(m, "portable"), contrib=False),
    },
    "decoder": {
        # int8 KV cache, static calibrated scales: a quarter of the cache bytes, a faster decode step, a slower
        # prefill (docs/performance.md); gated against cpu-int8 (same weights, float32 cache)
        "cpu-int8-kv8": VariantSpec("decoder", "int8", (CPU_EP,), _kv_quantized("Int8Weights", 8), contrib=True,
                                    kv_cache=cache_entry(8), same_weights_as="cpu-int8"),
        "cpu-int8": VariantSpec("decoder", "int8", (CPU_EP,), _quantized(build_decoder), contrib=True),
        # rows independent of their batch (seeded/greedy replay under any load), slower: graphs/emit/quantize.py
        "cpu-int8-rowwise": VariantSpec("decoder", "int8", (CPU_EP,), _quantized(build_decoder, "BlockInt8Weights"),
                                        contrib=True),
        # the same with an int8 cache: static scales keep the rows independent
        "cpu-int8-rowwise-kv8": VariantSpec("decoder", "int8", (CPU_EP,), _kv_quantized("BlockInt8Weights", 8),
                                            contrib=True, kv_cache=cache_entry(8), same_weights_as="cpu-int8-rowwise"),
        "cpu-fp32": VariantSpec("decoder", "fp32", (CPU_EP,), build_decoder, contrib=True),
    },
}
