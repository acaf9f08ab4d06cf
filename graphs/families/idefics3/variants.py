"""The Idefics3 family's graph variants: llava's, in llava's fallback order and with llava's precisions, providers
and KV caches (graphs/families/llava/variants.py). The decoder variants are llava's own (a Llama-style text model,
the same graph and calibration); the vision variants build this family's tower + connector (vision_graph.py) in
the style and weight precision their llava namesake has."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from graphs.emit.quantize import Int8Weights
from graphs.families.base import VariantSpec
from graphs.families.llava.variants import VARIANTS as LLAVA

DTYPES = {"fp16": np.float16}
QUANTIZE = {"int8": Int8Weights}


def _vision(name: str, spec: VariantSpec):
    style, dtype, quantize = name.split("-")[0], DTYPES.get(spec.precision, np.float32), QUANTIZE.get(spec.precision)

    def build(model):
        from graphs.families.idefics3.vision_graph import build_vision
        return build_vision(model.ck, model.weights, style, dtype, quantize() if quantize else None)
    return build


VARIANTS: dict[str, dict[str, VariantSpec]] = {
    "vision": {name: replace(spec, build=_vision(name, spec)) for name, spec in LLAVA["vision"].items()},
    "decoder": LLAVA["decoder"],
}
