"""Static per-channel scales for a quantized KV cache, calibrated at build on image + prompt contexts.

GroupQueryAttention's quantized cache (k_quant_type / v_quant_type = PER_CHANNEL, kv_cache_bit_width 8 or 4) stores
q = clamp(round(x / scale)) per (head, channel) with *static* scales given as inputs k_scale / v_scale, shape
(1, nh, 1, hs). Static scales are constants of the graph, so what one row writes into the cache never depends on the
other rows of its batch (dynamic per-batch scales would couple them, as a per-tensor activation scale does in the
int8 GEMMs).

Calibration (the reference's own K and V, post-projection: positions are learned and added before the blocks, so
there is no rotary to apply first):

    CALIBRATION_CONTEXTS seeded contexts, [image features ; prompt of 4..40 tokens ; greedy continuation] and, every
    other one, the same without an image (text-only requests: their first positions have other K/V ranges)
      -> Decoder.forward -> per layer present (B,nh,T,hs) keys and values
      -> absmax over every position of every context, per (layer, head, channel)
      -> scale = absmax / qmax   (qmax = 127 for 8 bits, 7 for 4 bits)

Why absmax and not a percentile: a per-channel absmax already ignores other channels' outliers, and clipping a key
channel moves every attention score that reads it, while rounding error is spread and averages out over positions.
At 8 bits the step absmax/127 is fine enough that clipping buys nothing; at 4 bits it might, and the parity gate
decides whether the variant ships. The seeds are not the parity gate's, so the gate measures held-out contexts;
a serving context past a calibrated absmax saturates at +-qmax (the kernel clamps), which the gate's clip figure
reports.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from graphs.manifest import KvCacheEntry

CALIBRATION_SEED = 4321  # not graphs.verify.PARITY_SEED: the gate checks contexts the scales never saw
CALIBRATION_CONTEXTS = 16
CONTINUATION_TOKENS = 16
QMAX = {8: 127, 4: 7}
CACHE_DTYPE = {8: np.int8, 4: np.uint8}  # 4-bit: two values per uint8, so the cache's last dim is hs / 2


@dataclass(frozen=True)
class KvCacheQuant:
    """How a decoder variant stores its KV cache: bits, and per layer (nh, hs) key and value scales."""

    bits: int
    k_scales: list[np.ndarray]  # per layer (nh,hs) float32
    v_scales: list[np.ndarray]
    method: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(CACHE_DTYPE[self.bits])

    def cache_last_dim(self, head_dim: int) -> int:
        return head_dim * self.bits // 8


_ABSMAX: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> (k, v) absmax: calibrate once a build


def _contexts(model) -> list:
    """Seeded (1,S,D) decoder inputs: image features + prompt + the reference's own greedy continuation."""
    import torch  # the registry imports this module; a cache-hit build should not pay for torch

    cfg, rng = model.cfg, np.random.default_rng(CALIBRATION_SEED)
    size, v = cfg.vision.image_size, cfg.decoder.vocab_size
    room = cfg.decoder.max_positions - cfg.num_image_tokens - CONTINUATION_TOKENS
    out = []
    for i in range(CALIBRATION_CONTEXTS):
        pixels = torch.from_numpy(rng.integers(0, 256, (1, 3, size, size), dtype=np.uint8))
        prompt = rng.integers(0, v, int(rng.integers(4, max(5, min(40, room))))).tolist()
        if i % 2:  # text-only requests too: their first positions carry other K/V ranges than image features do
            pixels = None
        tokens = model.generate_greedy(pixels, prompt, CONTINUATION_TOKENS)
        with torch.no_grad():
            feats = None if pixels is None else model.vision(pixels)
            out.append(model.embed_prompt(feats, torch.tensor([prompt + tokens])))
    return out


def kv_absmax(model) -> tuple[np.ndarray, np.ndarray]:
    """Per (layer, head, channel) absmax of K and V over the calibration contexts: two (L,nh,hs) arrays."""
    import torch

    if model in _ABSMAX:
        return _ABSMAX[model]
    d = model.cfg.decoder
    k_max = np.zeros((d.layers, d.heads, d.head_dim), np.float32)
    v_max = np.zeros_like(k_max)
    with torch.no_grad():
        for x in _contexts(model):
            _, present = model.decoder(x, torch.arange(x.shape[1])[None])
            for i, (k, v) in enumerate(present):  # (1,nh,T,hs)
                k_max[i] = np.maximum(k_max[i], k.abs().amax(dim=(0, 2)).numpy())
                v_max[i] = np.maximum(v_max[i], v.abs().amax(dim=(0, 2)).numpy())
    _ABSMAX[model] = (k_max, v_max)
    return k_max, v_max


def calibrate(model, bits: int) -> KvCacheQuant:
    """The KV cache scheme of `bits` with scales calibrated on `model`'s own K and V."""
    k_max, v_max = kv_absmax(model)
    qmax = QMAX[bits]

    def scales(amax: np.ndarray) -> list[np.ndarray]:
        s = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)  # an all-zero channel: any scale is exact
        return list(s)

    return KvCacheQuant(bits=bits, k_scales=scales(k_max), v_scales=scales(v_max), method=method(bits))


def method(bits: int) -> str:
    """How the scales of a `bits` cache are calibrated, in words (recorded in the manifest)."""
    return (f"static per-channel scales: absmax / {QMAX[bits]} of the reference's K and V per (layer, head, channel) "
            f"over {CALIBRATION_CONTEXTS} calibration contexts (half image + prompt, half prompt only, each + "
            f"{CONTINUATION_TOKENS} greedy tokens, seed {CALIBRATION_SEED})")


def cache_entry(bits: int) -> KvCacheEntry:
    """What the manifest records of a `bits` cache: the runner allocates its dtype and last dim."""
    return KvCacheEntry(dtype=np.dtype(CACHE_DTYPE[bits]).name, bits=bits, quantization="PER_CHANNEL",
                        calibration=method(bits))
