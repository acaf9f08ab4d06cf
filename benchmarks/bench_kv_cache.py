"""Decoder variants side by side, float32 vs quantized KV cache (prints figures; not a test).

For each variant, through the serving runner (OrtDecoderRunner, the cache in the variant's dtype): the bare decode
call at batch B with P cached positions per row (ragged: rows spread over P-32..P+32 unless --equal), the median
over rounds that alternate the variants (a shared machine's load then hits every variant alike); and the KV cache
per slot: slots per GiB at --max-context.

    python benchmarks/bench_kv_cache.py --artifacts /tmp/artifacts/reference
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from serve_app.engine import EngineConfig
from serve_app.engine.loader import open_runner

GIB = 1 << 30


def _runner(artifacts: str, variant: str, slots: int, threads: int, max_context: int):
    runner, name, manifest = open_runner(artifacts, EngineConfig(slots=slots, max_context=max_context), threads,
                                         prefer=[variant])
    assert name == variant, f"{artifacts}: no decoder variant {variant} (have {name})"
    return runner, manifest


def _fill(runner, lengths: np.ndarray, width: int, rng) -> None:
    for slot, n in enumerate(lengths):
        runner.prefill(slot, rng.standard_normal((int(n), width)).astype(np.float32) * 0.1)


def _timed_decode(runner, lengths: np.ndarray, embeds: np.ndarray, calls: int) -> float:
    """Median seconds of `calls` decode calls at the same positions (the cache is rewritten in place)."""
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        runner.decode(len(lengths), embeds, lengths)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--variants", nargs="+", default=["cpu-int8", "cpu-int8-kv8"])
    ap.add_argument("--shapes", nargs="+", default=["8x200", "32x228", "32x400"], help="BATCHxPAST")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=20, help="decode calls per round")
    ap.add_argument("--equal", action="store_true", help="every row at the same length (default ragged)")
    ap.add_argument("--max-context", type=int, default=512)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    for shape in args.shapes:
        b, p = (int(x) for x in shape.split("x"))
        lengths = np.full(b, p, np.int32) if args.equal else rng.integers(p - 32, p + 33, b).astype(np.int32)
        runners = {}
        for v in args.variants:
            runner, manifest = _runner(args.artifacts, v, b, args.threads, args.max_context)
            width = int(manifest.model["decoder"]["width"])
            _fill(runner, lengths, width, np.random.default_rng(1))
            runners[v] = runner
        embeds = rng.standard_normal((b, width)).astype(np.float32) * 0.1
        per = {v: [] for v in args.variants}
        for _ in range(args.rounds):
            for v, runner in runners.items():
                per[v].append(_timed_decode(runner, lengths, embeds, args.calls))
        base = float(np.median(per[args.variants[0]]))
        for v in args.variants:
            t = float(np.median(per[v]))
            print(f"decode batch {b:>2} past ~{p} ({'equal' if args.equal else 'ragged'}) {v:<22} "
                  f"{t * 1e3:7.3f} ms  x{base / t:4.2f} vs {args.variants[0]}  ({b / t:,.0f} tokens/s bare)")
    for v in args.variants:
        runner, _ = _runner(args.artifacts, v, 1, 1, args.max_context)
        per_slot = runner.cache_bytes / (runner.slots + 1)  # the staging row is one more slot's worth
        print(f"KV cache {v:<22} {per_slot / 2**20:6.2f} MiB per slot at max_context {args.max_context}: "
              f"{GIB / per_slot:6.1f} slots per GiB")


if __name__ == "__main__":
    main()
