"""End-to-end part of bench_engine (--http): the same closed-loop loads through the OpenAI streaming API.

Every request carries the same 224px image (the vision stage's content-hash cache serves it after the first) and a
prompt of about 32 tokens, so contexts match the engine-alone loads. Tokens are counted from the usage block of
finished streams (tokens per content chunk, since a chunk carries several tokens when the stream coalesces them),
applied to the content chunks that arrive inside the measurement window; latency is the gap between chunks.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import time

import httpx
import numpy as np
from PIL import Image

PROMPT = ("describe the image in a few words, then say what is on the left and what is on the right of it, "
          "and answer in one short sentence please")


def image_url(size: int = 224, seed: int = 0) -> str:
    return png_data_url(np.random.default_rng(seed).integers(0, 256, (size, size, 3), np.uint8))


def png_data_url(pixels: np.ndarray, compress_level: int = 6) -> str:
    """(H,W,3) uint8 -> a data:image/png;base64 URL."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=compress_level)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def body(model: str, max_tokens: int, image: str) -> dict:
    content = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": PROMPT}]
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0.0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}


async def one_stream(client: httpx.AsyncClient, url: str, payload: dict, window, seen: dict,
                     drain: bool = False) -> None:
    """Stream one completion; chunks inside the window count, and usage (when the stream ends) gives tokens/chunk.
    At the window's end the stream is closed, unless `drain`: then it is read to its end, uncounted.
    Optional lists in `seen`: "ttft" gets (sent, seconds to the first content chunk), "finished" the end times,
    "streams" one {sent, first, last, tokens, chunks} per finished stream (first/last: the first and last chunk
    carrying a choice, content or not; tokens: usage.completion_tokens; chunks: those with content, "" included)."""
    chunks, last, sent = 0, None, time.perf_counter()
    record = {"sent": sent, "first": None, "last": None, "tokens": 0}
    async with client.stream("POST", f"{url}/v1/chat/completions", json=payload) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            now = time.perf_counter()
            if now > window[1] and not drain:
                return  # leaving the block closes the connection: the server cancels the request
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("choices"):
                record["first"] = record["first"] or now
                record["last"] = now
            if event.get("usage"):
                seen["usage_tokens"] += event["usage"]["completion_tokens"]
                seen["usage_chunks"] += chunks
                if "finished" in seen:
                    seen["finished"].append(now)
                if "streams" in seen:
                    seen["streams"].append(dict(record, tokens=event["usage"]["completion_tokens"], chunks=chunks))
            if event.get("choices") and event["choices"][0]["delta"].get("content") is not None:
                if chunks == 0 and "ttft" in seen:
                    seen["ttft"].append((sent, now - sent))
                chunks += 1
                if window[0] <= now <= window[1]:
                    seen["chunks"] += 1
                    if last is not None:
                        seen["gaps"].append(now - last)
                last = now


async def http_load(url: str, model: str, concurrency: int, gen: int, ramp_s: float, duration_s: float) -> tuple:
    """-> (tokens/s, report line). Closed-loop clients with the engine loads' seeded output lengths."""
    image = image_url()
    seen = {"chunks": 0, "gaps": [], "usage_tokens": 0, "usage_chunks": 0}
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await one_stream(client, url, body(model, 4, image), (0.0, float("inf")), dict(seen, gaps=[]))  # warm
        now = time.perf_counter()
        window = (now + ramp_s, now + ramp_s + duration_s)

        async def client_loop(c: int):
            rng = np.random.default_rng(1000 + c)
            while time.perf_counter() < window[1]:
                await one_stream(client, url, body(model, int(rng.integers(gen // 4, gen + 1)), image), window, seen)

        await asyncio.gather(*(client_loop(c) for c in range(concurrency)))
    per_chunk = seen["usage_tokens"] / max(seen["usage_chunks"], 1)  # tokens per content chunk, finished streams
    tok_s = seen["chunks"] * per_chunk / duration_s
    g = np.array(seen["gaps"] or [0.0]) * 1e3
    line = (f"{'http e2e streaming   x' + str(concurrency):<34} {tok_s:9.0f} tok/s   "
            f"chunk gap p50 {np.percentile(g, 50):6.2f} ms  p99 {np.percentile(g, 99):7.2f} ms   "
            f"{per_chunk:.2f} tok/chunk ({seen['chunks']} chunks in {duration_s:.1f} s)")
    return tok_s, line


async def wait_models(url: str, timeout_s: float = 300.0) -> None:
    """Poll /v1/models until it answers 200 (a fresh deployment's route may 404 for a moment)."""
    deadline = time.perf_counter() + timeout_s
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            try:
                if (await client.get(f"{url}/v1/models")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{url}/v1/models did not answer 200 in {timeout_s:.0f} s")
            await asyncio.sleep(0.5)


async def resolve_model(url: str) -> str:
    async with httpx.AsyncClient(timeout=30) as client:
        return (await client.get(f"{url}/v1/models")).json()["data"][0]["id"]


async def run_http_loads(args, engine_figures: dict[int, float]) -> None:
    model = args.model or await resolve_model(args.http)
    for c in args.concurrency:
        tok_s, line = await http_load(args.http, model, c, args.gen, args.ramp_s, args.duration_s)
        ratio = f"  = {100 * tok_s / engine_figures[c]:.0f}% of engine alone" if c in engine_figures else ""
        print(line + ratio)


def start_local_app(artifacts: str, variant: str, slots: int, threads: int = 1, decoder: dict | None = None) -> str:
    """Start Ray Serve here with the whole app on `artifacts` (decoder sized for the largest load) -> base URL."""
    import socket

    import ray
    from ray import serve

    from serve_app import build_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Ray starts its workers at nice 15; the engine-alone loads ran at this process's priority. On a shared machine
    # the replicas would lose the cores to any other job and the comparison would measure that, not the serving path.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"model": {"artifacts_dir": artifacts},
            "decoder": {"prefer_variants": [variant], "slots": slots, "max_queue": 2 * slots, "threads": threads,
                        **(decoder or {})}}
    serve.run(build_app(args), name="bench", route_prefix="/")
    return f"http://127.0.0.1:{port}"
