"""The LLaVA family's KV cache calibration: its contexts, and transformers' own K and V for them
(graphs/emit/kv_quant.py turns those into static per-channel scales and says why absmax).

The keys are post-rotary: GroupQueryAttention with do_rotary=1 rotates K before it quantizes it into the cache, and
transformers' attention caches the rotated key too, so the reference's cache is exactly what the kernel stores.
Rotation mixes channel j with j + hs/2 at every position's angle, so a channel's post-rotary range is not its
pre-rotary one; calibrating pre-rotary would clip.

    CALIBRATION_CONTEXTS seeded contexts: [text 1..8 ; image placeholders ; text 4..40] with a seeded image and,
    every other one, text only (4..40 tokens: text-only requests' first positions carry other K/V ranges)
      -> Reference.greedy_cache: CONTINUATION_TOKENS greedy tokens, and the cache over the whole context
      -> per layer (1,kvh,T,hs) K and V -> kv_quant.KvAbsmax -> kv_quant.from_absmax (scale = absmax / qmax)

The seed is not the parity gate's (parity.SEED), so the gate measures contexts the scales never saw.
"""

from __future__ import annotations

import weakref

import numpy as np

from graphs.emit import kv_quant
from graphs.emit.kv_quant import CALIBRATION_CONTEXTS, CALIBRATION_SEED, CONTINUATION_TOKENS, KvCacheQuant
from mmcore.manifest import KvCacheEntry

SOURCE = "transformers' post-rotary K and V (what GroupQueryAttention's do_rotary cache stores)"

_LAST: list = [None, None]  # [weakref to the loaded model, its KvAbsmax]: calibrate once a build, for every variant


def contexts(ref, rng: np.random.Generator) -> list[tuple[list[int], np.ndarray | None]]:
    """Seeded (ids, pixels (1,3,H,W) uint8 or None) calibration prompts, image placeholders expanded (as many as
    the reference's prompt features for the image)."""
    ck = ref.ck
    text = np.array([i for i in range(ck.text.vocab_size) if i != ck.image_token_id])
    size = ck.vision.image_size
    out = []
    for i in range(CALIBRATION_CONTEXTS):
        prompt = rng.choice(text, int(rng.integers(4, 41))).tolist()
        if i % 2:  # text only
            out.append((prompt, None))
            continue
        pixels = rng.integers(0, 256, (1, 3, size, size), dtype=np.uint8)
        image = [ck.image_token_id] * len(ref.prompt_features(pixels))
        out.append((rng.choice(text, int(rng.integers(1, 9))).tolist() + image + prompt, pixels))
    return out


def kv_absmax(model) -> kv_quant.KvAbsmax:
    """Per (layer, kv head, channel) absmax of the reference's cached K and V over the calibration contexts."""
    if _LAST[0] is not None and _LAST[0]() is model:
        return _LAST[1]
    ref = model.reference()  # torch + transformers: build time only
    t = ref.ck.text
    acc = kv_quant.KvAbsmax(t.layers, t.kv_heads, t.head_dim)
    for ids, pixels in contexts(ref, np.random.default_rng(CALIBRATION_SEED)):
        _, cache = ref.greedy_cache(ids, pixels, CONTINUATION_TOKENS)
        for i, (k, v) in enumerate(cache):  # (1,kvh,T,hs)
            acc.update(i, k, v)
    _LAST[:] = [weakref.ref(model), acc]
    return acc


def calibrate(model, bits: int) -> KvCacheQuant:
    """The `bits` KV cache scheme with scales calibrated on the checkpoint's own (reference) K and V."""
    return kv_quant.from_absmax(kv_absmax(model), bits, method(bits))


def method(bits: int) -> str:
    return kv_quant.method(bits, SOURCE)


def cache_entry(bits: int) -> KvCacheEntry:
    return kv_quant.cache_entry(bits, method(bits))
