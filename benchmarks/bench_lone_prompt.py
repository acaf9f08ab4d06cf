"""A lone prompt's first token with and without `lone_prompt_logits` (prints figures; not a test).

    python benchmarks/bench_lone_prompt.py --artifacts DIR [--variant cpu-int8] [--threads 2] [--prompt 30]

Two engines on the same artifacts, one with the option on and one off; one request at a time (so each prompt is its
step's only decode row), alternating between them `--rounds` times, the first two of each dropped (warm-up). With the
option on, the prompt is prefilled with its last position and that call's logits give the first token; off, the last
position goes through a decode call of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

from mmcore.manifest import Manifest
from mmcore.runtime.int8_kernels import cpu_model, reported_isa
from serve_app.contract import DecodeRequest, TokenSegment
from serve_app.engine import EngineConfig, load_engine


async def first_token_s(engine, ids: list[int], i: int) -> float:
    start = time.perf_counter()
    async for _ in engine.generate(DecodeRequest(f"r{i}", [TokenSegment(ids)], max_tokens=2, temperature=0.0,
                                                 ignore_eos=True)):
        return time.perf_counter() - start
    raise RuntimeError("no token")


async def run(args) -> dict[bool, list[float]]:
    engines = {lone: load_engine(args.artifacts, EngineConfig(slots=4, lone_prompt_logits=lone), args.threads,
                                 [args.variant]) for lone in (False, True)}
    vocab = Manifest.read(args.artifacts).decoder.vocab_size
    ids = np.random.default_rng(0).integers(min(100, vocab // 2), min(5000, vocab), args.prompt).tolist()
    times: dict[bool, list[float]] = {False: [], True: []}
    try:
        for i in range(args.rounds):
            for lone, engine in engines.items():
                times[lone].append(await first_token_s(engine, ids, i))
    finally:
        for engine in engines.values():
            await engine.close()
    return times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--variant", default="cpu-int8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=30, help="prompt tokens")
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args(argv)
    print(f"{cpu_model()}; {reported_isa()}; {args.variant}, {args.threads} ORT threads, {args.prompt}-token prompt")
    for lone, ts in asyncio.run(run(args)).items():
        ms = np.array(ts[2:]) * 1e3
        print(f"lone_prompt_logits={lone!s:<5}: first token p50 {np.median(ms):6.1f} ms, min {ms.min():6.1f} ms "
              f"(n={len(ms)})")


if __name__ == "__main__":
    main()
