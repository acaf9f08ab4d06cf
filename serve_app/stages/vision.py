"""Vision encoder stage: uint8 pixels -> image features, dynamically batched, cached by content hash.

Lifecycle: load (read the manifest, open an ORT session on the first available EP of `providers`, then pick the
graph variant for the EP that actually loaded -- ORT falls back silently) -> warm up (one batch of zeros, so the
first request does not pay for allocator and kernel setup) -> batch (`@serve.batch` gathers concurrent requests up
to `max_batch_size` or `batch_wait_timeout_s`, both live-tunable through `user_config`) -> run (one session call per
batch, in a worker thread so the replica keeps accepting requests that form the next batch) -> hand on (features
back to the ingress, which passes them to the decoder; this stage never calls another).

Resources: on CPU a fraction of a core and `threads` ORT intra-op threads; on a GPU node, `num_gpus` in the config
file and a GPU EP first in `providers`. `max_ongoing_requests` must be >= max_batch_size or batches never fill.

Shapes: in `pixels` (3,H,W) uint8 per request, stacked to (B,3,H,W); out `image_features` (P,D) float32 per image.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from graphs.manifest import CPU_EP, Manifest
from serve_app.ort_session import open_session
from serve_app.stages.messages import PreprocessedImage


class VisionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    providers: list[str] = Field(default_factory=lambda: [CPU_EP],
                                 description="ONNX Runtime execution providers to try, best first")
    prefer_variants: list[str] = Field(default_factory=lambda: ["cpu-int8", "cpu-fp32", "portable"],
                                       description="graph variant names in order of preference for the loaded EP")
    threads: int = Field(default=1, ge=1, description="ORT intra-op threads; match the replica's num_cpus")
    max_batch_size: int = Field(default=8, ge=1, description="largest batch one session call runs")
    batch_wait_timeout_s: float = Field(default=0.005, ge=0, description="longest wait for a batch to fill")
    cache_size: int = Field(default=256, ge=0, description="image features kept by content hash (LRU); 0 = off")


class FeatureCache:
    """LRU of content hash -> features (P,D): the same image sent again skips the encoder."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, key: str) -> np.ndarray | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: np.ndarray) -> None:
        if self.capacity <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        while len(self._items) > max(capacity, 0):
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def open_vision(artifacts_dir: str, options: VisionOptions) -> tuple[ort.InferenceSession, str, str]:
    """-> (session, variant name, provider that loaded)."""
    graph = Manifest.read(artifacts_dir).graphs["vision"]
    available = set(ort.get_available_providers())
    wanted = next((p for p in options.providers if p in available), CPU_EP)
    name, variant = graph.variant_for(wanted, options.prefer_variants)
    opened = open_session(str(Path(artifacts_dir) / variant.file), options.providers, options.threads)
    if opened.provider not in variant.providers:  # the EP we asked for did not load: take that EP's variant
        name, variant = graph.variant_for(opened.provider, options.prefer_variants)
        opened = open_session(str(Path(artifacts_dir) / variant.file), [opened.provider], options.threads)
    return opened.session, name, opened.provider


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class VisionEncoder:
    def __init__(self, artifacts_dir: str, options: VisionOptions | dict | None = None):
        self.options = VisionOptions.model_validate(options or {})
        self.session, self.variant, self.provider = open_vision(artifacts_dir, self.options)
        manifest = Manifest.read(artifacts_dir)
        self.image_size = manifest.image_size
        self.cache = FeatureCache(self.options.cache_size)
        # A batcher per instance, not a decorated method: serve.batch keeps its queue on the function object, which
        # a method decorator shares across every instance in the process (and across event loops in tests).
        self._encode_batch = serve.batch(max_batch_size=self.options.max_batch_size,
                                         batch_wait_timeout_s=self.options.batch_wait_timeout_s)(self._run_batch)
        self._run(np.zeros((1, 3, self.image_size, self.image_size), np.uint8))  # warm up

    def reconfigure(self, user_config: dict) -> None:
        """Live knobs: max_batch_size, batch_wait_timeout_s, cache_size."""
        self.options = VisionOptions.model_validate({**self.options.model_dump(), **(user_config or {})})
        self._apply_batching(self.options)
        self.cache.resize(self.options.cache_size)

    def _apply_batching(self, options: VisionOptions) -> None:
        self._encode_batch.set_max_batch_size(options.max_batch_size)
        self._encode_batch.set_batch_wait_timeout_s(options.batch_wait_timeout_s)

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(["image_features"], {"pixels": pixels})[0]  # (B,3,H,W) -> (B,P,D)

    async def _run_batch(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        pixels = np.stack(batch)  # (B,3,H,W) uint8
        features = await asyncio.to_thread(self._run, pixels)  # (B,P,D) float32
        return [np.ascontiguousarray(f) for f in features]

    async def encode(self, image: PreprocessedImage) -> np.ndarray:
        """-> (P,D) float32 features for one preprocessed image."""
        cached = self.cache.get(image.content_hash)
        if cached is not None:
            return cached
        features = await self._encode_batch(image.pixels)
        self.cache.put(image.content_hash, features)
        return features

    async def info(self) -> dict:
        return {"variant": self.variant, "provider": self.provider, "cached": len(self.cache),
                "max_batch_size": self.options.max_batch_size,
                "batch_wait_timeout_s": self.options.batch_wait_timeout_s}

    async def ready(self) -> bool:
        return True
