"""Building tiny LLaVA-NeXT and LLaVA-OneVision checkpoints end to end: every variant written and gated, the
manifest's newline row and plan, every vision variant's per-view features against transformers' on views its own
image processor makes of images the gate never saw, and fp32 greedy decoding of a text-only prompt equal to
transformers' generate()."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import transformers

from graphs.build import build_artifacts
from graphs.families.llava import parity
from graphs.families.llava.synthetic import write_checkpoint
from graphs.families.llava.variants import VARIANTS
from mmcore.image_plan.anyres import AnyresPlanSpec
from mmcore.manifest import Manifest
from mmcore.runtime.kv_runner import OrtDecoderRunner

from graphs.families.llava_next.synthetic import SPECS

NAMES = tuple(SPECS)
MODELS = {"llava_next": ("LlavaNextForConditionalGeneration", "LlavaNextImageProcessor"),
          "llava_onevision": ("LlavaOnevisionForConditionalGeneration", "LlavaOnevisionImageProcessor")}
# (height, width) pixels: tall, wide, 1x1, square, odd, larger than every grid
SHAPES = ((90, 20), (17, 100), (1, 1), (64, 64), (33, 47), (150, 200))


def _transformers(ck):
    config = json.loads((ck / "config.json").read_text())
    model_class, processor_class = MODELS[config["model_type"]]
    model = getattr(transformers, model_class).from_pretrained(ck, dtype=torch.float32,
                                                               attn_implementation="eager").eval()
    model.generation_config = transformers.GenerationConfig()  # raw greedy, as the graphs run
    return config, model, getattr(transformers, processor_class).from_pretrained(ck)


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", NAMES)
def test_every_variant_and_the_newline_row_written_with_their_sha256(built, checkpoints, name):
    out, m = built[name]
    assert Manifest.read(out) == m and m.family == "llava_next" and m.preset == name
    files = m.files()
    assert len([f for f in files if f.startswith("vision.") or f.startswith("decoder.")]) == \
        sum(len(v) for v in VARIANTS.values())
    assert m.vision.newline.name in files and m.vision.newline.shape == [64]
    for f, sha in files.items():
        assert hashlib.sha256((out / f).read_bytes()).hexdigest() == m.files_sha256[f], f
    config, model, _ = _transformers(checkpoints[name])
    np.testing.assert_array_equal(np.load(out / m.vision.newline.name),
                                  model.model.image_newline.detach().numpy())
    plan, vision = AnyresPlanSpec.model_validate(m.vision.plan), config["vision_config"]  # the planner's own spec
    assert [list(p) for p in plan.grid_pinpoints] == config["image_grid_pinpoints"]
    assert plan.view_size == vision["image_size"] and plan.side == 4
    assert plan.anyres_max == (4 if "onevision" in name else None)
    assert m.vision.features_per_image == m.prompt.image_features == 16  # per view
    for entry in (m.graphs["vision"].inputs[0], m.graphs["vision"].outputs[0]):
        assert entry.shape[0] == "views"


@pytest.mark.parametrize("name", NAMES)
def test_every_vision_variant_matches_transformers_per_view(built, checkpoints, name, monkeypatch):
    """All views of six images of every aspect class in one batch; transformers' per-view features are what its
    get_image_features hands pack_image_features."""
    out, m = built[name]
    _, model, processor = _transformers(checkpoints[name])
    seen, pack = [], model.model.pack_image_features
    monkeypatch.setattr(model.model, "pack_image_features",
                        lambda feats, *a, **k: (seen.extend(f.numpy() for f in feats), pack(feats, *a, **k))[1])
    rng = np.random.default_rng(7)
    inputs = processor(images=[rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SHAPES],
                       return_tensors="pt")
    with torch.no_grad():
        model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
    pv = inputs["pixel_values"].numpy()
    views = np.concatenate([pv[i, :f.shape[0]] for i, f in enumerate(seen)])
    mean = np.asarray(processor.image_mean)[None, :, None, None]
    std = np.asarray(processor.image_std)[None, :, None, None]
    pixels = np.rint((views * std + mean) * 255).astype(np.uint8)  # the uint8 views serving sends
    want = np.concatenate(seen)
    assert want.shape[0] == pixels.shape[0] >= 2 * len(SHAPES)
    for variant, v in m.graphs["vision"].variants.items():
        got = _session(out / v.file).run(None, {"pixels": pixels})[0]
        cos = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
        if v.precision == "fp32":
            assert np.abs(got - want).max() <= parity.FP32_REL * max(1.0, np.abs(want).max()), variant
        assert cos >= (parity.FP16_MIN_COSINE if v.precision == "fp16" else parity.QUANT_MIN_COSINE), variant


@pytest.mark.parametrize("name", NAMES)
def test_fp32_text_only_greedy_equals_generate(built, checkpoints, name):
    out, m = built[name]
    _, model, _ = _transformers(checkpoints[name])
    ids = transformers.AutoTokenizer.from_pretrained(checkpoints[name])("describe the quick brown fox").input_ids
    steps = 24
    with torch.no_grad():
        want = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              do_sample=False, max_new_tokens=steps, min_new_tokens=steps, eos_token_id=None,
                              pad_token_id=0)[0, len(ids):].tolist()
    table = np.load(out / m.decoder.embeddings.name)
    runner = OrtDecoderRunner(_session(out / m.graphs["decoder"].variants["cpu-fp32"].file), m.decoder, 1,
                              len(ids) + steps + 1)
    logits, got = runner.prefill(0, table[ids]), []
    for _ in range(steps):
        got.append(int(logits.argmax()))
        logits = runner.decode(1, table[[got[-1]]], np.array([len(ids) + len(got) - 1]))[0]
    assert got == want


@pytest.mark.parametrize("name", NAMES)
def test_the_gate_figures_pass_with_an_image_in_the_prompt(built, name):
    """The llava decoder gate, its image rows transformers' packed features (base, unpadded tiles, newlines)."""
    graphs = built[name][1].graphs
    f = graphs["decoder"].variants["cpu-fp32"].parity
    assert f["greedy_identical"] and f["greedy_tokens"] == parity.GREEDY_TOKENS
    assert f["prefill_logits_max_abs_err"] <= parity.FP32_REL * f["logit_scale"]
    assert not graphs["vision"].rejected and not graphs["decoder"].rejected
    assert graphs["vision"].variants["cpu-fp32"].parity["views"] >= 12


def _variant(base: str, vision: dict, **changes):
    """SPECS[base] with its tower's dims changed (processor and pinpoints following the tile size)."""
    spec = SPECS[base]
    side = vision.get("image_size", spec.vision["image_size"])
    pinpoints = [[h // 32 * side, w // 32 * side] for h, w in spec.extra["image_grid_pinpoints"]]
    size = {"shortest_edge": side} if "shortest_edge" in spec.processor["size"] else {"height": side, "width": side}
    processor = spec.processor | {"size": size, "image_grid_pinpoints": pinpoints}
    processor |= {"crop_size": {"height": side, "width": side}} if "crop_size" in processor else {}
    extra = spec.extra | {"image_grid_pinpoints": pinpoints}
    return dataclasses.replace(spec, vision=spec.vision | vision, extra=extra, processor=processor, **changes)


@pytest.mark.parametrize("base, vision, changes", [
    ("next-clip-llama", {}, {"vision_feature_layer": [-3, -1]}),  # features of two layers side by side
    # a tile that is not a whole number of patches (so400m/14 at 384 px): the conv drops the remainder
    ("onevision-siglip-qwen2", {"image_size": 36}, {}),
    ("next-clip-llama", {"image_size": 36}, {}),
])
def test_tower_options_pass_the_gate(tmp_path, base, vision, changes):
    """Built through the gate, the fp32 variants named: a variant past its bounds would fail the build."""
    ck = write_checkpoint(tmp_path / "ckpt", _variant(base, vision, **changes))
    m = build_artifacts(ck, tmp_path / "out", variants=["vision/cpu-fp32", "vision/portable-fp32", "decoder/cpu-fp32"])
    for variant in ("cpu-fp32", "portable-fp32"):
        f = m.graphs["vision"].variants[variant].parity
        assert f["feature_max_abs_err"] <= parity.FP32_REL * f["feature_scale"] and f["views"] >= 12
    assert m.graphs["decoder"].variants["cpu-fp32"].parity["greedy_identical"]
    plan = AnyresPlanSpec.model_validate(m.vision.plan)
    assert plan.side == 4 and plan.view_size == vision.get("image_size", 32)
