"""The decoder engine's metrics as Ray Serve metrics (Prometheus via Ray's exporter; Serve adds deployment and
replica tags). Names carry the mmserve_ prefix and their unit.

A decode step is the decoder's unit of work and its batch: it feeds the shared per-stage series
(`mmserve_stage_compute_seconds`, `mmserve_batch_size`, `mmserve_stage_queue_wait_seconds` with stage="decoder"),
so the dashboard shows every stage the same way; the token-level series below are the decoder's own.
"""

from __future__ import annotations

from ray.serve import metrics

from serve_app.observability.metrics import StageMetrics

# Per-token latencies on CPU sit between ~0.5 ms and a few hundred ms.
_LATENCY_BOUNDS_S = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]


class RayEngineMetrics:
    def __init__(self, stage: StageMetrics | None = None):
        self.stage = stage or StageMetrics("decoder")
        self._active = metrics.Gauge("mmserve_decoder_active_sequences",
                                     description="sequences holding a KV-cache slot")
        self._queued = metrics.Gauge("mmserve_decoder_queued_requests", description="requests waiting for a slot")
        self._tokens = metrics.Counter("mmserve_decoder_generated_tokens_total", description="tokens sampled")
        self._ttft = metrics.Histogram("mmserve_decoder_time_to_first_token_seconds", boundaries=_LATENCY_BOUNDS_S,
                                       description="from arrival at the decoder to the first sampled token")
        self._itl = metrics.Histogram("mmserve_decoder_inter_token_latency_seconds", boundaries=_LATENCY_BOUNDS_S,
                                      description="between consecutive tokens of one sequence")
        self._last_active = self._last_queued = 0

    def set_active(self, n: int) -> None:
        self._last_active = n
        self._active.set(n)

    def set_queued(self, n: int) -> None:
        self._last_queued = n
        self._queued.set(n)

    def refresh(self) -> None:
        """Set the gauges again: Ray's exporter drops a gauge series not set for a couple of export intervals, and
        an idle engine sets nothing."""
        self.set_active(self._last_active)
        self.set_queued(self._last_queued)

    def observe_step(self, seconds: float, batch: int) -> None:
        self.stage.observe_compute(seconds)
        self.stage.observe_batch(batch)

    def add_tokens(self, n: int) -> None:
        if n > 0:  # Ray's Counter.inc raises on 0, and a step report may carry no tokens (all cancelled)
            self._tokens.inc(n)

    def observe_ttft(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def observe_itl(self, seconds: float) -> None:
        self._itl.observe(seconds)

    def observe_queue_wait(self, seconds: float) -> None:
        self.stage.observe_queue_wait(seconds)
