"""End-to-end part of bench_engine (--http): the same closed-loop loads through the OpenAI streaming API.

Every request carries the same 224px image (the vision stage's content-hash cache serves it after the first) and a
prompt of about 32 tokens, so contexts match the engine-alone loads. Tokens are counted from the usage block of
the last chunk; a chunk may carry several tokens when the stream coalesces them, so latency is reported per chunk
and per token (chunk gap spread over the chunk's share of tokens).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time

import httpx
import numpy as np
from PIL import Image

PROMPT = ("describe the image in a few words, then say what is on the left and what is on the right of it, "
          "and answer in one short sentence please")


def image_url(size: int = 224) -> str:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def body(model: str, max_tokens: int, image: str) -> dict:
    content = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": PROMPT}]
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0.0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}


async def one_stream(client: httpx.AsyncClient, url: str, payload: dict, gaps: list[float]) -> tuple[int, int]:
    """-> (completion tokens, content chunks)."""
    tokens = chunks = 0
    last = None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=payload) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            if event.get("choices") and event["choices"][0]["delta"].get("content") is not None:
                now = time.perf_counter()
                if last is not None:
                    gaps.append(now - last)
                last = now
                chunks += 1
    return tokens, chunks


async def http_load(url: str, model: str, concurrency: int, lengths: list[int]) -> str:
    image = image_url()
    gaps: list[float] = []
    totals = [0, 0]
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await one_stream(client, url, body(model, 4, image), [])  # warm: vision cache, connections

        async def client_loop(mine: list[int]):
            for n in mine:
                t, c = await one_stream(client, url, body(model, n, image), gaps)
                totals[0] += t
                totals[1] += c

        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(lengths[c::concurrency]) for c in range(concurrency)))
        wall = time.perf_counter() - t0
    g = np.array(gaps or [0.0]) * 1e3
    per_token = g.mean() * totals[1] / max(totals[0], 1)
    return (f"{'http e2e streaming   x' + str(concurrency):<34} {totals[0] / wall:9.0f} tok/s   "
            f"chunk gap p50 {np.percentile(g, 50):6.2f} ms  p99 {np.percentile(g, 99):7.2f} ms   "
            f"{totals[0] / max(totals[1], 1):.2f} tok/chunk, ~{per_token:.2f} ms/token   "
            f"({totals[0]} tokens, {wall:.2f} s)")


async def resolve_model(url: str) -> str:
    async with httpx.AsyncClient(timeout=30) as client:
        return (await client.get(f"{url}/v1/models")).json()["data"][0]["id"]


async def run_http_loads(args, engine_figures: dict[int, float]) -> None:
    from bench_engine import output_lengths  # noqa: PLC0415 -- same seeded lengths as the engine loads

    model = args.model or await resolve_model(args.http)
    for c in args.concurrency:
        line = await http_load(args.http, model, c, output_lengths(c * args.per_client, args.gen, seed=1))
        tok_s = float(line.split("tok/s")[0].split()[-1])
        ratio = f"  = {100 * tok_s / engine_figures[c]:.0f}% of engine alone" if c in engine_figures else ""
        print(line + ratio)


def start_local_app(artifacts: str, variant: str, slots: int) -> str:
    """Start Ray Serve here with the whole app on `artifacts` (decoder sized for the largest load) -> base URL."""
    import socket

    import ray
    from ray import serve

    from serve_app import build_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"model": {"artifacts_dir": artifacts},
            "decoder": {"prefer_variants": [variant], "slots": slots, "max_queue": 2 * slots}}
    serve.run(build_app(args), name="bench", route_prefix="/")
    return f"http://127.0.0.1:{port}"
