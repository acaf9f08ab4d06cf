"""Vision encoder stage: uint8 pixels -> image features, dynamically batched, cached by content hash. The session
and the cache are serve_app/encoder's; this module is only their Serve deployment.

Lifecycle: load (read the manifest, try the EPs of `providers` in order, each with the graph variant built for it,
and keep the first that actually loads -- ORT falls back silently; `strict` refuses any fallback) -> warm up
(zeros at batch sizes 1, max_batch_size and batch_profile_max, so TensorRT engines are built and arenas allocated
before the replica reports ready; the first request is not the slow one) -> batch (`@serve.batch` gathers
concurrent requests up to `max_batch_size` or `batch_wait_timeout_s`, both live-tunable through `user_config`)
-> run (one session call per batch, in a worker thread so the replica keeps accepting requests that form the next
batch) -> hand on (`encode_for_decoder`: the features stay in Ray's object store and the ingress passes their
reference to the decoder, which fetches them; this stage never calls another).

Resources: on CPU a fraction of a core and `threads` ORT intra-op threads; on a GPU node, `num_gpus` in the config
file and a GPU EP first in `providers`. `max_ongoing_requests` must be >= max_batch_size or batches never fill.

Shapes: in an image's views (V,3,H,W) uint8, each view a batch item, stacked to (B,3,H,W) with views of other
images; out `image_features` (P,D) float32 per view, and per image its views' rows in order (V*P,D).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np
from ray import serve

from mmcore.image_plan.anyres import AnyresPlan, assemble
from mmcore.manifest import Manifest
from mmcore.runtime.warmup import warm_up
from serve_app.artifacts import ModelSource, model_key, resolve_model
from serve_app.contract import PreprocessedImage, check_model_key
from serve_app.encoder.feature_cache import MIB, FeatureCache
from serve_app.encoder.session import VisionRunner, open_vision_session, split_features
from serve_app.observability.ep_metrics import report_active_ep
from serve_app.observability.metrics import StageMetrics
from serve_app.stages.options import VisionOptions

log = logging.getLogger("ray.serve")


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class VisionEncoder:
    def __init__(self, model: ModelSource | dict, options: VisionOptions | dict | None = None):
        self.options = VisionOptions.model_validate(options or {})
        artifacts_dir = resolve_model(ModelSource.model_validate(model))
        self.model_key, self.source = model_key(artifacts_dir), ModelSource.model_validate(model).model_dump()
        opened = open_vision_session(artifacts_dir, self.options)
        self.runner = VisionRunner(artifacts_dir, opened, self.options.ort_threads)
        self.variant, self.provider, self.fallbacks = self.runner.variant, self.runner.provider, self.runner.fallbacks
        self.session = self.runner.session
        self.metrics = StageMetrics("vision")
        self.batches_run = 0
        self.int8 = self.runner.int8  # u8s8 / u8u8 for an int8 variant on the CPU EP, else None
        report_active_ep("vision", self.provider, self.variant, self.int8)
        manifest = Manifest.read(artifacts_dir)
        self.profile = self.options.profile(manifest)
        # an anyres model's image_newline row (D,), appended after each row of a tiled image's features
        newline = manifest.vision.newline
        self.newline = None if newline is None else np.load(Path(artifacts_dir) / newline.name).astype(np.float32)
        self.cache = FeatureCache(int(self.options.cache_mib * MIB), self.options.cache_size)
        # A batcher per instance, not a decorated method: serve.batch keeps its queue on the function object, which
        # a method decorator shares across every instance in the process (and across event loops in tests).
        self._encode_batch = serve.batch(max_batch_size=self.options.max_batch_size,
                                         batch_wait_timeout_s=self.options.batch_wait_timeout_s)(self._run_batch)
        self.warmup_s = warm_up(self.session, self.profile)  # in __init__: the replica is not ready before it ends
        log.info("vision replica on %s (variant %s, int8 %s), warm-up %s", self.provider, self.variant,
                 self.runner.int8_reason and f"{self.int8}: {self.runner.int8_reason}", self.warmup_s)
        if self.fallbacks:  # in the replica's own log, where an operator looks first
            log.warning("vision runs on %s, not %s: %s", self.provider, self.options.providers[0].name,
                        "; ".join(self.fallbacks))

    async def reconfigure(self, user_config: dict) -> None:
        """Live knobs: max_batch_size, batch_wait_timeout_s, cache_mib, cache_size, ort_profile. Async, so the
        batcher and the cache change on the event loop that uses them and the profiling switch (a session build)
        runs in a worker thread whatever Ray's dispatch of sync methods."""
        options = VisionOptions.model_validate({**self.options.model_dump(), **(user_config or {})})
        if options.max_batch_size > self.profile.max_batch:
            # outside the profile TensorRT would rebuild its engine mid-traffic, and no EP was warmed up there
            raise ValueError(f"VisionEncoder user_config: max_batch_size {options.max_batch_size} exceeds "
                             f"{self.profile.max_batch}, the batch profile fixed at start (vision.max_batch_size / "
                             f"vision.batch_profile_max in the args); raise it there and redeploy")
        self.options = options
        self._apply_batching(self.options)
        self.cache.resize(int(self.options.cache_mib * MIB), self.options.cache_size)
        await asyncio.to_thread(self.session.arm, self.options.ort_profile)

    def _apply_batching(self, options: VisionOptions) -> None:
        self._encode_batch.set_max_batch_size(options.max_batch_size)
        self._encode_batch.set_batch_wait_timeout_s(options.batch_wait_timeout_s)

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        return self.runner.run(pixels)  # (B,3,H,W) -> (B,P,D)

    async def _run_batch(self, batch: list[np.ndarray], enqueued_at: list[float]) -> list[np.ndarray]:
        start = time.perf_counter()
        for t in enqueued_at:
            self.metrics.observe_queue_wait(start - t)  # waiting for the batch to form and the previous to end
        self.metrics.observe_batch(len(batch))
        self.batches_run += 1
        pixels = np.stack(batch)  # (B,3,H,W) uint8
        with self.metrics.timed_compute():
            features = await asyncio.to_thread(self._run, pixels)  # (B,P,D) float32
        return split_features(features)

    async def encode(self, image: PreprocessedImage, model_key: str | None = None) -> np.ndarray:
        """-> (rows,D) float32 features for one preprocessed image; `model_key`: the ingress's model (refused if not
        this replica's)."""
        with self.metrics.track():
            check_model_key("vision", self.model_key, model_key, self.source)
            features, source = await self.cache.get_or_encode(  # the same image in flight: encoded once
                image.content_hash, lambda: self._encode_views(image))
            self.metrics.count_cache(source != "miss")
            return features

    async def _encode_views(self, image: PreprocessedImage) -> np.ndarray:
        """Each view is an item of the batcher, so a batch counts views, whichever images they come from; the
        image's block is its views' features in view order, (rows, D)."""
        enqueued = time.perf_counter()
        blocks = await asyncio.gather(*(self._encode_batch(view, enqueued) for view in image.views))
        if isinstance(image.plan, AnyresPlan):  # unpad the tiles' features, newline rows after each row
            features = assemble(image.plan, np.stack(blocks), self.newline)
        else:
            features = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        if features.shape[0] != image.rows:  # the plan and the graph disagree: a bad artifact, not bad input
            raise RuntimeError(f"vision: {len(blocks)} views gave {features.shape[0]} feature rows, the image's plan "
                               f"says {image.rows}")
        return features

    async def encode_for_decoder(self, image: PreprocessedImage, model_key: str | None = None):
        """The ingress's call (a streaming one): yields the features' shape, then the (P,D) block itself. Each yield
        is its own object, owned by the caller; the ingress awaits the small first one -- this call's success, or
        its error exactly as `encode` raises it -- and hands the second's reference on to the decoder unfetched, so
        the block goes from this replica to the decoder's without being deserialized and pickled again between."""
        features = await self.encode(image, model_key)
        yield features.shape
        yield features

    async def info(self) -> dict:
        return {"variant": self.variant, "provider": self.provider, "fallbacks": self.fallbacks, "int8": self.int8,
                "warmup_s": self.warmup_s, "cached": len(self.cache), "cached_bytes": self.cache.nbytes,
                "batches_run": self.batches_run,
                "ort_profile": self.options.ort_profile.model_dump(), "ort_traces": list(self.session.traces),
                "max_batch_size": self.options.max_batch_size,
                "batch_wait_timeout_s": self.options.batch_wait_timeout_s}

    async def ready(self) -> bool:
        return True

    def check_health(self) -> None:
        """Serve calls this every health_check_period_s: re-publish the active-EP gauge, which Ray's exporter
        drops when it is set only once at start."""
        report_active_ep("vision", self.provider, self.variant, self.int8)
