"""Vision encoder stage: uint8 pixels -> image features, dynamically batched, cached by content hash.

Lifecycle: load (read the manifest, try the EPs of `providers` in order, each with the graph variant built for it,
and keep the first that actually loads -- ORT falls back silently; `strict` refuses any fallback) -> warm up
(zeros at batch sizes 1, max_batch_size and batch_profile_max, so TensorRT engines are built and arenas allocated
before the replica reports ready; the first request is not the slow one) -> batch (`@serve.batch` gathers
concurrent requests up to `max_batch_size` or `batch_wait_timeout_s`, both live-tunable through `user_config`)
-> run (one session call per batch, in a worker thread so the replica keeps accepting requests that form the next
batch) -> hand on (features back to the ingress, which passes them to the decoder; this stage never calls another).

Resources: on CPU a fraction of a core and `threads` ORT intra-op threads; on a GPU node, `num_gpus` in the config
file and a GPU EP first in `providers`. `max_ongoing_requests` must be >= max_batch_size or batches never fill.

Shapes: in `pixels` (3,H,W) uint8 per request, stacked to (B,3,H,W); out `image_features` (P,D) float32 per image.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from ray import serve

from graphs.manifest import Manifest, check_session_io
from serve_app.artifacts import ModelSource, model_key, resolve_model
from serve_app.encoder.feature_cache import MIB, FeatureCache
from serve_app.observability.ep_metrics import report_active_ep
from serve_app.observability.metrics import StageMetrics
from serve_app.runtime.ort_session import OpenedSession, open_stage_session
from serve_app.runtime.profiling import ProfilableSession, ProfileSettings
from serve_app.runtime.providers import BatchProfile, ProviderSpec, batch_profile, default_vision_providers, parse_providers
from serve_app.engine.types import PreprocessedImage, check_model_key
from serve_app.runtime.warmup import warm_up

log = logging.getLogger("ray.serve")


class VisionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    providers: list[ProviderSpec] = Field(default_factory=default_vision_providers,
                                          description="ONNX Runtime execution providers to try, best first, each "
                                                      "a name or {name, options...} (TensorRT: fp16, cache_dir, "
                                                      "workspace_bytes; CUDA: device_id, gpu_mem_limit)")
    strict: bool = Field(default=False, description="fail the replica's start unless the first provider loads "
                                                    "(otherwise: warn, fall back, report the active EP)")
    prefer_variants: list[str] = Field(default_factory=lambda: ["cpu-int8", "cpu-fp32", "portable-fp16",
                                                                "portable-fp32"],
                                       description="graph variant names in order of preference for the loaded EP")
    threads: int = Field(default=1, ge=1, description="ORT intra-op threads; match the replica's num_cpus")
    max_batch_size: int = Field(default=8, ge=1, description="largest batch one session call runs; the "
                                                             "TensorRT profile's opt shape")
    batch_profile_max: int | None = Field(default=None, ge=1,
                                          description="largest max_batch_size a live reconfigure may set on "
                                                      "TensorRT: the profile's max shape, so no engine rebuild; "
                                                      "None = max_batch_size")
    batch_wait_timeout_s: float = Field(default=0.005, ge=0, description="longest wait for a batch to fill")
    cache_mib: float = Field(default=256, ge=0, description="MiB of image features kept by content hash (LRU by "
                                                           "bytes: one LLaVA-1.5 image is 9 MiB, a tiny model's "
                                                           "kilobytes); 0 = off (live)")
    cache_size: int | None = Field(default=None, ge=0, description="also at most this many images in the cache; "
                                                                   "None = bounded by cache_mib alone (live)")
    ort_profile: ProfileSettings = Field(default_factory=ProfileSettings,
                                         description="ORT profiling of the next N batches (live via user_config)")

    @field_validator("providers", mode="before")
    @classmethod
    def _provider_names(cls, v):
        return parse_providers(v) if isinstance(v, list) else v

    @model_validator(mode="after")
    def _profile_covers_batch(self) -> "VisionOptions":
        if self.batch_profile_max is not None and self.batch_profile_max < self.max_batch_size:
            raise ValueError(f"batch_profile_max ({self.batch_profile_max}) < max_batch_size "
                             f"({self.max_batch_size})")
        return self

    def batching(self) -> dict:
        """The live batching knobs, as the deployment's user_config."""
        return {"max_batch_size": self.max_batch_size, "batch_wait_timeout_s": self.batch_wait_timeout_s}

    def profile(self, manifest: Manifest) -> BatchProfile:
        """TensorRT profile over the `pixels` batch dim: min 1, opt max_batch_size, max batch_profile_max."""
        pixels = manifest.graphs["vision"].inputs[0]  # ("batch", 3, H, W) uint8
        return batch_profile(pixels, self.max_batch_size, self.batch_profile_max or self.max_batch_size)


def open_vision_session(artifacts_dir: str | Path, options: VisionOptions) -> OpenedSession:
    """The session on the first provider that really loads, with that provider's variant (see ort_session), its
    inputs and outputs checked against the manifest."""
    manifest = Manifest.read(artifacts_dir)
    entry = manifest.graphs["vision"]
    opened = open_stage_session(str(artifacts_dir), entry, options.providers, strict=options.strict,
                                threads=options.threads, profile=options.profile(manifest),
                                prefer=options.prefer_variants, stage="vision")
    check_session_io(Path(artifacts_dir) / entry.variants[opened.variant].file, entry, opened.session)
    return opened


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class VisionEncoder:
    def __init__(self, model: ModelSource | dict, options: VisionOptions | dict | None = None):
        self.options = VisionOptions.model_validate(options or {})
        artifacts_dir = resolve_model(ModelSource.model_validate(model))
        self.model_key, self.source = model_key(artifacts_dir), ModelSource.model_validate(model).model_dump()
        opened = open_vision_session(artifacts_dir, self.options)
        self.variant, self.provider = opened.variant, opened.provider
        manifest = Manifest.read(artifacts_dir)
        model_path = Path(artifacts_dir) / manifest.graphs["vision"].variants[self.variant].file
        self.session = ProfilableSession(opened.session, model_path, self.options.threads, stage="vision")
        self.metrics = StageMetrics("vision")
        self.batches_run = 0
        self.fallbacks = list(opened.fallbacks)
        report_active_ep("vision", self.provider, self.variant)
        self.profile = self.options.profile(manifest)
        self.io = manifest.vision.io
        self.cache = FeatureCache(int(self.options.cache_mib * MIB), self.options.cache_size)
        # A batcher per instance, not a decorated method: serve.batch keeps its queue on the function object, which
        # a method decorator shares across every instance in the process (and across event loops in tests).
        self._encode_batch = serve.batch(max_batch_size=self.options.max_batch_size,
                                         batch_wait_timeout_s=self.options.batch_wait_timeout_s)(self._run_batch)
        self.warmup_s = warm_up(self.session, self.profile)  # in __init__: the replica is not ready before it ends
        log.info("vision replica on %s (variant %s), warm-up %s", self.provider, self.variant, self.warmup_s)
        if self.fallbacks:  # in the replica's own log, where an operator looks first
            log.warning("vision runs on %s, not %s: %s", self.provider, self.options.providers[0].name,
                        "; ".join(self.fallbacks))

    def reconfigure(self, user_config: dict) -> None:
        """Live knobs: max_batch_size, batch_wait_timeout_s, cache_mib, cache_size, ort_profile."""
        options = VisionOptions.model_validate({**self.options.model_dump(), **(user_config or {})})
        if options.max_batch_size > self.profile.max_batch:
            # outside the profile TensorRT would rebuild its engine mid-traffic, and no EP was warmed up there
            raise ValueError(f"VisionEncoder user_config: max_batch_size {options.max_batch_size} exceeds "
                             f"{self.profile.max_batch}, the batch profile fixed at start (vision.max_batch_size / "
                             f"vision.batch_profile_max in the args); raise it there and redeploy")
        self.options = options
        self._apply_batching(self.options)
        self.cache.resize(int(self.options.cache_mib * MIB), self.options.cache_size)
        self.session.arm(self.options.ort_profile)

    def _apply_batching(self, options: VisionOptions) -> None:
        self._encode_batch.set_max_batch_size(options.max_batch_size)
        self._encode_batch.set_batch_wait_timeout_s(options.batch_wait_timeout_s)

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run([self.io.features], {self.io.pixels: pixels})[0]  # (B,3,H,W) -> (B,P,D)

    async def _run_batch(self, batch: list[np.ndarray], enqueued_at: list[float]) -> list[np.ndarray]:
        start = time.perf_counter()
        for t in enqueued_at:
            self.metrics.observe_queue_wait(start - t)  # waiting for the batch to form and the previous to end
        self.metrics.observe_batch(len(batch))
        self.batches_run += 1
        pixels = np.stack(batch)  # (B,3,H,W) uint8
        with self.metrics.timed_compute():
            features = await asyncio.to_thread(self._run, pixels)  # (B,P,D) float32
        return [np.ascontiguousarray(f) for f in features]

    async def encode(self, image: PreprocessedImage, model_key: str | None = None) -> np.ndarray:
        """-> (P,D) float32 features for one preprocessed image; `model_key`: the ingress's model (refused if not
        this replica's)."""
        with self.metrics.track():
            check_model_key("vision", self.model_key, model_key, self.source)
            features, source = await self.cache.get_or_encode(  # the same image in flight: encoded once
                image.content_hash, lambda: self._encode_batch(image.pixels, time.perf_counter()))
            self.metrics.count_cache(source != "miss")
            return features

    async def info(self) -> dict:
        return {"variant": self.variant, "provider": self.provider, "fallbacks": self.fallbacks,
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
        report_active_ep("vision", self.provider, self.variant)
