"""Every stage's options: the `preprocess`, `vision` and `decoder` blocks of the application's args (the deployments
validate their `user_config` against the same models). Plain pydantic over mmcore's Ray-free schemas: validating a
config (at deploy, in `python -m serve_app`, in a test) imports neither Ray Serve nor ONNX Runtime, and the ingress
can read a stage's default without importing its deployment."""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mmcore.manifest import Manifest
from mmcore.runtime.profile_settings import ProfileSettings
from mmcore.runtime.providers import (BatchProfile, ProviderSpec, batch_profile, default_vision_providers,
                                     parse_providers)
from serve_app.engine.config import EngineConfig


Threads = Annotated[int, Field(ge=1)] | Literal["auto"]
AUTO_THREADS_HELP = ("ORT intra-op threads, or `auto`: every core this replica's process may run on (its CPU "
                     "affinity), resolved in the replica on its own node; docs/performance.md has the rule")


def resolve_threads(threads: int | Literal["auto"]) -> int:
    """`auto` -> the cores this process may run on. Why every core, not the replica's num_cpus share: on one machine
    the stages rarely compute at the same instant (an image's vision call, then its prefill, then decode steps), and
    with ORT's spinning off an idle pool costs nothing; measured in docs/performance.md."""
    if threads != "auto":
        return threads
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class PreprocessOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_image_bytes: int = Field(default=10 * 1024 * 1024, gt=0,
                                 description="largest encoded image accepted, in bytes (after base64 decoding)")
    max_image_pixels: int = Field(default=25_000_000, gt=0,
                                  description="largest width*height accepted; checked from the header before decoding")
    allow_remote_urls: bool = Field(default=False,
                                    description="fetch http(s) image URLs; off by default (server-side requests)")
    fetch_timeout_s: float = Field(default=5.0, gt=0, description="timeout for fetching an http(s) image")
    max_tiles: int | None = Field(default=None, ge=1, description="most views one image may become (a tiling "
                                  "model's base view + tiles, or crops + global view); more is refused with 400 "
                                  "image_too_many_tiles; none = the checkpoint's own grid bounds it")


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
    threads: Threads = Field(default="auto", description=AUTO_THREADS_HELP)

    @property
    def ort_threads(self) -> int:
        return resolve_threads(self.threads)
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


class DecoderOptions(EngineConfig):
    """The engine's knobs (slots and max_context are fixed at start; the others change live via user_config) plus
    the deployment's own. Only the streaming defaults differ from the bare engine's: through Ray streaming and SSE
    each chunk costs far more than a token, so serving merges tokens by default."""

    stream_interval_s: float = Field(0.02, ge=0, le=1.0, description="shortest time between two chunks of one "
                                                                     "stream: tokens of the steps in between travel "
                                                                     "together, since each chunk costs Ray streaming "
                                                                     "and SSE far more than a token costs the engine "
                                                                     "(x3 single-stream throughput at 0.02); 0 = a "
                                                                     "chunk per decode step (live)")
    max_chunk_rate: float = Field(400.0, ge=0, description="chunks per second across the replica's streams: with "
                                                           "many streams the interval stretches to active / rate, "
                                                           "since the serving path's cost is per chunk; 0 = no limit "
                                                           "(live)")
    threads: Threads = Field("auto", description=AUTO_THREADS_HELP)

    @property
    def ort_threads(self) -> int:
        return resolve_threads(self.threads)
    prefer_variants: list[str] = Field(default_factory=lambda: ["cpu-int8", "cpu-int8-kv8", "cpu-fp32"],
                                       description="decoder graph variants in order of preference (a later one "
                                                   "only where an earlier one's KV cache would not fit the node's "
                                                   "memory); cpu-int8-rowwise-kv8 first: seeded and greedy "
                                                   "requests replay the same under any load, at some speed; "
                                                   "NAME@u8u8 or @u8s8 pins the int8 weight encoding")
    ort_profile: ProfileSettings = Field(default_factory=ProfileSettings,
                                         description="ORT profiling of the next N decoder calls (prefills and "
                                                     "steps; live)")

    def check_admission(self, max_ongoing_requests: int) -> None:
        """Every request must reach the engine: with slots + max_queue over the deployment's
        max_ongoing_requests, Serve would queue the excess outside it, neither batched nor refused with 503."""
        if self.slots + self.max_queue > max_ongoing_requests:
            raise ValueError(f"decoder.slots + decoder.max_queue = {self.slots + self.max_queue} exceeds the Decoder "
                             f"deployment's max_ongoing_requests {max_ongoing_requests}: raise it in the config "
                             f"file's deployments entry or lower them")

    def engine_config(self) -> EngineConfig:
        return EngineConfig(**self.model_dump(include=set(EngineConfig.model_fields)))
