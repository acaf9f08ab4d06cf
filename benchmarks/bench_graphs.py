"""Graph benchmark: every CPU variant against this machine's GEMM peaks and the standard recipe, in one run.

    python benchmarks/bench_graphs.py [--preset reference] [--threads 2] [--seconds 2] [--profile DIR]

Prints, per variant: vision latency at batch 1 and 8, decoder step latency at batch 1, 8, 32 (one new token per
row over a 228-token context, and the target's 200 past tokens at batch 1 and 8), achieved GOP/s, and the fp32 and
int8 GEMM peaks measured in the same run with single-node MatMul / MatMulInteger graphs. A decode step is bound by
memory, not arithmetic (every weight and each row's cache is read once per token), so decoder rows also print the
bytes a step must read divided by its time, against the memory read rate measured in the same run. The standard recipe
(torch.onnx.export + optimize_model + quantize_dynamic, benchmarks/standard_recipe.py) runs in the same process on
the same inputs. Latencies are medians with the best run beside them: the machine's cores are shared, and the best
run is the closest to what the graph costs alone; `cpu ms` is the process CPU time per call (all ORT threads), the
work itself, which other processes on the cores barely move. GOP/s and % peak use the best run. --profile writes
ORT per-operator summaries for the int8 targets.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from typing import NamedTuple
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
from standard_recipe import build_standard  # noqa: E402

from graphs.build import ensure_artifacts  # noqa: E402
from graphs.families.own.config import get_preset  # noqa: E402
from mmcore.manifest import Manifest  # noqa: E402
from mmcore.runtime.int8_kernels import (U8S8, Int8Choice, choose_encoding, graph_source,  # noqa: E402
                                         reported_isa)
from mmcore.runtime.kv_runner import OrtDecoderRunner  # noqa: E402
from mmcore.runtime.ort_session import cpu_session  # noqa: E402
from graphs.families.own.weights import load_model  # noqa: E402

CONTEXT = 228  # 196 image tokens + a 32-token prompt
TARGETS = {("vision", "cpu-int8", 8): 40.0, ("decoder", "cpu-int8", 8, 200): 1.5, ("decoder", "cpu-int8", 1, 200): 1.2}


def timed(fn, seconds: float, min_runs: int = 5) -> tuple[float, float, float]:
    """(median ms, best ms, process CPU ms per call) over repeated calls after two warm-up calls.

    CPU time counts what the call's threads actually computed, so it moves far less than wall time when other
    processes take the cores; with 2 busy threads an undisturbed call takes about cpu/2 of wall time.
    """
    fn(), fn()
    times, start, cpu = [], time.perf_counter(), time.process_time()
    while len(times) < min_runs or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    cpu_ms = (time.process_time() - cpu) / len(times) * 1e3
    return float(np.median(times) * 1e3), float(np.min(times) * 1e3), cpu_ms


# -- peaks ---------------------------------------------------------------------------------------------------------
def _single_node(op: str, a_type, b: np.ndarray, m: int) -> bytes:
    k, n = b.shape
    out_type = TensorProto.INT32 if op == "MatMulInteger" else TensorProto.FLOAT
    graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["y"])], "peak",
                              [helper.make_tensor_value_info("a", a_type, [m, k])],
                              [helper.make_tensor_value_info("y", out_type, [m, n])], [numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model.SerializeToString()


def gemm_peaks(threads: int, seconds: float) -> dict[str, float]:
    """Best GOP/s of a single MatMul (fp32) and MatMulInteger (u8 x s8, and u8 x u8) node over a few large shapes.
    `int8` is the encoding this CPU's replicas run (mmcore/runtime/int8_kernels.py); `u8s8` is measured where it
    would clip too (the speed is what it is, only its answers are wrong there)."""
    rng = np.random.default_rng(0)
    peaks = {"fp32": 0.0, "u8s8": 0.0, "u8u8": 0.0}
    for m, k, n in ((1568, 384, 1536), (1568, 1536, 384), (2048, 1024, 1024)):
        cases = {"fp32": ("MatMul", TensorProto.FLOAT, rng.standard_normal((k, n)).astype(np.float32),
                          rng.standard_normal((m, k)).astype(np.float32)),
                 "u8s8": ("MatMulInteger", TensorProto.UINT8, rng.integers(-127, 128, (k, n)).astype(np.int8),
                          rng.integers(0, 256, (m, k)).astype(np.uint8)),
                 "u8u8": ("MatMulInteger", TensorProto.UINT8, rng.integers(1, 256, (k, n)).astype(np.uint8),
                          rng.integers(0, 256, (m, k)).astype(np.uint8))}
        for name, (op, a_type, b, a) in cases.items():
            sess = cpu_session(_single_node(op, a_type, b, m), threads)
            _, best, _ = timed(lambda: sess.run(None, {"a": a}), seconds / 3)
            peaks[name] = max(peaks[name], 2 * m * k * n / best / 1e6)
    peaks["int8"] = peaks[choose_encoding().encoding]
    return peaks


# -- work counts (multiply-adds x 2) -----------------------------------------------------------------------------
def vision_gop(cfg, batch: int) -> float:
    v, p = cfg.vision, cfg.vision.num_patches
    per_row = v.patch_dim * v.width + v.layers * (12 * v.width * v.width) + v.width * cfg.decoder.width
    attention = v.layers * 2 * p * p * v.width  # QK^T and PV per image
    return 2 * batch * (p * per_row + attention) / 1e9


def read_bandwidth(threads: int, seconds: float) -> float:
    """Best GB/s of a single ReduceSum over 64 MB of float32: the memory read rate a streaming kernel can reach."""
    x = np.ones((1024, 16384), np.float32)
    graph = helper.make_graph([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)], "bandwidth",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1024])],
                              [numpy_helper.from_array(np.array([1], np.int64), "axes")])  # rows in parallel
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    sess = cpu_session(model.SerializeToString(), threads)
    _, best, _ = timed(lambda: sess.run(None, {"x": x}), seconds / 2)
    return x.nbytes / best / 1e6


def cache_itemsize(path) -> int:
    """Bytes per cached value of a decoder graph: its past_key.0 dtype (4 for a float32 cache, 1 for int8)."""
    past = next(i for i in onnx.load(str(path), load_external_data=False).graph.input if i.name == "past_key.0")
    return np.dtype(helper.tensor_dtype_to_np_dtype(past.type.tensor_type.elem_type)).itemsize


def decoder_step_bytes(cfg, batch: int, past: int, precision: str, cache_bytes: int = 4) -> float:
    """Bytes a decode step must read at least: every weight once, plus each row's cached keys and values."""
    d = cfg.decoder
    weights = d.layers * 12 * d.width * d.width + d.width * d.vocab_size
    kv = 2 * d.layers * batch * past * d.width * cache_bytes
    return weights * (1 if precision == "int8" else 4) + kv


def decoder_step_gop(cfg, batch: int, context: int) -> float:
    d = cfg.decoder
    per_row = d.layers * 12 * d.width * d.width + d.width * d.vocab_size + d.layers * 2 * context * d.width
    return 2 * batch * per_row / 1e9


# -- runners -------------------------------------------------------------------------------------------------------
def bench_vision(source, cfg, threads, seconds, batches=(1, 8)) -> dict[int, tuple[float, float, float]]:
    sess = cpu_session(source, threads)
    rng = np.random.default_rng(0)
    out = {}
    for b in batches:
        pixels = rng.integers(0, 256, (b, 3, cfg.vision.image_size, cfg.vision.image_size), dtype=np.uint8)
        out[b] = timed(lambda: sess.run(None, {"pixels": pixels}), seconds)
    return out


def bench_decoder(entry, cfg, threads, seconds, cases) -> dict[tuple[int, int], tuple]:
    """Ours: one token per row over a shared preallocated cache (IOBinding, in place), `past` tokens already in it:
    the serving engine's runner and its decode step (each call rewrites the same position); the variant's own KV
    cache dtype."""
    d = cfg.decoder
    spec = Manifest.read(Path(entry.path).parent).decoder
    sess = cpu_session(entry.source, threads)
    out = {}
    for b, past in cases:
        dec = OrtDecoderRunner(sess, spec, b, d.max_positions, cache=entry.kv_cache)
        embeds = np.random.default_rng(0).standard_normal((b, d.width)).astype(np.float32)
        lengths = np.full(b, past, np.int64)
        out[(b, past)] = timed(lambda: dec.decode(b, embeds, lengths), seconds)
    return out


def bench_standard_decoder(entry, cfg, threads, seconds, cases) -> dict[tuple[int, int], tuple]:
    """The recipe's decoder: past (B,nh,T,hs) in, present (B,nh,T+1,hs) out: the cache is concatenated each step."""
    d = cfg.decoder
    sess = cpu_session(entry.source, threads)
    rng = np.random.default_rng(0)
    out = {}
    for b, past in cases:
        feeds = {"inputs_embeds": rng.standard_normal((b, 1, d.width)).astype(np.float32),
                 "position_ids": np.full((b, 1), past, np.int64)}
        for i in range(d.layers):
            for kv in ("key", "value"):
                feeds[f"past_{kv}.{i}"] = rng.standard_normal((b, d.heads, past, d.head_dim)).astype(np.float32)
        out[(b, past)] = timed(lambda: sess.run(["logits"] + [o.name for o in sess.get_outputs()[1:]], feeds),
                               seconds)
    return out


def attention_fused(path) -> str:
    ops = collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    fused = sum(ops[o] for o in ("Attention", "QAttention", "MultiHeadAttention", "GroupQueryAttention"))
    return str(fused)


# -- profiles ------------------------------------------------------------------------------------------------------
def profile_summary(profile_json: str, top: int = 8) -> list[str]:
    """Per-op-type kernel time share from an ORT profile."""
    events = json.loads(Path(profile_json).read_text())
    per_op, calls = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
            calls[e["args"]["op_name"]] += 1
    total = sum(per_op.values()) or 1
    return [f"    {op:26s} {us / 1e3:8.2f} ms {100 * us / total:5.1f}%  ({calls[op]} calls)"
            for op, us in per_op.most_common(top)]


def profile_targets(artifacts: Path, manifest: Manifest, cfg, threads: int, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    vision = artifacts / manifest.graphs["vision"].variants["cpu-int8"].file
    sess = cpu_session(str(vision), threads, profile_prefix=str(out_dir / "vision_int8_b8"))
    pixels = np.random.default_rng(0).integers(0, 256, (8, 3, cfg.vision.image_size, cfg.vision.image_size),
                                               dtype=np.uint8)
    for _ in range(5):
        sess.run(None, {"pixels": pixels})
    print("\nORT profile, vision cpu-int8 batch 8 (5 runs):")
    print("\n".join(profile_summary(sess.end_profiling())))
    decoder = artifacts / manifest.graphs["decoder"].variants["cpu-int8"].file
    d = cfg.decoder
    for b in (1, 8):
        sess = cpu_session(str(decoder), threads, profile_prefix=str(out_dir / f"decoder_int8_b{b}"))
        dec = OrtDecoderRunner(sess, manifest.decoder, b, d.max_positions)
        embeds = np.zeros((b, d.width), np.float32)
        lengths = np.full(b, min(200, d.max_positions - 1), np.int64)
        for _ in range(50):
            dec.decode(b, embeds, lengths)
        print(f"\nORT profile, decoder cpu-int8 step batch {b} @200 past (50 steps):")
        print("\n".join(profile_summary(sess.end_profiling())))


# -- main ----------------------------------------------------------------------------------------------------------
def _row(graph, variant, attn, case, timing, gop, peak, gbytes=None, bandwidth=None):
    med, best, cpu = timing
    rate = gop / best * 1e3
    mem = f"{'-':>7s} {'-':>6s}"
    if gbytes:
        mem = f"{gbytes / best * 1e3:7.1f} {100 * gbytes / best * 1e3 / bandwidth:5.0f}%"
    return (f"{graph:8s} {variant:16s} {attn:>5s}  {case:20s} {med:9.2f} {best:9.2f} {cpu:9.2f} {rate:9.1f} "
            f"{100 * rate / peak:6.1f}% {mem}")


class Entry(NamedTuple):
    path: Path  # the graph file (what its metadata is read from)
    precision: str
    source: str | bytes  # what the session opens: the file, or its bytes re-encoded as u8s8
    kv_cache: object = None  # the manifest's KvCacheEntry of a quantized-cache variant


def _variants(manifest: Manifest, artifacts: Path, cfg, with_standard: bool) -> dict[str, dict[str, Entry]]:
    """graph -> row name -> Entry: the CPU variants as built (u8u8 weights for int8), each int8 one again re-encoded
    as u8s8 (`name@u8s8`, what a replica runs on a VNNI/AMX CPU), then the standard recipe's."""
    variants: dict[str, dict[str, Entry]] = {}
    for g in ("vision", "decoder"):
        rows = variants.setdefault(g, {})
        for name, v in manifest.graphs[g].variants.items():
            if "CPUExecutionProvider" not in v.providers:
                continue
            path = artifacts / v.file
            rows[name] = Entry(path, v.precision, str(path), v.kv_cache)
            signed, has_u8u8 = graph_source(path, Int8Choice(U8S8, "bench"))
            if v.precision == "int8" and has_u8u8:
                rows[f"{name}@{U8S8}"] = Entry(path, "u8s8", signed, v.kv_cache)
    if with_standard:
        print("exporting the standard recipe (torch.onnx.export + optimize_model + quantize_dynamic) ...", flush=True)
        # The same model as the artifacts: ensure_artifacts without a weights file builds the seeded weights.
        std = build_standard(load_model(cfg))
        for g in ("vision", "decoder"):
            for name, path in std[g].items():
                precision = "u8s8" if name.endswith("int8") else "fp32"  # quantize_dynamic's QInt8 weights
                variants[g][name] = Entry(Path(path), precision, str(path))
    return variants


def _peak(entry: Entry) -> str:
    """The peak a row is compared with: its own encoding's (the standard recipe's int8 is u8s8)."""
    return {"fp32": "fp32", "u8s8": "u8s8"}.get(entry.precision, "u8u8" if entry.precision == "int8"
                                                 and not isinstance(entry.source, bytes) else "int8")


def _bench_all(variants, cfg, threads: int, seconds: float, peaks, bandwidth: float) -> tuple[list[str], dict]:
    ctx = min(CONTEXT, cfg.decoder.max_positions - 1)  # small presets cap the context at their position table
    dec_cases = [(1, ctx), (8, ctx), (32, ctx), (1, min(200, ctx)), (8, min(200, ctx))]
    header = (f"{'graph':8s} {'variant':16s} {'attn':>5s}  {'case':20s} {'median ms':>9s} {'best ms':>9s} "
              f"{'cpu ms':>9s} {'GOP/s':>9s} {'% peak':>7s} {'GB/s':>7s} {'% bw':>6s}")
    lines, results = [header, "-" * len(header)], {}
    for name, entry in variants["vision"].items():
        attn = f"{attention_fused(entry.path)}/{cfg.vision.layers}"
        for b, mb in bench_vision(entry.source, cfg, threads, seconds).items():
            results[("vision", name, b)] = mb
            lines.append(_row("vision", name, attn, f"batch {b}", mb, vision_gop(cfg, b), peaks[_peak(entry)]))
        print(lines[-1], flush=True)
    for name, entry in variants["decoder"].items():
        attn = f"{attention_fused(entry.path)}/{cfg.decoder.layers}"
        run = bench_standard_decoder if name.startswith("std") else bench_decoder
        kv_bytes, prec = cache_itemsize(entry.path), "fp32" if entry.precision == "fp32" else "int8"
        for (b, past), mb in run(entry, cfg, threads, seconds, dec_cases).items():
            results[("decoder", name, b, past)] = mb
            gop = decoder_step_gop(cfg, b, past + 1)
            gbytes = decoder_step_bytes(cfg, b, past, prec, kv_bytes) / 1e9
            lines.append(_row("decoder", name, attn, f"step b{b} @{past} past", mb, gop, peaks[_peak(entry)], gbytes,
                              bandwidth))
        print(lines[-1], flush=True)
    return lines, results


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="reference")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2.0, help="time budget per measurement")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "mmserve-artifacts"))
    ap.add_argument("--profile", default=None, help="directory for ORT profiles of the int8 targets")
    ap.add_argument("--no-standard", action="store_true", help="skip the standard-recipe comparison")
    args = ap.parse_args(argv)

    cfg = get_preset(args.preset)
    print(f"building/locating artifacts for {args.preset} ...", flush=True)
    artifacts = ensure_artifacts(args.preset, args.cache)
    manifest = Manifest.read(artifacts)
    peaks = gemm_peaks(args.threads, args.seconds)
    bandwidth = read_bandwidth(args.threads, args.seconds)
    print(f"\n{args.preset}: {args.threads} ORT threads; GEMM peaks this run: fp32 {peaks['fp32']:.0f} GFLOP/s, "
          f"int8 u8s8 {peaks['u8s8']:.0f} GOP/s, u8u8 {peaks['u8u8']:.0f} GOP/s (single-node MatMul / MatMulInteger); "
          f"memory read {bandwidth:.1f} GB/s (ReduceSum over 64 MB)\nthis CPU's replicas run int8 weights as "
          f"{choose_encoding().describe()}; CPU flags {reported_isa()}")
    variants = _variants(manifest, artifacts, cfg, not args.no_standard)
    lines, results = _bench_all(variants, cfg, args.threads, args.seconds, peaks, bandwidth)
    print("\n" + "\n".join(lines))
    _print_targets(results, not args.no_standard)
    if args.profile:
        profile_targets(artifacts, manifest, cfg, args.threads, Path(args.profile))


def _print_targets(results, with_standard: bool) -> None:
    print("\ntargets (best run; median and CPU ms per call in brackets):")
    encoding = choose_encoding().encoding
    for key, limit in TARGETS.items():
        served = (key[0], f"{key[1]}@{U8S8}", *key[2:])  # the graph a replica runs on this CPU
        key = served if encoding == U8S8 and served in results else key
        if key not in results:
            continue
        med, best, cpu = results[key]
        verdict = "MET" if best <= limit else "MISSED"
        line = (f"  {' '.join(map(str, key)):28s} <= {limit:5.1f} ms: {best:7.2f} ms [{med:.2f}; cpu {cpu:.2f}]  "
                f"{verdict}")
        std_key = (key[0], "std-int8", *key[2:])
        if with_standard and std_key in results:
            std_med, std_best, _ = results[std_key]
            line += f"   standard recipe {std_best:.2f} ms [{std_med:.2f}] -> {std_best / best:.1f}x faster"
        print(line)
    # issue 23: the vision graph a replica runs on this CPU, against the recipe, <= 0.7x on VNNI, <= 1.0x on AVX2
    served = f"cpu-int8@{U8S8}" if choose_encoding().encoding == U8S8 else "cpu-int8"
    limit = 0.7 if served.endswith(U8S8) else 1.0
    if with_standard and ("vision", served, 8) in results and ("vision", "std-int8", 8) in results:
        ratio = results[("vision", served, 8)][1] / results[("vision", "std-int8", 8)][1]
        print(f"  vision {served} batch 8 / standard recipe's: {ratio:.2f}x (target <= {limit}x) "
              f"{'MET' if ratio <= limit else 'MISSED'}")


if __name__ == "__main__":
    main()
