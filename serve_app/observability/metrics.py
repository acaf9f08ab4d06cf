"""Per-stage metrics, exported through Ray Serve's metrics API.

Ray Serve adds the `deployment`, `replica` and `application` tags to every series, and Ray's per-node metrics agent
serves them on its Prometheus export port with a `ray_` prefix (`mmserve_stage_requests_total` is scraped as
`ray_mmserve_stage_requests_total`). Names follow Prometheus conventions: an `mmserve_` prefix, the unit in the
name, `_total` on counters. The same names serve every stage, told apart by the `stage` tag, so one dashboard row
template fits them all:

    mmserve_stage_requests_total{stage,outcome,status}   calls a stage finished, by how they ended
    mmserve_stage_queue_wait_seconds{stage}              from arrival in the replica to the start of its work
    mmserve_stage_compute_seconds{stage}                 one unit of work: an image decode, a vision batch,
                                                         a decoder step
    mmserve_batch_size{stage}                            requests (sequences) per batch of a batched stage
    mmserve_stage_cache_lookups_total{stage,result}      a stage's result cache: hit or miss
    mmserve_image_bytes_total / mmserve_image_pixels_total   what clients sent, before resizing

The decoder's token metrics (time to first token, inter-token latency, tokens, active sequences) live with the
engine's sink in the decoder stage; the active execution provider gauge lives with the session code.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from serve_app.outcomes import status_of

# Stage latencies on CPU run from ~0.1 ms (a cache hit) to tens of seconds (a long prefill under load).
LATENCY_BOUNDS_S = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0, 30.0]
# Every size up to 8 gets its own bucket: small batches are where "batches do not fill" shows.
BATCH_BOUNDS = [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64, 128, 256]
CLIENT_CLOSED = 499  # nginx's status for "client closed the request": a cancelled stream

_registry: dict[str, object] = {}
_registry_lock = threading.Lock()


def _metric(kind: str, name: str, description: str, tag_keys: tuple[str, ...], **kw):
    """One Ray metric object per name and process: replicas of different stages may share a worker process."""
    with _registry_lock:
        metric = _registry.get(name)
        if metric is None:
            from ray.serve import metrics  # adds deployment/replica/application tags inside a replica

            metric = getattr(metrics, kind)(name, description=description, tag_keys=tag_keys, **kw)
            _registry[name] = metric
        return metric


def classify(exc: BaseException | None) -> tuple[str, int]:
    """How a stage call ended -> (outcome, HTTP-like status): ok, rejected (the client's fault), overloaded,
    cancelled (the client went away) or error (ours). The status is the one the client is answered with
    (outcomes.status_of, as api/errors.py answers), so a stage's count and the ingress's agree."""
    if exc is None:
        return "ok", 200
    if isinstance(exc, (GeneratorExit, asyncio.CancelledError)):
        return "cancelled", CLIENT_CLOSED
    status = status_of(exc)
    return outcome_of_status(status), status


def outcome_of_status(status: int) -> str:
    """The outcome a finished HTTP response counts as, where only its status is known."""
    if status < 400:
        return "ok"
    if status == 503:
        return "overloaded"
    return "rejected" if status < 500 else "error"


class StageMetrics:
    """The metrics of one stage inside one replica. Create it in the replica's __init__."""

    def __init__(self, stage: str):
        self.stage = stage
        self._tags = {"stage": stage}
        self._requests = _metric("Counter", "mmserve_stage_requests_total",
                                 "stage calls finished, by outcome (ok, rejected, overloaded, cancelled, error) and "
                                 "HTTP-like status", ("stage", "outcome", "status"))
        self._queue = _metric("Histogram", "mmserve_stage_queue_wait_seconds",
                              "from a request's arrival in the stage replica to the start of its work",
                              ("stage",), boundaries=LATENCY_BOUNDS_S)
        self._compute = _metric("Histogram", "mmserve_stage_compute_seconds",
                                "wall time of one unit of stage work (image decode, vision batch, decoder step)",
                                ("stage",), boundaries=LATENCY_BOUNDS_S)
        self._batch = _metric("Histogram", "mmserve_batch_size", "requests or sequences run in one batch",
                              ("stage",), boundaries=BATCH_BOUNDS)
        self._cache = _metric("Counter", "mmserve_stage_cache_lookups_total", "result cache lookups by result",
                              ("stage", "result"))

    def count(self, outcome: str, status: int) -> None:
        self._requests.inc(tags={**self._tags, "outcome": outcome, "status": str(status)})

    @contextmanager
    def track(self) -> Iterator[None]:
        """Count the call's outcome from how the block ends; the exception still propagates."""
        try:
            yield
        except BaseException as e:
            self.count(*classify(e))
            raise
        self.count(*classify(None))

    def observe_queue_wait(self, seconds: float) -> None:
        self._queue.observe(max(0.0, seconds), tags=self._tags)

    def observe_compute(self, seconds: float) -> None:
        self._compute.observe(seconds, tags=self._tags)

    def observe_batch(self, size: int) -> None:
        self._batch.observe(size, tags=self._tags)

    def count_cache(self, hit: bool) -> None:
        self._cache.inc(tags={**self._tags, "result": "hit" if hit else "miss"})

    @contextmanager
    def timed_compute(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe_compute(time.perf_counter() - start)


class ImageMetrics:
    """What clients send, counted where images are decoded: encoded bytes and source pixels (before resizing)."""

    def __init__(self):
        self._bytes = _metric("Counter", "mmserve_image_bytes_total", "encoded image bytes received", ())
        self._pixels = _metric("Counter", "mmserve_image_pixels_total",
                               "decoded image pixels (width*height) before resizing", ())

    def add(self, n_bytes: int, n_pixels: int) -> None:
        if n_bytes > 0 and n_pixels > 0:  # Ray's Counter.inc raises on 0
            self._bytes.inc(n_bytes)
            self._pixels.inc(n_pixels)
