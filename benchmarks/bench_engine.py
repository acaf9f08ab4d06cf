"""Decoder engine benchmark (prints figures; not a test).

Measures, in one run, on any family's artifacts (the own `reference` preset, a LLaVA checkpoint's), one or more
decoder variants side by side, with contexts of the model's own image features (manifest prompt.image_features; 196
for the reference preset) + --prompt-positions prompt tokens (32):
  1. engine alone, continuous batching, at 1/4/16/32 concurrent sequences: aggregate tokens/s, p50/p99
     inter-token latency (closed loop: each client sends its next request when the previous one ends; output
     lengths vary, seeded, so batches really have stragglers), over a window the load covers from start to end;
  2. the same load on run-to-completion batching of the same size;
  3. step time vs the bare ORT decode call inside it (the engine's own overhead: inputs, sampling, bookkeeping),
     and the engine on a zero-cost stand-in for the graph: its per-step cost and tokens/s ceiling;
  4. the first token of a short request arriving while 16 long ones run, in decode steps after its arrival and
     after its prefill, continuous and run-to-completion;
  5. with --serve (starts the app here) or --http URL (a running app): the same loads end to end through the
     OpenAI streaming API, as a fraction of the engine-alone figure (the first variant);
  6. with --profile-batch N: one ORT profile per variant of decode steps at batch N over full-length contexts,
     summarized per operator type (serve_app/observability/profile_summary.py).

    python benchmarks/bench_engine.py --artifacts /tmp/artifacts/reference
    python benchmarks/bench_engine.py --artifacts /tmp/artifacts/reference --serve
    (build the artifacts once: mmserve build --preset reference --out /tmp/artifacts/reference)
    python benchmarks/bench_engine.py --artifacts DIR --variants cpu-int8 cpu-int8-kv8 --concurrency 1 8 32 \
        --skip-baseline --profile-batch 32
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from mmcore.manifest import Manifest
from serve_app.engine import Engine, EngineConfig, NullMetrics, load_engine
from serve_app.contract import DecodeRequest, FeatureSegment, TokenSegment

# context shape of every request: one image's features + a prompt; set from the manifest and flags in main()
SHAPE = {"image": 196, "prompt": 32, "vocab": 4000, "max_context": None}


class StepRecorder(NullMetrics):
    def __init__(self):
        self.steps: list[tuple[float, float, int]] = []  # (when, seconds, batch)

    def observe_step(self, seconds: float, batch: int) -> None:
        self.steps.append((time.perf_counter(), seconds, batch))


@dataclass
class LoadResult:
    """Figures over a steady window: clients keep the load up from before it opens until after it closes."""
    start: float = 0.0
    end: float = 0.0
    tokens: int = 0
    itl_s: list[float] = field(default_factory=list)
    ort: list[tuple[float, float]] = field(default_factory=list)  # (when, seconds) of each bare ORT decode call
    steps: list[tuple[float, float, int]] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return self.end - self.start

    def line(self, label: str) -> str:
        itl = np.array(self.itl_s) * 1e3 if self.itl_s else np.zeros(1)
        return (f"{label:<34} {self.tokens / self.wall_s:9.0f} tok/s   ITL p50 {np.percentile(itl, 50):6.2f} ms"
                f"  p99 {np.percentile(itl, 99):7.2f} ms   ({self.tokens} tokens in {self.wall_s:.1f} s)")


SAMPLING = {"temperature": 0.0, "top_p": 1.0}  # greedy unless --temperature/--top-p say otherwise


def make_request(i: int, width: int, max_tokens: int, rng: np.random.Generator) -> DecodeRequest:
    feats = rng.standard_normal((SHAPE["image"], width)).astype(np.float32) * 0.02  # (P,D)
    ids = rng.integers(10, min(4000, SHAPE["vocab"]), SHAPE["prompt"]).tolist()
    return DecodeRequest(f"b{i}", [FeatureSegment(feats), TokenSegment(ids)], max_tokens=max_tokens,
                         ignore_eos=True, seed=i, **SAMPLING)


def config(**kw) -> EngineConfig:
    """Engine config with the benchmark's cache length (a rotary model's max_positions would size it to GBs)."""
    return EngineConfig(max_context=SHAPE["max_context"], **kw)


def instrument(engine, result: LoadResult) -> None:
    """Time the bare ORT decode call inside each step, so step overhead = step time - ORT time."""
    bare = engine.runner.decode

    def timed(n, embeds, lengths):
        t0 = time.perf_counter()
        out = bare(n, embeds, lengths)
        t1 = time.perf_counter()
        result.ort.append((t1, t1 - t0))
        return out

    engine.runner.decode = timed


async def client(engine, c: int, gen: int, result: LoadResult) -> None:
    """Closed loop: the next request as soon as the previous one ends, until the window closes. Output lengths
    are drawn from gen/4..gen with the client's own seed, so every mode sees the same requests."""
    width = engine.embeddings.shape[1]
    rng = np.random.default_rng(1000 + c)
    i = 0
    while time.perf_counter() < result.end:
        req = make_request(1000 * c + i, width, int(rng.integers(gen // 4, gen + 1)), rng)
        i += 1
        stream = engine.generate(req)
        last = None
        try:
            async for chunk in stream:
                now = time.perf_counter()
                if now > result.end:
                    break
                n = len(chunk.token_ids)
                if now >= result.start:
                    result.tokens += n
                    if last is not None and n:
                        result.itl_s.extend([(now - last) / n] * n)  # a coalesced chunk spreads its wait
                last = now
        finally:
            await stream.aclose()


async def run_load(args, variant: str, concurrency: int, scheduling: str) -> LoadResult:
    recorder = StepRecorder()
    engine = load_engine(args.artifacts, config(slots=concurrency, scheduling=scheduling, max_queue=concurrency),
                         threads=args.threads, prefer=[variant], metrics=recorder)
    await warm(engine)
    if engine.variant != variant:
        print(f"    (variant {variant} not built: running {engine.variant})")
    now = time.perf_counter()
    result = LoadResult(start=now + args.ramp_s, end=now + args.ramp_s + args.duration_s)
    instrument(engine, result)
    await asyncio.gather(*(client(engine, c, args.gen, result) for c in range(concurrency)))
    in_window = lambda when: result.start <= when <= result.end  # noqa: E731
    result.ort = [o for o in result.ort if in_window(o[0])]
    result.steps = [st for st in recorder.steps if in_window(st[0])]
    await engine.close()
    return result


async def warm(engine) -> None:
    req = make_request(-1, engine.embeddings.shape[1], 4, np.random.default_rng(9))
    async for _ in engine.generate(req):
        pass


def overhead_line(r: LoadResult) -> str:
    if not r.steps or not r.ort:
        return ""
    step_ms = 1e3 * sum(st[1] for st in r.steps) / len(r.steps)
    ort_ms = 1e3 * sum(o[1] for o in r.ort) / len(r.ort)
    cycle_ms = 1e3 * r.wall_s / len(r.ort)  # wall per decode step, prefills and admissions included
    batch = sum(st[2] for st in r.steps) / len(r.steps)
    return (f"    mean batch {batch:5.1f}  ORT decode {ort_ms:6.3f} ms  step {step_ms:6.3f} ms "
            f"(overhead {step_ms - ort_ms:5.3f} ms, {100 * (step_ms - ort_ms) / step_ms:4.1f}%)  "
            f"wall/step {cycle_ms:6.3f} ms (+ prefills of arrivals)")


class InstantRunner:
    """The real runner's shapes with no graph behind it: what the engine alone costs per step (inputs, sampling,
    bookkeeping, detokenizing and streaming), i.e. its ceiling if ORT took no time."""

    def __init__(self, real):
        self.slots, self.max_context, self.vocab_size = real.slots, real.max_context, real.vocab_size
        self._logits = np.random.default_rng(0).standard_normal((real.slots, real.vocab_size)).astype(np.float32)

    def prefill_rows(self, lo, chunks, starts):
        return self._logits[:len(chunks)]

    def decode(self, n, embeds, lengths):
        return self._logits[:n]

    def move(self, src, dst, length):
        pass


async def engine_ceiling(args, concurrency: int) -> str:
    real = load_engine(args.artifacts, config(slots=concurrency, max_queue=concurrency), prefer=[args.variant])
    engine = Engine(InstantRunner(real.runner), real.embeddings, real.tokenizer, real.eos_ids,
                    config(slots=concurrency, max_queue=concurrency))
    now = time.perf_counter()
    result = LoadResult(start=now + 0.5, end=now + 2.5)
    steps0 = 0

    async def count_from_window():
        nonlocal steps0
        await asyncio.sleep(result.start - time.perf_counter())
        steps0 = engine.steps

    await asyncio.gather(count_from_window(), *(client(engine, c, args.gen, result) for c in range(concurrency)))
    steps = engine.steps - steps0
    await engine.close()
    return (f"    engine without the graph x{concurrency}: {1e3 * result.wall_s / max(steps, 1):.3f} ms per step "
            f"({result.tokens / result.wall_s:.0f} tok/s ceiling)")


async def drain(stream) -> None:
    async for _ in stream:
        pass


async def short_request_ttft(artifacts, variant, gen, threads, scheduling: str) -> str:
    """16 long sequences decoding; a short request arrives: decode steps from its arrival and from its prefill to
    its first token."""
    engine = load_engine(artifacts, config(slots=17, scheduling=scheduling), threads=threads, prefer=[variant])
    width = engine.embeddings.shape[1]
    rng = np.random.default_rng(3)
    await warm(engine)
    longs = [asyncio.create_task(drain(engine.generate(make_request(i, width, 4 * gen, rng)))) for i in range(16)]
    while len(engine.scheduler.active) < 16 or engine.steps < 20:
        await asyncio.sleep(0.001)
    prefill_steps = []  # engine.steps when each prefill ran: after this point only the short request's
    bare_prefill = engine.runner.prefill_rows
    engine.runner.prefill_rows = lambda *a: (prefill_steps.append(engine.steps), bare_prefill(*a))[1]
    steps0, t0 = engine.steps, time.perf_counter()
    stream = engine.generate(make_request(99, width, 8, rng))
    await anext(stream)
    steps, ms = engine.steps - steps0, 1e3 * (time.perf_counter() - t0)
    await stream.aclose()
    for task in longs:
        task.cancel()
    await asyncio.gather(*longs, return_exceptions=True)
    await engine.close()
    after_prefill = steps0 + steps - prefill_steps[-1]
    return (f"short request under 16 long ones ({scheduling}): first token {steps} decode steps after arrival, "
            f"{after_prefill} after its prefill; {ms:.1f} ms")


async def main_async(args) -> None:
    print(f"decoder variants {' '.join(args.variants)}, {args.threads} ORT thread(s), temperature {args.temperature} "
          f"top_p {args.top_p}, contexts {SHAPE['image']}+{SHAPE['prompt']} positions, outputs "
          f"{args.gen // 4}..{args.gen} tokens, closed-loop clients, {args.duration_s:.0f} s window after "
          f"{args.ramp_s:.0f} s ramp")
    figures: dict[str, dict[int, float]] = {}  # variant -> concurrency -> tok/s
    for c in ([] if args.skip_engine else args.concurrency):
        for variant in args.variants:
            cont = await run_load(args, variant, c, "continuous")
            figures.setdefault(variant, {})[c] = cont.tokens / cont.wall_s
            print(cont.line(f"{variant} continuous x{c}"))
            print(overhead_line(cont))
            if not args.skip_baseline:
                rtc = await run_load(args, variant, c, "run_to_completion")
                print(rtc.line(f"{variant} run-to-completion x{c}"))
        if not args.skip_ceiling:
            print(await engine_ceiling(args, c))
    if figures:
        print(side_by_side(figures))
    if not (args.skip_engine or args.skip_ttft):
        for scheduling in ("continuous", "run_to_completion"):
            print(await short_request_ttft(args.artifacts, args.variant, args.gen, args.threads, scheduling))
    if args.profile_batch:
        from bench_profile import profile_decode  # noqa: PLC0415

        for variant in args.variants:
            print(profile_decode(args.artifacts, variant, args.profile_batch, SHAPE["image"] + SHAPE["prompt"],
                                 args.threads, args.profile_steps))
    engine_figures = figures.get(args.variant, {})
    if args.serve:
        from bench_http import start_local_app  # noqa: PLC0415 -- only for the e2e part

        streaming = {k: v for k, v in (("stream_interval_s", args.stream_interval_s),
                                       ("max_chunk_rate", args.max_chunk_rate)) if v is not None}
        args.http = start_local_app(args.artifacts, args.variant, max(args.concurrency), args.threads, streaming)
    if args.http:
        from bench_http import run_http_loads  # noqa: PLC0415

        await run_http_loads(args, engine_figures)


def side_by_side(figures: dict[str, dict[int, float]]) -> str:
    """Aggregate tokens/s, one column per variant, one row per concurrency."""
    variants = list(figures)
    lines = [f"{'aggregate tok/s':<18}" + "".join(f"{v:>16}" for v in variants)]
    for c in sorted({c for f in figures.values() for c in f}):
        lines.append(f"{'x' + str(c):<18}" + "".join(f"{figures[v].get(c, float('nan')):>16.1f}" for v in variants))
    return "\n".join(lines)


def shape_from_manifest(args) -> None:
    m = Manifest.read(args.artifacts)
    image = args.image_positions if args.image_positions is not None else m.prompt.image_features
    SHAPE.update(image=image, prompt=args.prompt_positions, vocab=m.decoder.vocab_size,
                 max_context=min(m.decoder.max_positions, image + args.prompt_positions + 4 * args.gen + 8))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", required=True, help="artifact directory (any family)")
    p.add_argument("--variants", nargs="+", default=["cpu-int8"],
                   help="decoder variants to run side by side; the first for TTFT and the e2e part")
    p.add_argument("--image-positions", type=int, default=None,
                   help="image features per request (default: the manifest's prompt.image_features)")
    p.add_argument("--prompt-positions", type=int, default=32, help="prompt tokens per request")
    p.add_argument("--skip-ceiling", action="store_true", help="skip the engine-without-graph ceiling")
    p.add_argument("--skip-ttft", action="store_true", help="skip the short-request first-token figures")
    p.add_argument("--profile-batch", type=int, default=0, help="also profile decode steps at this batch (ORT)")
    p.add_argument("--profile-steps", type=int, default=5, help="decode steps profiled per variant")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature of every request (0 greedy)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus of every request")
    p.add_argument("--threads", type=int, default=1, help="ORT intra-op threads of the decoder (1 = one replica's)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    p.add_argument("--gen", type=int, default=256, help="longest output; outputs are drawn from gen/4..gen")
    p.add_argument("--duration-s", type=float, default=8.0, help="measurement window per load")
    p.add_argument("--ramp-s", type=float, default=2.0, help="load before the window opens (batch fills)")
    p.add_argument("--skip-baseline", action="store_true", help="skip the run-to-completion comparison")
    p.add_argument("--http", default=None, help="base URL of a running app: also measure end to end")
    p.add_argument("--serve", action="store_true", help="start the app in Ray Serve here and measure it (e2e)")
    p.add_argument("--stream-interval-s", type=float, default=None, help="--serve: Decoder stream_interval_s")
    p.add_argument("--max-chunk-rate", type=float, default=None, help="--serve: Decoder max_chunk_rate")
    p.add_argument("--skip-engine", action="store_true", help="only the e2e part (with --http or --serve)")
    p.add_argument("--model", default=None, help="model id for --http (default: the first of /v1/models)")
    args = p.parse_args()
    SAMPLING.update(temperature=args.temperature, top_p=args.top_p)
    args.variant = args.variants[0]  # bench_http's start_local_app and the TTFT part run one variant
    shape_from_manifest(args)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
