"""A decoded RGB image + its Idefics3 / SmolVLM plan -> the views as uint8 (views, 3, M, M), to the pixel as
transformers' PIL image processor (`Idefics3ImageProcessorPil`, `SmolVLMImageProcessorPil`) makes them before
rescale and normalize.

That processor keeps uint8 throughout: each resize is `PIL.Image.resize` of a uint8 RGB image (LANCZOS unless the
checkpoint says otherwise), crops are array slices, so this reproduces it bit for bit with the same three PIL calls:
the longest-edge resize, the resize to multiples of M, and the global view's resize of that grid image to M x M. The
crops and the global view are cut from the *grid* image (not the original), in row-major order, global last. Every
view is M x M, so no padding or pixel mask is needed: transformers' `pixel_attention_mask` is all ones for real views.

transformers' torchvision backend (`Idefics3ImageProcessor`, the class AutoImageProcessor gives when torchvision >= 0.27
is installed; without torchvision, or older, it gives the PIL class) resizes with torch's own uint8 antialiased
Lanczos, which differs from PIL's by one level on about 1% of pixels per resize: that backend is not reproduced bit
for bit (tests/serve_app/imaging/test_idefics3_views.py measures the gap where torchvision is importable).

RGBA and grayscale are converted before this (serve_app/imaging/decode.py's `to_rgb`: alpha composited on white, as
transformers' `convert_to_rgb` does). The vision graph takes these raw pixels and folds
`(x * rescale_factor - mean) / std` in (`normalize` below is that formula in numpy, for parity checks).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from mmcore.image_plan.idefics3 import Idefics3Plan, Idefics3PlanSpec


def _resample(name: str) -> Image.Resampling:
    return Image.Resampling[name.upper()]


def views(img: Image.Image, plan: Idefics3Plan) -> np.ndarray:
    """An RGB image -> (plan.num_views, 3, M, M) uint8, the views in the plan's order."""
    if img.mode != "RGB":
        raise ValueError(f"views take an RGB image (decode.to_rgb first), got mode {img.mode}")
    if img.size != (plan.width, plan.height):
        raise ValueError(f"image is {img.size[0]}x{img.size[1]}, the plan is for {plan.width}x{plan.height}")
    resample, m = _resample(plan.resample), plan.view_size
    h, w = plan.resized
    if (h, w) != (plan.height, plan.width):  # PIL returns a copy for an equal size; skip it
        img = img.resize((w, h), resample)
    if plan.grid is not None:
        img = img.resize((plan.grid[1], plan.grid[0]), resample)
    out = np.empty((plan.num_views, 3, m, m), np.uint8)
    grid = np.asarray(img, dtype=np.uint8)  # (H, W, 3) of the grid image (or of the resized one without splitting)
    for k, view in enumerate(plan.views):
        if view.box is not None:
            left, top, right, bottom = view.box
            out[k] = grid[top:bottom, left:right].transpose(2, 0, 1)
        else:
            out[k] = np.asarray(img.resize((m, m), resample), dtype=np.uint8).transpose(2, 0, 1)
    return out


def normalize(pixels: np.ndarray, spec: Idefics3PlanSpec) -> np.ndarray:
    """uint8 (..., 3, H, W) -> float32 as transformers' PIL backend computes it: rescale in float64, cast to float32,
    then (x - mean) / std in float32."""
    x = (pixels.astype(np.float64) * spec.rescale_factor).astype(np.float32)
    mean = np.asarray(spec.image_mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.image_std, np.float32).reshape(3, 1, 1)
    return ((x - mean) / std).astype(np.float32)
