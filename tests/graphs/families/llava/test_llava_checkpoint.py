"""Reading LLaVA checkpoint directories: typed specs, both key layouts, shards, and one-line errors for bad ones
(naming the file and field, with nothing written by the build)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from graphs.cli import main
from graphs.build import BuildError, build_artifacts
from graphs.families.llava.checkpoint import CheckpointError, read_checkpoint
from graphs.families.llava.weights import load_weights


def test_clip_llama_spec(clip_llama):
    ck = read_checkpoint(clip_llama)
    v, t = ck.vision, ck.text
    assert (v.kind, v.feature_layers, v.layers, v.drop_cls) == ("clip", (2,), 2, True)  # -2 of 3 layers
    assert v.positions == 17 and v.features_per_image == 16  # 16 patches + CLS, CLS dropped
    assert (t.model_type, t.heads, t.kv_heads, t.head_dim, t.qkv_bias, t.tied) == ("llama", 4, 2, 16, False, False)
    assert ck.image_token_id == 383 and ck.eos_token_ids == (2,) and "<|im_start|>" in ck.chat_template
    p = ck.preprocess
    assert (p.resize, p.size, p.crop, p.resample) == ("shortest_edge", 32, (32, 32), "bicubic")
    assert p.mean[0] == pytest.approx(0.48145466) and p.rescale_factor == pytest.approx(1 / 255)


def test_siglip_qwen2_spec_and_shards(siglip_qwen2):
    assert (siglip_qwen2 / "model.safetensors.index.json").is_file()  # really sharded
    ck = read_checkpoint(siglip_qwen2)
    assert (ck.vision.kind, ck.vision.feature_layers, ck.vision.drop_cls, ck.vision.features_per_image) == \
        ("siglip", (3,), False, 16)
    assert (ck.text.model_type, ck.text.qkv_bias, ck.text.tied) == ("qwen2", True, True)
    assert ck.preprocess.resize == "height_width" and ck.preprocess.size == (32, 32) and ck.preprocess.crop is None
    w = load_weights(ck)
    assert w["lm_head.weight"] is w["text.embed_tokens.weight"]


def test_module_layout_reads_the_same_weights(clip_llama, copy_of):
    """transformers 5's module layout (model.language_model.*, model.vision_tower.*, lm_head.*) = saved layout."""
    ck_dir = copy_of(clip_llama)
    saved = load_file(ck_dir / "model.safetensors")
    renamed = {}
    for k, v in saved.items():
        if k.startswith("language_model.model."):
            k = "model.language_model." + k[len("language_model.model."):]
        elif k.startswith("language_model.lm_head."):
            k = k[len("language_model."):]
        else:
            k = "model." + k
        renamed[k] = v
    save_file(renamed, ck_dir / "model.safetensors")
    a, b = load_weights(read_checkpoint(clip_llama)), load_weights(read_checkpoint(ck_dir))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _refused(ck_dir: Path, tmp_path: Path, *needles: str) -> str:
    """build_artifacts and `mmserve build --hf` both refuse with one line containing needles; nothing is written."""
    out = tmp_path / "out" / "artifacts"
    with pytest.raises((BuildError, CheckpointError)) as e:
        build_artifacts(ck_dir, out)
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    assert not out.exists() and (not out.parent.exists() or not any(out.parent.iterdir()))
    assert main(["build", "--hf", str(ck_dir), "--out", str(out), "--quiet"]) == 1
    assert not out.exists() and (not out.parent.exists() or not any(out.parent.iterdir()))
    return msg


def test_unknown_text_model_type(clip_llama, copy_of, tmp_path):
    ck = copy_of(clip_llama)
    _edit_json(ck / "config.json", lambda d: d["text_config"].update(model_type="gpt_neox"))
    _refused(ck, tmp_path, "config.json", "text_config.model_type", "gpt_neox")


def test_unknown_vision_model_type(clip_llama, copy_of, tmp_path):
    ck = copy_of(clip_llama)
    _edit_json(ck / "config.json", lambda d: d["vision_config"].update(model_type="dinov2"))
    _refused(ck, tmp_path, "config.json", "vision_config.model_type", "dinov2")


def test_unsupported_rope_scaling(clip_llama, copy_of, tmp_path):
    ck = copy_of(clip_llama)
    _edit_json(ck / "config.json", lambda d: d["text_config"].update(
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}))
    _refused(ck, tmp_path, "config.json", "text_config.rope_parameters.rope_type", "yarn")


def test_legacy_rope_scaling_field_is_read(clip_llama, copy_of):
    ck = copy_of(clip_llama)
    _edit_json(ck / "config.json", lambda d: (d["text_config"].pop("rope_parameters"), d["text_config"].update(
        rope_theta=500000.0, rope_scaling={"type": "linear", "factor": 2.0})))
    t = read_checkpoint(ck).text
    assert t.rope_theta == 500000.0 and t.rope_scaling == {"rope_type": "linear", "factor": 2.0}


def test_unsupported_activation(clip_llama, copy_of, tmp_path):
    ck = copy_of(clip_llama)
    _edit_json(ck / "config.json", lambda d: d.update(projector_hidden_act="mish"))
    _refused(ck, tmp_path, "config.json", "projector_hidden_act", "mish")


def test_unsupported_processor_option(clip_llama, copy_of, tmp_path):
    ck = copy_of(clip_llama)
    _edit_json(ck / "preprocessor_config.json", lambda d: d.update(size={"longest_edge": 64}))
    _refused(ck, tmp_path, "preprocessor_config.json", "size")


def test_missing_shard(siglip_qwen2, copy_of, tmp_path):
    ck = copy_of(siglip_qwen2)
    shard = sorted(ck.glob("model-*.safetensors"))[-1]
    shard.unlink()
    _refused(ck, tmp_path, "model.safetensors.index.json", "weight_map.", shard.name, "not found")


def test_wrong_shape(clip_llama, copy_of, tmp_path):
    ck = copy_of(clip_llama)
    tensors = load_file(ck / "model.safetensors")
    key = "language_model.model.layers.1.mlp.up_proj.weight"
    tensors[key] = np.zeros((100, 64), np.float32)
    save_file(tensors, ck / "model.safetensors")
    _refused(ck, tmp_path, "model.safetensors", key, "shape [100, 64]", "[192, 64]")


def test_missing_tensor(clip_llama, copy_of, tmp_path):
    ck = copy_of(clip_llama)
    tensors = load_file(ck / "model.safetensors")
    del tensors["multi_modal_projector.linear_2.weight"]
    save_file(tensors, ck / "model.safetensors")
    _refused(ck, tmp_path, "model.safetensors", "projector.linear_2.weight", "missing")


def test_missing_processor_config(clip_llama, copy_of, tmp_path):
    ck = copy_of(clip_llama)
    (ck / "preprocessor_config.json").unlink()
    _refused(ck, tmp_path, "preprocessor_config.json", "not found")


def test_a_chat_template_that_does_not_parse_fails_the_build_naming_file_and_line(clip_llama, copy_of, tmp_path):
    ck = copy_of(clip_llama)
    (ck / "chat_template.jinja").write_text("{% for m in messages %}\n{{ m.content }\n{% endfor %}")
    _refused(ck, tmp_path, "chat_template.jinja", "chat_template: line 2")


def test_a_template_with_transformers_tags_builds(clip_llama, copy_of):
    # {% generation %} and {% break %} parse as transformers parses them: no build error for a template it accepts
    ck = copy_of(clip_llama)
    template = (ck / "chat_template.jinja").read_text()
    (ck / "chat_template.jinja").write_text("{% for m in messages %}{% if loop.index > 99 %}{% break %}{% endif %}"
                                           "{% endfor %}{% generation %}{% endgeneration %}" + template)
    assert read_checkpoint(ck).chat_template.endswith(template)
