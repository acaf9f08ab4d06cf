"""The anyres vision gate: the graph's per-view features against transformers' on the views its own image
processor makes of seeded images of every aspect class (tall, wide, tiny, square, odd sizes), all encoded in one
batch of views as serving batches them. Bounds are the llava family's (graphs/families/llava/parity.py): the figures
have its names, so its `bounds`/`failures` apply unchanged. The decoder gates are the llava family's own.

The graph takes uint8 pixels: the processor's pixel_values are rescaled and normalized uint8 (PIL resizes in uint8,
pads with 0), so inverting its normalization and rounding recovers the exact uint8 views; the recovered views'
distance from an exact inversion is recorded (`view_pixels_max_abs_err`, ungated, ~1e-4 or less of a grey level).
"""

from __future__ import annotations

import numpy as np

from graphs.families.llava import parity
from graphs.families.llava_next.reference import AnyresReference

# (height, width) in tile sides: tall, wide, tiny, square, odd, huge-ish, with a few pixels off any grid
SHAPES = ((2.1, 0.8), (0.7, 3.2), (0.3, 0.4), (1.0, 1.0), (1.37, 2.05), (3.3, 3.1))


def views(ref: AnyresReference, seed: int = parity.SEED) -> tuple[dict, np.ndarray, list[int], float]:
    """-> (the processor's inputs for the seeded images, their views (V,3,S,S) uint8, views per image, the largest
    distance of a view pixel from a grey level before rounding)."""
    rng, side = np.random.default_rng(seed), ref.ck.vision.image_size
    images = [rng.integers(0, 256, (max(1, int(h * side)), max(1, int(w * side)), 3), dtype=np.uint8)
              for h, w in SHAPES]
    inputs = ref.processed(images)
    per_image = [f.shape[0] for f in ref.view_features(inputs)]
    pv = inputs["pixel_values"].numpy()
    flat = np.concatenate([pv[i, :n] for i, n in enumerate(per_image)])  # (V,3,S,S), the padding views dropped
    pre = ref.ck.preprocess
    mean = np.asarray(pre.mean, np.float64)[None, :, None, None]
    std = np.asarray(pre.std, np.float64)[None, :, None, None]
    levels = (flat.astype(np.float64) * std + mean) / pre.rescale_factor
    return inputs, np.clip(np.rint(levels), 0, 255).astype(np.uint8), per_image, float(np.abs(levels -
                                                                                              np.rint(levels)).max())


def vision_figures(ref: AnyresReference, model_bytes: bytes) -> tuple[dict, np.ndarray]:
    """-> (figures, the uint8 views measured): every view of every seeded image in one batch."""
    inputs, px, per_image, off = views(ref)
    want = np.concatenate(ref.view_features(inputs))  # (V,P,Dt)
    got = parity.session(model_bytes).run(None, {"pixels": px})[0]
    shape = {"views": int(px.shape[0]), "views_per_image": ",".join(map(str, per_image)),
             "view_pixels_max_abs_err": off}
    return parity.feature_figures(got, want) | shape, px
