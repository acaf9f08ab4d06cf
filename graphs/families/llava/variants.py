"""The LLaVA family's graph variants, in fallback order per graph (graphs.families.base.VariantSpec).

Each `build` takes the loaded checkpoint (family.Loaded: the typed Checkpoint and its weights by canonical key) and
returns one ONNX proto. cpu-int8 uses the project's one int8 scheme (graphs.emit.quantize.Int8Weights: uint8
weights with zero point 128, MLAS's u8u8 path); cpu-int4 is MatMulNBits 4-bit blocks of 32 (BlockInt4Weights).
A `-kv8` variant has its sibling's weights (same_weights_as) over an int8 KV cache whose static per-channel scales
are calibrated at build on the checkpoint's reference (kv_calibration.py): a quarter of the cache bytes, and the
parity gate bounds what the cache costs against the sibling (parity.py, kv_parity.py).

Order is the fallback order (GraphEntry.variant_for): the int8-cache decoder first, so it serves on CPU when built.
"""

from __future__ import annotations

import numpy as np

from graphs.emit.quantize import BlockInt4Weights, Int8Weights
from graphs.families.base import VariantSpec
from graphs.families.llava.kv_calibration import cache_entry
from mmcore.manifest import CPU_EP, CUDA_EP, TENSORRT_EP


def _vision(style: str, dtype=np.float32, quantize=None, batch: str = "batch"):
    def build(model):
        from graphs.families.llava.vision_graph import build_vision
        return build_vision(model.ck, model.weights, style, dtype, quantize() if quantize else None, batch)
    return build


def _decoder(quantize=None, kv_bits: int | None = None):
    def build(model):
        from graphs.families.llava.decoder_graph import build_decoder
        kv_cache = None
        if kv_bits is not None:
            from graphs.families.llava.kv_calibration import calibrate  # torch + transformers: build time only
            kv_cache = calibrate(model, kv_bits)
        return build_decoder(model.ck, model.weights, quantize() if quantize else None, kv_cache=kv_cache)
    return build


def variants(batch: str = "batch") -> dict[str, dict[str, VariantSpec]]:
    """Every variant; `batch`: the vision graph's batch axis name (images here, views for the anyres families)."""
    return {
        "vision": {
            "portable-fp32": VariantSpec("vision", "fp32", (TENSORRT_EP, CUDA_EP, CPU_EP),
                                         _vision("portable", batch=batch), False),
            "portable-fp16": VariantSpec("vision", "fp16", (TENSORRT_EP, CUDA_EP),
                                         _vision("portable", np.float16, batch=batch), False),
            "cpu-fp32": VariantSpec("vision", "fp32", (CPU_EP,), _vision("cpu", batch=batch), True),
            "cpu-int8": VariantSpec("vision", "int8", (CPU_EP,), _vision("cpu", quantize=Int8Weights, batch=batch),
                                    True),
        },
        "decoder": {
            "cpu-int8-kv8": VariantSpec("decoder", "int8", (CPU_EP,), _decoder(Int8Weights, 8), True,
                                        kv_cache=cache_entry(8), same_weights_as="cpu-int8"),
            "cpu-int4-kv8": VariantSpec("decoder", "int4", (CPU_EP,), _decoder(BlockInt4Weights, 8), True,
                                        kv_cache=cache_entry(8), same_weights_as="cpu-int4"),
            "cpu-fp32": VariantSpec("decoder", "fp32", (CPU_EP,), _decoder(), True),
            "cpu-int8": VariantSpec("decoder", "int8", (CPU_EP,), _decoder(Int8Weights), True),
            "cpu-int4": VariantSpec("decoder", "int4", (CPU_EP,), _decoder(BlockInt4Weights), True),
        },
    }


VARIANTS: dict[str, dict[str, VariantSpec]] = variants()
