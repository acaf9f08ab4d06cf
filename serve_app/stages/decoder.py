"""Decoder stage: the continuous-batching engine as a Ray Serve deployment, streaming tokens to the ingress.

Lifecycle: load (manifest -> decoder variant for the CPU EP, KV cache of `slots` x `max_context` allocated once)
-> warm up (one prefill and one decode step, so the first request does not pay for kernel setup) -> serve
(`generate` is an async generator: each request joins the engine's step loop and its tokens stream back as they are
sampled; when the ingress cancels -- client gone -- the generator is closed and the slot is freed at the next step)
-> reconfigure (queue bound, prefill budget, stream interval and Retry-After change live; the cache shape does not).

Resources: CPU only; one ORT intra-op thread per replica by default (replicas share cores). `max_ongoing_requests`
must be >= slots + max_queue, or Serve holds requests back before they reach the engine and batches stay small;
beyond slots + max_queue the engine refuses with Overloaded, which the ingress answers with 503 + Retry-After.

Reproducibility: a seeded (or greedy) request gives the same tokens alone or in a full batch on `cpu-fp32` and on
`cpu-int8-rowwise` / `cpu-int8-rowwise-kv8`, where no op lets one row of a step touch another's logits (the int8 KV
cache's scales are static constants). The default `cpu-int8-kv8` (int8 weights, int8 KV cache) and `cpu-int8`
quantize each MatMul's activations with one scale per tensor, so the other rows of a step nudge a row's logits and a
seeded sample can differ with the load; list `cpu-int8-rowwise-kv8` first in prefer_variants where replay under load
matters more than decode speed (docs/performance.md has the figures). Image requests add the vision stage, whose int8
batches share a scale too: an image's features can differ in the last bits with its batch, unless vision
`max_batch_size` is 1 (each image encoded alone: on CPU about 15% more vision time at 8 images).

Shapes: in DecodeRequest (prompt ids; image features as FeatureRefs to (P, D) float32 blocks in the object store,
fetched here before the engine sees the request, or as FeatureSegments); out DecodeChunk stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing

import numpy as np
from ray import serve

from serve_app.artifacts import ModelSource, model_key, resolve_model
from serve_app.contract import DecodeChunk, DecodeRequest, FeatureRef, check_model_key, resolve_features
from serve_app.engine import load_engine
from serve_app.observability.decoder_metrics import RayEngineMetrics
from serve_app.observability.ep_metrics import report_active_ep
from serve_app.observability.metrics import StageMetrics
from serve_app.stages.options import DecoderOptions


log = logging.getLogger("ray.serve")
MAX_ONGOING_REQUESTS = 512  # the code default; a config file may replace it, so the replica checks what is deployed


def deployed_max_ongoing_requests() -> int:
    """This replica's max_ongoing_requests as deployed (the config file's value when it sets one)."""
    return serve.get_replica_context()._deployment_config.max_ongoing_requests


LIVE_FIELDS = frozenset({"max_queue", "prefill_token_budget", "retry_after_s", "stream_interval_s", "max_chunk_rate",
                         "ort_profile"})


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=MAX_ONGOING_REQUESTS)
class Decoder:
    def __init__(self, model: ModelSource | dict, options: DecoderOptions | dict | None = None):
        self.options = DecoderOptions.model_validate(options or {}) if not isinstance(options, DecoderOptions) \
            else options
        self.max_ongoing_requests = deployed_max_ongoing_requests()
        self.options.check_admission(self.max_ongoing_requests)
        self.metrics = StageMetrics("decoder")
        self.images_fetched = 0  # image feature blocks fetched from the object store by reference (FeatureRef)
        self.engine_metrics = RayEngineMetrics(self.metrics)
        artifacts = resolve_model(ModelSource.model_validate(model))
        self.model_key, self.source = model_key(artifacts), ModelSource.model_validate(model).model_dump()
        self.engine = load_engine(artifacts, self.options.engine_config(), threads=self.options.ort_threads,
                                  prefer=self.options.prefer_variants, metrics=self.engine_metrics)
        log.info("decoder %s (int8 %s): %s", self.engine.variant,
                 self.engine.int8.describe() if self.engine.int8 else None, self.engine.kv_plan.describe())
        self._warm_up()
        self.engine.runner.session.arm(self.options.ort_profile)  # a profile in the args starts with the replica
        self.provider = self.engine.runner.session.get_providers()[0]
        self.int8 = self.engine.int8.encoding if self.engine.int8 else None  # u8s8 / u8u8 (int8_kernels)
        report_active_ep("decoder", self.provider, self.engine.variant, self.int8)

    def _warm_up(self) -> None:
        runner, width = self.engine.runner, self.engine.embeddings.shape[1]
        runner.prefill(0, np.zeros((4, width), np.float32))  # slot 0 is prefilled afresh before any real use
        runner.decode(1, np.zeros((1, width), np.float32), np.array([4], np.int32))

    async def reconfigure(self, user_config: dict) -> None:
        """Live knobs: max_queue, prefill_token_budget, retry_after_s, stream_interval_s, max_chunk_rate,
        ort_profile. Others need a new replica. Async, so the knobs change on the event loop that reads them and the
        profiling switch (a session build) runs in a worker thread whatever Ray's dispatch of sync methods."""
        user_config = dict(user_config or {})
        fixed = sorted(k for k in user_config if k not in LIVE_FIELDS and
                       user_config[k] != getattr(self.options, k, object()))
        if fixed:
            raise ValueError(f"Decoder user_config: {', '.join(fixed)} cannot change on a running replica; "
                             f"live fields are {', '.join(sorted(LIVE_FIELDS))}")
        options = DecoderOptions.model_validate({**self.options.model_dump(), **user_config})
        options.check_admission(self.max_ongoing_requests)
        self.options = options
        self.engine.update_config(self.options.engine_config())
        await asyncio.to_thread(self.engine.runner.session.arm, self.options.ort_profile)

    async def generate(self, request: DecodeRequest) -> AsyncIterator[DecodeChunk]:
        with self.metrics.track():  # outcome: ok, overloaded (503), cancelled (client gone), error
            check_model_key("decoder", self.model_key, request.model_key, self.source)  # before any token: a retry is clean
            # image features come as references to the vision stage's results: fetched here, not in the ingress
            by_reference = sum(isinstance(s, FeatureRef) for s in request.segments)
            request = await resolve_features(request)
            self.images_fetched += by_reference
            # aclosing: when Serve closes this generator (client gone), the engine's stream closes now and frees
            # its slot, rather than whenever the garbage collector finalizes it
            async with aclosing(self.engine.generate(request)) as chunks:
                async for chunk in chunks:
                    yield chunk

    async def info(self) -> dict:
        sched = self.engine.scheduler
        return {"variant": self.engine.variant, "int8": self.int8, "slots": self.engine.runner.slots,
                "kv_cache_bytes": self.engine.kv_plan.cache_bytes,
                "max_context": self.engine.runner.max_context, "active": len(sched.active),
                "waiting": len(sched.waiting), "steps": self.engine.steps, "cancelled": self.engine.cancelled,
                "images_fetched": self.images_fetched,
                "options": self.options.model_dump()}

    def check_health(self) -> None:
        """Serve calls this every health_check_period_s: keep the gauges alive (Ray drops a gauge not set again
        for two export intervals) while the engine idles."""
        self.engine_metrics.refresh()
        report_active_ep("decoder", self.provider, self.engine.variant, self.int8)

    async def ready(self) -> bool:
        return True

    def __del__(self) -> None:
        """Serve calls this when the replica stops (after draining its requests): stop the step thread before the
        process goes, so no ORT call is cut mid-step, and release the KV cache."""
        engine = getattr(self, "engine", None)  # absent when __init__ failed
        if engine is not None:
            engine.shutdown()
