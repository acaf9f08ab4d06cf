"""Prefill benchmark (prints figures; not a test): head-of-line blocking, prefill throughput, and the prefill's
GOP/s against this machine's fp32 and int8 GEMM peaks measured in the same run.

On the own `reference` preset's decoder (any own-family artifacts), per variant:
  1. TTFT of short prompts arriving right behind long ones: `--long` prompts of one image's features + text up to
     --long-positions, then `--short` 16-token prompts; the shorts' time to first token, p50 / max, and the longs';
  2. prefill throughput: `--burst` prompts of mixed lengths (32..--long-positions) submitted together, one output
     token each: prompt positions per second of wall time and per CPU second, and GOP/s;
  3. the bare runner: one whole-prompt prefill of --long-positions positions (runner.prefill), ms and GOP/s, per
     variant: what the int8 KV cache costs a prefill; with --op-profile, ORT's per-operator time of that prefill.

    flock /tmp/mmserve-ray.lock python benchmarks/bench_prefill.py --artifacts /tmp/ragged-art \
        --variants cpu-fp32 cpu-int8 cpu-int8-kv8
GOP counts 2 x multiply-adds of the blocks' weights, causal attention (QK and PV) and one LM head row per prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_graphs import gemm_peaks, timed  # noqa: E402

from graphs.families.own.config import get_preset  # noqa: E402
from mmcore.manifest import Manifest  # noqa: E402
from mmcore.runtime.int8_kernels import cpu_model, reported_isa  # noqa: E402
from serve_app.contract import DecodeRequest, FeatureSegment, TokenSegment  # noqa: E402
from serve_app.engine import EngineConfig, load_engine  # noqa: E402


def prefill_gop(cfg, lengths) -> float:
    """2 x multiply-adds of prefilling prompts of these lengths: every position through every block's weights,
    causal attention over its prefix, one LM head row per prompt (the graph's last-position head)."""
    d = cfg.decoder
    total = 0
    for n in lengths:
        total += n * d.layers * 12 * d.width * d.width  # qkv 3D^2, out D^2, mlp 8D^2
        total += d.layers * 2 * d.width * n * (n + 1) // 2  # QK^T and PV over the causal prefix
        total += d.width * d.vocab_size
    return 2 * total / 1e9


VOCAB = [4000]  # token ids drawn below this and the model's vocabulary (main sets it)


def request(name: str, positions: int, width: int, image: int, rng, max_tokens: int) -> DecodeRequest:
    feats = rng.standard_normal((min(image, positions - 1), width)).astype(np.float32) * 0.02
    ids = rng.integers(10, min(4000, VOCAB[0]), positions - feats.shape[0]).tolist()
    segments = ([FeatureSegment(feats)] if feats.shape[0] else []) + [TokenSegment(ids)]
    return DecodeRequest(name, segments, max_tokens=max_tokens, ignore_eos=True, temperature=0.0)


async def first_token_s(engine, req) -> float:
    t0 = time.perf_counter()
    async for _ in engine.generate(req):
        return time.perf_counter() - t0
    return float("nan")


async def hol_round(engine, args, width, image, rng) -> tuple[list[float], list[float]]:
    longs = [asyncio.create_task(first_token_s(engine, request(f"L{i}", args.long_positions, width, image, rng, 2)))
             for i in range(args.long)]
    await asyncio.sleep(0.002)  # the longs are taken first
    shorts = [asyncio.create_task(first_token_s(engine, request(f"s{i}", 16, width, 0, rng, 2)))
              for i in range(args.short)]
    return list(await asyncio.gather(*shorts)), list(await asyncio.gather(*longs))


async def burst(engine, args, width, image, rng, lengths=None) -> tuple[float, float, list[int]]:
    lengths = list(lengths or np.linspace(32, args.long_positions, args.burst).astype(int).tolist())
    rng.shuffle(lengths)
    reqs = [request(f"b{i}", n, width, image if n > image + 8 else 0, rng, 1) for i, n in enumerate(lengths)]
    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(first_token_s(engine, r) for r in reqs))
    return time.perf_counter() - t0, time.process_time() - c0, lengths


async def scenario(root, variant, args, cfg, image) -> dict:
    engine = load_engine(root, EngineConfig(slots=args.slots, prefill_token_budget=args.budget), threads=args.threads,
                         prefer=[variant])
    width = engine.embeddings.shape[1]
    rng = np.random.default_rng(0)
    try:
        await hol_round(engine, args, width, image, rng)  # warm-up
        shorts, longs = [], []
        for _ in range(args.rounds):
            s, lo = await hol_round(engine, args, width, image, rng)
            shorts += s
            longs += lo
        await burst(engine, args, width, image, rng)  # warm-up
        walls, cpus = [], []
        for _ in range(args.rounds):
            wall, cpu, lengths = await burst(engine, args, width, image, rng)
            walls.append(wall)
            cpus.append(cpu)
        texts = [8 + 2 * i for i in range(16)]  # 16 text prompts of 8..38 positions: where sharing a call pays
        await burst(engine, args, width, image, rng, texts)
        text_walls = [(await burst(engine, args, width, image, rng, texts))[0] for _ in range(args.rounds)]
    finally:
        await engine.close()
    return {"shorts": shorts, "longs": longs, "wall": float(np.median(walls)), "cpu": float(np.median(cpus)),
            "lengths": lengths, "texts": texts, "text_wall": float(np.median(text_walls))}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--variants", nargs="+", default=["cpu-fp32", "cpu-int8", "cpu-int8-kv8"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--budget", type=int, default=256, help="engine prefill_token_budget")
    ap.add_argument("--long", type=int, default=2)
    ap.add_argument("--short", type=int, default=4)
    ap.add_argument("--long-positions", type=int, default=480)
    ap.add_argument("--burst", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0, help="per timed case of the peaks and the bare prefill")
    ap.add_argument("--op-profile", action="store_true", help="also ORT's per-operator time of the bare prefill")
    args = ap.parse_args(argv)
    root = Path(args.artifacts)
    manifest = Manifest.read(root)
    cfg = get_preset(manifest.preset)
    VOCAB[0] = cfg.decoder.vocab_size
    image = manifest.prompt.image_features or 0
    peaks = gemm_peaks(args.threads, args.seconds)
    print(f"{cpu_model()}; {reported_isa()}; {args.threads} ORT thread(s)")
    print(f"GEMM peaks this run: fp32 {peaks['fp32']:.0f} GFLOP/s, int8 {peaks['int8']:.0f} GOP/s")
    print(f"{manifest.preset}: slots {args.slots}, budget {args.budget}; {args.long} long prompts of "
          f"{args.long_positions} positions then {args.short} of 16; burst of {args.burst}, {args.rounds} rounds")
    for variant in args.variants:
        r = asyncio.run(scenario(root, variant, args, cfg, image))
        s, lo = np.array(r["shorts"]) * 1e3, np.array(r["longs"]) * 1e3
        gop = prefill_gop(cfg, r["lengths"])
        positions = sum(r["lengths"])
        print(f"{variant:<14} short TTFT p50 {np.percentile(s, 50):7.1f} ms max {s.max():7.1f} | long TTFT p50 "
              f"{np.percentile(lo, 50):7.1f} ms | burst {positions} positions: {positions / r['wall']:7.0f} pos/s "
              f"wall, {positions / r['cpu']:7.0f} pos/CPU-s, {gop / r['wall']:6.1f} GOP/s "
              f"({100 * gop / r['wall'] / peaks['int8']:4.1f}% int8 peak, "
              f"{100 * gop / r['wall'] / peaks['fp32']:4.1f}% fp32 peak)")
        texts = sum(r["texts"])
        print(f"{'':<14} 16 text prompts together ({texts} positions): {texts / r['text_wall']:7.0f} pos/s, "
              f"{prefill_gop(cfg, r['texts']) / r['text_wall']:6.1f} GOP/s")
    print("bare runner, one whole prompt of", args.long_positions, "positions (runner.prefill):")
    from serve_app.engine.loader import open_runner
    x = np.random.default_rng(1).standard_normal((args.long_positions, cfg.decoder.width)).astype(np.float32) * 0.1
    gop = prefill_gop(cfg, [args.long_positions])
    for variant in args.variants:
        runner, _, _ = open_runner(root, EngineConfig(slots=1, max_context=args.long_positions + 1), args.threads,
                                   [variant])
        med, best, cpu = timed(lambda: runner.prefill(0, x), args.seconds)
        print(f"  {variant:<14} median {med:7.1f} ms best {best:7.1f} ms cpu {cpu:7.1f} ms: {gop / best * 1e3:6.1f}"
              f" GOP/s = {100 * gop / best * 1e3 / peaks['int8']:4.1f}% int8 peak, "
              f"{100 * gop / best * 1e3 / peaks['fp32']:4.1f}% fp32 peak")
        if args.op_profile:
            print(f"    {variant}: {op_profile(root, manifest, variant, x, args.threads)}")


def op_profile(root: Path, manifest, variant: str, x: np.ndarray, threads: int, runs: int = 5) -> str:
    """ms per prefill by operator type (ORT's own profile, node kernel times), the six largest."""
    import collections
    import json

    import onnxruntime as ort

    from mmcore.runtime.kv_runner import OrtDecoderRunner

    v = manifest.graphs["decoder"].variants[variant]
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.enable_profiling = threads, True
    so.profile_file_prefix = f"/tmp/bench_prefill_{variant}"
    session = ort.InferenceSession(str(root / v.file), so, providers=["CPUExecutionProvider"])
    runner = OrtDecoderRunner(session, manifest.decoder, 1, x.shape[0] + 1, cache=v.kv_cache)
    runner.prefill(0, x)  # warm-up, counted out below
    for _ in range(runs):
        runner.prefill(0, x)
    by_op, calls = collections.Counter(), 0
    for e in json.load(open(session.end_profiling())):
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
        calls += e.get("cat") == "Session" and e["name"] == "model_run"
    return ", ".join(f"{op} {us / calls / 1e3:.1f} ms" for op, us in by_op.most_common(6))


if __name__ == "__main__":
    main()
