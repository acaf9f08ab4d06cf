"""Soak: mixed load at about 70% of the decoder's capacity for a long while; prints each replica's RSS over time,
errors, and whether the decoder's active slots and queue return to zero afterwards. A script that prints, not a test.

    python benchmarks/bench_soak.py --artifacts DIR --duration-s 600      (or --preset demo: built if missing)

Load: `--clients` closed-loop streaming clients (default 70% of the decoder's slots); every `--image-every`-th
request carries an image (a few distinct ones, so the vision cache both hits and misses). RSS comes from the
replicas' process ids in Ray's actor table (psutil); growth is measured from the first sample after `--warmup-s`
to the last, and must stay under 5%.

`--tracemalloc N` traces the ingress's allocations (N frames per traceback; it slows the ingress, so its RSS figure
is then not the one to judge; `--tracemalloc 0 --native-heap` reads glibc's heap account alone): a baseline is marked
after the warm-up, and at the end the tracebacks that grew most since, the heap's in-use and free bytes, and what
malloc_trim gives back are printed, read through a Serve handle (serve_app/observability/memory_trace.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import math
import os
import socket
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

APP = "mmserve"
MAX_GROWTH = 0.05


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_urls(n: int, size: int = 96) -> list[str]:
    urls = []
    for seed in range(n):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), np.uint8)).save(buf, "PNG")
        urls.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    return urls


def request_body(i: int, model: str, images: list[str], image_every: int, max_tokens: int) -> dict:
    text = {"type": "text", "text": f"request {i}: say something short"}
    content = [{"type": "image_url", "image_url": {"url": images[i % len(images)]}}, text] \
        if image_every and i % image_every == 0 else [text]
    return {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0.7, "seed": i,
            "messages": [{"role": "user", "content": content}]}


async def one(client: httpx.AsyncClient, url: str, body: dict, outcomes: Counter) -> None:
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                outcomes[f"http {r.status_code}"] += 1
                await r.aread()
                return
            last, buf = None, b""
            async for data in r.aiter_bytes():  # SSE events end with a blank line; generated text may hold
                buf += data                      # U+2028 and the like, which a str line splitter would cut at
                *events, buf = buf.split(b"\n\n")
                for ev in events:
                    last = ev.decode()[len("data: "):]
                    if last != "[DONE]" and "error" in json.loads(last):
                        outcomes["stream error chunk"] += 1
                        return
            outcomes["ok" if last == "[DONE]" else "stream cut"] += 1
    except httpx.HTTPError as e:
        outcomes[f"client {type(e).__name__}"] += 1


async def load(url: str, model: str, clients: int, until: float, args) -> Counter:
    outcomes: Counter = Counter()
    images = image_urls(args.distinct_images)
    counter = iter(range(10**9))

    async def client_loop(client: httpx.AsyncClient) -> None:
        while time.monotonic() < until:
            await one(client, url, request_body(next(counter), model, images, args.image_every, args.max_tokens),
                      outcomes)

    async with httpx.AsyncClient(timeout=120) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    return outcomes


def replica_rss() -> dict[str, float]:
    """Replica (deployment#id) -> RSS in MiB, for live replicas of the app."""
    import psutil
    from ray._private import state

    out = {}
    for a in state.actors().values():
        if a["Name"].startswith(f"SERVE_REPLICA::{APP}#") and a["State"] == "ALIVE":
            try:
                out[a["Name"].split("#", 1)[1]] = psutil.Process(a["Pid"]).memory_info().rss / 2**20
            except psutil.Error:
                pass
    return out


async def sample_rss(until: float, period_s: float, samples: list) -> None:
    start = time.monotonic()
    while time.monotonic() < until:
        rss = await asyncio.to_thread(replica_rss)
        samples.append((time.monotonic() - start, rss))
        print(f"t={samples[-1][0]:6.0f}s  " + "  ".join(f"{k}={v:.0f}MiB" for k, v in sorted(rss.items())),
              flush=True)
        await asyncio.sleep(period_s)


def growth_report(samples: list, warmup_s: float) -> bool:
    after = [(t, rss) for t, rss in samples if t >= warmup_s]
    if len(after) < 2:
        print("not enough samples after warm-up to judge growth")
        return False
    ok = True
    for name in sorted(after[0][1]):
        first, last = after[0][1].get(name), after[-1][1].get(name)
        if first is None or last is None:
            print(f"{name}: replaced during the run (no growth figure)")
            continue
        growth = (last - first) / first
        ok &= growth < MAX_GROWTH
        print(f"{name}: {first:.0f} -> {last:.0f} MiB after warm-up ({growth:+.1%}) "
              f"{'ok' if growth < MAX_GROWTH else 'OVER 5%'}")
    return ok


def ingress_memory_trace(action: str, limit: int = 15) -> dict:
    from ray import serve

    return serve.get_deployment_handle("Ingress", APP).memory_trace.remote(action, limit).result()


async def trace_baseline_after(warmup_s: float) -> None:
    await asyncio.sleep(warmup_s)
    traced = await asyncio.to_thread(ingress_memory_trace, "baseline")
    print(f"memory trace baseline: {traced['traced_bytes'] / 2**20:.1f} MiB traced in the ingress; "
          + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in traced["native"].items()), flush=True)


def print_trace_growth(limit: int) -> None:
    growth = ingress_memory_trace("growth", limit)
    print("\ningress C heap (glibc, every arena) now and since the baseline: "
          + ", ".join(f"{k} {now / 2**20:.1f} MiB ({diff / 2**20:+.1f})" for k, (now, diff) in growth["native"].items()))
    trimmed = ingress_memory_trace("trim")
    print(f"malloc_trim(0) in the ingress: RSS {trimmed['rss_before'] / 2**20:.1f} -> "
          f"{trimmed['rss_after'] / 2**20:.1f} MiB")
    if not growth["top"]:
        return
    print(f"ingress Python allocations since the baseline: {growth['total_diff'] / 2**10:+.0f} KiB "
          f"({growth['traced_bytes'] / 2**20:.1f} MiB traced); top {limit} by growth:")
    for stat in growth["top"]:
        print(f"  {stat['size_diff'] / 2**10:+9.1f} KiB {stat['count_diff']:+7d} blocks")
        for frame in stat["traceback"]:
            print(f"      {frame}")


def decoder_drained(timeout_s: float = 15.0) -> dict:
    from ray import serve

    handle = serve.get_deployment_handle("Decoder", APP)
    deadline = time.monotonic() + timeout_s
    while True:
        info = handle.info.remote().result()
        if (info["active"] == 0 and info["waiting"] == 0) or time.monotonic() > deadline:
            return info
        time.sleep(0.5)


def start_service(args) -> tuple[str, str]:
    import ray
    from ray import serve

    from mmcore.manifest import Manifest
    from serve_app import build_app

    from serve_app.artifacts import ModelSource, resolve_model

    # built here (progress lines on this console) rather than in a replica; the replicas then find it in the cache
    artifacts = args.artifacts or str(resolve_model(ModelSource(preset=args.preset,
                                                                cache_dir=str(Path(args.cache_dir).expanduser()))))
    port = free_port()
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"model": {"artifacts_dir": artifacts},
                         "ingress": {"max_images_per_request": 1},
                         "vision": {"max_batch_size": 8, "batch_wait_timeout_s": 0.005},
                         "decoder": {"slots": args.slots, "max_queue": 4 * args.slots}}), name=APP, route_prefix="/")
    return f"http://127.0.0.1:{port}", f"mmserve-{Manifest.read(artifacts).preset}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", help="a built artifact directory (default: build --preset into --cache-dir)")
    p.add_argument("--preset", default="demo")
    p.add_argument("--cache-dir", default="~/.cache/mmserve")
    p.add_argument("--duration-s", type=float, default=600)
    p.add_argument("--warmup-s", type=float, default=60, help="RSS growth is measured after this")
    p.add_argument("--sample-s", type=float, default=30, help="RSS sampling period")
    p.add_argument("--slots", type=int, default=8, help="decoder slots (its capacity)")
    p.add_argument("--clients", type=int, default=None, help="default: 70%% of --slots")
    p.add_argument("--image-every", type=int, default=3, help="every n-th request carries an image (0: none)")
    p.add_argument("--distinct-images", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                   help="trace the ingress's allocations with this many frames and print the top growth")
    p.add_argument("--native-heap", action="store_true",
                   help="read the ingress's C heap account (glibc) alone, without tracemalloc's cost: its growth "
                        "and what malloc_trim gives back")
    args = p.parse_args()
    clients = args.clients or max(1, math.floor(0.7 * args.slots))
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    traced = bool(args.tracemalloc or args.native_heap)
    if traced:  # before ray.init: the replicas inherit it
        os.environ["MMSERVE_TRACEMALLOC"] = str(args.tracemalloc) if args.tracemalloc else "native"

    import ray
    from ray import serve

    url, model = start_service(args)
    try:
        print(f"soak: {clients} clients on {args.slots} decoder slots, {args.duration_s:.0f}s, {model} at {url}")
        began = time.monotonic()
        until = began + args.duration_s
        samples: list = []

        async def run() -> Counter:
            sampler = asyncio.create_task(sample_rss(until, args.sample_s, samples))
            tracer = asyncio.create_task(trace_baseline_after(args.warmup_s)) if traced else None
            outcomes = await load(url, model, clients, until, args)
            await sampler
            if tracer is not None:
                await tracer
            return outcomes

        outcomes = asyncio.run(run())
        samples.append((time.monotonic() - began, replica_rss()))
        total = sum(outcomes.values())
        errors = total - outcomes["ok"]
        print(f"\nrequests: {total} in {time.monotonic() - began:.0f}s ({total / args.duration_s:.1f}/s); "
              f"errors: {errors} {dict(o for o in outcomes.items() if o[0] != 'ok')}")
        growth_ok = growth_report(samples, args.warmup_s)
        if traced:
            print_trace_growth(15)
        info = decoder_drained()
        drained = info["active"] == 0 and info["waiting"] == 0
        print(f"decoder after the load: active={info['active']} waiting={info['waiting']} "
              f"cancelled={info['cancelled']} -> {'drained' if drained else 'NOT DRAINED'}")
        print(f"verdict: errors {'ok' if errors == 0 else 'FAIL'}, RSS growth {'ok' if growth_ok else 'FAIL'}, "
              f"decoder {'ok' if drained else 'FAIL'}")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
