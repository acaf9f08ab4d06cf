"""transformers' own LLaVA-NeXT / LLaVA-OneVision processors and pack_image_features, built locally (no download),
as the reference for the anyres planner and views; and the configs the tests cover, scaled down for speed."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from types import SimpleNamespace

import numpy as np
from PIL import Image

from mmcore.image_plan import AnyresPlanSpec

IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class Case:
    name: str
    view_size: int
    patch_size: int
    pinpoints: tuple[tuple[int, int], ...]
    anyres_max: int | None  # None: NeXT

    @property
    def spec(self) -> AnyresPlanSpec:
        return self.spec_with("pil")

    def spec_with(self, backend: str) -> AnyresPlanSpec:
        mean, std = mean_std(self)
        return AnyresPlanSpec(grid_pinpoints=self.pinpoints, view_size=self.view_size, patch_size=self.patch_size,
                              anyres_max=self.anyres_max, pad_color=_pad_color(self), backend=backend,
                              image_mean=mean, image_std=std)


def _next_pinpoints(s: int):  # llava-v1.6's list, in units of its 336 view
    return tuple((h * s, w * s) for h, w in ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3)))


def _onevision_pinpoints(s: int):  # llava-onevision's list: every (i, j) of 1..6 views, row-major as shipped
    return tuple((i * s, j * s) for i in range(1, 7) for j in range(1, 7))


NEXT = Case("next", 32, 8, _next_pinpoints(32), None)
ONEVISION = Case("onevision", 32, 8, _onevision_pinpoints(32), 9)
NEXT_336 = Case("next336", 336, 14, _next_pinpoints(336), None)
ONEVISION_384 = Case("onevision384", 384, 14, _onevision_pinpoints(384), 9)

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


def mean_std(case: Case):
    return (CLIP_MEAN, CLIP_STD) if case.anyres_max is None else (SIGLIP_MEAN, SIGLIP_STD)


def _pad_color(case: Case) -> tuple[int, int, int]:
    return tuple(int(m * 255) for m in mean_std(case)[0])  # as the OneVision processor's pad_to_square is called


@cache
def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({IMAGE_TOKEN: 0, "[UNK]": 1, "hi": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([IMAGE_TOKEN])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


@cache
def image_processor(case: Case, backend: str = "pil"):
    """The PIL- or torchvision-backend class, configured as the checkpoints ship it (NeXT: shortest_edge + crop;
    OneVision: height x width)."""
    import transformers

    mean, std = mean_std(case)
    pins = [list(p) for p in case.pinpoints]
    s = case.view_size
    suffix = "Pil" if backend == "pil" else ""
    if case.anyres_max is None:
        cls = getattr(transformers, f"LlavaNextImageProcessor{suffix}")
        return cls(size={"shortest_edge": s}, crop_size={"height": s, "width": s}, image_grid_pinpoints=pins,
                   image_mean=mean, image_std=std)
    cls = getattr(transformers, f"LlavaOnevisionImageProcessor{suffix}")
    return cls(size={"height": s, "width": s}, image_grid_pinpoints=pins, image_mean=mean, image_std=std)


@cache
def processor(case: Case):
    """NeXT as llava-v1.6 ships it (CLIP: one CLS, strategy "default"); OneVision as SigLIP (no CLS, "full")."""
    from transformers import LlavaNextProcessor

    side = case.view_size // case.patch_size
    if case.anyres_max is None:
        return LlavaNextProcessor(image_processor=image_processor(case), tokenizer=_tokenizer(),
                                  patch_size=case.patch_size, vision_feature_select_strategy="default",
                                  num_additional_image_tokens=1, image_token=IMAGE_TOKEN)
    from transformers import LlavaOnevisionProcessor

    from graphs.families.llava.synthetic import images_only
    return images_only(LlavaOnevisionProcessor)(
        image_processor=image_processor(case), tokenizer=_tokenizer(), num_image_tokens=side * side,
        vision_feature_select_strategy="full", vision_aspect_ratio=f"anyres_max_{case.anyres_max}",
        image_token=IMAGE_TOKEN)


def image_tokens(case: Case, images: list[Image.Image], nested: bool = False) -> int:
    """Image tokens in the processor's input_ids for one prompt holding `images` (nested: as one conversation's
    list, what apply_chat_template passes, which OneVision treats as a multi-image prompt)."""
    proc = processor(case)
    out = proc(text=IMAGE_TOKEN * len(images), images=[images] if nested else images, return_tensors="np")
    return int((out["input_ids"] == proc.image_token_id).sum())


def pack(case: Case, features: np.ndarray, height: int, width: int, newline: np.ndarray,
         batch_num_images: int = 1) -> np.ndarray:
    """The model's pack_image_features on one image's (views, s*s, D) features -> (rows, D)."""
    import torch
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaOnevisionConfig
    from transformers.models.llava_next.modeling_llava_next import LlavaNextModel
    from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

    vision = CLIPVisionConfig(image_size=case.view_size, patch_size=case.patch_size, hidden_size=8,
                              intermediate_size=8, num_hidden_layers=1, num_attention_heads=1)
    pins = [list(p) for p in case.pinpoints]
    sizes = torch.tensor([[height, width]])
    feats, line = [torch.from_numpy(features)], torch.from_numpy(newline)
    if case.anyres_max is None:
        model = SimpleNamespace(config=LlavaNextConfig(vision_config=vision, image_grid_pinpoints=pins))
        out, _ = LlavaNextModel.pack_image_features(model, feats, sizes, "default", image_newline=line)
    else:
        model = SimpleNamespace(config=LlavaOnevisionConfig(vision_config=vision, image_grid_pinpoints=pins))
        out, _ = LlavaOnevisionModel.pack_image_features(model, feats, sizes, image_newline=line,
                                                         vision_aspect_ratio=f"anyres_max_{case.anyres_max}")
    return out[0].numpy()


def hf_num_views(case: Case, height: int, width: int) -> int:
    """The model's own count of views for an image (image_size_to_num_patches)."""
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    return image_size_to_num_patches((height, width), [list(p) for p in case.pinpoints], case.view_size)


def random_image(height: int, width: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed + height * 7919 + width)
    bands = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (height, width, bands), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if bands == 1 else pixels, mode)
