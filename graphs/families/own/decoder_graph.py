"""The decoder as ONNX for the CPU EP: GroupQueryAttention over a preallocated per-slot KV cache.

Why GroupQueryAttention: with past_key/present_key bound to one buffer (slots, nh, max_cache, hs) it writes the new
keys in place and reads each row up to its own `seqlens_k`, so a decode step over rows of different lengths costs no
cache copy (the standard recipe's exported decoder spent 3.1 of 5.2 ms per step concatenating the cache).
Positions are learned and added before the blocks, so GQA runs without rotary embedding.

    inputs_embeds (B,S,D) + Gather(wpe, position_ids)
      -> [ln1 -> MatMul+Add qkv (B,S,3D) -> GroupQueryAttention(past/present.i) -> MatMul out
          -> SkipLN(+res,+bias) -> MatMul fc -> FastGelu(+bias) -> MatMul proj] x L
      -> (last block only: Slice the last position before its MLP, so a prefill pays one row of MLP + LM head)
      -> SkipLN (final LN) -> MatMul lm_head (B,1,V) -> Reshape -> logits (B,V)
"""

from __future__ import annotations

import numpy as np

from graphs.emit import kv_quant
from graphs.emit.onnx_ops import MS_DOMAIN, GraphBuilder, torch_linear, torch_ln

INT64_MAX = np.iinfo(np.int64).max


def skip_layer_norm(g: GraphBuilder, x: str, skip: str, ln, bias: np.ndarray | None, eps: float,
                    name: str) -> tuple[str, str]:
    """SkipLayerNormalization: LN(x + skip + bias); returns (normalized, the sum = the new residual stream)."""
    gamma, beta = torch_ln(ln)
    ins = [x, skip, g.weight(f"{name}.weight", gamma), g.weight(f"{name}.bias", beta)]
    if bias is not None:
        ins.append(g.weight(f"{name}.skip_bias", bias))
    outs = [f"{name}/output_0", "", "", f"{name}/output_3"]
    g.node("SkipLayerNormalization", ins, f"{name}/SkipLayerNorm", outputs=outs, domain=MS_DOMAIN, epsilon=eps)
    return outs[0], outs[3]


def _io(g: GraphBuilder, cfg, kv_cache=None) -> list[tuple[str, str]]:
    """Declare graph inputs/outputs; returns (past_key, past_value) names per layer. A quantized cache (kv_cache,
    graphs.emit.kv_quant.KvCacheQuant) is int8, or uint8 holding two 4-bit values (last dim hs/2)."""
    d = cfg.decoder
    cache_dtype = np.float32 if kv_cache is None else kv_cache.dtype
    last = d.head_dim if kv_cache is None else kv_cache.cache_last_dim(d.head_dim)
    g.input("inputs_embeds", np.float32, ["batch", "seq", d.width])
    g.input("position_ids", np.int64, ["batch", "seq"])
    g.input("seqlens_k", np.int32, ["batch"])
    g.input("total_sequence_length", np.int32, [])
    cache_shape = ["batch", d.heads, "max_cache", last]
    past = []
    for i in range(d.layers):
        past.append((g.input(f"past_key.{i}", cache_dtype, cache_shape),
                     g.input(f"past_value.{i}", cache_dtype, cache_shape)))
    g.output("logits", np.float32, ["batch", d.vocab_size])
    for i in range(d.layers):
        g.output(f"present_key.{i}", cache_dtype, cache_shape)
        g.output(f"present_value.{i}", cache_dtype, cache_shape)
    return past


def _kv_quant(g: GraphBuilder, kv_cache, heads: int, layer: int, name: str) -> tuple[list[str], dict]:
    """GroupQueryAttention's optional inputs after seqlens_k/total_sequence_length up to v_scale (cos_cache,
    sin_cache, position_ids, attention_bias, head_sink unused), and its cache attributes; nothing for fp32."""
    if kv_cache is None:
        return [], {}
    k, v, attrs = kv_quant.gqa_inputs(g, kv_cache, heads, layer, name)
    return ["", "", "", "", "", k, v], attrs


def _attention(g: GraphBuilder, h: str, attn, heads: int, layer: int, past: tuple[str, str], kv_cache=None) -> str:
    """Packed QKV -> GroupQueryAttention writing present_key/value.{layer} (bound by callers to the past buffer)."""
    name = f"/decoder/layers.{layer}/attn"
    w, b = torch_linear(attn.qkv)
    qkv = g.matmul(h, w, f"{name}/qkv", bias=b)  # (B,S,3D)
    outs = [f"{name}/GroupQueryAttention/output_0", f"present_key.{layer}", f"present_value.{layer}"]
    quant_ins, quant_attrs = _kv_quant(g, kv_cache, heads, layer, name)
    g.node("GroupQueryAttention", [qkv, "", "", past[0], past[1], "seqlens_k", "total_sequence_length", *quant_ins],
           f"{name}/GroupQueryAttention", outputs=outs, domain=MS_DOMAIN, num_heads=heads, kv_num_heads=heads,
           **quant_attrs)
    wo, _ = torch_linear(attn.out)
    return g.matmul(outs[0], wo, f"{name}/out")  # (B,S,D), bias added by the SkipLN that follows


def _last_position(g: GraphBuilder, x: str, name: str) -> str:
    """(B,S,D) -> (B,1,D): every row's last position (rows of one call share S: prefill is batch 1, decode S=1)."""
    bounds = [g.ints("last.starts", [-1]), g.ints("last.ends", [INT64_MAX]), g.ints("last.axes", [1])]
    return g.op("Slice", [x, *bounds], f"{name}/Slice")


def build_decoder(model, quantize=None, kv_cache=None):
    """The decoder ModelProto (contrib ops, CPU EP); `quantize` (graphs.emit.quantize) makes its weights int8,
    `kv_cache` (graphs.emit.kv_quant.KvCacheQuant) its KV cache int8 or 4-bit with static per-channel scales."""
    dec, eps = model.decoder, model.cfg.layer_norm_eps
    g = GraphBuilder("decoder_cpu")
    g.quantize = quantize
    past = _io(g, model.cfg, kv_cache)
    wpe = g.weight("/decoder/wpe.weight", dec.wpe.weight.detach().numpy())
    pos = g.op("Gather", [wpe, "position_ids"], "/decoder/wpe/Gather", axis=0)  # (B,S,D)
    res = g.op("Add", ["inputs_embeds", pos], "/decoder/embed/Add")
    m, m_bias = None, None
    last = len(dec.blocks) - 1
    for i, blk in enumerate(dec.blocks):
        name = f"/decoder/layers.{i}"
        if m is None:
            h = g.layer_norm(res, blk.ln1.weight.detach().numpy(), blk.ln1.bias.detach().numpy(), eps, f"{name}/ln1")
        else:
            h, res = skip_layer_norm(g, m, res, blk.ln1, m_bias, eps, f"{name}/ln1")
        a = _attention(g, h, blk.attn, dec.cfg.heads, i, past[i], kv_cache)
        if i == last:  # only the last position feeds the LM head; the KV of every position is already written
            a, res = _last_position(g, a, f"{name}/attn/last"), _last_position(g, res, f"{name}/residual/last")
        _, bo = torch_linear(blk.attn.out)
        h, res = skip_layer_norm(g, a, res, blk.ln2, bo, eps, f"{name}/ln2")
        wf, bf = torch_linear(blk.fc)
        h = g.op("FastGelu", [g.matmul(h, wf, f"{name}/mlp/fc"), g.weight(f"{name}/mlp/fc.bias", bf)],
                 f"{name}/mlp/FastGelu", domain=MS_DOMAIN)
        wp, m_bias = torch_linear(blk.proj)
        m = g.matmul(h, wp, f"{name}/mlp/proj")
    h, _ = skip_layer_norm(g, m, res, dec.ln, m_bias, eps, "/decoder/ln")  # (B,1,D)
    wl, _ = torch_linear(dec.lm_head)
    logits = g.matmul(h, wl, "/decoder/lm_head")  # (B,1,V)
    g.node("Reshape", [logits, g.ints("logits.shape", [0, dec.cfg.vocab_size])], "/decoder/logits/Reshape",
           outputs=["logits"])
    return g.model(contrib=True)
