"""Rotary embedding caches for GroupQueryAttention (`do_rotary=1`): cos/sin (max_positions, head_dim/2) float32.

Computed as transformers' rope init functions compute `inv_freq` for the kinds we support (checkpoint.ROPE_TYPES;
the rest are refused when the config is read): `default`, `linear` (positions divided by factor) and `llama3`
(long wavelengths divided by factor, short ones kept, a smooth blend between). Each of these has attention_scaling
1, so the caches are plain cos/sin. GQA applies them non-interleaved (rotate_half), as Llama/Qwen2/Mistral do.
"""

from __future__ import annotations

import numpy as np

from graphs.families.llava.checkpoint import TextSpec


def inv_freq(t: TextSpec) -> np.ndarray:
    d = t.head_dim
    # float32 throughout, as transformers computes it: the angles then round as the reference's do
    base = (1.0 / (np.float32(t.rope_theta) ** (np.arange(0, d, 2).astype(np.float32) / np.float32(d))))  # (d/2,)
    base = base.astype(np.float32)
    s = t.rope_scaling
    if s is None:
        return base
    if s["rope_type"] == "linear":
        return (base / np.float32(s["factor"])).astype(np.float32)
    # llama3
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old = s["original_max_position_embeddings"]
    wavelen = 2 * np.pi / base
    scaled = np.where(wavelen > old / low, base / factor, base)
    smooth = (old / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old / high) & (wavelen <= old / low)
    return np.where(medium, blended, scaled).astype(np.float32)


def cos_sin_cache(t: TextSpec, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """-> cos, sin (positions, head_dim/2) float32: angle p * inv_freq[j] at row p, column j."""
    angles = np.arange(positions, dtype=np.float32)[:, None] * inv_freq(t)[None, :]  # float32 products
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
