"""Bounded retries with exponential backoff: a store that is down fails a replica's start with a clear error in
bounded time, never a hang; a blip (a reset connection, a 503) costs a short wait."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from mmcore.store.uri import StoreError, TransientStoreError

log = logging.getLogger("mmserve.store")
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # first try + 5 retries
    base_delay_s: float = 0.5  # delay before the first retry; doubles each time
    max_delay_s: float = 8.0
    deadline_s: float = 60.0  # no retry starts after this long, whatever attempts are left

    def __post_init__(self):
        if self.attempts < 1 or self.deadline_s <= 0:
            raise ValueError(f"RetryPolicy needs attempts >= 1 and deadline_s > 0, got {self}")

    def delay(self, retry: int) -> float:
        """Full jitter: replicas starting together do not retry in lockstep against a store that is recovering."""
        return random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2 ** retry))


def with_retries(what: str, fn: Callable[[], T], policy: RetryPolicy) -> T:
    """fn(), retried on TransientStoreError; after the last try, one StoreError saying how often and how long."""
    start = time.monotonic()
    for attempt in range(policy.attempts):
        try:
            return fn()
        except TransientStoreError as e:
            elapsed = time.monotonic() - start
            pause = policy.delay(attempt)
            if attempt + 1 >= policy.attempts or elapsed + pause > policy.deadline_s:
                raise StoreError(f"{e} (gave up on {what} after {attempt + 1} tries in {elapsed:.1f}s)") from None
            log.warning("mmserve: %s: %s; retry %d in %.1fs", what, e, attempt + 1, pause)
            time.sleep(pause)
    raise AssertionError("unreachable")  # the loop returns or raises
