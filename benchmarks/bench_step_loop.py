"""Where the decoder's step thread spends its time (prints figures; not a test).

The engine under closed-loop clients (228-position contexts: 196 image features + 32 prompt tokens, outputs drawn
from gen/4..gen), every phase of the step thread wrapped and timed twice: wall time, and the thread's own CPU time
(with one ORT thread the graph runs on the calling thread, so CPU time is the work itself, which other processes
on a shared machine barely move). Phases: the ORT decode call, ORT prefills of arrivals, cache moves (staged
prompts into their slot, compaction on retire), sampling, publishing reports; `other` is the rest of a step.

    python benchmarks/bench_step_loop.py --artifacts /tmp/artifacts/reference --variants cpu-int8 cpu-int8-kv8
    --lazy-cache also runs each load over a lazily mapped cache (the zeroing write skipped: pages faulted in on first
    write, as the runner allocated it before), to show what mapping it at load removes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import make_request  # noqa: E402

import mmcore.runtime.kv_runner as runner_module  # noqa: E402
import serve_app.engine.stepper as stepper_module  # noqa: E402
from serve_app.engine import EngineConfig, load_engine  # noqa: E402

PHASES = ("ort decode", "ort prefill", "cache move", "sampling", "publish")


class PhaseClock:
    def __init__(self):
        self.wall, self.cpu, self.calls = collections.Counter(), collections.Counter(), collections.Counter()

    def wrap(self, fn, key: str):
        def timed(*a, **k):
            w, c = time.perf_counter(), time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                self.wall[key] += time.perf_counter() - w
                self.cpu[key] += time.thread_time() - c
                self.calls[key] += 1
        return timed


async def run(artifacts: str, variant: str, concurrency: int, gen: int, seconds: float) -> str:
    engine = load_engine(artifacts, EngineConfig(slots=concurrency, max_queue=concurrency), prefer=[variant])
    clock, runner, loop = PhaseClock(), engine.runner, engine._steps
    for name, key in (("decode", "ort decode"), ("prefill", "ort prefill"), ("move", "cache move")):
        setattr(runner, name, clock.wrap(getattr(runner, name), key))
    loop._step, loop.publish = clock.wrap(loop._step, "step"), clock.wrap(loop.publish, "publish")
    real_sample = stepper_module.next_tokens
    stepper_module.next_tokens = clock.wrap(real_sample, "sampling")
    tokens, end = 0, time.perf_counter() + seconds

    async def client(c: int) -> None:
        nonlocal tokens
        rng, i = np.random.default_rng(1000 + c), 0
        while time.perf_counter() < end:
            req = make_request(1000 * c + i, engine.embeddings.shape[1], int(rng.integers(gen // 4, gen + 1)), rng)
            i += 1
            async for chunk in engine.generate(req):
                tokens += len(chunk.token_ids)
    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(client(c) for c in range(concurrency)))
    finally:
        wall = time.perf_counter() - t0
        stepper_module.next_tokens = real_sample
        await engine.close()
    steps, cpu = max(1, loop.steps), clock.cpu["step"]
    lines = [f"  {tokens / wall:6.0f} tokens/s wall, {tokens / cpu:6.0f} tokens per step-thread CPU second "
             f"({loop.steps} decode steps, {wall:.1f} s)"]
    for key in PHASES:
        lines.append(f"    {key:12s} cpu {1e3 * clock.cpu[key] / steps:7.2f} ms/step {100 * clock.cpu[key] / cpu:5.1f}%"
                     f"   wall {1e3 * clock.wall[key] / steps:7.2f} ms/step   ({clock.calls[key]} calls)")
    rest = cpu - sum(clock.cpu[k] for k in PHASES)
    lines.append(f"    {'other':12s} cpu {1e3 * rest / steps:7.2f} ms/step {100 * rest / cpu:5.1f}%")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", required=True, help="artifact directory of the reference preset")
    ap.add_argument("--variants", nargs="+", default=["cpu-int8", "cpu-int8-kv8"])
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--gen", type=int, default=128, help="longest output; outputs are drawn from gen/4..gen")
    ap.add_argument("--seconds", type=float, default=12.0, help="clients start requests for this long")
    ap.add_argument("--lazy-cache", action="store_true", help="also run each over a lazily mapped cache")
    args = ap.parse_args()
    resident = runner_module._map_pages
    for variant in args.variants:
        for lazy in ((True, False) if args.lazy_cache else (False,)):
            runner_module._map_pages = (lambda arr: None) if lazy else resident
            print(f"{variant} x{args.concurrency}{' (cache: lazy zeros)' if lazy else ''}:")
            print(asyncio.run(run(args.artifacts, variant, args.concurrency, args.gen, args.seconds)), flush=True)
    runner_module._map_pages = resident


if __name__ == "__main__":
    main()
