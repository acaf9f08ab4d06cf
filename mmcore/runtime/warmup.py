"""Warm-up at replica start: run the graph once per batch size the stage will form, before any traffic.

On TensorRT the first run of a profile builds (or loads from cache) the engine, which takes seconds to minutes; on
any EP the first run allocates arenas. Doing it here makes readiness wait for it, so the first client request is
not the slow one.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable

import numpy as np

from mmcore.runtime.providers import BatchProfile

log = logging.getLogger(__name__)


def warm_up(session, profile: BatchProfile, dtype: str = "uint8",
            batch_sizes: Iterable[int] | None = None) -> dict[int, float]:
    """Run `session` on zeros for each batch size (default: 1, opt and max of the profile); seconds per size."""
    sizes = sorted(set(batch_sizes)) if batch_sizes is not None else profile.warmup_batches
    too_big = [b for b in sizes if not 1 <= b <= profile.max_batch]
    if too_big:
        raise ValueError(f"warm-up batch sizes {too_big} are outside the profile's 1..{profile.max_batch}")
    seconds: dict[int, float] = {}
    for batch in sizes:
        x = np.zeros((batch, *profile.sample_dims), dtype=dtype)  # (B, 3, H, W) for the vision graph
        start = time.perf_counter()
        session.run(None, {profile.input_name: x})
        seconds[batch] = time.perf_counter() - start
    log.info("warm-up of %s over batch sizes %s took %.2fs", profile.input_name, sizes, sum(seconds.values()))
    return seconds
