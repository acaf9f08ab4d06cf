"""The LLaVA vision tower + projector as ONNX, computed as transformers computes `get_image_features`.

    pixels (B,3,H,W) uint8, already resized/cropped by preprocessing
      -> [Slice to a whole number of patches, as the conv drops the rest, when H is not a multiple of p]
      -> Reshape (B,3,n,p,n,p) -> Transpose (B,n,n,3,p,p) -> Reshape (B,N,3pp) -> Cast
      -> MatMul [rescale, mean/std folded into W and b]                          (B,N,Dv)
      CLIP:   Concat(class token) (B,N+1,Dv) -> Add positions -> pre-LayerNorm    hidden_states[0]
      SigLIP: Add (bias + positions)                                              hidden_states[0]
      -> [LN -> attention -> Add -> LN -> fc1 -> act -> fc2 -> Add] x L'          hidden_states[i]
         (L' = the deepest feature layer: later layers never reach the features, so they are not emitted)
      -> Concat(hidden_states[f] for f in vision_feature_layer) along D           (B,T,Dv*F)
      -> Slice [1:] ("default": drop the first position, the CLS token for CLIP)  (B,P,Dv*F)
      -> linear_1 -> projector act -> linear_2 -> image_features                  (B,P,Dt)

Styles: `portable` (standard ops only, for TensorRT/CUDA; fp32 or fp16 weights) and `cpu` (com.microsoft
Attention or, int8, MatMulIntegerToFloat + MultiHeadAttention, and the contrib GELU kernels in every layer).
Both always output float32 features.
"""

from __future__ import annotations

import numpy as np

from graphs.families.llava.activations import activation
from graphs.families.llava.checkpoint import Checkpoint
from graphs.emit.onnx_ops import MS_DOMAIN, NP_TO_ONNX, GraphBuilder

INT64_MAX = np.iinfo(np.int64).max
# Reshape's batch entry: 0 keeps "batch" symbolic for TensorRT's shape inference; -1 keeps ORT's CPU optimizer from
# fusing the embedding Add + first LayerNorm into a (slower on the CPU EP) SkipLayerNormalization.
PATCH_BATCH_DIM = {"portable": 0, "cpu": -1}


def linear(w: dict, prefix: str) -> tuple[np.ndarray, np.ndarray | None]:
    """nn.Linear `prefix` -> (weight as (in, out), bias or None)."""
    return w[f"{prefix}.weight"].T.copy(), w.get(f"{prefix}.bias")


def folded_patch_embedding(ck: Checkpoint, w: dict) -> tuple[np.ndarray, np.ndarray]:
    """Patch conv as a (3pp, Dv) matrix with x_norm = p * rescale / std - mean / std folded in -> (W', b').

    x_norm @ W + b = p @ (s[:,None] * W) + (b - m @ W), s = rescale/std_c, m = mean_c/std_c per input index.
    """
    v, pre = ck.vision, ck.preprocess
    conv = w["vision.embeddings.patch_embedding.weight"].astype(np.float64)  # (Dv,3,p,p)
    wm = conv.reshape(v.hidden, -1).T  # (3pp, Dv): channel is the slowest index, as the pixel patches flatten
    per_channel = v.patch_size ** 2
    std = np.repeat(np.asarray(pre.std, np.float64), per_channel)
    mean = np.repeat(np.asarray(pre.mean, np.float64), per_channel)
    bias = w.get("vision.embeddings.patch_embedding.bias", np.zeros(v.hidden)).astype(np.float64)
    w_folded = wm * (pre.rescale_factor / std)[:, None]
    b_folded = bias - ((mean / std)[:, None] * wm).sum(axis=0)  # not BLAS: its threads
    return w_folded.astype(np.float32), b_folded.astype(np.float32)


def _embeddings(g: GraphBuilder, ck: Checkpoint, w: dict, style: str) -> str:
    v = ck.vision
    p, n = v.patch_size, v.image_size // v.patch_size
    b = PATCH_BATCH_DIM[style]
    x = "pixels"
    if v.image_size % p:  # the patch conv (no padding) drops the last rows and columns: so400m/14 at 384 px
        ends = g.ints("patch.crop_ends", [n * p] * 2)
        x = g.op("Slice", [x, g.ints("patch.crop_starts", [0, 0]), ends, g.ints("patch.crop_axes", [2, 3])],
                 "/vision/patch/Crop")
    x = g.op("Reshape", [x, g.ints("patch.grid_shape", [b, 3, n, p, n, p])], "/vision/patch/Reshape")
    x = g.op("Transpose", [x], "/vision/patch/Transpose", perm=[0, 2, 4, 1, 3, 5])  # (B,n,n,3,p,p), still uint8
    x = g.op("Reshape", [x, g.ints("patch.flat_shape", [b, n * n, 3 * p * p])], "/vision/patch/Flat")
    x = g.op("Cast", [x], "/vision/patch/Cast", to=NP_TO_ONNX[g.float_dtype])  # (B,N,3pp)
    wf, bf = folded_patch_embedding(ck, w)
    pos = w["vision.embeddings.position_embedding.weight"]  # (T,Dv)
    if v.kind == "siglip":
        return g.matmul(x, wf, "/vision/patch", bias=bf[None, :] + pos)  # (B,N,Dv)
    x = g.matmul(x, wf, "/vision/patch", bias=bf[None, :] + pos[1:])  # (B,N,Dv) positions 1..N
    cls = (w["vision.embeddings.class_embedding"] + pos[0])[None, None, :]  # (1,1,Dv) with position 0
    batch = g.op("Shape", ["pixels"], "/vision/cls/Shape", start=0, end=1)
    shape = g.op("Concat", [batch, g.ints("cls.tail_shape", [1, v.hidden])], "/vision/cls/Concat_shape", axis=0)
    cls = g.op("Expand", [g.weight("/vision/cls.embedding", cls), shape], "/vision/cls/Expand")  # (B,1,Dv)
    x = g.op("Concat", [cls, x], "/vision/cls/Concat", axis=1)  # (B,N+1,Dv)
    return g.layer_norm(x, w["vision.pre_layrnorm.weight"], w["vision.pre_layrnorm.bias"], v.eps, "/vision/pre_ln")


def _qkv(w: dict, pre: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Packed (Dv,3Dv) weight and (3Dv,) bias, query columns scaled by `scale`."""
    parts = [linear(w, f"{pre}.{n}_proj") for n in "qkv"]
    ws = [parts[0][0] * scale, parts[1][0], parts[2][0]]
    bs = [parts[0][1] * scale, parts[1][1], parts[2][1]]
    return np.concatenate(ws, axis=1), np.concatenate(bs)


def _portable_attention(g: GraphBuilder, x: str, w: dict, pre: str, heads: int, name: str) -> str:
    """Standard ops; 1/sqrt(hs) folded into the query weights.

        x -> q,k,v MatMul+Add -> Reshape (B,T,nh,hs) -> Transpose: q (B,nh,T,hs), kT (B,nh,hs,T), v (B,nh,T,hs)
          -> MatMul -> Softmax -> MatMul -> Transpose -> Reshape (B,T,D)
    """
    d = w[f"{pre}.q_proj.weight"].shape[0]
    hs = d // heads
    wqkv, bqkv = _qkv(w, pre, 1.0 / np.sqrt(hs))
    split = g.ints(f"{name}.head_shape", [0, 0, heads, hs])
    perms = {"q": [0, 2, 1, 3], "k": [0, 2, 3, 1], "v": [0, 2, 1, 3]}
    out = {}
    for i, part in enumerate("qkv"):
        y = g.matmul(x, wqkv[:, i * d:(i + 1) * d], f"{name}/{part}_proj", bias=bqkv[i * d:(i + 1) * d])
        y = g.op("Reshape", [y, split], f"{name}/{part}_proj/Reshape")
        out[part] = g.op("Transpose", [y], f"{name}/{part}_proj/Transpose", perm=perms[part])
    probs = g.op("Softmax", [g.op("MatMul", [out["q"], out["k"]], f"{name}/scores/MatMul")], f"{name}/Softmax",
                 axis=-1)  # (B,nh,T,T)
    y = g.op("MatMul", [probs, out["v"]], f"{name}/context/MatMul")  # (B,nh,T,hs)
    y = g.op("Transpose", [y], f"{name}/context/Transpose", perm=[0, 2, 1, 3])
    return g.op("Reshape", [y, g.ints(f"{name}.merge_shape", [0, 0, d])], f"{name}/context/Reshape")  # (B,T,D)


def _cpu_attention(g: GraphBuilder, x: str, w: dict, pre: str, heads: int, name: str) -> str:
    """com.microsoft Attention (QKV GEMM, scaling, softmax, context in one node), or the int8 scheme's form."""
    wqkv, bqkv = _qkv(w, pre)
    if g.quantize is not None:
        return g.quantize.attention(g, x, wqkv, bqkv, heads, name)
    return g.op("Attention", [x, g.weight(f"{name}/qkv.weight", wqkv), g.weight(f"{name}/qkv.bias", bqkv)],
                f"{name}/Attention", domain=MS_DOMAIN, num_heads=heads)


ATTENTION = {"portable": _portable_attention, "cpu": _cpu_attention}


def _layer(g: GraphBuilder, ck: Checkpoint, w: dict, x: str, i: int, style: str) -> str:
    """x -> LN1 -> attention -> out_proj -> Add -> LN2 -> fc1 -> act -> fc2 -> Add   (B,T,Dv)"""
    v, pre, name = ck.vision, f"vision.encoder.layers.{i}", f"/vision/layers.{i}"
    h = g.layer_norm(x, w[f"{pre}.layer_norm1.weight"], w[f"{pre}.layer_norm1.bias"], v.eps, f"{name}/ln1")
    a = ATTENTION[style](g, h, w, f"{pre}.self_attn", v.heads, f"{name}/attn")
    wo, bo = linear(w, f"{pre}.self_attn.out_proj")
    x = g.op("Add", [x, g.matmul(a, wo, f"{name}/attn/out", bias=bo)], f"{name}/attn/residual/Add")
    h = g.layer_norm(x, w[f"{pre}.layer_norm2.weight"], w[f"{pre}.layer_norm2.bias"], v.eps, f"{name}/ln2")
    w1, b1 = linear(w, f"{pre}.mlp.fc1")
    h = activation(g, style, v.act, g.matmul(h, w1, f"{name}/mlp/fc1", bias=b1), f"{name}/mlp/act")
    w2, b2 = linear(w, f"{pre}.mlp.fc2")
    return g.op("Add", [x, g.matmul(h, w2, f"{name}/mlp/fc2", bias=b2)], f"{name}/mlp/residual/Add")


def _projector(g: GraphBuilder, ck: Checkpoint, w: dict, x: str, style: str) -> str:
    w1, b1 = linear(w, "projector.linear_1")
    h = activation(g, style, ck.projector_act, g.matmul(x, w1, "/projector/linear_1", bias=b1), "/projector/act")
    w2, b2 = linear(w, "projector.linear_2")
    return g.matmul(h, w2, "/projector/linear_2", bias=b2)  # (B,P,Dt)


def build_vision(ck: Checkpoint, w: dict, style: str, float_dtype=np.float32, quantize=None, batch: str = "batch"):
    """The vision + projector ModelProto for `style` in {"portable", "cpu"}; `quantize` makes weights int8; `batch`:
    the symbolic name of the batch axis (anyres families batch views, not images)."""
    v = ck.vision
    g = GraphBuilder(f"llava_vision_{style}", float_dtype)
    g.quantize = quantize
    g.input("pixels", np.uint8, [batch, 3, v.image_size, v.image_size])
    x = _embeddings(g, ck, w, style)
    hidden = {0: x}
    for i in range(v.layers):
        x = _layer(g, ck, w, x, i, style)
        hidden[i + 1] = x
    feats = [hidden[f] for f in v.feature_layers]
    x = feats[0] if len(feats) == 1 else g.op("Concat", feats, "/vision/features/Concat", axis=-1)  # (B,T,Dv*F)
    if v.drop_cls:
        bounds = [g.ints("drop.starts", [1]), g.ints("drop.ends", [INT64_MAX]), g.ints("drop.axes", [1])]
        x = g.op("Slice", [x, *bounds], "/vision/features/Slice")  # (B,P,Dv*F)
    y = _projector(g, ck, w, x, style)
    if g.float_dtype != np.float32:
        y = g.op("Cast", [y], "/vision/output/Cast", to=1)  # float32 out whatever the weight precision
    g.node("Identity", [y], "/vision/output/Identity", outputs=["image_features"])
    g.output("image_features", np.float32, [batch, v.features_per_image, ck.text.hidden])
    return g.model(contrib=style != "portable")
