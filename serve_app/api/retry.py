"""Calls to the side-effect-free stages (preprocess, vision): retried once when the replica died mid-call.

    deadline = now + stage_timeout_s
    call -> replica died (RayActorError: ActorDiedError / ActorUnavailableError, ReplicaUnavailableError)
         -> call again; Serve's router has dropped the dead replica, so another one (or its restart) answers
         -> a second death, or the deadline passing, fails the request (503 / 504 through serve_app.api.errors.to_error)

A decoder stream is never retried: tokens already sent cannot be taken back, so a stream that fails mid-way ends
with an error chunk (serve_app.api.sse).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ray.exceptions import RayActorError
from ray.serve.exceptions import ReplicaUnavailableError

log = logging.getLogger("ray.serve")
T = TypeVar("T")

RETRYABLE: tuple[type[BaseException], ...] = (RayActorError, ReplicaUnavailableError)
ATTEMPTS = 2  # the first call and one retry
CHECK_EVERY_S = 0.5  # how often a waiting call looks whether its stage was lost


async def call_once_more(call: Callable[[], Awaitable[T]], deadline: float, what: str,
                         check: Callable[[], None] = lambda: None) -> T:
    """`await call()` within `deadline` (time.monotonic()), called again once if its replica died. `check` raises
    when the stage is known lost (serve_app.api.stage_watch): it is polled while waiting, so a call waiting in Serve's
    router for a replica that cannot be placed is abandoned at once rather than at the deadline."""
    for attempt in range(1, ATTEMPTS + 1):
        check()
        try:
            return await _watched(call, deadline, what, check)
        except RETRYABLE as e:
            if attempt == ATTEMPTS:
                raise
            log.warning("mmserve: %s failed on a replica that died (%s); retrying once", what, type(e).__name__)
    raise AssertionError("unreachable")


async def _watched(call: Callable[[], Awaitable[T]], deadline: float, what: str, check: Callable[[], None]) -> T:
    async def run() -> T:
        return await call()

    task = asyncio.ensure_future(run())
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{what}: no answer within the stage timeout")
            done, _ = await asyncio.wait({task}, timeout=min(CHECK_EVERY_S, remaining))
            if done:
                return task.result()
            check()
    finally:
        task.cancel()


async def gather_with_retry(calls: list[Callable[[], Awaitable[T]]], timeout_s: float, what: str,
                            check: Callable[[], None] = lambda: None) -> list[T]:
    """Each call retried on its own, all within one deadline: one image on a dead replica does not redo the rest."""
    deadline = time.monotonic() + timeout_s
    return list(await asyncio.gather(*(call_once_more(c, deadline, what, check) for c in calls)))
