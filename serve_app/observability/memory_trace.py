"""Allocation tracing for a long-running replica: which Python code holds the memory an RSS curve shows growing.

Off unless the replica's environment sets `MMSERVE_TRACEMALLOC` to a frame depth (e.g. 25): tracemalloc slows every
allocation, so a serving replica never pays for it by default; `native` reads the C heap alone (no tracemalloc).
A benchmark sets the variable before `ray.init` (the replicas inherit it), marks a baseline after its warm-up and asks
for the growth since then at the end, through a Serve handle to the replica's `memory_trace` method -- never through
an HTTP route.

Python objects are only part of a replica's memory: Ray's core worker, gRPC, the tokenizer and numpy's buffers
allocate from the C heap too. So each answer carries glibc's own account (mallinfo2: bytes in use vs bytes the heap
holds free) beside the RSS: RSS growing while tracemalloc and the heap's in-use bytes stay flat is memory freed but
not returned to the kernel (what `trim` -- malloc_trim -- gives back), not a leak.
"""

from __future__ import annotations

import ctypes
import os
import tracemalloc

ENV = "MMSERVE_TRACEMALLOC"


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
        return libc
    except (OSError, AttributeError):  # not glibc (>= 2.33): no heap account
        return None


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def native_heap() -> dict:
    """RSS and glibc's heap account over every arena: held (sbrk'd + mmap'd), in use, free inside the heap."""
    out = {"rss_bytes": rss_bytes()}
    libc = _libc()
    if libc is not None:
        m = libc.mallinfo2()
        out.update(heap_bytes=m.arena + m.hblkhd, in_use_bytes=m.uordblks + m.hblkhd, free_bytes=m.fordblks)
    return out


def trim_heap() -> dict:
    """malloc_trim(0): give the heap's free pages back to the kernel; RSS before and after."""
    before = rss_bytes()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
    return {"rss_before": before, "rss_after": rss_bytes()}


class MemoryTrace:
    """Lifecycle: start_if_asked() at replica start -> baseline() after warm-up -> growth() as often as wanted."""

    def __init__(self, python: bool) -> None:
        self._python = python  # tracemalloc on (else the native account alone)
        self._baseline: tracemalloc.Snapshot | None = None
        self._native: dict = {}

    @staticmethod
    def start_if_asked() -> MemoryTrace | None:
        frames = os.environ.get(ENV, "").strip()
        if not frames or frames == "0":
            return None
        if frames == "native":
            return MemoryTrace(python=False)
        if not tracemalloc.is_tracing():
            tracemalloc.start(int(frames))
        return MemoryTrace(python=True)

    def act(self, action: str, limit: int = 15) -> dict:
        """The handle method's one entry: baseline, growth or trim."""
        if action == "baseline":
            return self.baseline()
        if action == "growth":
            return self.growth(limit)
        if action == "trim":
            return trim_heap()
        raise ValueError(f"memory_trace: unknown action {action!r} (baseline, growth, trim)")

    def baseline(self) -> dict:
        self._native = native_heap()
        if not self._python:
            return {"traced_bytes": 0, "native": self._native}
        self._baseline = self._snapshot()
        return {"traced_bytes": tracemalloc.get_traced_memory()[0], "native": self._native}

    def growth(self, limit: int = 15) -> dict:
        """The `limit` tracebacks whose live allocations grew most since baseline(): size and count deltas and the
        innermost frames (the mmserve or library line that allocated)."""
        if not self._native:
            raise RuntimeError("memory_trace: call baseline before growth")
        native = {k: (v, v - self._native.get(k, 0)) for k, v in native_heap().items()}  # (now, since baseline)
        if not self._python:
            return {"total_diff": 0, "traced_bytes": 0, "top": [], "native": native}
        now = self._snapshot()
        stats = now.compare_to(self._baseline, "traceback")
        total = sum(s.size_diff for s in stats)
        top = [{"size_diff": s.size_diff, "count_diff": s.count_diff, "size": s.size,
                "traceback": [f"{f.filename}:{f.lineno}" for f in s.traceback][-8:]}
               for s in sorted(stats, key=lambda s: s.size_diff, reverse=True)[:limit]]
        return {"total_diff": total, "traced_bytes": tracemalloc.get_traced_memory()[0], "top": top,
                "native": native}

    @staticmethod
    def _snapshot() -> tracemalloc.Snapshot:
        return tracemalloc.take_snapshot().filter_traces([
            tracemalloc.Filter(False, tracemalloc.__file__),  # the tracer's own bookkeeping
            tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
        ])
