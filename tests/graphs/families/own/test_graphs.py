"""The emitted graphs themselves: op domains per EP, fusions in every layer, I/O contract, the cache contract."""

import numpy as np
import onnx
import pytest
import torch

from graphs.families.own.config import PRESETS
from graphs.families.own.model import MultimodalModel, patchify
from graphs.emit.onnx_ops import IR_VERSION, MS_DOMAIN
from mmcore.runtime.kv_runner import OrtDecoderRunner
from mmcore.runtime.ort_session import cpu_session
from graphs.families.own.vision_graph import folded_patch_embedding

TINY = PRESETS["tiny"]


def _load(out, manifest, graph, variant):
    return onnx.load(str(out / manifest.graphs[graph].variants[variant].file))


def _ops(model):
    return [(n.domain or "ai.onnx", n.op_type) for n in model.graph.node]


def test_portable_variants_use_only_standard_ops_and_take_any_batch(tiny_artifacts):
    out, manifest = tiny_artifacts
    rng = np.random.default_rng(0)
    for name in ("portable-fp32", "portable-fp16"):
        model = _load(out, manifest, "vision", name)
        assert all(domain == "ai.onnx" for domain, _ in _ops(model)), name
        assert [o.domain for o in model.opset_import] == [""]
        sess = cpu_session(str(out / manifest.graphs["vision"].variants[name].file))
        for batch in (1, 3):
            pixels = rng.integers(0, 256, (batch, 3, 32, 32), dtype=np.uint8)
            feats = sess.run(None, {"pixels": pixels})[0]
            assert feats.shape == (batch, TINY.num_image_tokens, TINY.decoder.width) and feats.dtype == np.float32


def test_portable_shapes_infer_strictly_with_a_symbolic_batch(tiny_artifacts):
    """TensorRT builds its engine from inferred shapes: every tensor must infer, batch staying symbolic."""
    out, manifest = tiny_artifacts
    for name in ("portable-fp32", "portable-fp16"):
        model = onnx.shape_inference.infer_shapes(_load(out, manifest, "vision", name), check_type=True,
                                                  strict_mode=True, data_prop=True)
        dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
                for v in model.graph.value_info}
        assert len(dims) >= len(model.graph.node) - 1
        assert dims["/vision/layers.0/attn/scores/MatMul/output_0"] == ["batch", TINY.vision.heads, 16, 16]


def test_fp16_variant_stores_fp16_weights_behind_uint8_in_float32_out(tiny_artifacts):
    out, manifest = tiny_artifacts
    model = _load(out, manifest, "vision", "portable-fp16")
    floats = [t.data_type for t in model.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT,
                                                                              onnx.TensorProto.FLOAT16)]
    assert floats and set(floats) == {onnx.TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_cpu_variants_fuse_attention_and_gelu_in_every_layer(tiny_artifacts):
    _, manifest = tiny_artifacts
    v_layers, d_layers = TINY.vision.layers, TINY.decoder.layers
    vision = manifest.graphs["vision"].variants
    assert vision["cpu-fp32"].fusions["Attention"] == v_layers
    assert vision["cpu-int8"].fusions["MultiHeadAttention"] == v_layers
    assert vision["cpu-fp32"].fusions["BiasGelu"] == v_layers
    assert vision["cpu-int8"].fusions["Gelu"] == v_layers
    for v in manifest.graphs["decoder"].variants.values():
        assert v.fusions["GroupQueryAttention"] == d_layers
        assert v.fusions["FastGelu"] == d_layers
        assert v.fusions["SkipLayerNormalization"] == 2 * d_layers  # every residual add but the embedding's


def test_int8_variants_hold_int8_weights_and_no_fp32_weight_matmul(tiny_artifacts):
    out, manifest = tiny_artifacts
    for graph in ("vision", "decoder"):
        model = _load(out, manifest, graph, "cpu-int8")
        assert "MatMul" not in [op for _, op in _ops(model)], graph  # every weight GEMM is integer
        # int8 per-column weights (vision) or MatMulNBits' uint8 blocks (decoder), against the float tables left
        int8 = [t for t in model.graph.initializer if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
                and len(t.dims) >= 2]
        floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2
                  and t.dims[0] > 1]
        assert sum(int(np.prod(t.dims)) for t in int8) > 0.9 * sum(int(np.prod(t.dims)) for t in floats + int8)


def test_graphs_load_on_ort_1_31_and_have_no_conv(tiny_artifacts):
    out, manifest = tiny_artifacts
    for graph, entry in manifest.graphs.items():
        for name, v in entry.variants.items():
            model = onnx.load(str(out / v.file))
            assert model.ir_version == IR_VERSION <= 10, (graph, name)
            assert not any("Conv" in op for _, op in _ops(model)), (graph, name)
            if v.providers == ["CPUExecutionProvider"]:
                assert any(domain == MS_DOMAIN for domain, _ in _ops(model)), (graph, name)


def test_folded_normalization_equals_normalize_then_linear():
    model = MultimodalModel.seeded(TINY)
    vision = model.vision
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    w, b = folded_patch_embedding(vision)
    got = patchify(pixels.double(), 8).numpy() @ w.astype(np.float64) + b
    with torch.no_grad():
        x = (pixels.float() / 255.0 - vision.mean) / vision.std
        want = (vision.patch(patchify(x, 8)) + vision.pos).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_decoder_prefill_writes_the_cache_in_place_and_steps_rows_at_their_own_lengths(tiny_artifacts):
    out, manifest = tiny_artifacts
    model = MultimodalModel.seeded(TINY)
    d = TINY.decoder
    sess = cpu_session(str(out / manifest.graphs["decoder"].variants["cpu-fp32"].file))
    dec = OrtDecoderRunner(sess, manifest.decoder, slots=3, max_context=d.max_positions)
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    wte = model.decoder.wte.weight.detach()
    for slot, ids in enumerate(prompts):
        logits = dec.prefill(slot, wte[ids].numpy())
        assert logits.shape == (d.vocab_size,)
    keys = np.stack(dec._host[0])  # (layers, slots+1, kv, T, hs): the runner's own cache, read in place
    assert np.all(keys[:, 0, :, :5] != 0) and np.all(keys[:, 0, :, 5:] == 0)  # written in place, no more
    assert np.all(keys[:, 1, :, 2:] == 0)
    nxt = [20, 21, 22]
    logits = dec.decode(3, wte[nxt].numpy(), np.array([5, 2, 3]))  # three rows at their own lengths
    with torch.no_grad():
        for row, ids in enumerate(prompts):
            seq = torch.tensor([ids + [nxt[row]]])
            ref = model.decoder(model.embed_prompt(None, seq), torch.arange(seq.shape[1])[None])[0][0, -1]
            np.testing.assert_allclose(logits[row], ref.numpy(), atol=1e-4)


@pytest.mark.parametrize("graph", ["vision", "decoder"])
def test_manifest_io_matches_every_variant(tiny_artifacts, graph):
    out, manifest = tiny_artifacts
    entry = manifest.graphs[graph]
    for v in entry.variants.values():
        model = onnx.load(str(out / v.file))
        assert [i.name for i in model.graph.input] == [t.name for t in entry.inputs]
        assert [o.name for o in model.graph.output] == [t.name for t in entry.outputs]


def test_ort_load_time_optimizer_keeps_every_fusion(tiny_artifacts):
    """The manifest records what ORT makes of each CPU graph at load; our fused nodes must survive it unchanged.

    The portable graphs are for TensorRT and run on the CPU EP only as a last resort; there ORT may merge an Add
    into a LayerNormalization (SkipLayerNormalization), which still leaves every normalization fused.
    """
    _, manifest = tiny_artifacts
    for graph, entry in manifest.graphs.items():
        for name, v in entry.variants.items():
            if "CPUExecutionProvider" not in v.providers:
                assert v.ort_optimized == {}
                continue
            for op, n in v.fusions.items():
                got = v.ort_optimized.get(op, 0)
                if name.startswith("portable") and op == "LayerNormalization":
                    got += v.ort_optimized.get("SkipLayerNormalization", 0)
                assert got == n, (graph, name, op)
