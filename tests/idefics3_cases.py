"""Shared cases for the Idefics3 / SmolVLM plan and views tests: the specs, the image shapes, and transformers' own
image processor configured from a spec (the reference every check compares against)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from mmcore.image_plan.idefics3 import Idefics3PlanSpec

# Small enough to run in milliseconds: views of 32 px, 4x4 patches shuffled by 2 into 4 rows, at most 3x3 crops.
TINY = Idefics3PlanSpec(longest_edge=96, max_image_size=32, image_size=32, patch_size=8, scale_factor=2,
                        image_seq_len=4)
# SmolVLM-256M-Instruct's settings (preprocessor size.longest_edge 2048, max_image_size 512; SigLIP 512/16;
# scale_factor 4; image_seq_len 64), as published with the checkpoint (not readable offline: written from its files).
SMOLVLM_256M = Idefics3PlanSpec(longest_edge=2048, max_image_size=512, image_size=512, patch_size=16, scale_factor=4,
                                image_seq_len=64)

# (height, width, PIL mode): tall, wide, tiny, huge, odd, degenerate aspect, square at and around the crop side
SHAPES = [
    (1, 1, "RGB"), (3, 5, "RGB"), (5, 3, "RGB"), (70, 50, "RGB"), (50, 70, "RGB"), (3000, 4000, "RGB"),
    (4000, 3000, "RGB"), (20, 20000, "RGB"), (20000, 20, "RGB"), (31, 97, "RGB"), (97, 31, "RGB"),
    (33, 33, "RGB"), (32, 32, "RGB"), (64, 96, "RGB"), (333, 517, "RGB"), (45, 67, "L"), (67, 45, "RGBA"),
]


def sample_image(height: int, width: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Noise (every pixel differs from its neighbours, so a one-pixel shift or a wrong filter shows), in `mode`;
    RGBA with varied alpha so the compositing on white matters."""
    rng = np.random.default_rng(seed + height * 7919 + width)
    rgba = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")
    return rgba if mode == "RGBA" else rgba.convert("RGB").convert(mode)


def hf_image_processor(spec: Idefics3PlanSpec, smolvlm: bool = False):
    """transformers' PIL-backend image processor (the class AutoImageProcessor gives without torchvision >= 0.27)
    with the spec's settings."""
    if smolvlm:
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil as cls
    else:
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil as cls
    return cls(do_resize=spec.do_resize, size={"longest_edge": spec.longest_edge} if spec.do_resize else None,
               max_image_size={"longest_edge": spec.max_image_size}, do_image_splitting=spec.do_image_splitting)
