"""The vision encoder as ONNX, emitted from the reference weights in two styles.

`portable`: standard-domain ops only, for TensorRT/CUDA (TensorRT parses nothing from com.microsoft; one contrib node
would fall back to CUDA and split the engine). `cpu`: ORT contrib fusions (Attention or, int8, MultiHeadAttention;
BiasGelu or Gelu) in every layer, for the CPU EP. Both take uint8 pixels and return float32 features whatever the weight
precision, so the serving stage never needs to know which variant it runs.

    pixels (B,3,H,W) uint8
      -> Reshape (B,3,h,p,w,p) -> Transpose (B,h,w,3,p,p) -> Reshape (B,P,3pp) -> Cast
      -> MatMul [normalization folded into W] -> Add [bias + positions]           (B,P,Dv)
      -> [pre-LN block] x L -> LN -> MatMul + Add (projection)                    (B,P,Dd)
"""

from __future__ import annotations

import numpy as np

from graphs.emit.onnx_ops import MS_DOMAIN, NP_TO_ONNX, GraphBuilder, torch_linear, torch_ln


def folded_patch_embedding(vision) -> tuple[np.ndarray, np.ndarray]:
    """Patch Linear with (p/255 - mean)/std folded in: returns W' (3pp, Dv) and bias + positions (P, Dv).

    x_norm[k] = p[k] * s[k] - m[k] with s = 1/(255 std_c), m = mean_c/std_c for k's channel c, so
    x_norm @ W + b = p @ (s[:,None] * W) + (b - m @ W).
    """
    cfg = vision.cfg
    w, b = torch_linear(vision.patch)  # (3pp, Dv), (Dv,)
    per_channel = cfg.patch_size * cfg.patch_size  # patches flatten as (C,p,p): channel is the slowest index
    std = np.repeat(np.asarray(cfg.std, dtype=np.float64), per_channel)
    mean = np.repeat(np.asarray(cfg.mean, dtype=np.float64), per_channel)
    w64 = w.astype(np.float64)
    w_folded = w64 / (255.0 * std)[:, None]
    b_folded = b.astype(np.float64) - ((mean / std)[:, None] * w64).sum(axis=0)  # not BLAS: its threads
    pos = vision.pos.detach().double().numpy()  # (P, Dv)
    return w_folded.astype(np.float32), (b_folded[None, :] + pos).astype(np.float32)


def _patch_embed(g: GraphBuilder, pixels: str, vision, batch_dim: int) -> str:
    cfg = vision.cfg
    p, n = cfg.patch_size, cfg.image_size // cfg.patch_size
    x = g.op("Reshape", [pixels, g.ints("patch.grid_shape", [batch_dim, 3, n, p, n, p])], "/vision/patch/Reshape")
    x = g.op("Transpose", [x], "/vision/patch/Transpose", perm=[0, 2, 4, 1, 3, 5])  # (B,h,w,3,p,p), still uint8
    x = g.op("Reshape", [x, g.ints("patch.flat_shape", [batch_dim, cfg.num_patches, cfg.patch_dim])], "/vision/patch/Flat")
    x = g.op("Cast", [x], "/vision/patch/Cast", to=NP_TO_ONNX[g.float_dtype])  # (B,P,3pp)
    w, b = folded_patch_embedding(vision)
    return g.matmul(x, w, "/vision/patch", bias=b)  # (B,P,Dv)


def _portable_attention(g: GraphBuilder, x: str, attn, heads: int, name: str) -> str:
    """Standard-op attention; 1/sqrt(hs) is folded into the query weights.

        x -> q,k,v MatMul+Add -> Reshape (B,P,nh,hs) -> Transpose: q (B,nh,P,hs), kT (B,nh,hs,P), v (B,nh,P,hs)
          -> MatMul(q,kT) -> Softmax -> MatMul(.,v) -> Transpose -> Reshape (B,P,D) -> MatMul+Add (out)
    """
    w, b = torch_linear(attn.qkv)  # (D,3D), (3D,)
    d = w.shape[0]
    hs = d // heads
    scale = 1.0 / np.sqrt(hs)
    split = g.ints(f"{name}.head_shape", [0, 0, heads, hs])
    perms = {"q": [0, 2, 1, 3], "k": [0, 2, 3, 1], "v": [0, 2, 1, 3]}
    heads_out = {}
    for i, part in enumerate("qkv"):
        s = scale if part == "q" else 1.0
        y = g.matmul(x, w[:, i * d:(i + 1) * d] * s, f"{name}/{part}_proj", bias=b[i * d:(i + 1) * d] * s)
        y = g.op("Reshape", [y, split], f"{name}/{part}_proj/Reshape")
        heads_out[part] = g.op("Transpose", [y], f"{name}/{part}_proj/Transpose", perm=perms[part])
    scores = g.op("MatMul", [heads_out["q"], heads_out["k"]], f"{name}/scores/MatMul")  # (B,nh,P,P)
    probs = g.op("Softmax", [scores], f"{name}/Softmax", axis=-1)
    y = g.op("MatMul", [probs, heads_out["v"]], f"{name}/context/MatMul")  # (B,nh,P,hs)
    y = g.op("Transpose", [y], f"{name}/context/Transpose", perm=[0, 2, 1, 3])
    y = g.op("Reshape", [y, g.ints(f"{name}.merge_shape", [0, 0, d])], f"{name}/context/Reshape")  # (B,P,D)
    wo, bo = torch_linear(attn.out)
    return g.matmul(y, wo, f"{name}/out", bias=bo)


def _portable_gelu(g: GraphBuilder, x: str, name: str) -> str:
    """Exact GELU from standard ops: x * 0.5 * (1 + erf(x / sqrt 2)); TensorRT fuses this pattern."""
    half, one = g.weight(f"{name}.half", np.array(0.5)), g.weight(f"{name}.one", np.array(1.0))
    rsqrt2 = g.weight(f"{name}.rsqrt2", np.array(1.0 / np.sqrt(2.0)))
    e = g.op("Erf", [g.op("Mul", [x, rsqrt2], f"{name}/Mul_scale")], f"{name}/Erf")
    e = g.op("Mul", [g.op("Add", [e, one], f"{name}/Add_one"), half], f"{name}/Mul_half")
    return g.op("Mul", [x, e], f"{name}/Mul")


def _portable_block(g: GraphBuilder, x: str, blk, heads: int, eps: float, name: str) -> str:
    h = g.layer_norm(x, *torch_ln(blk.ln1), eps, f"{name}/ln1")
    x = g.op("Add", [x, _portable_attention(g, h, blk.attn, heads, f"{name}/attn")], f"{name}/attn/residual/Add")
    h = g.layer_norm(x, *torch_ln(blk.ln2), eps, f"{name}/ln2")
    wf, bf = torch_linear(blk.fc)
    wp, bp = torch_linear(blk.proj)
    h = g.matmul(_portable_gelu(g, g.matmul(h, wf, f"{name}/mlp/fc", bias=bf), f"{name}/mlp/gelu"),
                 wp, f"{name}/mlp/proj", bias=bp)
    return g.op("Add", [x, h], f"{name}/mlp/residual/Add")


def _cpu_attention(g: GraphBuilder, x: str, attn, heads: int, name: str) -> str:
    """com.microsoft Attention: the QKV GEMM, scaling, softmax and context in one node; output (B,P,D) pre-out-proj."""
    w, b = torch_linear(attn.qkv)
    if g.quantize is not None:
        return g.quantize.attention(g, x, w, b, heads, name)
    return g.op("Attention", [x, g.weight(f"{name}/qkv.weight", w), g.weight(f"{name}/qkv.bias", b)],
                f"{name}/Attention", domain=MS_DOMAIN, num_heads=heads)


def _cpu_block(g: GraphBuilder, x: str, blk, heads: int, eps: float, name: str) -> str:
    """A pre-LN block with fused attention and GELU; residual adds stay Add + LayerNormalization.

        x -> LN -> Attention -> MatMul+Add (out) -> Add (residual) -> LN -> MatMul (fc) -> BiasGelu | int8 GEMM
          with bias -> Gelu -> MatMul+Add (proj) -> Add (residual)
    Measured on these dims (ORT 1.31 CPU EP, 2 threads), which is why the obvious fusions are not used here:
    SkipLayerNormalization on (8,196,384) took 1.5 ms against 0.37 ms for Add + LayerNormalization (and ORT does not
    re-fuse the pair on the CPU EP); BiasGelu on (8,196,1536) took 1.5 ms against 0.65 ms for Gelu, so the int8
    graph lets its GEMM add the bias.
    """
    h = g.layer_norm(x, *torch_ln(blk.ln1), eps, f"{name}/ln1")
    wo, bo = torch_linear(blk.attn.out)
    a = g.matmul(_cpu_attention(g, h, blk.attn, heads, f"{name}/attn"), wo, f"{name}/attn/out", bias=bo)
    x = g.op("Add", [x, a], f"{name}/attn/residual/Add")
    h = g.layer_norm(x, *torch_ln(blk.ln2), eps, f"{name}/ln2")
    wf, bf = torch_linear(blk.fc)
    if g.quantize is None:  # ORT fuses MatMul's Add + Gelu into BiasGelu at load anyway: emit what will run
        h = g.op("BiasGelu", [g.matmul(h, wf, f"{name}/mlp/fc"), g.weight(f"{name}/mlp/fc.bias", bf)],
                 f"{name}/mlp/BiasGelu", domain=MS_DOMAIN)
    else:  # the int8 GEMM adds the bias in its epilogue; Gelu alone is 2x faster than BiasGelu
        h = g.op("Gelu", [g.matmul(h, wf, f"{name}/mlp/fc", bias=bf)], f"{name}/mlp/Gelu", domain=MS_DOMAIN)
    wp, bp = torch_linear(blk.proj)
    return g.op("Add", [x, g.matmul(h, wp, f"{name}/mlp/proj", bias=bp)], f"{name}/mlp/residual/Add")


BLOCK_STYLES = {"portable": _portable_block, "cpu": _cpu_block}
# Reshape's batch entry. 0 copies the dim, so shape inference keeps "batch" symbolic through every node: TensorRT
# builds from inferred shapes. -1 leaves the batch unknown to ORT's optimizer, which otherwise fuses the patch Add +
# first LayerNorm into a SkipLayerNormalization, 4x slower on the CPU EP at these dims.
PATCH_BATCH_DIM = {"portable": 0, "cpu": -1}


def build_vision(model, style: str, float_dtype=np.float32, quantize=None):
    """The vision ModelProto for `style` in {"portable", "cpu"}; `quantize` (graphs.emit.quantize) makes it int8."""
    vision, eps = model.vision, model.cfg.layer_norm_eps
    cfg = vision.cfg
    g = GraphBuilder(f"vision_{style}", float_dtype)
    g.quantize = quantize
    pixels = g.input("pixels", np.uint8, ["batch", 3, cfg.image_size, cfg.image_size])
    x = _patch_embed(g, pixels, vision, PATCH_BATCH_DIM[style])
    block = BLOCK_STYLES[style]
    for i, blk in enumerate(vision.blocks):
        x = block(g, x, blk, cfg.heads, eps, f"/vision/layers.{i}")
    x = g.layer_norm(x, *torch_ln(vision.ln), eps, "/vision/ln")
    wp, bp = torch_linear(vision.proj)
    y = g.matmul(x, wp, "/vision/proj", bias=bp)  # (B,P,Dd)
    if g.float_dtype != np.float32:
        y = g.op("Cast", [y], "/vision/output/Cast", to=1)  # float32 out whatever the weight precision
    g.node("Identity", [y], "/vision/output/Identity", outputs=["image_features"])
    g.output("image_features", np.float32, ["batch", cfg.num_patches, model.cfg.decoder.width])
    return g.model(contrib=style != "portable")
