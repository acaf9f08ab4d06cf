"""torchvision's uint8 resize, bit for bit, in numpy: what transformers' torchvision-backend image processors (the
classes AutoImageProcessor picks when torchvision is installed) do to an image where the PIL-backend ones call PIL.

torchvision's v2 `resize` hands a uint8 CPU image straight to `torch.nn.functional.interpolate(mode="bicubic" or
"bilinear", antialias=True)` (it casts to float only for bilinear on CPUs without AVX2, and for other modes), and
torch's uint8 antialiased kernel is PIL's algorithm with other roundings:
- separable: a horizontal pass into a uint8 buffer (rounded, clamped), then a vertical pass; a pass whose size does
  not change is skipped;
- output i of a pass reads inputs [xmin, xmin + xsize) around centre = scale * (i + 0.5), scale = n_in / n_out, with
  support = filter radius * scale when shrinking (radius when enlarging), weights filter((j - centre + 0.5) / scale)
  (no / scale when enlarging) normalized to sum 1, in double; bicubic is Keys' a = -0.5 (PIL's), bilinear the
  triangle;
- the weights become int16 with the most fraction bits that keep the largest weight under 2^15 (PIL keeps 22 bits:
  the one difference that moves a pixel by one level per pass), rounded half away from zero;
- out = clamp((sum(w * x) + 2^(bits - 1)) >> bits, 0, 255), the shift arithmetic.
"""

from __future__ import annotations

import math

import numpy as np

_RADIUS = {"bicubic": 2.0, "bilinear": 1.0}


def _filter(kind: str, x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    if kind == "bilinear":
        return np.where(x < 1.0, 1.0 - x, 0.0)
    a = -0.5
    return np.where(x < 1.0, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2.0, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0))


def _int_weights(n_in: int, n_out: int, kind: str) -> tuple[np.ndarray, np.ndarray, int]:
    """-> (first input of each output (n_out,), int weights (n_out, taps), fraction bits)."""
    scale = n_in / n_out
    support = _RADIUS[kind] * scale if scale >= 1.0 else _RADIUS[kind]
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    taps = math.ceil(support) * 2 + 1
    centre = scale * (np.arange(n_out) + 0.5)
    xmin = np.maximum(np.trunc(centre - support + 0.5), 0).astype(np.int64)  # C casts truncate toward zero
    xsize = np.clip(np.minimum(np.trunc(centre + support + 0.5), n_in).astype(np.int64) - xmin, 0, taps)
    j = np.arange(taps)
    w = np.where(j[None] < xsize[:, None], _filter(kind, (j[None] + xmin[:, None] - centre[:, None] + 0.5) * invscale),
                 0.0)
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total != 0)
    bits = 0
    while bits < 22 and int(0.5 + w.max() * (1 << (bits + 1))) < (1 << 15):
        bits += 1
    v = w * (1 << bits)
    return xmin, np.trunc(np.where(v < 0, v - 0.5, v + 0.5)).astype(np.int64), bits


_BLOCK = 64  # columns of the other axes per step: each tap's temporaries then stay in cache


def _pass(chw: np.ndarray, n_out: int, axis: int, kind: str) -> np.ndarray:
    a = np.moveaxis(chw, axis, 0)  # the resampled axis first: each tap gathers whole rows, not single values
    xmin, w, bits = _int_weights(a.shape[0], n_out, kind)
    w = w.astype(np.int32)[:, :, None, None]  # |sum| < 255 * 2^16 * taps: int32 is exact
    rows = [np.minimum(xmin + k, a.shape[0] - 1) for k in range(w.shape[1])]  # weights past xsize are 0
    out = np.empty((n_out, *a.shape[1:]), dtype=np.uint8)
    for start in range(0, a.shape[-1], _BLOCK):
        block = a[..., start:start + _BLOCK].astype(np.int32)
        acc = np.full((n_out, *block.shape[1:]), 1 << (bits - 1), dtype=np.int32)
        for k, r in enumerate(rows):
            acc += block[r] * w[:, k]
        out[..., start:start + _BLOCK] = np.clip(acc >> bits, 0, 255)
    return np.moveaxis(out, 0, axis)


def resize_uint8(chw: np.ndarray, height: int, width: int, kind: str = "bicubic") -> np.ndarray:
    """(C, H, W) uint8 -> (C, height, width) uint8, as torch's interpolate(antialias=True) on uint8 does."""
    if kind not in _RADIUS:
        raise ValueError(f"torchvision resample {kind!r} is not reproduced; bicubic and bilinear are")
    out = chw
    if width != out.shape[2]:
        out = _pass(out, width, 2, kind)
    if height != out.shape[1]:
        out = _pass(out, height, 1, kind)
    return np.ascontiguousarray(out)
