"""Decoder engine benchmark (prints figures; not a test).

Measures, in one run, on the `reference` preset's decoder (cpu-int8 when built) with 228-position contexts
(196 image features + 32 prompt tokens):
  1. engine alone, continuous batching, at 1/4/16/32 concurrent sequences: aggregate tokens/s, p50/p99
     inter-token latency (closed loop: each client sends its next request when the previous one ends; output
     lengths vary, seeded, so batches really have stragglers);
  2. the same load on run-to-completion batching of the same size;
  3. step time vs the bare ORT decode call inside it (the engine's own overhead);
  4. the first token of a short request arriving while 16 long ones run, in decode steps and ms;
  5. with --serve (starts the app here) or --http URL (a running app): the same loads end to end through the
     OpenAI streaming API, as a fraction of the engine-alone figure.

    python benchmarks/bench_engine.py --artifacts /tmp/artifacts/reference
    python benchmarks/bench_engine.py --artifacts /tmp/artifacts/reference --serve
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from serve_app.engine import EngineConfig, NullMetrics, load_engine
from serve_app.stages.messages import DecodeRequest

IMAGE_POSITIONS, TEXT_POSITIONS = 196, 32  # 228-position contexts: one 224px image (14x14 patches) + a prompt


class StepRecorder(NullMetrics):
    def __init__(self):
        self.steps: list[tuple[float, int]] = []  # (seconds, batch)

    def observe_step(self, seconds: float, batch: int) -> None:
        self.steps.append((seconds, batch))


@dataclass
class LoadResult:
    tokens: int = 0
    wall_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    ort_s: float = 0.0
    decode_calls: int = 0
    steps: list[tuple[float, int]] = field(default_factory=list)

    def line(self, label: str) -> str:
        itl = np.array(self.itl_s) * 1e3 if self.itl_s else np.zeros(1)
        return (f"{label:<34} {self.tokens / self.wall_s:9.0f} tok/s   ITL p50 {np.percentile(itl, 50):6.2f} ms"
                f"  p99 {np.percentile(itl, 99):7.2f} ms   ({self.tokens} tokens, {self.wall_s:.2f} s)")


def make_request(i: int, width: int, max_tokens: int, rng: np.random.Generator) -> DecodeRequest:
    feats = rng.standard_normal((IMAGE_POSITIONS, width)).astype(np.float32) * 0.02  # (196,D)
    ids = rng.integers(10, 4000, TEXT_POSITIONS).tolist()
    return DecodeRequest(f"b{i}", ids, feats, max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def output_lengths(n: int, gen: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(gen // 4, gen + 1, n).tolist()  # (n,) varied, same for both modes


def instrument(engine) -> LoadResult:
    """Time the bare ORT decode call inside each step, so step overhead = step time - ORT time."""
    result = LoadResult()
    bare = engine.runner.decode

    def timed(n, embeds, lengths):
        t0 = time.perf_counter()
        out = bare(n, embeds, lengths)
        result.ort_s += time.perf_counter() - t0
        result.decode_calls += 1
        return out

    engine.runner.decode = timed
    return result


async def client(engine, reqs: list[DecodeRequest], result: LoadResult) -> None:
    for req in reqs:
        last = None
        async for chunk in engine.generate(req):
            now = time.perf_counter()
            n = len(chunk.token_ids)
            if last is not None and n:
                result.itl_s.extend([(now - last) / n] * n)  # a coalesced chunk spreads its wait over its tokens
            last = now
            result.tokens += n


async def run_load(artifacts, variant, concurrency, per_client, gen, scheduling) -> LoadResult:
    recorder = StepRecorder()
    engine = load_engine(artifacts, EngineConfig(slots=concurrency, scheduling=scheduling, max_queue=concurrency),
                         prefer=[variant], metrics=recorder)
    width = engine.embeddings.shape[1]
    rng = np.random.default_rng(0)
    lengths = output_lengths(concurrency * per_client, gen, seed=1)
    reqs = [make_request(i, width, lengths[i], rng) for i in range(len(lengths))]
    await warm(engine, width)
    if engine.variant != variant:
        print(f"    (variant {variant} not built: running {engine.variant})")
    result = instrument(engine)
    t0 = time.perf_counter()
    await asyncio.gather(*(client(engine, reqs[c::concurrency], result) for c in range(concurrency)))
    result.wall_s = time.perf_counter() - t0
    result.steps = recorder.steps[-result.decode_calls:] if result.decode_calls else []
    await engine.close()
    return result


async def warm(engine, width) -> None:
    req = make_request(-1, width, 4, np.random.default_rng(9))
    async for _ in engine.generate(req):
        pass


def overhead_line(r: LoadResult) -> str:
    if not r.steps:
        return ""
    step_ms = 1e3 * sum(s for s, _ in r.steps) / len(r.steps)
    ort_ms = 1e3 * r.ort_s / r.decode_calls
    cycle_ms = 1e3 * r.wall_s / r.decode_calls  # wall per decode step, prefills included
    batch = sum(b for _, b in r.steps) / len(r.steps)
    return (f"    mean batch {batch:5.1f}  ORT decode {ort_ms:6.3f} ms  step {step_ms:6.3f} ms "
            f"(overhead {step_ms - ort_ms:5.3f} ms, {100 * (step_ms - ort_ms) / step_ms:4.1f}%)  "
            f"wall/step {cycle_ms:6.3f} ms (prefills, streaming)")


async def short_request_ttft(artifacts, variant, gen) -> str:
    """16 long sequences decoding; a short request arrives: how many decode steps until its first token."""
    engine = load_engine(artifacts, EngineConfig(slots=17), prefer=[variant])
    width = engine.embeddings.shape[1]
    rng = np.random.default_rng(3)
    await warm(engine, width)
    longs = [asyncio.create_task(client(engine, [make_request(i, width, 4 * gen, rng)], LoadResult()))
             for i in range(16)]
    while len(engine.scheduler.active) < 16 or engine.steps < 20:
        await asyncio.sleep(0.001)
    short = make_request(99, width, 8, rng)
    steps0, t0 = engine.steps, time.perf_counter()
    stream = engine.generate(short)
    await anext(stream)
    steps, ms = engine.steps - steps0, 1e3 * (time.perf_counter() - t0)
    await stream.aclose()
    for task in longs:
        task.cancel()
    await asyncio.gather(*longs, return_exceptions=True)
    await engine.close()
    return (f"short request under 16 long ones: first token after {steps} decode steps from arrival, "
            f"{ms:.1f} ms (its prefill included; the first token comes from the prefill itself)")


async def main_async(args) -> None:
    print(f"decoder variant {args.variant}, contexts {IMAGE_POSITIONS}+{TEXT_POSITIONS} positions, "
          f"outputs {args.gen // 4}..{args.gen} tokens, {args.per_client} requests per client")
    engine_figures: dict[int, float] = {}
    for c in ([] if args.skip_engine else args.concurrency):
        cont = await run_load(args.artifacts, args.variant, c, args.per_client, args.gen, "continuous")
        engine_figures[c] = cont.tokens / cont.wall_s
        print(cont.line(f"engine continuous   x{c}"))
        print(overhead_line(cont))
        if not args.skip_baseline:
            rtc = await run_load(args.artifacts, args.variant, c, args.per_client, args.gen, "run_to_completion")
            print(rtc.line(f"engine run-to-completion x{c}"))
    if not args.skip_engine:
        print(await short_request_ttft(args.artifacts, args.variant, args.gen))
    if args.serve:
        from bench_http import start_local_app  # noqa: PLC0415 -- only for the e2e part

        args.http = start_local_app(args.artifacts, args.variant, max(args.concurrency))
    if args.http:
        from bench_http import run_http_loads  # noqa: PLC0415

        await run_http_loads(args, engine_figures)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", required=True, help="artifact directory of the reference preset")
    p.add_argument("--variant", default="cpu-int8", help="decoder variant to run")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    p.add_argument("--gen", type=int, default=256, help="longest output; outputs are drawn from gen/4..gen")
    p.add_argument("--per-client", type=int, default=3, help="requests each closed-loop client sends")
    p.add_argument("--skip-baseline", action="store_true", help="skip the run-to-completion comparison")
    p.add_argument("--http", default=None, help="base URL of a running app: also measure end to end")
    p.add_argument("--serve", action="store_true", help="start the app in Ray Serve here and measure it (e2e)")
    p.add_argument("--skip-engine", action="store_true", help="only the e2e part (with --http or --serve)")
    p.add_argument("--model", default=None, help="model id for --http (default: the first of /v1/models)")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
