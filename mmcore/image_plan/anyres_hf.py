"""An AnyresPlanSpec from a LLaVA-NeXT / LLaVA-OneVision checkpoint's own files (what `save_pretrained` writes:
preprocessor_config.json or processor_config.json's "image_processor", processor_config.json, config.json), with
transformers 5.23's class defaults for keys the files leave out. What the processor and the model must agree on for
transformers itself to work is checked here, so a checkpoint that would fail (or silently differ) at run time is
refused at build with a ValueError naming the fields:

- the processor's image_grid_pinpoints are the model's (the processor tiles with its list, the model unpads with its);
- every view is S x S with S = vision_config.image_size: the base view (`size`), the tiles (`crop_size`, else `size`),
  and the processor's own later resize / centre crop; each pinpoint side a multiple of S;
- one view's features: the model keeps (S // patch)^2 rows per view after `vision_feature_select_strategy`
  ("default" drops a CLS row, which CLIP has and SigLIP has not); the processor counts its own way (NeXT:
  (S // patch_size)^2 + num_additional_image_tokens, OneVision: num_image_tokens, minus one for "default"), and
  the two must agree;
- OneVision's vision_aspect_ratio ("anyres_max_N") is the same in the processor and the model.
"""

from __future__ import annotations

import math
import re

from mmcore.image_plan.anyres import CLIP_MEAN, CLIP_STD, AnyresPlanSpec

# PIL's filter numbers, as preprocessor_config.json's `resample` writes them: the ones the views reproduce
_RESAMPLE_BY_NUMBER = {0: "nearest", 2: "bilinear", 3: "bicubic"}
_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
_ONEVISION_PINPOINTS = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]
_COMMON = {"do_resize": True, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
           "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD), "do_convert_rgb": True}
# transformers' class defaults for keys a checkpoint's files leave out
_IMAGE_PROCESSOR_DEFAULTS = {
    "llava_next": _COMMON | {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224},
                             "do_center_crop": True, "image_grid_pinpoints": _NEXT_PINPOINTS},
    "llava_onevision": _COMMON | {"size": {"height": 384, "width": 384}, "crop_size": None, "do_center_crop": None,
                                  "image_grid_pinpoints": _ONEVISION_PINPOINTS},
}
_CONFIG_DEFAULTS = {
    "llava_next": {"vision_feature_select_strategy": "default", "image_grid_pinpoints": _NEXT_PINPOINTS},
    "llava_onevision": {"vision_feature_select_strategy": "full", "image_grid_pinpoints": _ONEVISION_PINPOINTS,
                        "vision_aspect_ratio": "anyres_max_9"},
}
# vision towers whose output starts with a CLS row (dropped by "default") or has none ("full")
_HAS_CLS = {"clip_vision_model": True, "siglip_vision_model": False}


def _triple(value) -> tuple[float, float, float]:
    # transformers takes one float for all three channels, or a list of three
    return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else (float(value),) * 3


def _square(size: dict | None, field: str) -> int | None:
    """A size dict's square side (height == width, or shortest_edge), None when absent."""
    if not size:
        return None
    if "height" in size and "width" in size:
        if size["height"] != size["width"]:
            raise ValueError(f"preprocessor {field} {size}: only square views are supported")
        return int(size["height"])
    if "shortest_edge" in size:
        return int(size["shortest_edge"])
    raise ValueError(f"preprocessor {field} {size}: needs height and width, or shortest_edge")


def _view_size(ip: dict, image_size: int) -> int:
    """The base view is resized to `size`; tiles are cut at crop_size.height (else `size`); each view is then resized
    to `size` and centre-cropped to crop_size: all no-ops only when both are S = vision_config.image_size."""
    base = _square(ip["size"], "size")
    crop = _square(ip["crop_size"], "crop_size") if ip["crop_size"] and ip["crop_size"].get("height") else None
    for field, side in (("size", base), ("crop_size", crop)):
        if side is not None and side != image_size:
            raise ValueError(f"preprocessor {field} {ip[field]} gives {side} px views; config.json "
                             f"vision_config.image_size is {image_size}")
    return image_size


def _anyres_max(model_type: str, config: dict, processor: dict) -> int | None:
    if model_type == "llava_next":
        return None
    ratio = config["vision_aspect_ratio"]
    proc_ratio = processor.get("vision_aspect_ratio", "anyres_max_9")
    if proc_ratio != ratio:
        raise ValueError(f"processor_config.json vision_aspect_ratio {proc_ratio!r} != config.json "
                         f"vision_aspect_ratio {ratio!r}")
    found = re.fullmatch(r"anyres_max_(\d+)", ratio)
    if not found:
        raise ValueError(f"config.json vision_aspect_ratio {ratio!r}: only 'anyres_max_N' is supported")
    return int(found.group(1))


def _check_counts(model_type: str, config: dict, processor: dict, side: int) -> None:
    """The processor writes as many <image> tokens per view as the model has feature rows per view."""
    strategy = config["vision_feature_select_strategy"]
    vision_type = (config.get("vision_config") or {}).get("model_type")
    if vision_type not in _HAS_CLS:
        raise ValueError(f"config.json vision_config.model_type {vision_type!r}: one of {sorted(_HAS_CLS)} expected")
    if (strategy == "default") != _HAS_CLS[vision_type]:
        raise ValueError(f"config.json vision_feature_select_strategy {strategy!r} with a {vision_type} tower: the "
                         f"model's views would not be (image_size // patch_size)^2 = {side * side} rows")
    proc_strategy = processor.get("vision_feature_select_strategy")
    if proc_strategy != strategy:
        raise ValueError(f"processor_config.json vision_feature_select_strategy {proc_strategy!r} != config.json's "
                         f"{strategy!r}")
    drop = 1 if strategy == "default" else 0
    if model_type == "llava_next":
        patch = processor.get("patch_size")
        if not patch:
            raise ValueError("processor_config.json patch_size is missing: the processor cannot count image tokens")
        proc_side = config["vision_config"]["image_size"] // patch
        counted = proc_side ** 2 + processor.get("num_additional_image_tokens", 0) - drop
        fields, grid_ok = "(image_size // patch_size)^2 + num_additional_image_tokens", proc_side == side
    else:
        tokens = processor.get("num_image_tokens")
        if not tokens:
            raise ValueError("processor_config.json num_image_tokens is missing: the processor cannot count image "
                             "tokens")
        counted, fields = tokens - drop, "num_image_tokens"
        grid_ok = int(math.sqrt(tokens)) == side
    if counted != side * side or not grid_ok:
        raise ValueError(f"processor_config.json {fields} counts {counted} <image> tokens per view; the model has "
                         f"(vision_config.image_size // vision_config.patch_size)^2 = {side * side}")


def spec_from_hf(image_processor: dict, processor: dict, config: dict, backend: str = "pil") -> AnyresPlanSpec:
    """The spec from a checkpoint's files: `image_processor` = preprocessor_config.json (or processor_config.json's
    "image_processor"), `processor` = processor_config.json, `config` = config.json. `backend`: whose resize the
    views reproduce ("pil", or "torchvision": the class AutoImageProcessor picks where torchvision is installed; the
    files do not say). ValueError naming the fields for a checkpoint the plan cannot serve exactly."""
    model_type = config.get("model_type")
    if model_type not in _IMAGE_PROCESSOR_DEFAULTS:
        raise ValueError(f"config.json model_type {model_type!r}: the anyres plan takes 'llava_next' or "
                         "'llava_onevision'")
    ip = _IMAGE_PROCESSOR_DEFAULTS[model_type] | image_processor
    config = _CONFIG_DEFAULTS[model_type] | config
    if not ip["do_convert_rgb"]:
        raise ValueError("preprocessor do_convert_rgb false: the preprocess stage always converts to RGB")
    if ip["resample"] not in _RESAMPLE_BY_NUMBER:
        raise ValueError(f"preprocessor resample {ip['resample']!r}: one of {sorted(_RESAMPLE_BY_NUMBER)} "
                         "(nearest, bilinear, bicubic) expected")
    vision = config.get("vision_config") or {}
    for key in ("image_size", "patch_size"):
        if not isinstance(vision.get(key), int):
            raise ValueError(f"config.json vision_config.{key} {vision.get(key)!r}: one integer expected")
    image_size, patch_size = vision["image_size"], vision["patch_size"]
    view_size = _view_size(ip, image_size)
    pins, model_pins = ip["image_grid_pinpoints"], config["image_grid_pinpoints"]
    if [list(p) for p in pins] != [list(p) for p in model_pins]:
        raise ValueError(f"preprocessor image_grid_pinpoints {pins} != config.json image_grid_pinpoints {model_pins}")
    bad = [p for p in pins if p[0] % image_size or p[1] % image_size or min(p) < image_size]
    if bad:
        raise ValueError(f"image_grid_pinpoints {bad} are not multiples of vision_config.image_size {image_size}")
    _check_counts(model_type, config, processor, image_size // patch_size)
    mean = _triple(ip["image_mean"]) if ip["do_normalize"] else (0.0, 0.0, 0.0)
    return AnyresPlanSpec(
        grid_pinpoints=[tuple(p) for p in pins], view_size=view_size, patch_size=patch_size,
        anyres_max=_anyres_max(model_type, config, processor), resample=_RESAMPLE_BY_NUMBER[ip["resample"]],
        backend=backend, pad_color=tuple(int(m * 255) for m in _triple(ip["image_mean"])),
        rescale_factor=ip["rescale_factor"] if ip["do_rescale"] else 1.0, image_mean=mean,
        image_std=_triple(ip["image_std"]) if ip["do_normalize"] else (1.0, 1.0, 1.0))
