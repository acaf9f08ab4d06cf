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


def content_hash(views: np.ndarray) -> str:
    """sha256 of the model-ready views: two encodings of one picture share their features."""
    return hashlib.sha256(views.tobytes()).hexdigest()


def preprocess_image(url: str, vision: VisionSpec, opts: ImageLimits,
                     param: str = "image_url") -> PreprocessedImage:
    raw = image_bytes(url, param, opts)
    img, source_pixels = decode(raw, param, opts)
    views = to_pixels(img, vision)[None]  # (1,3,S,S): the whole image, one view
    return PreprocessedImage(views=views, rows=vision.features_per_image, content_hash=content_hash(views),
                             source_bytes=len(raw), source_pixels=source_pixels)
