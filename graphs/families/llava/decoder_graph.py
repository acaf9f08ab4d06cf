"""The Llama-style decoder (Llama, Qwen2, Mistral) as ONNX for the CPU EP, over the shared per-slot KV buffer.

I/O contract: today's decoder's, without `position_ids`. GroupQueryAttention with `do_rotary=1` derives every row's
positions from its own `seqlens_k` (past = seqlens_k + 1 - S), so a decode batch with rows of different lengths
and a second prompt chunk into a slot that already holds `start` tokens both rotate at the right positions.

    inputs_embeds (B,S,D)      seqlens_k (B,) int32      total_sequence_length () int32
    past_key.{i} / past_value.{i}  (B,kv_heads,max_cache,head_dim): bound to the same buffer as present_*.{i};
                                   float32, or int8 (uint8 at head_dim/2 for 4 bits) in a quantized-cache variant
    -> logits (B,V) at each row's last position

    x = inputs_embeds
      -> [RMSNorm (layer 0: SimplifiedLayerNormalization; later: SkipSimplifiedLayerNormalization, which also
          adds the previous MLP output into the residual stream)
          -> MatMul (+Add for Qwen2's biases) packed qkv (B,S,(nh+2kvh)*hs)
          -> GroupQueryAttention(do_rotary, cos/sin caches; present_*.i) (B,S,nh*hs) -> MatMul o_proj
          -> SkipSimplifiedLN (+residual) -> MatMul gate|up (B,S,2F) -> Split -> gate*sigmoid(gate)*up
          -> MatMul down] x L
      -> (last layer only: Slice the last position after attention, so a prefill pays one row of MLP + LM head)
      -> SkipSimplifiedLN (final norm) -> MatMul lm_head (B,1,V) -> Reshape -> logits (B,V)
"""

from __future__ import annotations

import numpy as np

from graphs.families.llava.checkpoint import Checkpoint
from graphs.families.llava.rope import cos_sin_cache
from graphs.emit import kv_quant
from graphs.emit.kv_quant import KvCacheQuant
from graphs.emit.onnx_ops import MS_DOMAIN, GraphBuilder

INT64_MAX = np.iinfo(np.int64).max


def _io(g: GraphBuilder, ck: Checkpoint, kv_cache: KvCacheQuant | None) -> None:
    """A quantized cache is int8, or uint8 holding two 4-bit values (last dim head_dim / 2)."""
    t = ck.text
    dtype = np.float32 if kv_cache is None else kv_cache.dtype
    last = t.head_dim if kv_cache is None else kv_cache.cache_last_dim(t.head_dim)
    g.input("inputs_embeds", np.float32, ["batch", "seq", t.hidden])
    g.input("seqlens_k", np.int32, ["batch"])
    g.input("total_sequence_length", np.int32, [])
    cache = ["batch", t.kv_heads, "max_cache", last]
    for i in range(t.layers):
        g.input(f"past_key.{i}", dtype, cache)
        g.input(f"past_value.{i}", dtype, cache)
    g.output("logits", np.float32, ["batch", t.vocab_size])
    for i in range(t.layers):
        g.output(f"present_key.{i}", dtype, cache)
        g.output(f"present_value.{i}", dtype, cache)


def _rms(g: GraphBuilder, x: str, skip: str | None, gamma: np.ndarray, eps: float, name: str) -> tuple[str, str]:
    """-> (RMSNorm(x + skip), x + skip); with no skip, the residual is x itself."""
    gw = g.weight(f"{name}.weight", gamma)
    if skip is None:
        y = g.op("SimplifiedLayerNormalization", [x, gw], f"{name}/SimplifiedLayerNorm", axis=-1, epsilon=eps)
        return y, x
    outs = [f"{name}/output_0", "", "", f"{name}/output_3"]
    g.node("SkipSimplifiedLayerNormalization", [x, skip, gw], f"{name}/SkipSimplifiedLayerNorm", outputs=outs,
           domain=MS_DOMAIN, epsilon=eps)
    return outs[0], outs[3]


def _attention(g: GraphBuilder, ck: Checkpoint, w: dict, h: str, i: int, caches: tuple[str, str],
               kv_cache: KvCacheQuant | None) -> str:
    """Packed QKV -> GroupQueryAttention (rotary inside; with `kv_cache`, the rotated K and V quantized by static
    per-channel scales: inputs 12-13, after the unused position_ids, attention_bias, head_sink) -> o_proj."""
    t, pre, name = ck.text, f"text.layers.{i}.self_attn", f"/decoder/layers.{i}/attn"
    wqkv = np.concatenate([w[f"{pre}.{p}_proj.weight"].T for p in "qkv"], axis=1)  # (D,(nh+2kvh)*hs)
    bqkv = np.concatenate([w[f"{pre}.{p}_proj.bias"] for p in "qkv"]) if t.qkv_bias else None
    qkv = g.matmul(h, wqkv, f"{name}/qkv", bias=bqkv)  # (B,S,(nh+2kvh)*hs)
    outs = [f"{name}/GroupQueryAttention/output_0", f"present_key.{i}", f"present_value.{i}"]
    ins = [qkv, "", "", f"past_key.{i}", f"past_value.{i}", "seqlens_k", "total_sequence_length", *caches]
    attrs = {}
    if kv_cache is not None:
        k_scale, v_scale, attrs = kv_quant.gqa_inputs(g, kv_cache, t.kv_heads, i, name)
        ins += ["", "", "", k_scale, v_scale]
    g.node("GroupQueryAttention", ins, f"{name}/GroupQueryAttention", outputs=outs, domain=MS_DOMAIN,
           num_heads=t.heads, kv_num_heads=t.kv_heads, do_rotary=1, rotary_interleaved=0, **attrs)
    return g.matmul(outs[0], w[f"{pre}.o_proj.weight"].T, f"{name}/o_proj")  # (B,S,D)


def _mlp(g: GraphBuilder, w: dict, h: str, i: int) -> str:
    """SwiGLU with gate and up as one GEMM: (B,S,D) @ (D,2F) -> Split -> silu(gate) * up -> down (B,S,D)."""
    pre, name = f"text.layers.{i}.mlp", f"/decoder/layers.{i}/mlp"
    gate_up = np.concatenate([w[f"{pre}.gate_proj.weight"].T, w[f"{pre}.up_proj.weight"].T], axis=1)
    gu = g.matmul(h, gate_up, f"{name}/gate_up")  # (B,S,2F)
    gate, up = g.node("Split", [gu], f"{name}/Split", n_out=2, axis=-1)  # opset 17: equal halves
    act = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{name}/Sigmoid")], f"{name}/silu/Mul")
    return g.matmul(g.op("Mul", [act, up], f"{name}/gate/Mul"), w[f"{pre}.down_proj.weight"].T, f"{name}/down")


def _last_position(g: GraphBuilder, x: str, name: str) -> str:
    """(B,S,D) -> (B,1,D): rows of one call share S (prefill is batch 1, decode is S=1)."""
    bounds = [g.ints("last.starts", [-1]), g.ints("last.ends", [INT64_MAX]), g.ints("last.axes", [1])]
    return g.op("Slice", [x, *bounds], f"{name}/Slice")


def build_decoder(ck: Checkpoint, w: dict, quantize=None, cache_positions: int | None = None,
                  kv_cache: KvCacheQuant | None = None):
    """The decoder ModelProto; `quantize` (a graphs.emit.quantize scheme) for int8/int4 weights, LM head included;
    `kv_cache` (graphs.emit.kv_quant) for an int8 or 4-bit KV cache with static per-channel scales.

    `cache_positions`: rows of the rotary caches, the most positions a slot can hold (default: the config's
    max_position_embeddings).
    """
    t = ck.text
    g = GraphBuilder("llava_decoder_cpu")
    g.quantize = quantize
    _io(g, ck, kv_cache)
    cos, sin = cos_sin_cache(t, cache_positions or t.max_positions)
    caches = (g.const("/decoder/rotary.cos_cache", cos), g.const("/decoder/rotary.sin_cache", sin))
    x, m = "inputs_embeds", None
    for i in range(t.layers):
        pre, name = f"text.layers.{i}", f"/decoder/layers.{i}"
        h, res = _rms(g, m if m is not None else x, x if m is not None else None,
                      w[f"{pre}.input_layernorm.weight"], t.eps, f"{name}/input_norm")
        a = _attention(g, ck, w, h, i, caches, kv_cache)
        if i == t.layers - 1:  # only the last position feeds the LM head; every position's KV is already written
            a, res = _last_position(g, a, f"{name}/attn/last"), _last_position(g, res, f"{name}/residual/last")
        h, x = _rms(g, a, res, w[f"{pre}.post_attention_layernorm.weight"], t.eps, f"{name}/post_attention_norm")
        m = _mlp(g, w, h, i)
    h, _ = _rms(g, m, x, w["text.norm.weight"], t.eps, "/decoder/norm")  # (B,1,D)
    logits = g.matmul(h, w["lm_head.weight"].T, "/decoder/lm_head")  # (B,1,V)
    g.node("Reshape", [logits, g.ints("logits.shape", [0, t.vocab_size])], "/decoder/logits/Reshape",
           outputs=["logits"])
    return g.model(contrib=True, check=False)
