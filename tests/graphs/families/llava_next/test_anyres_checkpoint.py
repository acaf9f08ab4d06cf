"""What an anyres checkpoint the build cannot serve gets: one line naming the file and field (both files' fields
where two disagree), from the build, `mmserve build --hf` and serving's check_checkpoint alike, and nothing
written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graphs.build import BuildError, build_artifacts
from graphs.cli import main
from graphs.entry import check_checkpoint
from graphs.families.llava.checkpoint import CheckpointError
from mmcore.manifest import Manifest

NEXT, ONEVISION = "next-clip-llama", "onevision-siglip-qwen2"


def _edit(path: Path, **fields) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(data | fields))


def _refused(ck: Path, tmp_path: Path, *needles: str) -> str:
    out = tmp_path / "out" / "artifacts"
    with pytest.raises(ValueError) as checked:  # CheckpointError, or SourceError from the base view's check
        check_checkpoint(ck)
    with pytest.raises((BuildError, CheckpointError)) as built:
        build_artifacts(ck, out)
    msg = str(built.value)
    assert msg == str(checked.value) and "\n" not in msg and all(n in msg for n in needles), msg
    assert main(["build", "--hf", str(ck), "--out", str(out), "--quiet"]) == 1
    assert not out.exists() and (not out.parent.exists() or not any(out.parent.iterdir()))
    return msg


def test_both_checkpoints_are_accepted_where_serving_checks(checkpoints):
    for ck in checkpoints.values():
        check_checkpoint(ck)


CONFIG, PROCESSOR = "config.json", "preprocessor_config.json"
# (checkpoint, file, the fields written into it, what the one-line refusal must say)
ONE_FILE = {
    # CLIP keeping its class token, or SigLIP dropping a patch: not a patch grid, transformers cannot tile it
    "clip-full": (NEXT, CONFIG, {"vision_feature_select_strategy": "full"},
                  ("config.json", "vision_feature_select_strategy", "full")),
    "siglip-default": (ONEVISION, CONFIG, {"vision_feature_select_strategy": "default"},
                       ("config.json", "vision_feature_select_strategy", "default")),
    "unknown-strategy": (NEXT, CONFIG, {"vision_feature_select_strategy": "cls_patch"},
                         ("config.json", "vision_feature_select_strategy", "cls_patch")),
    "pinpoints-differ": (ONEVISION, PROCESSOR, {"image_grid_pinpoints": [[32, 64], [64, 32]]},
                         ("preprocessor_config.json: image_grid_pinpoints", "config.json: image_grid_pinpoints")),
    # no family takes a video model: the fallback (llava) names the field
    "video-model": (NEXT, CONFIG, {"model_type": "llava_next_video"}, ("config.json", "model_type",
                                                                         "llava_next_video")),
    "video-processor": (ONEVISION, PROCESSOR, {"image_processor_type": "LlavaOnevisionVideoProcessor"},
                        ("preprocessor_config.json", "image_processor_type", "video")),
    # processor options the preprocess stage cannot reproduce
    "lanczos": (NEXT, PROCESSOR, {"resample": 1}, ("preprocessor_config.json", "resample", "lanczos")),
    "tile-crop": (NEXT, PROCESSOR, {"crop_size": {"height": 24, "width": 24}}, ("preprocessor_config.json",
                                                                                "crop_size")),
    "tile-size": (ONEVISION, PROCESSOR, {"size": {"height": 48, "width": 48}}, ("preprocessor_config.json", "size")),
    "image-splitting": (NEXT, PROCESSOR, {"do_image_splitting": True}, ("preprocessor_config.json",
                                                                        "do_image_splitting")),
    **{f"aspect-{ratio}": (ONEVISION, CONFIG, {"vision_aspect_ratio": ratio}, ("config.json", "vision_aspect_ratio",
                                                                               ratio))
       for ratio in ("anyres", "anyres_max_0", "pad")},
}


@pytest.mark.parametrize("case", ONE_FILE)
def test_a_field_the_build_cannot_serve_is_refused(checkpoints, copy_of, tmp_path, case):
    name, file, fields, needles = ONE_FILE[case]
    ck = copy_of(checkpoints[name])
    _edit(ck / file, **fields)
    _refused(ck, tmp_path, *needles)


def test_pinpoints_off_the_tile_size_name_both_files(checkpoints, copy_of, tmp_path):
    ck = copy_of(checkpoints[NEXT])
    for path in (ck / "config.json", ck / "preprocessor_config.json"):
        _edit(path, image_grid_pinpoints=[[32, 64], [48, 32]])
    _refused(ck, tmp_path, "preprocessor_config.json: image_grid_pinpoints", "[48, 32]",
             "config.json: vision_config.image_size 32")


def test_a_processor_config_that_disagrees_with_the_model(checkpoints, copy_of, tmp_path):
    """OneVision's processor counts image tokens with its own vision_aspect_ratio: it must be the model's."""
    ck = copy_of(checkpoints[ONEVISION])
    (ck / "processor_config.json").write_text(json.dumps({"processor_class": "LlavaOnevisionProcessor",
                                                          "vision_aspect_ratio": "anyres_max_9"}))
    _refused(ck, tmp_path, "processor_config.json: vision_aspect_ratio", "config.json: vision_aspect_ratio")


def test_a_missing_newline_tensor_is_a_build_error(checkpoints, copy_of, tmp_path):
    from safetensors.torch import load_file, save_file

    ck = copy_of(checkpoints[NEXT])
    tensors = load_file(ck / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if "image_newline" not in k}, ck / "model.safetensors",
              metadata={"format": "pt"})
    out = tmp_path / "out"
    with pytest.raises(BuildError) as e:
        build_artifacts(ck, out)
    assert "model.safetensors" in str(e.value) and "image_newline" in str(e.value) and not out.exists()


def test_a_processor_config_that_agrees_is_read_beside_the_image_processor(checkpoints, copy_of):
    """processor_config.json as older saves wrote it (the processor's own settings, no `image_processor`): the
    image processor is still preprocessor_config.json's."""
    ck = copy_of(checkpoints[ONEVISION])
    (ck / "processor_config.json").write_text(json.dumps({"processor_class": "LlavaOnevisionProcessor",
                                                          "vision_aspect_ratio": "anyres_max_4",
                                                          "vision_feature_select_strategy": "full"}))
    check_checkpoint(ck)


def test_mmserve_build_hf_builds_it(checkpoints, tmp_path):
    out = tmp_path / "out"
    assert main(["build", "--hf", str(checkpoints[ONEVISION]), "--out", str(out), "--quiet",
                 "--variants", "vision/cpu-int8", "decoder/cpu-fp32"]) == 0
    m = Manifest.read(out)
    assert m.family == "llava_next" and (out / m.vision.newline.name).is_file()
    assert list(m.graphs["vision"].variants) == ["cpu-int8"]
