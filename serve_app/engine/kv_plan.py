"""The KV cache plan: how many slots of how many positions the decoder's cache holds, decided before any byte of it
is allocated.

The cache is one buffer per layer and per K/V of (slots + 1, kv_heads, max_context, last_dim) (the extra row stages
chunked prefills), all of it mapped at load. A position of one row therefore costs, over every layer,

    bytes_per_position = 2 (K and V) x layers x kv_heads x last_dim x itemsize

where last_dim and the itemsize are the variant's own cache storage (an int8 cache: 1 byte; 4 bits: head_dim / 2
bytes; its static scales are graph constants, not cache rows) or the spec's cache dtype at head_dim.

The design, as vLLM sizes its cache: the context is the model's (or `decoder.max_context` when set: the longest
sequence a client may send, so clients are told the same limit whatever the budget), and `decoder.kv_cache_gib`,
when set, decides how many sequences run together: as many slots as the budget holds, at most `decoder.slots`.
Without a budget the plan is today's (`decoder.slots` slots). Either way the plan must fit the memory the node has
available now, or the replica fails at start with one line naming the fields to change -- not later, when the
kernel kills it for touching pages it cannot back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmcore.manifest import DecoderSpec, KvCacheEntry

GIB = 2**30


class KvPlanError(ValueError):
    """A cache plan that cannot be served; the message is one line naming the decoder fields to change."""


class KvPlanTooBig(KvPlanError):
    """A plan larger than the node's available memory: a variant with a smaller cache (int8) may still fit."""


@dataclass(frozen=True)
class KvPlan:
    slots: int  # decode slots (the cache has one more row: the staging row)
    max_context: int  # positions per row
    bytes_per_position: int  # one position of one row, every layer, keys and values
    limited_by_budget: bool  # fewer slots than decoder.slots asked for: the budget held no more

    @property
    def cache_bytes(self) -> int:
        """The whole cache: every row (staging included) at every position."""
        return (self.slots + 1) * self.max_context * self.bytes_per_position

    def describe(self) -> str:
        per_slot = self.max_context * self.bytes_per_position
        return (f"KV cache plan: {self.slots} slots (+1 staging row) x {self.max_context} positions x "
                f"{self.bytes_per_position} B/position = {self.cache_bytes / 2**20:.1f} MiB "
                f"({per_slot / 2**20:.2f} MiB a slot)" + (", slots limited by decoder.kv_cache_gib"
                                                           if self.limited_by_budget else ""))


def bytes_per_position(spec: DecoderSpec, cache: KvCacheEntry | None = None) -> int:
    """Cache bytes one position of one row takes over every layer, keys and values, in the variant's storage."""
    dtype = np.dtype(spec.cache_dtype if cache is None else cache.dtype)
    last = spec.head_dim if cache is None else cache.last_dim(spec.head_dim)
    return 2 * spec.layers * spec.kv_heads * last * dtype.itemsize


def plan_kv_cache(spec: DecoderSpec, cache: KvCacheEntry | None, slots: int, max_context: int | None = None,
                  kv_cache_gib: float | None = None, available_bytes: int | None = None) -> KvPlan:
    """The plan for `slots` (decoder.slots: at most this many), `max_context` (None: the model's positions) and the
    optional budget; `available_bytes`: the node's available memory now (None: not checked)."""
    context = spec.max_positions if max_context is None else max_context
    if context > spec.max_positions:
        raise KvPlanError(f"decoder.max_context {context} exceeds the model's {spec.max_positions} positions: "
                          f"lower decoder.max_context")
    per_position = bytes_per_position(spec, cache)
    per_row = context * per_position
    planned, limited = slots, False
    if kv_cache_gib is not None:
        budget = int(kv_cache_gib * GIB)
        fit = budget // per_row - 1  # rows the budget holds, less the staging row
        if fit < 1:
            raise KvPlanError(f"decoder.kv_cache_gib {kv_cache_gib} holds no slot of decoder.max_context {context} "
                              f"positions (2 rows, 1 staging, need {2 * per_row / GIB:.3f} GiB at {per_position} "
                              f"B/position): raise decoder.kv_cache_gib or lower decoder.max_context")
        planned, limited = min(slots, fit), fit < slots
    plan = KvPlan(planned, context, per_position, limited)
    if available_bytes is not None and plan.cache_bytes > available_bytes:
        raise KvPlanTooBig(f"the KV cache of decoder.slots {plan.slots} x decoder.max_context {context} needs "
                          f"{plan.cache_bytes / GIB:.2f} GiB but the node has {available_bytes / GIB:.2f} GiB "
                          f"available: set decoder.kv_cache_gib, or lower decoder.slots or decoder.max_context")
    return plan


def available_memory_bytes() -> int | None:
    """MemAvailable of this node (Linux), None where the kernel does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
