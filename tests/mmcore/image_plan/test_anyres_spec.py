"""spec_from_hf reads the files transformers' save_pretrained writes for the processors and configs the planner is
tested against, and refuses checkpoints whose processor and model disagree, naming the fields."""

from __future__ import annotations

import json

import pytest

from mmcore.image_plan.anyres_hf import spec_from_hf
from tests.hf_anyres import NEXT, NEXT_336, ONEVISION, ONEVISION_384, processor

ALL_CASES = [NEXT, ONEVISION, NEXT_336, ONEVISION_384]


def _model_config(case):
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaOnevisionConfig, SiglipVisionConfig

    small = dict(image_size=case.view_size, patch_size=case.patch_size, hidden_size=8, intermediate_size=8,
                 num_hidden_layers=1, num_attention_heads=1)
    pins = [list(p) for p in case.pinpoints]
    if case.anyres_max is None:
        return LlavaNextConfig(vision_config=CLIPVisionConfig(**small).to_dict(), image_grid_pinpoints=pins)
    return LlavaOnevisionConfig(vision_config=SiglipVisionConfig(**small).to_dict(), image_grid_pinpoints=pins,
                                vision_aspect_ratio=f"anyres_max_{case.anyres_max}")


def _files(case, tmp_path) -> tuple[dict, dict, dict]:
    """(image processor, processor, config) dicts as a checkpoint directory holds them."""
    processor(case).save_pretrained(tmp_path)
    _model_config(case).save_pretrained(tmp_path)
    proc = json.loads((tmp_path / "processor_config.json").read_text())
    pre = tmp_path / "preprocessor_config.json"
    image = json.loads(pre.read_text()) if pre.exists() else proc.pop("image_processor")
    return image, proc, json.loads((tmp_path / "config.json").read_text())


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_reads_the_checkpoint_files(case, tmp_path):
    assert spec_from_hf(*_files(case, tmp_path)) == case.spec
    assert spec_from_hf(*_files(case, tmp_path), backend="torchvision") == case.spec_with("torchvision")


def _edit(files, part: int, **changes):
    image, proc, config = (dict(f) for f in files)
    [image, proc, config][part].update(changes)
    return image, proc, config


IMAGE, PROC, CONFIG = 0, 1, 2


@pytest.mark.parametrize("case,part,changes,message", [
    (NEXT, CONFIG, {"image_grid_pinpoints": [[32, 64]]},
     r"preprocessor image_grid_pinpoints .* != config.json image_grid_pinpoints \[\[32, 64\]\]"),
    (NEXT, IMAGE, {"crop_size": {"height": 28, "width": 28}},
     r"preprocessor crop_size .* gives 28 px views; config.json vision_config.image_size is 32"),
    (NEXT, IMAGE, {"size": {"shortest_edge": 64}}, r"preprocessor size .* gives 64 px views"),
    (ONEVISION, IMAGE, {"size": {"height": 32, "width": 64}}, r"only square views"),
    (NEXT, PROC, {"patch_size": None}, r"processor_config.json patch_size is missing"),
    (NEXT, PROC, {"num_additional_image_tokens": 0},
     r"counts 15 <image> tokens per view; the model has .* = 16"),
    (NEXT, PROC, {"vision_feature_select_strategy": "full"},
     r"processor_config.json vision_feature_select_strategy 'full' != config.json's 'default'"),
    (NEXT, CONFIG, {"vision_feature_select_strategy": "full"}, r"'full' with a clip_vision_model tower"),
    (ONEVISION, PROC, {"num_image_tokens": 25}, r"num_image_tokens counts 25 .* = 16"),
    (ONEVISION, PROC, {"vision_aspect_ratio": "anyres_max_4"},
     r"vision_aspect_ratio 'anyres_max_4' != config.json vision_aspect_ratio 'anyres_max_9'"),
    (NEXT, IMAGE, {"resample": 1}, r"preprocessor resample 1"),
    (NEXT, IMAGE, {"do_convert_rgb": False}, r"do_convert_rgb false"),
    (NEXT, CONFIG, {"model_type": "llava"}, r"model_type 'llava'"),
])
def test_refuses_naming_the_fields(case, part, changes, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        spec_from_hf(*_edit(_files(case, tmp_path), part, **changes))


def test_refuses_pinpoints_off_the_view_size(tmp_path):
    files = _edit(_files(NEXT, tmp_path), IMAGE, image_grid_pinpoints=[[32, 48]])
    with pytest.raises(ValueError, match=r"image_grid_pinpoints \[\[32, 48\]\] are not multiples of "
                                         r"vision_config.image_size 32"):
        spec_from_hf(*_edit(files, CONFIG, image_grid_pinpoints=[[32, 48]]))


def test_refuses_a_ratio_other_than_anyres_max(tmp_path):
    files = _edit(_files(ONEVISION, tmp_path), PROC, vision_aspect_ratio="anyres")
    with pytest.raises(ValueError, match=r"vision_aspect_ratio 'anyres': only 'anyres_max_N'"):
        spec_from_hf(*_edit(files, CONFIG, vision_aspect_ratio="anyres"))
