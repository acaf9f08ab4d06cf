"""The anyres parity gate's reference: transformers' own LlavaNextForConditionalGeneration or
LlavaOnevisionForConditionalGeneration, loaded from the checkpoint with from_pretrained (eager attention, float32),
fed by the checkpoint's own image processor (the PIL one transformers picks for it). Nothing here re-implements the
model: per-view features are what transformers' get_image_features hands its pack_image_features (captured there),
and the rows an image's placeholders take are pack_image_features' own output.

Build-time only: imports torch and transformers.
"""

from __future__ import annotations

import numpy as np

from graphs.families.llava.reference import Reference
from graphs.families.llava_next.checkpoint import IMAGE_PROCESSORS, MODEL_CLASSES, AnyresCheckpoint


class AnyresReference(Reference):
    def __init__(self, ack: AnyresCheckpoint):
        import transformers

        self.MODEL = MODEL_CLASSES[ack.model_type]
        super().__init__(ack.base)
        self.anyres = ack
        self.processor = getattr(transformers, IMAGE_PROCESSORS[ack.model_type]).from_pretrained(str(ack.directory))

    def processed(self, images: list[np.ndarray]) -> dict:
        """HWC uint8 RGB images -> the image processor's output (pixel_values (B,N,3,S,S), image_sizes (B,2))."""
        return dict(self.processor(images=list(images), return_tensors="pt"))

    def image_inputs(self, pixels: np.ndarray | None) -> dict:
        """pixels (1,3,H,W) uint8: one image, as the processor turns it into the model's inputs."""
        return {} if pixels is None else self.processed([pixels[0].transpose(1, 2, 0)])

    def prompt_features(self, pixels: np.ndarray) -> np.ndarray:
        """(T,Dt): the image's packed rows (base view, unpadded tiles, newline rows), as transformers packs them."""
        with self.torch.no_grad():
            out = self.model.get_image_features(**self.image_inputs(pixels))
        return out.pooler_output[0].numpy()

    def view_features(self, inputs: dict) -> list[np.ndarray]:
        """Per image (views, P, Dt): the projected features of its views, as get_image_features computes them,
        before pack_image_features (captured at its call)."""
        inner, seen = self.model.model, []
        pack = inner.pack_image_features

        def capture(image_features, *args, **kwargs):
            seen.extend(f.numpy() for f in image_features)
            return pack(image_features, *args, **kwargs)

        inner.pack_image_features = capture
        try:
            with self.torch.no_grad():
                self.model.get_image_features(**inputs)
        finally:
            del inner.pack_image_features  # the class's method again
        return seen
