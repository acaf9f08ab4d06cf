"""A decoded RGB image -> the views the vision graph encodes and what the image becomes in the prompt, by the
manifest's plan kind (mmcore.image_plan has each kind's planner, equal to the checkpoint's HF processor):

    none (LLaVA-1.5)   one view: the image resized as `preprocessing` says; features_per_image rows
    anyres (LLaVA-NeXT, OneVision)   a base view + the tiles of the best grid; the vision stage unpads the tiles'
                       features and adds the newline rows (it needs the plan: `ImagePlan.assemble_with`)
    idefics3 (SmolVLM) crops + a global view, each image_seq_len rows, wrapped in row/column text (the layout)

`max_tiles` caps the views one image may become (the encoder's work); past it, or for an image too thin for its
plan, the image is refused naming the limit (HTTP 400), before anything is encoded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from mmcore.image_plan import anyres, idefics3
from mmcore.manifest import VisionSpec
from serve_app.contract import InvalidImage
from serve_app.imaging.anyres_views import anyres_views
from serve_app.imaging.idefics3_views import views as idefics3_views
from serve_app.imaging.resize import to_pixels


@dataclass(frozen=True)
class ImagePlan:
    views: np.ndarray  # (V,3,S,S) uint8
    rows: int  # feature rows the image fills in the prompt
    layout: tuple[str | int, ...] = ()  # text and runs of rows; () = one run of `rows`
    assemble_with: object | None = None  # the anyres plan the vision stage unpads the views' features by


def plan_image(img: Image.Image, vision: VisionSpec, param: str, images_in_prompt: int = 1,
               max_tiles: int | None = None) -> ImagePlan:
    kind = (vision.plan or {}).get("kind")
    if kind is None:
        return ImagePlan(to_pixels(img, vision)[None], vision.features_per_image)
    width, height = img.size
    try:
        if kind == "anyres":
            p = anyres.plan(anyres.AnyresPlanSpec.model_validate(vision.plan), height, width,
                            images_in_prompt=images_in_prompt)
        elif kind == "idefics3":
            p = idefics3.plan(idefics3.Idefics3PlanSpec.model_validate(vision.plan), height, width)
        else:  # the manifest was validated by a build of this version: a kind it does not know is a bad artifact
            raise RuntimeError(f"manifest vision.plan kind {kind!r} is not one this server plans")
    except ValueError as e:  # an image too thin or too small for the plan's grid
        raise InvalidImage(f"image of {width}x{height} px cannot be planned: {e}", param, "invalid_image_size") \
            from None
    if max_tiles is not None and p.num_views > max_tiles:
        raise InvalidImage(f"image of {width}x{height} px becomes {p.num_views} views to encode; the limit is "
                           f"{max_tiles} (preprocess.max_tiles)", param, "image_too_many_tiles")
    if kind == "anyres":
        return ImagePlan(anyres_views(img, p), p.num_rows, assemble_with=p)
    layout = tuple(x.rows if isinstance(x, idefics3.Features) else x.text for x in p.pieces)
    return ImagePlan(idefics3_views(img, p), p.num_rows, layout)
