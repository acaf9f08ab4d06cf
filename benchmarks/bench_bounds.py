"""What bounds the speed targets the graphs miss: each stock ORT kernel of a decode step or a vision batch, alone.

    python benchmarks/bench_bounds.py [--threads 2] [--seconds 1]

Prints, on the `reference` dims, with single-node graphs (nothing else in the session):
  1. decoder attention (GroupQueryAttention over a shared per-slot cache, as the decoder graph runs it): one layer at
     a time, `hot` = the same layer's cache every call (it stays in the CPU caches), `DRAM` = caches taken in turn
     over 96 MB or more, so each call reads its cache from memory as in a real step, where the caches and the weights
     together outgrow the last-level cache; float32 against float16 cache, the one other type the CPU kernel takes;
     and a batch whose rows differ in length, as a continuous batch's do, against uniform ones;
  2. decoder linear layers at the batch sizes of a decode step: DynamicQuantizeMatMul (the `cpu-int8` decoder: one
     activation scale per tensor) against MatMulNBits with 8-bit blocks (`cpu-int8-rowwise`: each row quantized on
     its own, so rows never interact);
  3. the vision batch-8 layer, op by op, summed over the six layers: the floor of the graph made of these kernels;
  4. the memory read rate of this machine.
The point is the comparison in one run: a target whose kernels alone already sum past it cannot be met by changing
how the graph strings them together, only by other kernels.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
from bench_graphs import cpu_session, read_bandwidth, timed  # noqa: E402 -- after the path insert

LAYERS, HEADS, HEAD_DIM, WIDTH, MAX_CACHE = 6, 6, 64, 384, 512  # the reference preset's decoder and vision
PATCHES = 196
DRAM_SET = 96_000_000  # bytes of caches cycled through: several times any last-level cache of a 2-core VM


def _model(nodes, inputs, outputs, inits=()) -> bytes:
    graph = helper.make_graph(nodes, "bound", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model.SerializeToString()


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


# -- 1. decoder attention ------------------------------------------------------------------------------------------
def gqa_layer(threads: int, seconds: float, batch: int, past, dtype, cycle: int) -> float:
    """ms per GroupQueryAttention call over `cycle` caches taken in turn (1 = always the same one, hot); `past` is
    the tokens already cached, one number for every row or one per row."""
    lengths = np.broadcast_to(np.asarray(past, np.int32), (batch,)).copy()
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    cache = [batch, HEADS, MAX_CACHE, HEAD_DIM]
    node = helper.make_node("GroupQueryAttention", ["qkv", "", "", "pk", "pv", "seqlens", "total"], ["o", "k", "v"],
                            domain="com.microsoft", num_heads=HEADS, kv_num_heads=HEADS)
    sess = cpu_session(_model([node], [_vi("qkv", elem, [batch, 1, 3 * WIDTH]), _vi("pk", elem, cache),
                                       _vi("pv", elem, cache), _vi("seqlens", TensorProto.INT32, [batch]),
                                       _vi("total", TensorProto.INT32, [])],
                              [_vi("o", elem, [batch, 1, WIDTH]), _vi("k", elem, cache), _vi("v", elem, cache)]),
                       threads)
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((cycle, 2, *cache)).astype(dtype)
    bindings = []
    for layer in range(cycle):
        io = sess.io_binding()
        io.bind_cpu_input("qkv", rng.standard_normal((batch, 1, 3 * WIDTH)).astype(dtype))
        io.bind_cpu_input("seqlens", lengths)
        io.bind_cpu_input("total", np.array(lengths.max() + 1, np.int32))
        io.bind_output("o")
        for kv, (inp, out) in enumerate((("pk", "k"), ("pv", "v"))):
            buf = keys[layer, kv]
            io.bind_input(inp, "cpu", 0, dtype, cache, buf.ctypes.data)
            io.bind_output(out, "cpu", 0, dtype, cache, buf.ctypes.data)
        bindings.append(io)
    turn = itertools.cycle(bindings)

    def call():
        io = next(turn)
        io.bind_cpu_input("seqlens", lengths)  # GQA appends: keep the lengths fixed
        sess.run_with_iobinding(io)
    return timed(call, seconds)[1]


def attention_rows(threads: int, seconds: float) -> tuple[list[str], dict[tuple[int, int], float]]:
    """Rows for the table, and the float32 cache's DRAM ms for six layers per (batch, past)."""
    header = (f"{'case':24s} {'cache':8s} {'hot ms/layer':>12s} {'DRAM ms/layer':>13s} {'x6 layers':>10s} "
              f"{'DRAM GB/s':>9s}")
    rows, step_ms = [header], {}
    for batch, past in ((1, 200), (8, 200), (32, 228)):
        for dtype in (np.float32, np.float16):
            hot = gqa_layer(threads, seconds, batch, past, dtype, 1)
            touched = 2 * batch * past * WIDTH * np.dtype(dtype).itemsize  # bytes one call reads
            step = gqa_layer(threads, seconds, batch, past, dtype, max(LAYERS, -(-DRAM_SET // touched)))
            if dtype == np.float32:
                step_ms[(batch, past)] = LAYERS * step
            gbytes = touched / 1e9
            rows.append(f"{f'b{batch} @{past} past':24s} {np.dtype(dtype).name:8s} {hot:12.3f} {step:13.3f} "
                        f"{LAYERS * step:10.2f} {gbytes / step * 1e3:9.1f}")
    return rows, step_ms


def mixed_length_rows(threads: int, seconds: float, batch: int = 32) -> list[str]:
    """A continuous batch holds rows of different lengths: what one long row costs the call."""
    rows = []
    for label, past in (("all rows @228", 228), ("one row @484, the rest @228", [484] + [228] * (batch - 1)),
                        ("all rows @484", 484)):
        ms = gqa_layer(threads, seconds, batch, past, np.float32, 1)
        tokens = int(np.broadcast_to(past, (batch,)).sum())
        rows.append(f"b{batch} {label:30s} {ms:7.3f} ms/layer for {tokens:6d} cached tokens")
    return rows


# -- 2. decoder linear layers --------------------------------------------------------------------------------------
def _int8_linear(m: int, k: int, n: int, op: str) -> bytes:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((k, n)).astype(np.float32) * 0.05
    if op == "DynamicQuantizeMatMul":
        scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        inits = [numpy_helper.from_array(q, "w"), numpy_helper.from_array(scale, "s")]
        node = helper.make_node(op, ["x", "w", "s"], ["y"], domain="com.microsoft")
    else:  # MatMulNBits, 8-bit blocks of 32 along K, int8 compute (accuracy_level 4)
        from onnxruntime.capi._pybind_state import quantize_matmul_8bits
        block = 32
        packed = np.zeros((n, k // block, block), np.uint8)
        scales, zp = np.zeros((n, k // block), np.float32), np.zeros((n, k // block), np.uint8)
        quantize_matmul_8bits(packed, w, scales, zp, block, n, k, True)
        inits = [numpy_helper.from_array(packed, "w"), numpy_helper.from_array(scales.reshape(-1), "s")]
        node = helper.make_node(op, ["x", "w", "s"], ["y"], domain="com.microsoft", K=k, N=n, bits=8,
                                block_size=block, accuracy_level=4)
    return _model([node], [_vi("x", TensorProto.FLOAT, [m, k])], [_vi("y", TensorProto.FLOAT, [m, n])], inits)


STEP_WEIGHTS = ((WIDTH, 3 * WIDTH), (WIDTH, WIDTH), (WIDTH, 4 * WIDTH), (4 * WIDTH, WIDTH))  # per layer
LM_HEAD = (WIDTH, 8192)


def _linear_us(threads: int, seconds: float, m: int, k: int, n: int, op: str) -> float:
    sess = cpu_session(_int8_linear(m, k, n, op), threads)
    feed = {"x": np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)}
    return timed(lambda: sess.run(None, feed), seconds / 4)[1] * 1e3


def linear_rows(threads: int, seconds: float) -> tuple[list[str], dict[int, float]]:
    """Per weight matrix of a decode step, both ops; returns also the step's linear-layer ms per batch size."""
    rows = [f"{'weights (K x N)':18s} {'rows':>4s} {'DynamicQuantizeMatMul':>22s} {'MatMulNBits 8-bit':>18s}"]
    step_ms = {}
    for m in (1, 8, 32):
        total = 0.0
        for k, n in (*STEP_WEIGHTS, LM_HEAD):
            us = {op: _linear_us(threads, seconds, m, k, n, op) for op in ("DynamicQuantizeMatMul", "MatMulNBits")}
            total += us["DynamicQuantizeMatMul"] * (1 if (k, n) == LM_HEAD else LAYERS)  # the default cpu-int8
            rows.append(f"{f'{k} x {n}':18s} {m:4d} " + " ".join(
                f"{f'{us[op]:7.1f} us {k * n / us[op] / 1e3:5.1f} GB/s':>{w}s}"
                for op, w in (("DynamicQuantizeMatMul", 22), ("MatMulNBits", 18))))
        norm_us, gelu_us = _small_ops_us(threads, seconds, m)
        total += (2 * LAYERS + 1) * norm_us + LAYERS * gelu_us  # as many as the decoder graph has
        rows.append(f"{'SkipLayerNorm':18s} {m:4d} {norm_us:7.1f} us x {2 * LAYERS + 1}   FastGelu {gelu_us:5.1f} us x "
                    f"{LAYERS}")
        step_ms[m] = total / 1e3
    return rows, step_ms


def _small_ops_us(threads: int, seconds: float, m: int) -> tuple[float, float]:
    """The decode step's SkipLayerNormalization (M, D) and FastGelu with bias (M, 4D), one call each."""
    rng = np.random.default_rng(4)
    d = [m, 1, WIDTH]
    norm = _model([helper.make_node("SkipLayerNormalization", ["x", "r", "g", "b", "bias"], ["y", "", "", "s"],
                                    domain="com.microsoft", epsilon=1e-5)],
                  [_vi("x", TensorProto.FLOAT, d), _vi("r", TensorProto.FLOAT, d)],
                  [_vi("y", TensorProto.FLOAT, d), _vi("s", TensorProto.FLOAT, d)],
                  [numpy_helper.from_array(np.ones(WIDTH, np.float32), n) for n in ("g", "b", "bias")])
    h = [m, 1, 4 * WIDTH]
    gelu = _model([helper.make_node("FastGelu", ["x", "bias"], ["y"], domain="com.microsoft")],
                  [_vi("x", TensorProto.FLOAT, h)], [_vi("y", TensorProto.FLOAT, h)],
                  [numpy_helper.from_array(np.zeros(4 * WIDTH, np.float32), "bias")])
    out = []
    for model, feeds in ((norm, {"x": rng.standard_normal(d).astype(np.float32),
                                 "r": rng.standard_normal(d).astype(np.float32)}),
                         (gelu, {"x": rng.standard_normal(h).astype(np.float32)})):
        sess = cpu_session(model, threads)
        out.append(timed(lambda sess=sess, feeds=feeds: sess.run(None, feeds), seconds / 4)[1] * 1e3)
    return out[0], out[1]


# -- 3. the vision layer, op by op ---------------------------------------------------------------------------------
def _qkv_projection(m: int) -> bytes:
    """The vision graph's q, k, v: the activation quantized once, then three int8 GEMMs with per-column scales."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"])]
    inits, outputs = [], []
    for part in "qkv":
        inits += [numpy_helper.from_array(rng.integers(-127, 128, (WIDTH, WIDTH)).astype(np.int8), f"w{part}"),
                  numpy_helper.from_array(np.full(WIDTH, 0.01, np.float32), f"s{part}"),
                  numpy_helper.from_array(np.zeros(WIDTH, np.int8), f"z{part}")]
        nodes.append(helper.make_node("MatMulIntegerToFloat", ["xq", f"w{part}", "xs", f"s{part}", "xz", f"z{part}"],
                                      [part], domain="com.microsoft"))
        outputs.append(_vi(part, TensorProto.FLOAT, [m, WIDTH]))
    return _model(nodes, [_vi("x", TensorProto.FLOAT, [m, WIDTH])], outputs, inits)


def vision_rows(threads: int, seconds: float, batch: int = 8) -> tuple[list[str], float]:
    rng = np.random.default_rng(2)
    rows_of = batch * PATCHES
    act = lambda d: rng.standard_normal((batch, PATCHES, d)).astype(np.float32)  # noqa: E731
    ops = []
    for label, k, n, count in (("attention out", WIDTH, WIDTH, 1), ("mlp fc", WIDTH, 4 * WIDTH, 1),
                               ("mlp proj", 4 * WIDTH, WIDTH, 1)):
        ops.append((f"{label} (DynamicQuantizeMatMul)", _int8_linear(rows_of, k, n, "DynamicQuantizeMatMul"),
                    {"x": act(k).reshape(rows_of, k)}, count))
    ops.insert(0, ("q, k, v (DynamicQuantizeLinear + 3 MatMulIntegerToFloat)", _qkv_projection(rows_of),
                   {"x": act(WIDTH).reshape(rows_of, WIDTH)}, 1))
    mha = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["y"], domain="com.microsoft", num_heads=HEADS)
    seq = [batch, PATCHES, WIDTH]
    ops.append(("MultiHeadAttention", _model([mha], [_vi(n, TensorProto.FLOAT, seq) for n in "qkv"],
                                             [_vi("y", TensorProto.FLOAT, seq)]),
                {"q": act(WIDTH), "k": act(WIDTH), "v": act(WIDTH)}, 1))
    gelu = helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")
    mlp = [batch, PATCHES, 4 * WIDTH]
    ops.append(("Gelu", _model([gelu], [_vi("x", TensorProto.FLOAT, mlp)], [_vi("y", TensorProto.FLOAT, mlp)]),
                {"x": act(4 * WIDTH)}, 1))
    ln = [helper.make_node("Add", ["x", "r"], ["s"]),
          helper.make_node("LayerNormalization", ["s", "g", "b"], ["y"], axis=-1, epsilon=1e-5)]
    ops.append(("residual Add + LayerNormalization",
                _model(ln, [_vi("x", TensorProto.FLOAT, seq), _vi("r", TensorProto.FLOAT, seq)],
                       [_vi("y", TensorProto.FLOAT, seq), _vi("s", TensorProto.FLOAT, seq)],  # the sum is the
                       # residual stream the graph keeps: as an output it stays Add + LN, as in the vision graph
                       [numpy_helper.from_array(np.ones(WIDTH, np.float32), "g"),
                        numpy_helper.from_array(np.zeros(WIDTH, np.float32), "b")]),
                {"x": act(WIDTH), "r": act(WIDTH)}, 2))
    rows, layer_ms = [f"{'op (batch 8)':58s} {'ms':>7s} {'x per layer':>11s}"], 0.0
    for label, model, feeds, count in ops:
        sess = cpu_session(model, threads)
        ms = timed(lambda sess=sess, feeds=feeds: sess.run(None, feeds), seconds / 2)[1]
        layer_ms += count * ms
        rows.append(f"{label:58s} {ms:7.3f} {count:11d}")
    rows.append(f"{'one layer':58s} {layer_ms:7.3f}   x {LAYERS} layers = {LAYERS * layer_ms:.1f} ms")
    return rows, LAYERS * layer_ms


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=1.0, help="time budget per measurement")
    args = ap.parse_args(argv)
    bandwidth = read_bandwidth(args.threads, args.seconds)
    print(f"{args.threads} ORT threads; memory read {bandwidth:.1f} GB/s (ReduceSum over 64 MB); best of repeated calls")
    print("\n1. decoder attention, GroupQueryAttention alone, per layer:")
    rows, attention_ms = attention_rows(args.threads, args.seconds)
    print("\n".join("   " + r for r in rows))
    print("\n   rows of different lengths in one call (cache-resident, float32):")
    print("\n".join("   " + r for r in mixed_length_rows(args.threads, args.seconds)))
    print("\n2. decoder linear layers alone (one weight matrix; GB/s = int8 weight bytes / time), and the step's layer "
          "norms and GELUs:")
    rows, linear_ms = linear_rows(args.threads, args.seconds)
    print("\n".join("   " + r for r in rows))
    print("\n   a decode step's floor from these kernels alone (attention x6 from DRAM + every linear layer,"
          " layer norm and GELU once, weights hot; the engine and the ops' hand-offs not counted):")
    for (batch, past), ms in attention_ms.items():
        floor = ms + linear_ms[batch]
        print(f"   b{batch} @{past} past: attention {ms:.2f} + the rest {linear_ms[batch]:.2f} = {floor:.2f} ms per step "
              f"= {batch / floor * 1e3:.0f} tokens/s at most")
    print("\n3. vision layer at batch 8, each op alone:")
    rows, floor = vision_rows(args.threads, args.seconds)
    print("\n".join("   " + r for r in rows))
    print(f"\n   the vision cpu-int8 batch-8 target is 40 ms; these kernels alone sum to {floor:.1f} ms before the "
          f"patch embedding, the final LN and projection, and any cache misses between ops")


if __name__ == "__main__":
    main()
