"""One request's state inside the engine, shared between the step thread (producer) and its stream (consumer).

Fields are split by owner: the step thread writes the engine side, the event loop writes the stream side, and the
only field both touch is `cancelled` (set by the stream, read by the step thread), a plain flag.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from serve_app.engine.penalties import TokenHistory, TokenLogprobs
from serve_app.engine.sampling import SamplingParams
from serve_app.contract import DecodeRequest


@dataclass(eq=False)
class Sequence:
    request: DecodeRequest
    params: SamplingParams
    rng: np.random.Generator
    loop: asyncio.AbstractEventLoop  # the stream's loop: where its tokens are delivered
    # engine side (step thread)
    length: int = 0  # positions in the KV cache
    generated: int = 0
    last_token: int = -1
    next_embed: np.ndarray | None = None  # (D,) the prompt's last position, fed by the first decode step
    first_logits: np.ndarray | None = None  # (V,) a lone prompt prefilled whole: its first token's logits, no
    #                                         decode call needed for them
    finished: str | None = None  # "stop" | "length" | "error": no more steps for this sequence
    history: TokenHistory = field(default_factory=TokenHistory)  # its tokens, for penalties and min_tokens
    # stream side (event loop)
    pending: list[int] = field(default_factory=list)  # delivered, not yet taken by the stream
    pending_logprobs: list[TokenLogprobs] = field(default_factory=list)  # one per pending token, when asked for
    finish_reason: str | None = None  # set when the last token is delivered
    error: BaseException | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # pending/finish/error changed
    submitted_at: float = field(default_factory=time.perf_counter)
    last_token_at: float | None = None
    # both
    cancelled: bool = False  # the stream went away or found a stop string: free the slot

    @property
    def done(self) -> bool:
        return self.finished is not None or self.cancelled
