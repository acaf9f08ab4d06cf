"""A request's CPU work that grows with its body -- the depth scan, JSON parsing, validation, template rendering and
tokenization -- runs on a few worker threads, never on the ingress's event loop.

That loop relays every running stream's chunks: a 50 MB body (a base64 image, near the default body limit) parsed on
it held every stream for the whole of that work, hundreds of milliseconds (benchmarks/bench_ingress_gap.py). On a
thread, the loop runs whenever the GIL changes hands, i.e. between the work's C calls; the scans are sliced for that
reason (request_limits), and the longest single call left is the JSON parser's pass over the body.

Bounded: `threads` workers, since with the GIL more threads would not parse faster, only hold more bodies' work in
flight at once; calls beyond them wait their turn in the executor's queue (each body is already in memory, and the
ingress's max_ongoing_requests bounds how many).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from serve_app.api import chat
from serve_app.api.prompt import PromptRenderer
from serve_app.api.protocol import ChatCompletionRequest

DEFAULT_THREADS = 2


class RequestWork:
    """Lifecycle: one per ingress replica -> parse(body) and prepare(request) per request, each awaited off the
    loop. The worker threads start on first use and idle between requests."""

    def __init__(self, threads: int = DEFAULT_THREADS):
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mmserve-request-work")

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, partial(fn, *args))

    async def parse(self, body: bytes, max_depth: int) -> ChatCompletionRequest:
        return await self._run(chat.parse_request, body, max_depth)

    async def prepare(self, req: ChatCompletionRequest, prompt: PromptRenderer,
                      limits: chat.ModelLimits) -> chat.PreparedChat:
        return await self._run(chat.prepare, req, prompt, limits)

    async def admit(self, prepared: chat.PreparedChat, images: list, req: ChatCompletionRequest,
                    limits: chat.ModelLimits, prompt: PromptRenderer,
                    max_image_tokens: int | None) -> chat.PreparedChat:
        """chat.admit_images: an image layout with text of its own tokenizes the prompt again."""
        return await self._run(chat.admit_images, prepared, images, req, limits, prompt, max_image_tokens)
