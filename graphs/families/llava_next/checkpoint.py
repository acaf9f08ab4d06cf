"""Read and validate a LLaVA-NeXT or LLaVA-OneVision checkpoint directory as `save_pretrained` writes it.

Everything the two share with LLaVA-1.5 (towers, decoder, projector, tokenizer, chat template, generation config,
the base view's resize) is read by graphs/families/llava/checkpoint.py; this adds what anyres needs:

    config.json                model_type llava_next | llava_onevision, image_grid_pinpoints, vision_aspect_ratio
                               (OneVision: anyres_max_N), the feature strategy's consequence for tiling
    preprocessor_config.json   image_grid_pinpoints (must equal the model's), the tile size (crop_size or size,
                               the tower's image_size)
    processor_config.json      OneVision's processor settings, when saved: must agree with config.json

Refusals are one-line CheckpointErrors naming the file and field, raised before anything is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from graphs.families.llava.preprocessing import preprocessing
from mmcore.image_plan.anyres_hf import spec_from_hf
from graphs.families.llava_next import MODEL_TYPES
from graphs.families.llava.checkpoint import (Checkpoint, CheckpointError, config_fields, json_fields, plan_spec,
                                              processor_fields, read_checkpoint)

MODEL_CLASSES = {"llava_next": "LlavaNextForConditionalGeneration",
                 "llava_onevision": "LlavaOnevisionForConditionalGeneration"}
IMAGE_PROCESSORS = {"llava_next": "LlavaNextImageProcessor", "llava_onevision": "LlavaOnevisionImageProcessor"}
ANYRES_MAX = re.compile(r"anyres_max_([1-9][0-9]*)")


@dataclass(frozen=True)
class AnyresCheckpoint:
    base: Checkpoint  # what the llava family's graphs, weights and decoder read
    model_type: str  # "llava_next" | "llava_onevision"
    grid_pinpoints: tuple[tuple[int, int], ...]  # (height, width), each a multiple of the view size
    anyres_max: int | None  # OneVision's vision_aspect_ratio anyres_max_N; None for NeXT

    @property
    def directory(self) -> Path:
        return self.base.directory

    def plan(self) -> dict:
        """The manifest's VisionSpec.plan: the anyres planner's spec (mmcore.image_plan.anyres), read from the
        checkpoint's own files as transformers' processor and model read them; CheckpointError naming the fields
        where the planner could not reproduce them. The base view, tiles, unpadding, OneVision's shrink and its
        one-view images of a multi-image prompt all follow from it."""
        return plan_spec(self.directory, spec_from_hf).model_dump(mode="json")

    def to_dict(self) -> dict:
        return {**self.base.to_dict(), "model_type": self.model_type,
                "grid_pinpoints": [list(p) for p in self.grid_pinpoints], "anyres_max": self.anyres_max}


def _pinpoints(f, key: str) -> tuple[tuple[int, int], ...]:
    raw = f.get(key, list)
    if not raw or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, int) and x > 0 for x in p)
                          for p in raw):
        f.fail(key, f"expected a list of [height, width] pairs, got {raw!r}")
    return tuple((h, w) for h, w in raw)


def _tiling(directory: Path, top, ck: Checkpoint) -> tuple[tuple[int, int], ...]:
    """The grid pinpoints, checked: the processor's equal the model's, each a multiple of the view size."""
    model = _pinpoints(top, "image_grid_pinpoints")
    proc = processor_fields(directory)
    kind = proc.get("image_processor_type", str, IMAGE_PROCESSORS[top.data["model_type"]])
    if "video" in kind.lower():
        proc.fail("image_processor_type", f"{kind}: video processors are not served (images only)")
    side, ours = ck.vision.image_size, _pinpoints(proc, "image_grid_pinpoints")
    where = f"{top.path}: image_grid_pinpoints"
    if ours != model:
        proc.fail("image_grid_pinpoints", f"{[list(p) for p in ours]} differs from {where} "
                                          f"{[list(p) for p in model]}")
    bad = next((p for p in ours if p[0] % side or p[1] % side), None)
    if bad is not None:
        proc.fail("image_grid_pinpoints", f"{list(bad)} is not a multiple of the tile size, {top.path}: "
                                          f"vision_config.image_size {side}")
    tile = proc.data.get("crop_size") if proc.data.get("do_center_crop") else proc.data.get("size")
    sizes = set(tile.values()) if isinstance(tile, dict) else {tile}
    if sizes != {side}:  # tiles are resized by this size (NeXT: then cropped): other than the tile, not reproduced
        proc.fail("crop_size" if proc.data.get("do_center_crop") else "size",
                  f"{tile!r}: anyres tiles must be the vision tower's image_size {side}")
    if proc.data.get("do_center_crop") and proc.data.get("size", {}).get("shortest_edge", side) != side:
        proc.fail("size", f"{proc.data['size']!r}: anyres tiles are resized to it before the crop; only the "
                          f"tile size {side} is supported")
    return model


def _anyres_max(directory: Path, top) -> int | None:
    if top.data["model_type"] != "llava_onevision":
        return None
    ratio = top.get("vision_aspect_ratio", str, "anyres_max_9")
    match = ANYRES_MAX.fullmatch(ratio)
    if match is None:
        top.fail("vision_aspect_ratio", f"unsupported {ratio!r} (supported: anyres_max_N)")
    saved = directory / "processor_config.json"
    if saved.is_file():  # the processor counts the prompt's image tokens with its own copy of these settings
        proc = json_fields(saved)
        for key, want in (("vision_aspect_ratio", ratio),
                          ("vision_feature_select_strategy", top.data.get("vision_feature_select_strategy"))):
            if proc.data.get(key) not in (None, want):
                proc.fail(key, f"{proc.data[key]!r} differs from {top.path}: {key} {want!r}")
    return int(match.group(1))


def read_anyres_checkpoint(directory: str | Path) -> AnyresCheckpoint:
    directory = Path(directory)
    ck = read_checkpoint(directory, MODEL_TYPES, tiling=("do_pad", "image_grid_pinpoints"))
    top = config_fields(directory)
    v = ck.vision
    if v.features_per_image != (v.image_size // v.patch_size) ** 2:
        # transformers' pack_image_features lays a view's rows out as its patch grid: CLIP must drop its class
        # token ("default"), SigLIP (no class token) must keep every patch ("full")
        top.fail("vision_feature_select_strategy", f"{'default' if v.drop_cls else 'full'} leaves "
                 f"{v.features_per_image} rows per view for a {v.kind} tower, not its "
                 f"{(v.image_size // v.patch_size) ** 2} patches (transformers cannot tile it)")
    preprocessing(ck)  # the base view: as llava's
    return AnyresCheckpoint(base=ck, model_type=top.data["model_type"], grid_pinpoints=_tiling(directory, top, ck),
                            anyres_max=_anyres_max(directory, top))


__all__ = ["AnyresCheckpoint", "CheckpointError", "MODEL_CLASSES", "MODEL_TYPES", "read_anyres_checkpoint"]
