"""Decoder variants side by side, float32 vs quantized KV cache (prints figures; not a test).

For each variant, through the serving runner (OrtDecoderRunner, the cache in the variant's dtype): the bare decode
call at batch B with P cached positions per row (ragged: rows spread over P-32..P+32 unless --equal) and a prefill
of --prefill positions, medians over rounds that alternate the variants (a shared machine's load then hits every
variant alike), in thread CPU time and wall time; and the KV cache per slot: slots per GiB at --max-context.

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


def _timed(call, calls: int) -> tuple[float, float]:
    """Median wall and thread-CPU seconds of `calls` calls. With one ORT thread the graph runs on this thread, so
    CPU time is the work itself, which other processes on a shared machine barely move."""
    wall, cpu = [], []
    for _ in range(calls):
        w, c = time.perf_counter(), time.thread_time()
        call()
        wall.append(time.perf_counter() - w)
        cpu.append(time.thread_time() - c)
    return float(np.median(wall)), float(np.median(cpu))


def _report(label: str, variants: list[str], per: dict[str, list[tuple[float, float]]]) -> None:
    base = float(np.median([c for _, c in per[variants[0]]]))
    for v in variants:
        wall, cpu = (float(np.median(x)) for x in zip(*per[v]))
        print(f"{label} {v:<22} cpu {cpu * 1e3:7.2f} ms  x{base / cpu:4.2f} vs {variants[0]}   "
              f"wall {wall * 1e3:7.2f} ms")


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
    ap.add_argument("--prefill", type=int, default=228, help="prompt positions of the prefill measured")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    for shape in args.shapes:
        b, p = (int(x) for x in shape.split("x"))
        lengths = np.full(b, p, np.int32) if args.equal else rng.integers(p - 32, p + 33, b).astype(np.int32)
        runners = {}
        for v in args.variants:
            runner, manifest = _runner(args.artifacts, v, b, args.threads, args.max_context)
            width = manifest.decoder.hidden_size
            _fill(runner, lengths, width, np.random.default_rng(1))
            runners[v] = runner
        embeds = rng.standard_normal((b, width)).astype(np.float32) * 0.1
        per = {v: [] for v in args.variants}
        for _ in range(args.rounds):
            for v, runner in runners.items():
                per[v].append(_timed(lambda: runner.decode(b, embeds, lengths), args.calls))
        _report(f"decode b{b} @~{p} ({'equal' if args.equal else 'ragged'})", args.variants, per)
    prompt = rng.standard_normal((args.prefill, width)).astype(np.float32) * 0.1  # into an empty slot
    per = {v: [] for v in args.variants}
    for _ in range(args.rounds):
        for v, runner in runners.items():
            per[v].append(_timed(lambda: runner.prefill(0, prompt), max(1, args.calls // 4)))
    _report(f"prefill {args.prefill} positions", args.variants, per)
    for v in args.variants:
        runner, _ = _runner(args.artifacts, v, 1, 1, args.max_context)
        per_slot = runner.cache_bytes / (runner.slots + 1)  # the staging row is one more slot's worth
        print(f"KV cache {v:<22} {per_slot / 2**20:6.2f} MiB per slot at max_context {args.max_context}: "
              f"{GIB / per_slot:6.1f} slots per GiB")


if __name__ == "__main__":
    main()
