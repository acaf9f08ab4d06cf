"""What a quantized KV cache costs, for a LLaVA `-kv8` variant: against its same-weights sibling over a float32
cache (VariantSpec.same_weights_as), on the gate's teacher-forced ragged decode (parity.Inputs: contexts the
calibration never saw).

    kv_err_ratio_vs_fp32_cache       the variant's RMS logit error vs the reference over the sibling's (both
                                     forced_logits_rms_err_over_std): what the cache adds to the weights' error
    kv_top1_agreement_vs_fp32_cache  next-token agreement with the sibling on the contexts decisive at the measured
                                     noise (sibling's top-2 margin >= 2 sqrt(2) x their RMS difference: the rule and
                                     its reason are parity.py's); gated with >= MIN_DECISIVE such contexts
    kv_logits_rms_err_over_std       RMS |logits(kv) - logits(sibling)| / the sibling's logit std, recorded
    kv_clipped_fraction              fraction of the reference's cached K and V on those contexts beyond the
                                     calibrated range (saturated in the cache), recorded

Why a ratio against the reference and not the difference from the sibling: with int8 weights, per-tensor dynamic
activation quantization re-rounds every GEMM input once anything upstream moves, so any perturbation, however
small, re-draws the weight path's own noise and the kv-vs-sibling difference comes out near sqrt(2) x the
sibling's error whatever the cache does. Measured on the tiny test checkpoints (siglip-qwen2): the sibling's error
~0.037, kv8's ~0.045 (ratio ~1.2), the cache alone (fp32 weights, int8 vs float cache) ~0.027 of the std; scales 4x
too coarse: ratio ~1.66, 32x too coarse ~9.6, 4x too fine (45% of values clipped) ~20. KV_MAX_ERR_RATIO = 1.5
passes what an 8-bit cache at the calibrated scales costs and fails a cache as coarse as 6 bits or one clipping
its ranges. The variant also passes its own precision's gate against the reference (parity.bounds).
"""

from __future__ import annotations

import numpy as np

from graphs.emit.kv_quant import ClipCounter, KvCacheQuant

KV_MAX_ERR_RATIO = 1.5
KV_MIN_TOP1 = 0.9  # parity.QUANT_MIN_TOP1, for the same reason
MIN_DECISIVE = 8


def kv_figures(mine: np.ndarray, sibling: np.ndarray, mine_err: float, sibling_err: float, clipped: float) -> dict:
    """mine, sibling: (N,V) forced-decode logits of the kv variant and its float-cache sibling; *_err: their
    forced_logits_rms_err_over_std against the reference."""
    rms = float(np.sqrt(np.mean((mine - sibling) ** 2)))
    top2 = np.sort(sibling, axis=-1)[:, -2:]
    decisive = top2[:, 1] - top2[:, 0] >= 2 * np.sqrt(2) * rms
    agree = sibling.argmax(-1) == mine.argmax(-1)
    return {"kv_err_ratio_vs_fp32_cache": mine_err / sibling_err,
            "kv_logits_rms_err_over_std": rms / float(sibling.std()),
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
    gate = [("kv_err_ratio_vs_fp32_cache", "max", KV_MAX_ERR_RATIO)]
    return gate + ([("kv_top1_agreement_vs_fp32_cache", "min", KV_MIN_TOP1)] if figures["kv_top1_gated"] else [])
