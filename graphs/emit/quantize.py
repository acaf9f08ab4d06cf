"""int8 weights, emitted directly by the graph builder (no post-hoc quantize_dynamic pass). Two schemes:

`Int8Weights` (vision and decoder `cpu-int8`): symmetric 8-bit weights (stored as uint8, below), one scale per
output column (per-channel keeps the small columns of random or trained weights from being rounded to zero by one
large column); activations quantized per tensor at run time to uint8 by the op itself.

    x (float) -> DynamicQuantizeMatMul(W int8, scale per column, bias) -> y (float)

One activation scale per tensor couples the rows of a batch: in a decode step, one sequence's large activation
coarsens every other's, so a seeded or greedy request can come out differently under load.

`BlockInt4Weights` (LLaVA decoder `cpu-int4`): ONNX Runtime GenAI's CPU recipe, 4-bit symmetric weights in blocks
of 32 along K, MatMulNBits with accuracy_level 4 (activations quantized per row and block to int8 at run time).
Half the weight bytes of int8, which is what a memory-bound decode step at batch 1 pays for.

`BlockInt8Weights` (decoder `cpu-int8-rowwise`): 8-bit weights in blocks of 32 along K, one scale per block;
MatMulNBits quantizes each activation row per block at run time and multiplies in int8 (accuracy_level 4). No scale
is shared between rows, so a sequence's logits are bit-identical whatever else shares its step. The price, measured
on the reference decoder with 1 thread against `cpu-int8`: a decode step about 15% slower at batch 1 and 8, 25% at
batch 32, and a 228-token prefill 75% slower (MLAS's kernel behind MatMulNBits is tuned for one row; at 32 rows and
more it runs at a third of the u8s8 GEMM's speed here). Hence a variant to choose, not the default.

    x (float) -> MatMulNBits(W 8-bit blocks, scale per block, bias) -> y (float)
"""

from __future__ import annotations

import numpy as np

from graphs.emit.onnx_ops import MS_DOMAIN, GraphBuilder


# The int8 weights are stored as uint8 with zero point 128 (the same 8-bit values, shifted), which makes MLAS run its
# u8u8 GEMM. Why not int8 (u8s8): without VNNI (AVX2, or AVX-512 without VNNI) MLAS's u8s8 kernel adds pairs of
# u8*s8 products in a saturating int16 (vpmaddubsw) and 255*127*2 > 32767 clips; its u8u8 kernel widens to int16
# first and never clips. The artifacts are built once and served on whatever CPU a node has, so they must be exact on
# every kernel path (docs/performance.md has the figures). ORT's own answer, quantize_dynamic's reduce_range (7-bit
# weights), halves the weights' resolution and failed the decoder's top-1 gate on the reference preset.
WEIGHT_ZERO_POINT = 128


def as_uint8(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights (in, out) -> (uint8 weights q + 128, zero points (out,) uint8 128) for the u8u8 kernel."""
    return (q.astype(np.int16) + WEIGHT_ZERO_POINT).astype(np.uint8), np.full(q.shape[1], WEIGHT_ZERO_POINT, np.uint8)


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
        qu, zp = as_uint8(q)
        ins = [x, g.const(f"{name}.weight_uint8", qu), g.const(f"{name}.weight_scale", scale),
               g.const(f"{name}.weight_zero_point", zp)]
        if bias is not None:
            ins.append(g.weight(f"{name}.bias", bias))
        return g.op("DynamicQuantizeMatMul", ins, f"{name}/DynamicQuantizeMatMul", domain=MS_DOMAIN)

    def attention(self, g: GraphBuilder, x: str, w: np.ndarray, b: np.ndarray, heads: int, name: str) -> str:
        """x quantized once, three int8 GEMMs (q, k, v), then fp32 MultiHeadAttention.

            x -> DynamicQuantizeLinear -> MatMulIntegerToFloat x3 (q, k, v; bias folded) -> MultiHeadAttention
        Why not QAttention: on (8,196,384) it took 18 ms against 8.8 ms for this form (measured, 2 threads); and
        separate q/k/v GEMMs avoid splitting a packed (B,P,3D) tensor, which the CPU MultiHeadAttention cannot take.
        """
        xq, x_scale, x_zp = g.node("DynamicQuantizeLinear", [x], f"{name}/DynamicQuantizeLinear", n_out=3)
        d = w.shape[0]
        qkv = []
        for i, part in enumerate("qkv"):
            q, scale = quantize_per_column(w[:, i * d:(i + 1) * d])
            qu, zp = as_uint8(q)
            pname = f"{name}/{part}_proj"
            ins = [xq, g.const(f"{pname}.weight_uint8", qu), x_scale, g.const(f"{pname}.weight_scale", scale), x_zp,
                   g.const(f"{pname}.weight_zero_point", zp),
                   g.weight(f"{pname}.bias", b[i * d:(i + 1) * d])]
            qkv.append(g.op("MatMulIntegerToFloat", ins, f"{pname}/MatMulIntegerToFloat", domain=MS_DOMAIN))
        return g.op("MultiHeadAttention", qkv, f"{name}/MultiHeadAttention", domain=MS_DOMAIN, num_heads=heads)


BLOCK = 32  # MatMulNBits block length along K: 32 keeps per-block scales fine and the int8 kernel on its fast path


def _column_blocks(w: np.ndarray, block: int) -> np.ndarray:
    """w (K, N) -> (N, K/block, block): each column's K split into blocks, K zero-padded to whole blocks (padding
    contributes nothing to the dot product)."""
    k, n = w.shape
    blocks = -(-k // block)
    padded = np.zeros((blocks * block, n), np.float32)
    padded[:k] = w
    return padded.T.reshape(n, blocks, block)


def quantize_blocks(w: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """w (K, N) float -> MatMulNBits' 8-bit layout: (N, K/block, block) uint8 holding q + 128, scales (N*K/block,).

    Symmetric: q = round(w / scale) in [-127, 127] with scale = max|w| / 127 per (column, block); stored with the
    op's default zero point 128.
    """
    cols = _column_blocks(w, block)
    amax = np.abs(cols).max(axis=2)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)  # (N, blocks)
    q = np.clip(np.rint(cols / scale[:, :, None]), -127, 127).astype(np.int16) + 128
    return q.astype(np.uint8), scale.reshape(-1)


def quantize_blocks_int4(w: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """w (K, N) float -> MatMulNBits' 4-bit layout: (N, K/block, block/2) uint8, two values a byte (the even index in
    the low nibble), each q + 8 with q = round(w / scale) in [-8, 7], scale = max|w| / 7 per (column, block).

    max|w| / 7 rather than / 8: the largest weight of a block keeps its sign and magnitude exactly, at the price of
    never using code -8 (the op's default zero point 8 is kept, so no zero-point tensor is stored).
    """
    cols = _column_blocks(w, block)
    amax = np.abs(cols).max(axis=2)
    scale = np.where(amax > 0, amax / 7.0, 1.0).astype(np.float32)  # (N, blocks)
    q = (np.clip(np.rint(cols / scale[:, :, None]), -8, 7).astype(np.int16) + 8).astype(np.uint8)
    packed = q[:, :, 0::2] | (q[:, :, 1::2] << 4)  # (N, blocks, block/2)
    return packed, scale.reshape(-1)


class BlockWeights:
    """MatMulNBits with `bits`-bit symmetric blocks of BLOCK and accuracy_level 4 (module doc): activations are
    quantized per row, so rows never interact."""

    bits = 8
    quantize = staticmethod(quantize_blocks)

    def matmul(self, g: GraphBuilder, x: str, w: np.ndarray, name: str, bias: np.ndarray | None) -> str:
        packed, scales = self.quantize(w)
        ins = [x, g.const(f"{name}.weight_blocks", packed), g.const(f"{name}.weight_scales", scales)]
        if bias is not None:  # inputs 3-4 (zero points, g_idx) stay default: symmetric, no reordering
            ins += ["", "", g.weight(f"{name}.bias", bias)]
        k, n = w.shape
        return g.op("MatMulNBits", ins, f"{name}/MatMulNBits", domain=MS_DOMAIN, K=k, N=n, bits=self.bits,
                    block_size=BLOCK, accuracy_level=4)


class BlockInt8Weights(BlockWeights):
    """8-bit blocks (decoder `cpu-int8-rowwise`)."""


class BlockInt4Weights(BlockWeights):
    """4-bit blocks (LLaVA decoder `cpu-int4`, ONNX Runtime GenAI's CPU recipe)."""

    bits = 4
    quantize = staticmethod(quantize_blocks_int4)
