"""Parity figures of a quantized-KV-cache decoder variant, beyond the int8 gate every int8 variant passes.

A `-kv8`/`-kv4` variant has the same weights as a sibling with a float32 cache (VariantSpec.same_weights_as), so
the difference between the two isolates what the cache quantization costs:

    kv_logits_err_rel_std        max |logits(kv) - logits(fp32 cache)| over the teacher-forced contexts, divided by
                                 the sibling's logit std: the cache error in units of the logits' own spread
    kv_top1_agreement_vs_fp32_cache  next-token agreement with the sibling, on contexts where the sibling is
                                 decisive (margin >= verify.DECISIVE_MARGIN)
    kv_clipped_fraction          fraction of the reference's K and V values on the gate's contexts (not the
                                 calibration's) beyond the calibrated range, i.e. saturated in the cache

The gate's bounds are in graphs/verify.py (GATE["int8"]); why these bounds: see KV_MAX_REL_ERR there.
"""

from __future__ import annotations

import numpy as np
import torch

from graphs import verify
from mmcore.manifest import DecoderSpec, KvCacheEntry
from graphs.emit.kv_quant import ClipCounter
from graphs.families.own.kv_calibration import calibrate


def _clipped_fraction(model, bits: int) -> float:
    clip = ClipCounter(calibrate(model, bits))
    seqs, feats = verify._forced_contexts(model)
    with torch.no_grad():
        for r, seq in enumerate(seqs):
            x = model.embed_prompt(feats if r == 0 else None, torch.tensor([seq]))
            _, present = model.decoder(x, torch.arange(x.shape[1])[None])
            for i, (k, v) in enumerate(present):  # (1,nh,T,hs)
                clip.update(i, k.numpy(), v.numpy())
    return clip.fraction


def kv_cache_figures(model, decoder: DecoderSpec, cache: KvCacheEntry, mine: bytes, sibling: bytes) -> dict:
    """`mine` over its quantized `cache` vs `sibling` (the same weights over the decoder's float cache)."""
    bits = cache.bits
    _, got = verify.forced_logits(model, decoder, mine, cache)  # (N,V)
    _, base = verify.forced_logits(model, decoder, sibling)
    top2 = np.sort(base, axis=-1)[:, -2:]
    decisive = top2[:, 1] - top2[:, 0] >= verify.DECISIVE_MARGIN
    agree = base.argmax(-1) == got.argmax(-1)
    err = float(np.abs(got - base).max())
    return {"kv_cache_bits": bits, "kv_logits_max_abs_err_vs_fp32_cache": err,
            "kv_logits_err_rel_std": err / float(base.std()),
            "kv_top1_agreement_vs_fp32_cache": float(agree[decisive].mean()) if decisive.any() else 1.0,
            "kv_clipped_fraction": _clipped_fraction(model, bits)}
