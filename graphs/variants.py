"""The registry of graph variants: name -> how to build it, which EPs it is for, its precision.

Order matters: GraphEntry.variant_for falls back to manifest order, so for each EP the fastest variant built for
it comes first (cpu-int8 before cpu-fp32 before the portable graphs, which list the CPU EP only as a last resort).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from graphs.decoder_graph import build_decoder
from graphs.manifest import CPU_EP, CUDA_EP, TENSORRT_EP
from graphs.onnx_ops import MS_DOMAIN
from graphs.vision_graph import build_vision


@dataclass(frozen=True)
class VariantSpec:
    graph: str  # "vision" or "decoder"
    precision: str  # "fp32" | "fp16" | "int8"
    providers: tuple[str, ...]
    build: Callable  # (MultimodalModel) -> onnx.ModelProto
    contrib: bool  # may use com.microsoft ops (False: standard domain only, checked by tests)
    kv_cache_bits: int | None = None  # decoder: KV cache quantized to 8 or 4 bits (graphs/kv_calibration.py)
    same_weights_as: str | None = None  # the variant with these weights and a float32 cache (graphs/kv_parity.py)
    optional: bool = False  # missing the gate leaves it out of the artifact (recorded why) instead of failing the build


def _quantized(builder: Callable, scheme: str = "Int8Weights") -> Callable:
    """`builder` with int8 weights: Int8Weights (per-column weights, per-tensor activations: fastest) or
    BlockInt8Weights (per-block weights, per-row activations: a row never depends on its batch); graphs/quantize.py."""
    def build(model):
        from graphs import quantize
        return builder(model, quantize=getattr(quantize, scheme)())
    return build


def _kv_quantized(scheme: str, bits: int) -> Callable:
    """The decoder with int8 weights (`scheme`) and a `bits` KV cache whose static scales are calibrated on the
    model being built."""
    def build(model):
        from graphs.kv_calibration import calibrate
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
        # prefill. Optional: a model whose K/V the calibration does not cover gets no such variant (its manifest says
        # why) and serving falls back to the next in prefer_variants
        "cpu-int8-kv8": VariantSpec("decoder", "int8", (CPU_EP,), _kv_quantized("Int8Weights", 8), contrib=True,
                                    kv_cache_bits=8, same_weights_as="cpu-int8", optional=True),
        "cpu-int8": VariantSpec("decoder", "int8", (CPU_EP,), _quantized(build_decoder), contrib=True),
        # rows independent of their batch (seeded/greedy replay under any load), slower: graphs/quantize.py
        "cpu-int8-rowwise": VariantSpec("decoder", "int8", (CPU_EP,), _quantized(build_decoder, "BlockInt8Weights"),
                                        contrib=True),
        # the same with an int8 cache: static scales keep the rows independent
        "cpu-int8-rowwise-kv8": VariantSpec("decoder", "int8", (CPU_EP,), _kv_quantized("BlockInt8Weights", 8),
                                            contrib=True, kv_cache_bits=8, same_weights_as="cpu-int8-rowwise",
                                            optional=True),
        "cpu-fp32": VariantSpec("decoder", "fp32", (CPU_EP,), build_decoder, contrib=True),
    },
}

# Op types worth counting in a saved graph: every contrib op, plus the standard ones that are themselves fusions
# or quantization.
_COUNTED_STANDARD_OPS = {"LayerNormalization", "MatMulInteger", "DynamicQuantizeLinear", "ConvInteger"}


def fusion_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts = Counter(n.op_type for n in model.graph.node
                     if n.domain == MS_DOMAIN or n.op_type in _COUNTED_STANDARD_OPS)
    return dict(sorted(counts.items()))


def ort_optimized_counts(path: Path) -> dict[str, int]:
    """What ORT's own optimizer makes of a saved graph on the CPU EP: every op type, counted after optimization."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        so.log_severity_level = 3  # it warns that the saved file is hardware specific: known, it is only counted
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        optimized = onnx.load(so.optimized_model_filepath, load_external_data=False)
    return dict(sorted(Counter(n.op_type for n in optimized.graph.node).items()))


def file_name(graph: str, variant: str) -> str:
    return f"{graph}.{variant}.onnx"
