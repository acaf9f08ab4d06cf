"""The reference the parity gate and the KV calibration measure against: transformers' own
Idefics3ForConditionalGeneration (or SmolVLMForConditionalGeneration), from the same checkpoint directory, eager
attention, float32. llava's Reference with the model class swapped and Idefics3's pixel layout: pixel_values are
(batch, views, 3, S, S), and get_image_features returns every view's connector output, concatenated.

Positions: `position_ids` is what transformers' own vision embeddings compute for a full S x S view (bucketized
fractional coordinates, which are not the identity for every grid size: 19, 25 or 29 patches a side repeat and skip
rows). The graph adds exactly those rows of the position table.

Build-time only: imports torch and transformers.
"""

from __future__ import annotations

import numpy as np

from graphs.families.idefics3.checkpoint import Idefics3Checkpoint
from graphs.families.llava.reference import Reference as LlavaReference


class Reference(LlavaReference):
    def __init__(self, ck: Idefics3Checkpoint):
        self.MODEL = ck.architecture  # Idefics3's or SmolVLM's class; llava's loading otherwise
        super().__init__(ck)

    def pixel_values(self, pixels: np.ndarray):
        """uint8 views (V,3,S,S) -> (1,V,3,S,S) normalized: one sample holding every view."""
        return super().pixel_values(pixels)[None]

    def image_features(self, pixels: np.ndarray) -> np.ndarray:
        """(V,3,S,S) uint8 views -> (V,P,Dt): each view's pixel-shuffled, projected features."""
        with self.torch.no_grad():
            out = self.model.get_image_features(pixel_values=self.pixel_values(pixels))
        return out.pooler_output[0].numpy().reshape(len(pixels), -1, self.ck.text.hidden)


def position_ids(ck: Idefics3Checkpoint) -> np.ndarray:
    """(n*n,) the position-table rows transformers' vision embeddings add to a full S x S view's patches, read from
    its own forward (a hook on the table's lookup), so the graph never re-derives the bucketing."""
    import torch
    import transformers

    module = transformers.models.idefics3.modeling_idefics3.Idefics3VisionEmbeddings  # SmolVLM's is the same code
    v, n = ck.vision, ck.vision.image_size // ck.vision.patch_size
    config = transformers.Idefics3VisionConfig(hidden_size=v.hidden, image_size=v.image_size, patch_size=v.patch_size)
    embeddings, seen = module(config).eval(), []
    embeddings.position_embedding.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        embeddings(torch.zeros(1, 3, v.image_size, v.image_size), torch.ones(1, n, n, dtype=torch.bool))
    return seen[0][0].numpy().astype(np.int64)
