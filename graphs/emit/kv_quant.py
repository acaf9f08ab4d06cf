"""A quantized KV cache with static per-channel scales: the family-independent part, shared by every decoder family.

GroupQueryAttention's quantized cache (k_quant_type / v_quant_type = PER_CHANNEL, kv_cache_bit_width 8 or 4) stores
q = clamp(round(x / scale)) per (kv head, channel) with *static* scales given as inputs k_scale / v_scale, shape
(1, kv_heads, 1, head_dim). Static scales are constants of the graph, so what one row writes into the cache never
depends on the other rows of its batch (dynamic per-batch scales would couple them, as a per-tensor activation scale
does in the int8 GEMMs).

What "x" is: the key as the kernel stores it. With `do_rotary=1` GQA rotates K first and quantizes the rotated
key (checked against ONNX Runtime 1.31.1 by experiment: the stored int8 equals round(rotary(k) / scale) exactly,
and differs from round(k / scale)); so a rotary family calibrates on post-rotary keys, which is what a
transformers cache holds. V is never rotated.

A family supplies the calibration contexts and its reference's K and V per layer; this module turns them into
scales and the manifest's record:

    per context, per layer: K, V (1, kv_heads, T, head_dim) from the reference
      -> KvAbsmax.update: absmax over positions, per (layer, kv head, channel)
      -> scale = absmax / qmax   (qmax = 127 for 8 bits, 7 for 4 bits; an all-zero channel gets 1: exact anyway)

Why absmax and not a percentile: a per-channel absmax already ignores other channels' outliers, and clipping a key
channel moves every attention score that reads it, while rounding error is spread and averages out over positions.
At 8 bits the step absmax/127 is fine enough that clipping buys nothing; at 4 bits it might, and the parity gate
decides whether the variant ships. A serving context past a calibrated absmax saturates at +-qmax (the kernel
clamps), which the gate's clip figure (ClipCounter) reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmcore.manifest import KvCacheEntry

CALIBRATION_SEED = 4321  # not the parity gates' seeds: the gate checks contexts the scales never saw
CALIBRATION_CONTEXTS = 16
CONTINUATION_TOKENS = 16
QMAX = {8: 127, 4: 7}
CACHE_DTYPE = {8: np.int8, 4: np.uint8}  # 4-bit: two values per uint8, so the cache's last dim is hs / 2
QUANTIZATION = "PER_CHANNEL"


@dataclass(frozen=True)
class KvCacheQuant:
    """How a decoder variant stores its KV cache: bits, and per layer (kv_heads, hs) key and value scales."""

    bits: int
    k_scales: list[np.ndarray]  # per layer (kvh,hs) float32
    v_scales: list[np.ndarray]
    method: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(CACHE_DTYPE[self.bits])

    def cache_last_dim(self, head_dim: int) -> int:
        return head_dim * self.bits // 8


class KvAbsmax:
    """Running per (layer, kv head, channel) absmax of K and V: two (L,kvh,hs) float32 arrays."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int):
        self.k = np.zeros((layers, kv_heads, head_dim), np.float32)
        self.v = np.zeros_like(self.k)

    def update(self, layer: int, k: np.ndarray, v: np.ndarray) -> None:
        """k, v: (B,kvh,T,hs) as the cache stores them (post-rotary keys for a rotary decoder)."""
        self.k[layer] = np.maximum(self.k[layer], np.abs(k).max(axis=(0, 2)))
        self.v[layer] = np.maximum(self.v[layer], np.abs(v).max(axis=(0, 2)))


def from_absmax(absmax: KvAbsmax, bits: int, method: str) -> KvCacheQuant:
    """The `bits` cache scheme whose scales are absmax / qmax per (layer, kv head, channel)."""
    qmax = QMAX[bits]

    def scales(amax: np.ndarray) -> list[np.ndarray]:
        return list(np.where(amax > 0, amax / qmax, 1.0).astype(np.float32))  # an all-zero channel: any scale is exact

    return KvCacheQuant(bits=bits, k_scales=scales(absmax.k), v_scales=scales(absmax.v), method=method)


def method(bits: int, source: str) -> str:
    """How the scales of a `bits` cache are calibrated, in words (recorded in the manifest); `source` says which
    K and V (e.g. "the reference's post-rotary K and V")."""
    return (f"static per-channel scales: absmax / {QMAX[bits]} of {source} per (layer, kv head, channel) "
            f"over {CALIBRATION_CONTEXTS} calibration contexts (half image + prompt, half prompt only, each + "
            f"{CONTINUATION_TOKENS} greedy tokens, seed {CALIBRATION_SEED})")


def cache_entry(bits: int, how: str) -> KvCacheEntry:
    """What the manifest records of a `bits` cache: the runner allocates its dtype and last dim."""
    return KvCacheEntry(dtype=np.dtype(CACHE_DTYPE[bits]).name, bits=bits, quantization=QUANTIZATION,
                        calibration=how)


def gqa_inputs(g, kv_cache: KvCacheQuant, kv_heads: int, layer: int, name: str) -> tuple[str, str, dict]:
    """The k_scale / v_scale initializers (1,kvh,1,hs) of one layer's GroupQueryAttention and its cache attributes."""
    k = g.weight(f"{name}/k_scale", kv_cache.k_scales[layer].reshape(1, kv_heads, 1, -1))  # (1,kvh,1,hs)
    v = g.weight(f"{name}/v_scale", kv_cache.v_scales[layer].reshape(1, kv_heads, 1, -1))
    attrs = {"k_quant_type": QUANTIZATION, "v_quant_type": QUANTIZATION, "kv_cache_bit_width": kv_cache.bits}
    return k, v, attrs


class ClipCounter:
    """Fraction of K and V values (held-out contexts) beyond the calibrated range, i.e. saturated in the cache."""

    def __init__(self, quant: KvCacheQuant):
        self.quant, self.over, self.total = quant, 0, 0

    def update(self, layer: int, k: np.ndarray, v: np.ndarray) -> None:
        """k, v: (B,kvh,T,hs)."""
        qmax = QMAX[self.quant.bits]
        for t, s in ((k, self.quant.k_scales[layer]), (v, self.quant.v_scales[layer])):
            self.over += int((np.abs(t) > (s * qmax)[None, :, None, :]).sum())
            self.total += t.size

    @property
    def fraction(self) -> float:
        return self.over / max(1, self.total)
