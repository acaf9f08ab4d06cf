"""An RGB image + its anyres plan -> the views the vision graph encodes, uint8 (views, 3, S, S), pixel for pixel
what transformers' LLaVA-NeXT / LLaVA-OneVision image processor holds before it rescales and normalizes
(normalization is folded into the vision graph, as for every other family).

What the processor does (image_processing_*llava_next.py / *_onevision.py; the plan says the geometry):
- tiled: resize the image to `plan.resized` (its aspect kept), paste it at `plan.paste` on a black canvas of
  `plan.best_resolution` (zeros), cut the canvas into S x S tiles row-major; the base view is the whole image resized
  straight to S x S (its aspect not kept). The processor's later resize and centre crop to S are no-ops on S x S
  views (both backends skip or copy a resize to the same size), so nothing else touches the pixels.
- not tiled (OneVision, several images in a prompt): pad to a square with `plan.pad_color` (the image centred, the
  odd pixel right/bottom), then resize to S x S.
Every resize is on uint8 RGB and stays uint8, in both backends, so the views are bit-exact: `plan.backend` "pil"
resizes with PIL (the PIL-backend classes, LlavaNextImageProcessorPil / LlavaOnevisionImageProcessorPil, which
AutoImageProcessor gives when torchvision is not installed, as in this project's environment), "torchvision" with
tv_resize, torch's antialiased uint8 kernel reproduced (LlavaNextImageProcessor / LlavaOnevisionImageProcessor,
AutoImageProcessor's choice when torchvision is installed). The two differ by a level or two on a few pixels.

Images are taken as RGB: decode.to_rgb composites alpha on white and converts grayscale as the processors'
convert_to_rgb does. Orientation: decode applies EXIF orientation, as transformers' load_image does for a file or
URL; an already opened PIL image handed to the processor is taken as stored.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from mmcore.image_plan import AnyresPlan
from serve_app.imaging.resize import _RESAMPLE, _chw
from serve_app.imaging.tv_resize import resize_uint8


def _resize(img: Image.Image, height: int, width: int, plan: AnyresPlan) -> np.ndarray:
    """-> (3, height, width) uint8 with the plan's backend."""
    if plan.backend == "torchvision":
        return resize_uint8(_chw(img), height, width, plan.resample)
    return _chw(img.resize((width, height), _RESAMPLE[plan.resample]))


def _pad_square(img: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
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
        return _resize(_pad_square(img, plan.pad_color), s, s, plan)[None]
    views = np.empty((plan.num_views, 3, s, s), dtype=np.uint8)
    views[0] = _resize(img, s, s, plan)
    canvas = np.zeros((3, *plan.best_resolution), dtype=np.uint8)
    (top, left), (h, w) = plan.paste, plan.resized
    canvas[:, top:top + h, left:left + w] = _resize(img, h, w, plan)
    for i, (y, x) in enumerate(plan.tile_boxes(), start=1):
        views[i] = canvas[:, y:y + s, x:x + s]
    return views
