"""The decoder engine's metrics as Ray Serve metrics (Prometheus via Ray's exporter; Serve adds deployment and
replica tags). Names carry the mmserve_ prefix and their unit."""

from __future__ import annotations

from ray.serve import metrics

# Step and per-token latencies on CPU sit between ~0.5 ms and a few hundred ms.
_LATENCY_BOUNDS_S = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]


class RayEngineMetrics:
    def __init__(self):
        self._active = metrics.Gauge("mmserve_decoder_active_sequences",
                                     description="sequences holding a KV-cache slot")
        self._queued = metrics.Gauge("mmserve_decoder_queued_requests", description="requests waiting for a slot")
        self._step = metrics.Histogram("mmserve_decoder_step_time_seconds", boundaries=_LATENCY_BOUNDS_S,
                                       description="wall time of one decode step for the whole batch")
        self._batch = metrics.Histogram("mmserve_decoder_step_batch_sequences", boundaries=[1, 2, 4, 8, 16, 32, 64],
                                        description="sequences decoded in one step")
        self._tokens = metrics.Counter("mmserve_decoder_generated_tokens", description="tokens sampled")
        self._ttft = metrics.Histogram("mmserve_decoder_time_to_first_token_seconds", boundaries=_LATENCY_BOUNDS_S,
                                       description="from arrival at the decoder to the first sampled token")
        self._itl = metrics.Histogram("mmserve_decoder_inter_token_latency_seconds", boundaries=_LATENCY_BOUNDS_S,
                                      description="between consecutive tokens of one sequence")

    def set_active(self, n: int) -> None:
        self._active.set(n)

    def set_queued(self, n: int) -> None:
        self._queued.set(n)

    def observe_step(self, seconds: float, batch: int) -> None:
        self._step.observe(seconds)
        self._batch.observe(batch)

    def add_tokens(self, n: int) -> None:
        self._tokens.inc(n)

    def observe_ttft(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def observe_itl(self, seconds: float) -> None:
        self._itl.observe(seconds)
