"""LLaVA-NeXT and LLaVA-OneVision checkpoints as a model family: the llava family's graphs, weights, decoder,
tokenizer, prompt and gates (graphs/families/llava/), with anyres views.

    one image -> the anyres planner's views (a base view + tiles: the manifest's vision.plan says how)
              -> the vision graph: uint8 ("views",3,S,S) -> float32 ("views",P,D), every view's projected features
              -> numpy: unpad, OneVision's anyres_max interpolation, a newline row (vision.newline) after each row
The vision graph is the llava family's, its batch axis named "views": the views of all images in a batch run
together. Its gate compares every view's features with transformers' on the views the checkpoint's own image
processor makes (parity.py); the decoder's gates are the llava family's, their image rows transformers' packed
features (reference.py).

Manifest: VisionSpec.features_per_image = P rows per view, newline = the model's image_newline (D,) float32 .npy,
plan = the planner's spec (checkpoint.AnyresCheckpoint.plan); PromptSpec.image_features = P per view too (the
count per image is the plan's to make).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graphs.families.base import Source, Specs
from graphs.families.llava.family import Loaded, LlavaFamily
from graphs.families.llava.variants import variants
from graphs.families.llava_next.checkpoint import AnyresCheckpoint, read_anyres_checkpoint
from mmcore.manifest import TensorSpec

NEWLINE = "image_newline.npy"
NEWLINE_KEY = "image_newline"  # its canonical name (graphs/families/llava/weights.py)


@dataclass(frozen=True)
class AnyresLoaded(Loaded):
    anyres: AnyresCheckpoint | None = None

    def reference(self):
        from graphs.families.llava_next.reference import AnyresReference

        return AnyresReference(self.anyres)


class AnyresFamily(LlavaFamily):
    name = "llava_next"
    variants = variants(batch="views")
    gate_partners = ()

    @staticmethod
    def load_checkpoint(directory: Path, weights: bool = False) -> AnyresLoaded:
        from graphs.families.llava.weights import load_weights

        ack = read_anyres_checkpoint(directory)
        extra = {NEWLINE_KEY: (ack.base.text.hidden,)}
        return AnyresLoaded(ack.base, load_weights(ack.base, extra) if weights else {}, ack)

    def specs(self, source: Source, model: AnyresLoaded, tokenizer_path: Path, embeddings_file: str) -> Specs:
        """The llava family's specs, and the newline row and the plan; writes image_newline.npy beside the
        tokenizer (the artifact directory being built)."""
        specs = super().specs(source, model, tokenizer_path, embeddings_file)
        row = model.weights[NEWLINE_KEY].astype(np.float32)
        np.save(tokenizer_path.parent / NEWLINE, row)
        newline = TensorSpec(name=NEWLINE, dtype="float32", shape=list(row.shape))
        vision = specs.vision.model_copy(update={"newline": newline, "plan": model.anyres.plan()})
        return dataclasses.replace(specs, vision=vision, source=model.anyres.to_dict())

    @staticmethod
    def vision_figures(ref, proto: bytes) -> tuple[dict, np.ndarray, np.ndarray]:
        from graphs.families.llava_next import parity

        return parity.vision_figures(ref, proto)


FAMILY = AnyresFamily()
__all__ = ["FAMILY", "AnyresFamily", "AnyresLoaded"]
