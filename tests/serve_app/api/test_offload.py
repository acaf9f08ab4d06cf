"""A 50 MB body through the ingress's own parse and prepare path (RequestWork) leaves the event loop free: a 1 ms
heartbeat on the loop keeps beating while the body is scanned, parsed, validated, rendered and tokenized, where
the same work on the loop stopped it for the whole time."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np

from serve_app.api import chat
from serve_app.api.offload import RequestWork
from serve_app.api.prompt import PromptRenderer
from serve_app.api.request_limits import DEFAULT_MAX_JSON_DEPTH
from tests.fake_manifest import fake_manifest
from graphs.families.own.tokenizer import build_tokenizer

MANIFEST = fake_manifest({}, image_size=4, features=16, width=8, max_positions=128)
PROMPT = PromptRenderer(MANIFEST.prompt, build_tokenizer(512))
LIMITS = chat.ModelLimits(image_tokens=16, max_positions=128, max_images=4)


def big_body(megabytes: float = 50) -> bytes:
    """A chat request carrying a `megabytes` base64 image, as a client at the default body limit sends it."""
    url = "data:image/png;base64," + base64.b64encode(np.random.default_rng(0).bytes(int(megabytes * 750_000))).decode()
    return json.dumps({"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what is this?"}]}]}).encode()


async def with_heartbeat(work) -> tuple[float, float, int]:
    """(seconds `work` took, longest gap between two 1 ms heartbeats meanwhile, heartbeats meanwhile)."""
    beats: list[float] = []
    done = asyncio.Event()

    async def beat():
        while not done.is_set():
            beats.append(time.perf_counter())
            await asyncio.sleep(0.001)

    ticker = asyncio.create_task(beat())
    await asyncio.sleep(0.02)
    began = time.perf_counter()
    await work()
    took = time.perf_counter() - began
    done.set()
    await ticker
    during = [began] + [b for b in beats if b >= began] + [began + took]
    return took, max(np.diff(during)), len(during) - 2


def test_a_big_body_is_parsed_and_prepared_without_stalling_the_loop():
    body, work = big_body(), RequestWork()

    async def off_loop():
        req = await work.parse(body, DEFAULT_MAX_JSON_DEPTH)
        prepared = await work.prepare(req, PROMPT, LIMITS)
        assert len(prepared.images) == 1 and req.messages[0].content[0].image_url.url.startswith("data:image/png")

    async def on_loop():  # what the ingress did before: the same calls, on the loop itself
        chat.prepare(chat.parse_request(body, DEFAULT_MAX_JSON_DEPTH), PROMPT, LIMITS)

    async def both():
        return await with_heartbeat(on_loop), await with_heartbeat(off_loop)

    (blocked_s, blocked_gap, blocked_beats), (took, gap, beats) = asyncio.run(both())
    assert blocked_beats == 0 and blocked_gap >= blocked_s  # the reference: the loop stood still throughout
    # Off the loop it keeps beating; what remains of a stall is the JSON parser's one call over the body (about
    # 40% of the work here).
    assert beats >= 3 and gap < 0.75 * took, (took, gap, beats, blocked_s)


def test_a_long_prompt_is_tokenized_without_stalling_the_loop():
    # 2 MB of text: tokenizing it took seconds, all of it holding the GIL, before encode_batch
    body = json.dumps({"messages": [{"role": "user", "content": "the quick brown fox jumps over the lazy dog " * 50_000}]})
    work = RequestWork()
    limits = chat.ModelLimits(image_tokens=16, max_positions=1_000_000, max_images=4)

    async def off_loop():
        req = await work.parse(body.encode(), DEFAULT_MAX_JSON_DEPTH)
        assert (await work.prepare(req, PROMPT, limits)).prompt_len > 100_000

    took, gap, beats = asyncio.run(with_heartbeat(off_loop))
    assert beats >= 3 and gap < 0.5 * took, (took, gap, beats)
