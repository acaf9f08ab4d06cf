"""What a quantized KV cache costs, for a LLaVA `-kv8` variant: against its same-weights sibling over a float32
cache (VariantSpec.same_weights_as), so weight quantization is out of the difference, on the gate's teacher-forced
ragged decode (parity.Inputs: contexts the calibration never saw).

    kv_logits_rms_err_over_std       RMS |logits(kv) - logits(float cache)| over the forced contexts, divided by the
                                     sibling's logit std
    kv_logits_max_abs_err_vs_fp32_cache   recorded, not gated
    kv_top1_agreement_vs_fp32_cache  next-token agreement with the sibling on the contexts decisive at the measured
                                     noise (sibling's top-2 margin >= 2 sqrt(2) x that RMS error: the rule and its
                                     reason are parity.py's); gated with >= MIN_DECISIVE such contexts
    kv_clipped_fraction              fraction of the reference's cached K and V on those contexts beyond the
                                     calibrated range (saturated in the cache), recorded

Bounds, and why: an int8 per-channel step is absmax/127, so a cached value is off by at most 0.4% of its channel's
range. Against an int8-weight sibling the difference is mostly not the cache's: per-tensor dynamic activation
quantization re-rounds every GEMM input once anything upstream moves, so any perturbation re-draws the weight
path's own noise. On the tiny test checkpoints: kv8 vs its int8 sibling RMS/std ~0.047 (the int8 sibling vs the
reference: ~0.037), the cache alone (fp32 weights, int8 cache vs float cache) ~0.027; scales 4x too coarse ~0.06,
32x too coarse ~0.35, 4x too fine (45% of values clipped) ~0.73. KV_NOISE_REL = 0.1 leaves 2x headroom over the
measured and fails a cache as coarse as 5 bits or one clipping its ranges. The variant also passes its own
precision's gate against the reference (parity.bounds).
"""

from __future__ import annotations

import numpy as np

from graphs.emit.kv_quant import ClipCounter, KvCacheQuant

KV_NOISE_REL = 0.1
KV_MIN_TOP1 = 0.9  # parity.QUANT_MIN_TOP1, for the same reason
MIN_DECISIVE = 8


def kv_figures(mine: np.ndarray, sibling: np.ndarray, clipped: float) -> dict:
    """mine, sibling: (N,V) forced-decode logits of the kv variant and its float-cache sibling."""
    rms = float(np.sqrt(np.mean((mine - sibling) ** 2)))
    top2 = np.sort(sibling, axis=-1)[:, -2:]
    decisive = top2[:, 1] - top2[:, 0] >= 2 * np.sqrt(2) * rms
    agree = sibling.argmax(-1) == mine.argmax(-1)
    return {"kv_logits_rms_err_over_std": rms / float(sibling.std()),
            "kv_logits_max_abs_err_vs_fp32_cache": float(np.abs(mine - sibling).max()),
            "kv_top1_gated": bool(decisive.sum() >= MIN_DECISIVE),
            "kv_top1_agreement_vs_fp32_cache": float(agree[decisive].mean()) if decisive.any() else 1.0,
            "kv_top1_decisive_contexts": int(decisive.sum()), "kv_clipped_fraction": clipped}


def clipped_fraction(ref, inp, quant: KvCacheQuant) -> float:
    """The reference's cached K and V over the gate's forced rows (row 0 with the image) against the scales."""
    clip = ClipCounter(quant)
    for r, row in enumerate(inp.rows):
        for i, (k, v) in enumerate(ref.kv(row, inp.pixels if r == 0 else None)):  # (1,kvh,T,hs)
            clip.update(i, k, v)
    return clip.fraction


def bounds(figures: dict) -> list[tuple[str, str, float]]:
    gate = [("kv_logits_rms_err_over_std", "max", KV_NOISE_REL)]
    return gate + ([("kv_top1_agreement_vs_fp32_cache", "min", KV_MIN_TOP1)] if figures["kv_top1_gated"] else [])
