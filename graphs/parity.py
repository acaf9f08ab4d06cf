"""Which parity checks each variant gets, and the gate's verdict per variant (the checks live in graphs.verify;
what the build keeps of the verdicts, graphs.gate).

    vision  every variant        features of a seeded batch of 2 vs the reference (max abs error, cosine)
            fp32 variants        + greedy 32 tokens after image + prompt, through the fp32 decoder
    decoder every variant        teacher-forced next-token top-1 agreement over seeded contexts, batched decode
            fp32 variants        + greedy 32 tokens after image + prompt, through the fp32 CPU vision graph
            quantized KV cache   + logits vs the same weights with a float32 cache (graphs/families/own/
                                   kv_parity.py), and the greedy tokens (recorded, not gated: int8 weights already change them)

The fp32 greedy checks run a pair (vision cpu-fp32 with decoder cpu-fp32, or the reverse), so a wrong graph in the
pair fails both: conservative, since a rejected variant is left out, never served.
"""

from __future__ import annotations

from typing import Callable

from graphs import verify
from graphs.families.own.variants import VARIANTS
from graphs.gate import GateResult
from mmcore.manifest import DecoderSpec

FP32_PARTNER = "cpu-fp32"  # the other graph used for end-to-end greedy checks


def _figures(model, decoder: DecoderSpec, graph: str, name: str, built: dict[str, dict[str, bytes]],
             greedy_ref: dict) -> dict:
    spec = VARIANTS[graph][name]
    mine = built[graph][name]
    if spec.precision == "int8":  # serving may run it re-encoded as u8s8: the same outputs? (graphs/signed_check)
        figures = _u8s8(model, decoder, graph, spec, mine)
    else:
        figures = {}
    if graph == "vision":
        figures |= verify.vision_figures(model, mine)
        if spec.precision == "fp32":
            figures |= verify.greedy_figures(model, decoder, greedy_ref, mine, built["decoder"][FP32_PARTNER])
    else:
        figures |= verify.top1_figures(model, decoder, mine, spec.kv_cache)
        if spec.kv_cache is not None:  # recorded: greedy tokens; gated: the cache's error vs its float-cache sibling
            from graphs.families.own.kv_parity import kv_cache_figures
            figures |= kv_cache_figures(model, decoder, spec.kv_cache, mine, built[graph][spec.same_weights_as])
            figures |= verify.greedy_figures(model, decoder, greedy_ref, built["vision"][FP32_PARTNER], mine,
                                             spec.kv_cache)
        if spec.precision == "fp32":
            figures |= verify.greedy_figures(model, decoder, greedy_ref, built["vision"][FP32_PARTNER], mine)
    return figures


def _u8s8(model, decoder: DecoderSpec, graph: str, spec, mine: bytes) -> dict:
    from graphs.signed_check import u8s8_figures
    from mmcore.runtime.ort_session import cpu_session

    if graph == "vision":
        pixels = verify.seeded_pixels(model.cfg, 2)
        return u8s8_figures(mine, lambda b: cpu_session(b).run(None, {"pixels": pixels})[0])
    return u8s8_figures(mine, lambda b: verify.forced_logits(model, decoder, b, spec.kv_cache)[1])


def run_parity_gate(model, built: dict[str, dict[str, bytes]], progress: Callable[[str], None],
                    decoder: DecoderSpec) -> GateResult:
    """Figures per graph and variant, and the figures past bounds of each variant that failed."""
    results = GateResult({})
    progress("parity reference greedy decoding")
    greedy_ref = verify.greedy_reference(model)
    for graph, variants in built.items():
        for name in variants:
            progress(f"parity {graph} {name}")
            figures = _figures(model, decoder, graph, name, built, greedy_ref)
            results.add(graph, name, figures, verify.failures(VARIANTS[graph][name].precision, figures))
    return results
