"""The anyres vision gate: the graph's per-view features against transformers' on the views its own image
processor makes of seeded images of every aspect class (tall, wide, tiny, square, odd sizes), encoded in batches
of views as serving batches them. Bounds are the llava family's (graphs/families/llava/parity.py): the figures have
its names, so its `bounds`/`failures` apply unchanged. The decoder gates are the llava family's own.

The graph takes uint8 pixels: the processor's pixel_values are rescaled and normalized uint8 (PIL resizes in uint8,
pads with 0), so inverting its normalization and rounding recovers the exact uint8 views; the recovered views'
distance from an exact inversion is recorded (`view_pixels_max_abs_err`, ungated, ~1e-4 or less of a grey level).
"""

from __future__ import annotations

import weakref

import numpy as np

from graphs.families.llava import parity
from graphs.families.llava_next.reference import AnyresReference

# (height, width) in tile sides: tall, wide, tiny, square, odd, huge-ish, with a few pixels off any grid
SHAPES = ((2.1, 0.8), (0.7, 3.2), (0.3, 0.4), (1.0, 1.0), (1.37, 2.05), (3.3, 3.1))


class Sample:
    """The gate's seeded images as the reference sees them, computed once per build and shared by every vision
    variant: their uint8 views (V,3,S,S), views per image, the reference's per-view features (V,P,Dt), and the
    largest distance of a view pixel from a grey level before rounding. The reference runs one image at a time
    (the processor pads a batch to its largest image's view count; one image needs no padding)."""

    def __init__(self, ref: AnyresReference, seed: int = parity.SEED):
        rng, side = np.random.default_rng(seed), ref.ck.vision.image_size
        pre = ref.ck.preprocess
        mean = np.asarray(pre.mean, np.float64)[None, :, None, None]
        std = np.asarray(pre.std, np.float64)[None, :, None, None]
        views, features, self.per_image, self.off = [], [], [], 0.0
        for h, w in SHAPES:
            image = rng.integers(0, 256, (max(1, int(h * side)), max(1, int(w * side)), 3), dtype=np.uint8)
            inputs = ref.processed([image])
            (feats,) = ref.view_features(inputs)
            n = feats.shape[0]
            levels = (inputs["pixel_values"].numpy()[0, :n].astype(np.float64) * std + mean) / pre.rescale_factor
            self.off = max(self.off, float(np.abs(levels - np.rint(levels)).max()))
            views.append(np.clip(np.rint(levels), 0, 255).astype(np.uint8))
            features.append(feats)
            self.per_image.append(n)
        self.views, self.features = np.concatenate(views), np.concatenate(features)


_SAMPLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def sample(ref: AnyresReference) -> Sample:
    if ref not in _SAMPLES:
        _SAMPLES[ref] = Sample(ref)
    return _SAMPLES[ref]


def vision_figures(ref: AnyresReference, model_bytes: bytes) -> tuple[dict, np.ndarray, np.ndarray]:
    """-> (figures, the uint8 views measured, the graph's features): every view of every seeded image, in
    parity.VIEW_CHUNK views a call as serving batches them."""
    s = sample(ref)
    got = parity.run_views(model_bytes, s.views)
    shape = {"views": int(s.views.shape[0]), "views_per_image": ",".join(map(str, s.per_image)),
             "view_pixels_max_abs_err": s.off}
    return parity.feature_figures(got, s.features) | shape, s.views, got
