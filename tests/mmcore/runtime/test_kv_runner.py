"""The one KV runner takes every name and cache dimension from the manifest's decoder spec: a decoder without a
`position_ids` input (rotary positions) and with fewer KV heads than query heads runs without any change to it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from graphs.emit.onnx_ops import IR_VERSION
from mmcore.manifest import DecoderIO, DecoderSpec, Positions, TensorSpec
from mmcore.runtime.kv_runner import OrtDecoderRunner

D, V, KV, HS = 4, 6, 1, 3  # width, vocab, kv heads, head size


def rotary_like_graph() -> bytes:
    """logits = mean over seq of inputs_embeds @ W (B,V); present = past (the cache passes through in place).
    Names follow another family's convention; there is no position_ids input."""
    f = TensorProto.FLOAT
    cache = ["batch", KV, "max_cache", HS]
    inputs = [helper.make_tensor_value_info("embeds", f, ["batch", "seq", D]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
              helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
              helper.make_tensor_value_info("past.0.k", f, cache), helper.make_tensor_value_info("past.0.v", f, cache)]
    outputs = [helper.make_tensor_value_info("next_logits", f, ["batch", V]),
               helper.make_tensor_value_info("present.0.k", f, cache),
               helper.make_tensor_value_info("present.0.v", f, cache)]
    w = np.arange(D * V, dtype=np.float32).reshape(D, V) / 10
    nodes = [helper.make_node("ReduceMean", ["embeds", "axes"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w"], ["next_logits"]),
             helper.make_node("Identity", ["past.0.k"], ["present.0.k"]),
             helper.make_node("Identity", ["past.0.v"], ["present.0.v"])]
    graph = helper.make_graph(nodes, "rotary_like", inputs, outputs,
                              [helper.make_tensor("w", f, [D, V], w.ravel()),
                               helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = IR_VERSION
    return model.SerializeToString()


SPEC = DecoderSpec(layers=1, heads=2, kv_heads=KV, head_dim=HS, hidden_size=D, vocab_size=V, max_positions=16,
                   positions=Positions(scheme="rotary", theta=10000.0), eos_token_ids=[0, 5],
                   embeddings=TensorSpec(name="e.npy", dtype="float32", shape=[V, D]),
                   io=DecoderIO(inputs_embeds="embeds", position_ids=None, logits="next_logits",
                                past_key="past.{i}.k", past_value="past.{i}.v", present_key="present.{i}.k",
                                present_value="present.{i}.v"))


def test_a_decoder_without_position_ids_and_with_grouped_kv_runs_from_its_spec():
    runner = OrtDecoderRunner(ort.InferenceSession(rotary_like_graph(), providers=["CPUExecutionProvider"]), SPEC,
                              slots=2, max_context=8)
    w = np.arange(D * V, dtype=np.float32).reshape(D, V) / 10
    x = np.random.default_rng(0).standard_normal((3, D)).astype(np.float32)
    np.testing.assert_allclose(runner.prefill(1, x), x.mean(0) @ w, rtol=1e-5)
    step = np.ones((2, D), np.float32)
    np.testing.assert_allclose(runner.decode(2, step, np.array([3, 1])), step @ w, rtol=1e-5)
    assert [a.shape for a in runner._host[0]] == [(3, KV, 8, HS)]  # (slots+1, kv_heads, max_context, head_dim)
