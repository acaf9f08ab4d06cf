"""Building tiny LLaVA checkpoints end to end: every variant emitted, gated against transformers, written with a
manifest v2 (rotary positions, eos ids, the checkpoint's chat template and image token, its preprocessing); and the
gate really fails a wrong graph."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import onnx
import pytest

from graphs.families.llava import parity
from graphs.families.llava.variants import VARIANTS
from mmcore.manifest import Manifest
from graphs.families.llava.checkpoint import read_checkpoint
from graphs.families.llava.decoder_graph import build_decoder
from graphs.families.llava.reference import Reference
from graphs.families.llava.weights import load_weights

NAMES = ["clip-llama", "siglip-qwen2"]


@pytest.mark.parametrize("name", NAMES)
def test_every_variant_written_with_its_sha256(built, name, request):
    out, m = built[name]
    assert Manifest.read(out) == m and m.family == "llava" and m.preset == name
    files = {v.file: v.sha256 for g in m.graphs.values() for v in g.variants.values()}
    assert len(files) == sum(len(v) for v in VARIANTS.values())
    for f, sha in files.items():
        assert hashlib.sha256((out / f).read_bytes()).hexdigest() == sha, f
    emb = np.load(out / m.decoder.embeddings.name)
    assert list(emb.shape) == m.decoder.embeddings.shape == [384, 64]
    assert m.prompt.image_features == m.vision.features_per_image == 16
    assert m.decoder.kv_heads < m.decoder.heads and m.decoder.io.position_ids is None
    ck = read_checkpoint(request.getfixturevalue(name.replace("-", "_")))
    assert m.source["directory"] == name  # the checkpoint folder's name, never a path (same bytes on every node)
    assert m.decoder.positions.scheme == "rotary" and m.decoder.positions.theta == ck.text.rope_theta
    assert m.decoder.eos_token_ids == list(ck.eos_token_ids)
    assert m.prompt.chat_template == ck.chat_template and m.prompt.image_token == "<image>"


@pytest.mark.parametrize("name", NAMES)
def test_fp32_matches_transformers(built, name):
    """Token-identical greedy decoding and logits within rounding, whole and chunked prefill, ragged decode."""
    f = built[name][1].graphs["decoder"].variants["cpu-fp32"].parity
    assert f["greedy_identical"] and f["greedy_matching_prefix"] == f["greedy_tokens"] == 32
    bound = parity.FP32_REL * f["logit_scale"]
    for key in ("prefill_logits_max_abs_err", "chunked_prefill_logits_max_abs_err", "forced_logits_max_abs_err"):
        assert f[key] <= bound, key
    for variant in ("portable-fp32", "cpu-fp32"):
        v = built[name][1].graphs["vision"].variants[variant].parity
        assert v["feature_max_abs_err"] <= parity.FP32_REL * v["feature_scale"]


@pytest.mark.parametrize("name", NAMES)
def test_quantized_figures_recorded_with_their_bounds(built, name):
    variants = built[name][1].graphs["decoder"].variants
    for variant, precision in (("cpu-int8", "int8"), ("cpu-int4", "int4")):
        v = variants[variant]
        assert v.precision == precision
        assert ("forced_logits_rms_err_over_std", "max", parity.NOISE_REL[precision]) in parity.bounds(precision,
                                                                                                        v.parity)
        assert v.parity["forced_logits_rms_err_over_std"] <= parity.NOISE_REL[precision]
    assert variants["cpu-int8"].parity["top1_gated"]  # enough decisive contexts at int8's noise level
    assert variants["cpu-int8"].parity["top1_agreement"] >= parity.QUANT_MIN_TOP1


def _nodes(out, m, graph, variant):
    return onnx.load(out / m.graphs[graph].variants[variant].file).graph.node


@pytest.mark.parametrize("name", NAMES)
def test_graph_structure(built, name, request):
    out, info = built[name]
    ck = read_checkpoint(request.getfixturevalue(name.replace("-", "_")))
    names = info.graphs["decoder"].input_names()
    assert names[:3] == ["inputs_embeds", "seqlens_k", "total_sequence_length"] and "position_ids" not in names
    gqa = [n for n in _nodes(out, info, "decoder", "cpu-fp32") if n.op_type == "GroupQueryAttention"]
    assert len(gqa) == ck.text.layers
    attrs = {a.name: a.i for a in gqa[0].attribute}
    assert attrs["do_rotary"] == 1 and attrs["kv_num_heads"] == 2 and attrs["num_heads"] == 4
    int4 = [n for n in _nodes(out, info, "decoder", "cpu-int4") if n.op_type == "MatMulNBits"]
    assert int4 and all({a.name: a.i for a in n.attribute}["bits"] == 4 for n in int4)
    assert all(n.domain in ("", "ai.onnx") for v in ("portable-fp32", "portable-fp16")
               for n in _nodes(out, info, "vision", v))  # TensorRT parses no contrib op
    fused = [n for n in _nodes(out, info, "vision", "cpu-fp32") if n.op_type == "Attention"]
    assert len(fused) == ck.vision.layers
    assert info.graphs["vision"].outputs[0].shape == ["batch", 16, 64]


def test_gate_fails_a_wrong_rotary(siglip_qwen2):
    """A decoder whose rotary caches come from another theta: each figure that sees it is past its bound."""
    ck = read_checkpoint(siglip_qwen2)
    w = load_weights(ck)
    ref = Reference(ck)
    wrong = read_checkpoint(siglip_qwen2)
    object.__setattr__(wrong.text, "rope_theta", 500.0)
    figures = parity.decoder_figures(ck, parity.Inputs(ref), build_decoder(wrong, w).SerializeToString(), "fp32")
    with pytest.raises(parity.ParityError, match="decoder cpu-fp32: prefill_logits_max_abs_err"):
        parity.check("decoder", "cpu-fp32", "fp32", figures)


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}


@pytest.mark.parametrize("variant", [
    dict(rope_parameters=LLAMA3_ROPE),
    dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}),
    dict(vision_feature_layer=[-3, -1], vision_feature_select_strategy="full"),
], ids=["llama3-rope", "linear-rope", "feature-layer-list"])
def test_supported_options_match_transformers(tmp_path, variant):
    """Each supported rope kind and a list of feature layers: fp32 graphs match transformers on the checkpoint."""
    from dataclasses import replace

    from graphs.families.llava.synthetic import SPECS, write_checkpoint
    from graphs.families.llava.vision_graph import build_vision

    spec = SPECS["clip-llama"]
    rope = {k: v for k, v in variant.items() if k == "rope_parameters"}
    spec = replace(spec, text={**spec.text, **rope}, **{k: v for k, v in variant.items() if k not in rope})
    ck_dir = write_checkpoint(tmp_path / "ckpt", spec)
    ck = read_checkpoint(ck_dir)
    w = load_weights(ck)
    ref = Reference(ck)
    if rope:
        assert ck.text.rope_scaling["rope_type"] == rope["rope_parameters"]["rope_type"]
        figures = parity.decoder_figures(ck, parity.Inputs(ref), build_decoder(ck, w).SerializeToString(), "fp32")
    else:
        assert ck.vision.feature_layers == (1, 3)  # -3 and -1 of hidden_states[0..3]
        figures = parity.vision_figures(ref, build_vision(ck, w, "cpu").SerializeToString())
    parity.check("test", "fp32", "fp32", figures)


def test_model_checkpoint_is_built_once_into_the_cache_keyed_by_content(clip_llama, tmp_path):
    """`model.checkpoint` in the app args: built into cache_dir on first start, found again by content."""
    from serve_app.artifacts import ModelSource, resolve_model

    first = resolve_model(ModelSource(checkpoint=str(clip_llama), cache_dir=str(tmp_path / "cache")))
    assert first.parent == tmp_path / "cache" and first.name.startswith("clip-llama-")
    assert Manifest.read(first).family == "llava"
    built_at = (first / "manifest.json").stat().st_mtime_ns
    moved = tmp_path / "elsewhere" / "clip-llama"
    shutil.copytree(clip_llama, moved)  # the same files at another path: the same cache entry, no rebuild
    assert resolve_model(ModelSource(checkpoint=str(moved), cache_dir=str(tmp_path / "cache"))) == first
    assert (first / "manifest.json").stat().st_mtime_ns == built_at
