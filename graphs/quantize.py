"""int8 weights, emitted directly by the graph builder (no post-hoc quantize_dynamic pass).

Weights: symmetric int8, one scale per output column (per-channel keeps the small columns of random or trained
weights from being rounded to zero by one large column). Activations: quantized per tensor at run time to uint8 by
the op itself, which is MLAS's fast u8s8 GEMM path (VNNI on this CPU).

    x (float) -> DynamicQuantizeMatMul(W int8, scale per column, bias) -> y (float)
"""

from __future__ import annotations

import numpy as np

from graphs.onnx_ops import MS_DOMAIN, GraphBuilder


def quantize_per_column(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w (in, out) float -> (int8 (in, out), scale (out,) float32) with w ~= q * scale."""
    amax = np.abs(w).max(axis=0)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, scale


class Int8Weights:
    """A quantization scheme the builder calls for every weight matmul (GraphBuilder.quantize)."""

    def matmul(self, g: GraphBuilder, x: str, w: np.ndarray, name: str, bias: np.ndarray | None) -> str:
        if bias is not None and bias.ndim > 1:  # a (P, D) bias + positions table: the op takes only (out,)
            y = self.matmul(g, x, w, name, None)
            return g.op("Add", [y, g.weight(f"{name}.bias", bias)], f"{name}/Add")
        q, scale = quantize_per_column(w)
        ins = [x, g.const(f"{name}.weight_int8", q), g.const(f"{name}.weight_scale", scale),
               g.const(f"{name}.weight_zero_point", np.zeros_like(q[0]))]
        if bias is not None:
            ins.append(g.weight(f"{name}.bias", bias))
        return g.op("DynamicQuantizeMatMul", ins, f"{name}/DynamicQuantizeMatMul", domain=MS_DOMAIN)

    def attention(self, g: GraphBuilder, x: str, w: np.ndarray, b: np.ndarray, heads: int, name: str) -> str:
        """QAttention: the QKV GEMM in int8 inside the fused attention node; x quantized once just before it.

            x -> DynamicQuantizeLinear -> (x_u8, x_scale, x_zp) -> QAttention(W int8, bias, scales) -> (B,P,D)
        """
        q, scale = quantize_per_column(w)
        xq = g.node("DynamicQuantizeLinear", [x], f"{name}/DynamicQuantizeLinear", n_out=3)
        ins = [xq[0], g.const(f"{name}/qkv.weight_int8", q), g.weight(f"{name}/qkv.bias", b), xq[1],
               g.const(f"{name}/qkv.weight_scale", scale), "", xq[2],
               g.const(f"{name}/qkv.weight_zero_point", np.zeros_like(q[0]))]
        return g.op("QAttention", ins, f"{name}/QAttention", domain=MS_DOMAIN, num_heads=heads)
