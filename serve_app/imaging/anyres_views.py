"""An RGB image + its anyres plan -> the views the vision graph encodes, uint8 (views, 3, S, S), pixel for pixel
what transformers' PIL-backend LLaVA-NeXT / LLaVA-OneVision image processor holds before it rescales and normalizes
(normalization is folded into the vision graph, as for every other family).

What the processor does (image_processing_pil_llava_next.py / _onevision.py; the plan says the geometry):
- tiled: resize the image with PIL to `plan.resized` (its aspect kept), paste it at `plan.paste` on a black canvas of
  `plan.best_resolution` (np.pad with zeros), cut the canvas into S x S tiles row-major; the base view is the whole
  image resized with PIL straight to S x S (its aspect not kept). The processor's later resize and centre crop to S
  are no-ops on S x S views (PIL's resize to the same size is a copy), so nothing else touches the pixels.
- not tiled (OneVision, several images in a prompt): pad to a square with `plan.pad_color` (the image centred, the
  odd pixel right/bottom), then resize with PIL to S x S.
Every resize is PIL's on uint8 RGB, which is what the processor runs too, so the views are bit-exact.

The torchvision backend (LlavaNextImageProcessor / LlavaOnevisionImageProcessor: what AutoImageProcessor gives by
default when torchvision is installed; without it, as in this project's environment, it gives the PIL classes)
resizes with torchvision's antialiased bicubic on uint8 tensors, not PIL's filter: measured with transformers 5.23
and torchvision 0.28 at S = 336 and 384, its views differ from these (= the PIL backend's) by at most 2 uint8 levels
on under 1% of the pixels (normalized: 0.03 for CLIP's std, 0.016 for SigLIP's); padding and tiling are the same.
Images are taken as RGB: decode.to_rgb composites alpha on white and converts grayscale as the processors'
convert_to_rgb does. Orientation: decode applies EXIF orientation, as transformers' load_image does for a file or
URL; an already opened PIL image handed to the processor is taken as stored.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from mmcore.image_plan import AnyresPlan
from serve_app.imaging.resize import _RESAMPLE, _chw


def _resize(img: Image.Image, height: int, width: int, resample: str) -> Image.Image:
    return img.resize((width, height), _RESAMPLE[resample])


def _pad_square(img: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    w, h = img.size
    side = max(w, h)
    if w == h:
        return img
    canvas = Image.new("RGB", (side, side), tuple(color))
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def anyres_views(img: Image.Image, plan: AnyresPlan) -> np.ndarray:
    """An RGB image of the plan's size -> (plan.num_views, 3, S, S) uint8: base view first, then the tiles."""
    if img.mode != "RGB" or img.size != (plan.width, plan.height):
        raise ValueError(f"image is {img.mode} {img.size[0]}x{img.size[1]}; the plan is for RGB "
                         f"{plan.width}x{plan.height}")
    s = plan.view_size
    if not plan.tiled:
        return _chw(_resize(_pad_square(img, plan.pad_color), s, s, plan.resample))[None]
    views = np.empty((plan.num_views, 3, s, s), dtype=np.uint8)
    views[0] = _chw(_resize(img, s, s, plan.resample))
    canvas = np.zeros((3, *plan.best_resolution), dtype=np.uint8)
    (top, left), (h, w) = plan.paste, plan.resized
    canvas[:, top:top + h, left:left + w] = _chw(_resize(img, h, w, plan.resample))
    for i, (y, x) in enumerate(plan.tile_boxes(), start=1):
        views[i] = canvas[:, y:y + s, x:x + s]
    return views
