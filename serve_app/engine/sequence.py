"""One request's state inside the engine, shared between the step loop (producer) and its stream (consumer)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from serve_app.engine.sampling import SamplingParams
from serve_app.stages.messages import DecodeRequest


@dataclass(eq=False)
class Sequence:
    request: DecodeRequest
    params: SamplingParams
    rng: np.random.Generator
    length: int = 0  # positions in the KV cache
    generated: int = 0
    last_token: int = -1
    pending: list[int] = field(default_factory=list)  # emitted, not yet taken by the stream
    finish_reason: str | None = None  # "stop" | "length", set by the engine
    cancelled: bool = False  # the stream went away or found a stop string: free the slot
    error: BaseException | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # pending/finish/error changed
    submitted_at: float = field(default_factory=time.perf_counter)
    last_token_at: float | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.cancelled or self.error is not None

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.ready.set()
