"""Preprocess stage: an image URL from a chat message -> model-ready uint8 pixels and a content hash. The work is
serve_app/imaging's; this module is only its Serve deployment.

Lifecycle: construct (options; the manifest's vision spec, read at replica start) -> per request: fetch bytes
(data: URL, or http(s) when allowed) -> check the byte limit -> read the header only and check the pixel limit (a
decompression bomb is refused before its pixels are decoded) -> decode -> EXIF orientation -> RGB -> the spec's
resize (crop: short side + center crop; pad: long side + pad to square; resize: stretch) -> (3,S,S) uint8.
Resources: CPU only, a fraction of a core; stateless, so it scales out freely.
"""

from __future__ import annotations

import asyncio
import time

from ray import serve

from mmcore.manifest import Manifest
from serve_app.artifacts import ModelSource, model_key, resolve_model
from serve_app.contract import PreprocessedImage, check_model_key
from serve_app.imaging.pipeline import preprocess_image
from serve_app.observability.metrics import ImageMetrics, StageMetrics
from serve_app.stages.options import PreprocessOptions


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=8)
class Preprocess:
    """Stateless CPU stage. In: an image URL string. Out: PreprocessedImage with pixels (3,S,S) uint8."""

    def __init__(self, model: ModelSource | dict, options: PreprocessOptions | dict | None = None):
        self.source = ModelSource.model_validate(model).model_dump()
        artifacts = resolve_model(ModelSource.model_validate(model))
        self.vision, self.model_key = Manifest.read(artifacts).vision, model_key(artifacts)
        self.options = PreprocessOptions.model_validate(options or {})
        self.metrics, self.image_metrics = StageMetrics("preprocess"), ImageMetrics()
        # Decoding is CPU-bound: one image per replica at a time. The wait for this slot is the stage's queue wait;
        # the decode runs in a thread so the replica keeps answering health checks meanwhile.
        self._slot = asyncio.Semaphore(1)

    async def process(self, url: str, param: str = "image_url", model_key: str | None = None,
                      images_in_prompt: int = 1) -> PreprocessedImage:
        arrived = time.perf_counter()
        with self.metrics.track():
            check_model_key("preprocess", self.model_key, model_key, self.source)  # image size and resize rule are the model's
            async with self._slot:
                self.metrics.observe_queue_wait(time.perf_counter() - arrived)
                with self.metrics.timed_compute():
                    image = await asyncio.to_thread(preprocess_image, url, self.vision, self.options, param,
                                                    images_in_prompt)
            self.image_metrics.add(image.source_bytes, image.source_pixels)
            return image

    async def ready(self) -> bool:
        return True
