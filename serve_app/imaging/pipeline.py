"""One image URL -> the contract's PreprocessedImage: bytes, decode, resize, and the content hash the vision
stage caches features by."""

from __future__ import annotations

import hashlib

import numpy as np

from mmcore.manifest import VisionSpec
from serve_app.contract import PreprocessedImage
from serve_app.imaging.decode import decode
from serve_app.imaging.limits import ImageLimits
from serve_app.imaging.resize import to_pixels
from serve_app.imaging.source import image_bytes


def content_hash(pixels: np.ndarray) -> str:
    """sha256 of the model-ready pixels: two encodings of one picture share their features."""
    return hashlib.sha256(pixels.tobytes()).hexdigest()


def preprocess_image(url: str, vision: VisionSpec, opts: ImageLimits,
                     param: str = "image_url") -> PreprocessedImage:
    raw = image_bytes(url, param, opts)
    img, source_pixels = decode(raw, param, opts)
    pixels = to_pixels(img, vision)  # (3,S,S)
    return PreprocessedImage(pixels=pixels, content_hash=content_hash(pixels),
                             source_bytes=len(raw), source_pixels=source_pixels)
