"""Give the C heap's free pages back to the kernel every few seconds, in the ingress.

Why: the soak measured the ingress's RSS growing while neither its Python objects (tracemalloc: flat) nor the bytes
glibc's heap has in use (mallinfo2: +0.3 MiB) grew: the growth (+6.8 MiB of +7.6) was memory freed inside the heap
and kept there. Every request passes its image pixels, features and token ids through the ingress, copied by Ray's
core-worker threads and gRPC into buffers that are freed on other threads, in other arenas; the arenas' high-water
marks creep up and glibc returns only the free space at the top of the main heap on its own. malloc_trim(0) walks
every arena and releases each whole free page (docs/failures.md has the soak figures before and after).
"""

from __future__ import annotations

import ctypes
import logging

from serve_app.api.periodic import PeriodicThread

log = logging.getLogger("ray.serve")
PERIOD_S = 10.0  # malloc_trim walks the heap's free chunks (about a millisecond at the ingress's ~100 MiB)


def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim with
        return None


class HeapTrimmer(PeriodicThread):
    """Lifecycle: start() -> a daemon thread calls malloc_trim(0) every period_s -> stop() (or process exit).
    On a C library without malloc_trim it does nothing."""

    def __init__(self, period_s: float = PERIOD_S):
        super().__init__("mmserve-heap-trim", period_s)
        self._trim = _malloc_trim()
        self.trims = 0

    def start(self) -> HeapTrimmer:
        return super().start() if self._trim is not None else self

    def tick(self) -> None:
        self._trim(0)
        self.trims += 1
