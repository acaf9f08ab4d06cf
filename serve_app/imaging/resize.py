"""An RGB image -> (3,S,S) uint8 the way the manifest's vision spec says (crop, pad, shortest edge, stretch),
to the pixel as the checkpoint's HF image processor does."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from mmcore.manifest import VisionSpec


_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST}


def _chw(img: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))  # (H,W,3) -> (3,H,W)


def resize_crop(img: Image.Image, size: int, resample: str = "bicubic") -> np.ndarray:
    """Resize the short side to `size`, center-crop the long side -> (3,size,size) uint8."""
    return _chw(ImageOps.fit(img, (size, size), method=_RESAMPLE[resample], centering=(0.5, 0.5)))


def resize_pad(img: Image.Image, size: int, resample: str = "bicubic", color=(0, 0, 0)) -> np.ndarray:
    """Resize the long side to `size`, pad the short side evenly -> (3,size,size) uint8."""
    return _chw(ImageOps.pad(img, (size, size), method=_RESAMPLE[resample], color=tuple(color)))


def resize_shortest_edge(img: Image.Image, edge: int, size: int, resample: str = "bicubic") -> np.ndarray:
    """transformers' shortest-edge resize + center crop, to the pixel: the short side becomes `edge`, the long side
    int(edge * long / short); then the centered (size, size) window with top = (h - size) // 2 -> (3,size,size)."""
    w, h = img.size
    short, long = min(w, h), max(w, h)
    new_long = int(edge * long / short)
    new_w, new_h = (edge, new_long) if w <= h else (new_long, edge)
    img = img.resize((new_w, new_h), _RESAMPLE[resample])
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return _chw(img.crop((left, top, left + size, top + size)))


def to_pixels(img: Image.Image, vision: VisionSpec) -> np.ndarray:
    """An RGB image -> (3,S,S) uint8 the way the manifest's vision spec says."""
    pre, size = vision.preprocessing, vision.image_size
    if pre.resize == "crop":
        return resize_crop(img, size, pre.resample)
    if pre.resize == "pad":
        return resize_pad(img, size, pre.resample, pre.pad_color)
    if pre.resize == "shortest_edge":
        return resize_shortest_edge(img, pre.shortest_edge, size, pre.resample)
    return _chw(img.resize((size, size), _RESAMPLE[pre.resample]))
