"""The Idefics3 vision tower + connector as ONNX, one row of the batch per view (crop or global view), computed as
transformers' get_image_features computes each view.

    pixels ("views",3,S,S) uint8: views already cut and resized by the preprocess stage, all S x S (checkpoint.py)
      -> llava's SigLIP embeddings: patch MatMul [rescale, mean/std folded in] + bias + the position rows HF adds
         to a full view (reference.position_ids)                                                  (V,N,Dv)
      -> llava's encoder layer x L -> post_layernorm                                              (V,N,Dv)
      -> pixel shuffle, HF's view/permute sequence as Reshape/Transpose (n = S/p patches a side, s = scale_factor):
         Reshape (V,n,n/s,Dv*s) -> Transpose(0,2,1,3) -> Reshape (V,n/s,n/s,Dv*s*s) -> Transpose(0,2,1,3)
         -> Reshape (V,N/s^2,Dv*s^2)
      -> connector MatMul (no bias) -> image_features                                            (V,P,Dt)

Equality with transformers is the parity gate's (the same seeded views through both, fp32 within llava's bounds),
and the tests' on the HF processor's own views. Styles and weight precisions are llava's: `portable` (standard
ops, dynamic view axis) and `cpu` (contrib attention/GELU, or int8 MatMulIntegerToFloat). float32 out always.
"""

from __future__ import annotations

import numpy as np

from graphs.emit.onnx_ops import GraphBuilder
from graphs.families.idefics3.checkpoint import Idefics3Checkpoint
from graphs.families.llava.vision_graph import _embeddings, _layer

VIEWS = "views"  # the batch axis counts views (every crop and global view of every image in the batch)


def _pixel_shuffle(g: GraphBuilder, x: str, ck: Idefics3Checkpoint) -> str:
    """(V,n*n,D) -> (V,(n/s)^2,D*s*s), row for row as Idefics3Connector.pixel_shuffle (0 keeps the view axis)."""
    v = ck.vision
    n, s, d = v.image_size // v.patch_size, v.scale_factor, v.hidden
    x = g.op("Reshape", [x, g.ints("shuffle.rows_shape", [0, n, n // s, d * s])], "/connector/shuffle/Reshape_rows")
    x = g.op("Transpose", [x], "/connector/shuffle/Transpose_1", perm=[0, 2, 1, 3])  # (V,n/s,n,D*s)
    x = g.op("Reshape", [x, g.ints("shuffle.cols_shape", [0, n // s, n // s, d * s * s])],
             "/connector/shuffle/Reshape_cols")
    x = g.op("Transpose", [x], "/connector/shuffle/Transpose_2", perm=[0, 2, 1, 3])  # (V,n/s,n/s,D*s*s)
    return g.op("Reshape", [x, g.ints("shuffle.flat_shape", [0, (n // s) ** 2, d * s * s])],
                "/connector/shuffle/Reshape_flat")


def build_vision(ck: Idefics3Checkpoint, w: dict, style: str, float_dtype=np.float32, quantize=None):
    """`w`: weights whose position table holds, in patch order, the rows HF adds (family.load)."""
    v = ck.vision
    g = GraphBuilder(f"idefics3_vision_{style}", float_dtype)
    g.quantize = quantize
    g.input("pixels", np.uint8, [VIEWS, 3, v.image_size, v.image_size])
    x = _embeddings(g, ck, w, style)
    for i in range(v.layers):
        x = _layer(g, ck, w, x, i, style)
    x = g.layer_norm(x, w["vision.post_layernorm.weight"], w["vision.post_layernorm.bias"], v.eps, "/vision/post_ln")
    y = g.matmul(_pixel_shuffle(g, x, ck), w["connector.weight"].T.copy(), "/connector/proj")  # (V,P,Dt)
    if g.float_dtype != np.float32:
        y = g.op("Cast", [y], "/connector/output/Cast", to=1)
    g.node("Identity", [y], "/connector/output/Identity", outputs=["image_features"])
    g.output("image_features", np.float32, [VIEWS, v.features_per_image, ck.text.hidden])
    return g.model(contrib=style != "portable")
