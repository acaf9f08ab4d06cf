"""Building tiny Idefics3 / SmolVLM checkpoints with the same entry as llava's (build_artifacts on the directory):
every variant emitted, gated against transformers and written with a manifest whose vision spec is per view and
whose plan (kind idefics3) carries what the planner needs; and serving's decoder runner, fed the graph's views,
decodes greedily exactly as transformers' generate() does, for a text-only chat and for an image cut into crops."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, Idefics3Processor

from graphs.entry import check_checkpoint
from graphs.families.idefics3.variants import VARIANTS
from graphs.families.llava import parity
from mmcore.image_plan.idefics3 import Idefics3PlanSpec, plan
from mmcore.manifest import Manifest
from mmcore.runtime.kv_runner import OrtDecoderRunner

TOKENS = 24


def test_every_variant_written_gated_and_described(built):
    ck, out, m = built["tiny"]
    check_checkpoint(ck)  # serving's door accepts it
    assert Manifest.read(out) == m and m.family == "idefics3" and m.preset == "idefics3-tiny"
    files = {v.file: v.sha256 for g in m.graphs.values() for v in g.variants.values()}
    assert len(files) == sum(len(v) for v in VARIANTS.values()) and not any(g.rejected for g in m.graphs.values())
    for f, sha in files.items():
        assert hashlib.sha256((out / f).read_bytes()).hexdigest() == sha, f
    vision = m.graphs["vision"]
    assert [(t.name, t.dtype, t.shape) for t in vision.inputs] == [("pixels", "uint8", ["views", 3, 32, 32])]
    assert [(t.name, t.shape) for t in vision.outputs] == [("image_features", ["views", 16, 64])]
    v = m.vision
    assert (v.image_size, v.patch_size, v.features_per_image, v.feature_dim) == (32, 4, 16, 64)
    spec = Idefics3PlanSpec.model_validate(v.plan)  # serving's validation of the plan: the planner's own spec
    assert v.plan == spec.model_dump(mode="json")
    processor = Idefics3Processor.from_pretrained(ck)  # what transformers reads from the same directory
    ip = processor.image_processor
    assert (spec.do_resize, spec.longest_edge, spec.max_image_size, spec.do_image_splitting) == (
        ip.do_resize, ip.size["longest_edge"], ip.max_image_size["longest_edge"], ip.do_image_splitting)
    assert Image.Resampling[spec.resample.upper()] == ip.resample
    assert (spec.image_mean, spec.image_std, spec.rescale_factor) == (tuple(ip.image_mean), tuple(ip.image_std),
                                                                      ip.rescale_factor)
    assert (spec.image_seq_len, spec.image_token, spec.fake_image_token, spec.global_image_token) == (
        processor.image_seq_len, processor.image_token, processor.fake_image_token, processor.global_image_tag)
    assert (spec.image_size, spec.patch_size, spec.rows_per_view) == (32, 4, 16)
    assert m.prompt.image_token == "<image>" and m.prompt.image_features == 16
    assert m.prompt.eos_token == "<end_of_utterance>" and m.decoder.eos_token_ids == [411]
    assert m.decoder.positions.scheme == "rotary" and m.decoder.io.position_ids is None


@pytest.mark.parametrize("name", ["tiny", "tiny-smolvlm"])
def test_processor_counts_the_plans_rows(built, name):
    """The checkpoint ships its whole processor: transformers' Idefics3Processor, loaded from the directory, expands
    an image's placeholder into the ids of the plan's expansion (as many image tokens as the plan's rows)."""
    ck, _, m = built[name]
    processor = Idefics3Processor.from_pretrained(ck)
    spec = Idefics3PlanSpec.model_validate(m.vision.plan)
    for height, width in [(60, 100), (100, 60), (20, 20), (33, 130), (1, 500)]:
        image = Image.fromarray(np.zeros((height, width, 3), np.uint8))
        ids = processor(text=spec.image_token, images=[image])["input_ids"][0]
        p = plan(spec, height, width)
        assert ids.count(processor.image_token_id) == p.num_rows == p.num_views * m.vision.features_per_image
        assert ids == processor.tokenizer(p.expansion(spec.image_token))["input_ids"]


@pytest.mark.parametrize("name", ["tiny", "tiny-smolvlm"])
def test_fp32_and_quantized_within_llavas_bounds(built, name):
    _, out, m = built[name]
    for graph, entry in m.graphs.items():
        for variant in entry.variants.values():
            assert parity.failures(variant.precision, variant.parity) == [], (graph, variant.parity)
    f = m.graphs["decoder"].variants["cpu-fp32"].parity
    assert f["greedy_identical"] and f["greedy_tokens"] == parity.GREEDY_TOKENS
    v = m.graphs["vision"].variants["cpu-fp32"].parity
    assert v["feature_max_abs_err"] <= parity.FP32_REL * v["feature_scale"]
    if name == "tiny":
        kv = m.graphs["decoder"].variants["cpu-int8-kv8"].parity
        assert kv["kv_err_ratio_vs_fp32_cache"] <= 1.5


def test_portable_vision_is_standard_ops(built):
    _, out, m = built["tiny"]
    for name in ("portable-fp32", "portable-fp16"):
        nodes = onnx.load(out / m.graphs["vision"].variants[name].file).graph.node
        assert {n.domain for n in nodes} <= {"", "ai.onnx"}
        assert sum(n.op_type == "Transpose" for n in nodes) >= 3  # patches + the two of the pixel shuffle


def _served_greedy(out, m, ids: list[int], features: np.ndarray | None, image_token: int) -> list[int]:
    """Serving's KV runner on the fp32 decoder: prompt embeddings with the view features at the image tokens."""
    table = np.load(out / m.decoder.embeddings.name)
    x = table[ids].astype(np.float32)
    if features is not None:
        x[np.asarray(ids) == image_token] = features
    session = ort.InferenceSession(str(out / m.graphs["decoder"].variants["cpu-fp32"].file),
                                   providers=["CPUExecutionProvider"])
    runner = OrtDecoderRunner(session, m.decoder, 1, len(ids) + TOKENS + 1)
    logits, tokens = runner.prefill(0, x), []
    for _ in range(TOKENS):
        tokens.append(int(logits.argmax()))
        logits = runner.decode(1, table[[tokens[-1]]], np.array([len(ids) + len(tokens) - 1]))[0]
    return tokens


def _generate(model, inputs: dict) -> list[int]:
    with torch.no_grad():
        seq = model.generate(**inputs, do_sample=False, max_new_tokens=TOKENS, min_new_tokens=TOKENS,
                             eos_token_id=None, pad_token_id=0)
    return seq[0, inputs["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("name", ["tiny", "tiny-smolvlm"])
@pytest.mark.parametrize("with_image", [False, True], ids=["text-only", "image-60x100"])
def test_greedy_decode_equals_generate(built, name, with_image):
    ck, out, m = built[name]
    processor = AutoProcessor.from_pretrained(ck)
    model = AutoModelForImageTextToText.from_pretrained(ck, dtype=torch.float32, attn_implementation="eager").eval()
    assert type(model).__name__ == ("SmolVLMForConditionalGeneration" if name == "tiny-smolvlm"
                                    else "Idefics3ForConditionalGeneration")
    content = [{"type": "text", "text": "describe the image"}]
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (60, 100, 3), dtype=np.uint8))
    content = [{"type": "image"}] + content if with_image else content
    prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(text=prompt, images=[image] if with_image else None, return_tensors="pt")
    features = None
    if with_image:
        raw = processor.image_processor([image], do_rescale=False, do_normalize=False, return_tensors="np")
        views = raw["pixel_values"][0].astype(np.uint8)  # one image: every view real, all S x S
        session = ort.InferenceSession(str(out / m.graphs["vision"].variants["cpu-fp32"].file),
                                       providers=["CPUExecutionProvider"])
        features = session.run(None, {"pixels": views})[0].reshape(-1, m.vision.feature_dim)  # views in order
    ids = inputs["input_ids"][0].tolist()
    image_token = processor.tokenizer.convert_tokens_to_ids(m.prompt.image_token)
    assert ids.count(image_token) == (0 if features is None else len(features))
    assert _served_greedy(out, m, ids, features, image_token) == _generate(model, dict(inputs))
