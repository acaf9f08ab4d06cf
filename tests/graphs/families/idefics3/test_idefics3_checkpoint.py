"""Idefics3 checkpoints the family cannot serve faithfully are refused before anything is written, with one line
naming the file and the field, by the build, by `mmserve build --hf` and by serving's config check alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graphs.build import BuildError, build_artifacts
from graphs.cli import main
from graphs.entry import check_checkpoint
from graphs.families.idefics3.checkpoint import read_checkpoint
from graphs.families.llava.checkpoint import CheckpointError


def _json(name: str, edit):
    def apply(directory: Path) -> None:
        path = directory / name
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    return apply


def _processor(**keys):
    return _json("processor_config.json", lambda d: d["image_processor"].update(keys))


CASES = {
    # the planner's refusals (mmcore.image_plan.idefics3.spec_from_hf), naming the checkpoint and the fields
    "crop-not-the-tower": (_processor(max_image_size={"longest_edge": 48}),
                           ["ckpt: ", "max_image_size.longest_edge 48", "vision_config.image_size 32"]),
    "size-height-width": (_processor(size={"height": 64, "width": 64}), ["ckpt: ", "preprocessor size",
                                                                         "only size.longest_edge"]),
    "rescale": (_processor(rescale_factor=0.5), ["processor_config.json", "image_processor.rescale_factor"]),
    "no-rgb": (_processor(do_convert_rgb=False), ["ckpt: ", "preprocessor do_convert_rgb false"]),
    "box-filter": (_processor(resample=4), ["processor_config.json", "image_processor.resample", "lanczos"]),
    "seq-len": (_json("processor_config.json", lambda d: d.update(image_seq_len=64)),
                ["ckpt: ", "processor image_seq_len 64", "rows per view", "= 16"]),
    "shuffle": (_json("config.json", lambda d: d.update(scale_factor=3)), ["ckpt: ", "scale_factor 3", "8 patches"]),
    "image-token": (_json("config.json", lambda d: d.update(image_token_id=5)),
                    ["config.json", "image_token_id", "'<image>'"]),
    "text-model": (_json("config.json", lambda d: d["text_config"].update(model_type="gemma")),
                   ["config.json", "text_config.model_type", "gemma"]),
    "vision-model": (_json("config.json", lambda d: d["vision_config"].update(model_type="clip_vision_model")),
                     ["config.json", "vision_config.model_type"]),
    "no-processor": (lambda d: (d / "processor_config.json").unlink(), ["preprocessor_config.json", "not found"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_naming_file_and_field(broken, tmp_path, case):
    edit, needles = CASES[case]
    ck = broken(edit)
    out = tmp_path / "out" / "artifacts"
    with pytest.raises((BuildError, CheckpointError)) as e:
        build_artifacts(ck, out)
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    with pytest.raises(CheckpointError) as door:
        check_checkpoint(ck)
    assert str(door.value) == msg
    assert main(["build", "--hf", str(ck), "--out", str(out), "--quiet"]) == 1
    assert not out.exists() and (not out.parent.exists() or not any(out.parent.iterdir()))


def test_flat_preprocessor_config_is_read(broken):
    """Checkpoints saved before transformers 5 keep the image processor in preprocessor_config.json."""
    def flatten(d: Path) -> None:
        top = json.loads((d / "processor_config.json").read_text())
        (d / "preprocessor_config.json").write_text(json.dumps(top.pop("image_processor")))
        (d / "processor_config.json").write_text(json.dumps(top))
    ck = read_checkpoint(broken(flatten))
    assert ck.plan["max_image_size"] == 32 and ck.preprocess.mean == (0.5, 0.5, 0.5)


def test_smolvlm_reads_its_wrapper_tokens_from_the_tokenizer(tiny_smolvlm, tmp_path):
    """SmolVLMProcessor takes them from the tokenizer's attributes: a name the vocabulary lacks is refused."""
    import shutil

    ck = shutil.copytree(tiny_smolvlm, tmp_path / "ckpt")
    assert read_checkpoint(ck).plan["fake_image_token"] == "<fake_token_around_image>"
    _json("tokenizer_config.json", lambda d: d.update(fake_image_token="<fake>"))(ck)
    with pytest.raises(CheckpointError) as e:
        check_checkpoint(ck)
    assert "tokenizer.json: added_tokens: '<fake>' missing" in str(e.value)
