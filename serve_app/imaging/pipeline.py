"""One image URL -> the contract's PreprocessedImage: bytes, decode, the views its plan makes (imaging/plans.py),
and the content hash the vision stage caches features by."""

from __future__ import annotations

import hashlib

import numpy as np

from mmcore.manifest import VisionSpec
from serve_app.contract import PreprocessedImage
from serve_app.imaging.decode import decode
from serve_app.imaging.limits import ImageLimits
from serve_app.imaging.plans import plan_image
from serve_app.imaging.source import image_bytes


def content_hash(views: np.ndarray, plan: str = "") -> str:
    """sha256 of the model-ready views and the plan that assembles them: two encodings of one picture share their
    features. The plan counts because the views alone may not tell two images apart whose assembled blocks differ
    (two flat images of different sizes: the same tiles, unpadded to different rows)."""
    digest = hashlib.sha256(views.tobytes())
    digest.update(plan.encode())
    return digest.hexdigest()


def preprocess_image(url: str, vision: VisionSpec, opts: ImageLimits, param: str = "image_url",
                     images_in_prompt: int = 1) -> PreprocessedImage:
    """`images_in_prompt`: the request's images (OneVision encodes an image among several as one view)."""
    raw = image_bytes(url, param, opts)
    img, source_pixels = decode(raw, param, opts)
    planned = plan_image(img, vision, param, images_in_prompt, opts.max_tiles)
    plan = "" if planned.assemble_with is None else planned.assemble_with.model_dump_json()
    return PreprocessedImage(views=planned.views, rows=planned.rows, content_hash=content_hash(planned.views, plan),
                             source_bytes=len(raw), source_pixels=source_pixels, layout=planned.layout,
                             plan=planned.assemble_with)
