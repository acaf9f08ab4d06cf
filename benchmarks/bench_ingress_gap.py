"""Do large request bodies stall the streams the ingress is serving? The inter-chunk gap of running streams, without
and then with ~50 MB bodies arriving. A script that prints, not a test.

    python benchmarks/bench_ingress_gap.py --preset tiny --duration-s 20

The ingress parses, validates, renders and tokenizes every request, and relays every stream's chunks on one event
loop; work done on that loop for a 50 MB body (a base64 image, about the default body limit) delays every chunk due
meanwhile. Load: `--streams` closed-loop clients with long streamed answers (ignore_eos), for `--duration-s` alone,
then as long again while `--big-senders` threads post big bodies back to back (an image over preprocess's byte limit:
the ingress does all its own work on it, the preprocess stage refuses it by size, 400). The big bodies go out from
threads with their own connections, so sending them does not delay reading the streams in this process.
Printed: p50 / p99 / max gap between two content chunks of one stream, for each phase, and how many big bodies were
answered (with which statuses) in the second.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_http import start_local_app  # noqa: E402 -- a sibling script

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def big_body(model: str, megabytes: float) -> bytes:
    """A chat request whose image data URL is `megabytes` of base64 (a PNG signature, then random bytes)."""
    raw = PNG_SIGNATURE + np.random.default_rng(0).bytes(int(megabytes * 1e6 * 3 / 4))
    url = "data:image/png;base64," + base64.b64encode(raw).decode()
    return json.dumps({"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what is this?"}]}]}).encode()


def stream_body(model: str, max_tokens: int, i: int) -> dict:
    return {"model": model, "stream": True, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.7,
            "seed": i, "messages": [{"role": "user", "content": f"stream {i}: tell a long story"}]}


async def one_stream(client: httpx.AsyncClient, url: str, body: dict, gaps: list[float], until: float) -> None:
    last = None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"stream: HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            now = time.perf_counter()
            if now > until:
                return  # closing the connection cancels the rest
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("choices") and event["choices"][0]["delta"].get("content") is not None:
                if last is not None:
                    gaps.append(now - last)
                last = now


async def streams_for(url: str, model: str, n: int, max_tokens: int, seconds: float) -> list[float]:
    """Gaps between content chunks of `n` closed-loop streaming clients over `seconds`."""
    gaps: list[float] = []
    until = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=n + 2)) as client:
        async def loop(c: int):
            i = c
            while time.perf_counter() < until:
                await one_stream(client, url, stream_body(model, max_tokens, i), gaps, until)
                i += n
        await asyncio.gather(*(loop(c) for c in range(n)))
    return gaps


def send_big_bodies(url: str, body: bytes, stop: threading.Event, statuses: Counter) -> None:
    with httpx.Client(timeout=300, headers={"Content-Type": "application/json"}) as client:
        while not stop.is_set():
            statuses[client.post(f"{url}/v1/chat/completions", content=body).status_code] += 1


def report(name: str, gaps: list[float]) -> str:
    g = np.array(gaps or [0.0]) * 1e3
    return (f"{name:<28} chunk gap p50 {np.percentile(g, 50):7.1f} ms   p99 {np.percentile(g, 99):7.1f} ms   "
            f"max {g.max():7.1f} ms   ({len(gaps)} gaps)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", help="a built artifact directory (default: build --preset into --cache-dir)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--cache-dir", default="~/.cache/mmserve")
    p.add_argument("--variant", default="cpu-fp32", help="decoder graph variant")
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=100, help="per stream (ignore_eos); within the context")
    p.add_argument("--duration-s", type=float, default=30, help="each phase")
    p.add_argument("--body-mb", type=float, default=50, help="size of each big body's base64 image, in MB")
    p.add_argument("--big-senders", type=int, default=2, help="threads posting big bodies back to back")
    args = p.parse_args()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")

    import ray
    from ray import serve

    from mmcore.manifest import Manifest
    from serve_app.artifacts import ModelSource, resolve_model

    artifacts = args.artifacts or str(resolve_model(ModelSource(
        preset=args.preset, cache_dir=str(Path(args.cache_dir).expanduser()))))
    model = f"mmserve-{Manifest.read(artifacts).preset}"
    url = start_local_app(artifacts, args.variant, args.streams)
    try:
        body = big_body(model, args.body_mb)
        with httpx.Client(timeout=300) as client:  # warm: the first requests pay for connections and imports
            print(f"one big body ({len(body) / 1e6:.1f} MB): HTTP "
                  f"{client.post(f'{url}/v1/chat/completions', content=body).status_code}")
        asyncio.run(streams_for(url, model, args.streams, 8, 3.0))
        quiet = asyncio.run(streams_for(url, model, args.streams, args.max_tokens, args.duration_s))
        stop, statuses = threading.Event(), Counter()
        senders = [threading.Thread(target=send_big_bodies, args=(url, body, stop, statuses), daemon=True)
                   for _ in range(args.big_senders)]
        for t in senders:
            t.start()
        loaded = asyncio.run(streams_for(url, model, args.streams, args.max_tokens, args.duration_s))
        stop.set()
        for t in senders:
            t.join()
        print(f"{args.streams} streams, {args.duration_s:.0f} s per phase, {model} ({args.variant})")
        print(report("without big bodies", quiet))
        print(report(f"with {args.body_mb:.0f} MB bodies", loaded) +
              f"   big bodies answered: {sum(statuses.values())} {dict(statuses)}")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
