"""An Idefics3 checkpoint's tensors under llava's canonical names, read by llava's reader (graphs/families/llava/
weights.py) with this family's key mapping and shapes.

    model.vision_model.*                        -> vision.*      (embeddings, encoder layers, post_layernorm)
    model.connector.modality_projection.proj.*  -> connector.*   (one Linear, no bias: (Dt, Dv * s^2))
    model.text_model.*                          -> text.*
    lm_head.*                                   -> lm_head.*
Transformers 4 and 5 save the same layout for this model (no conversion mapping), so there is one.
"""

from __future__ import annotations

import numpy as np

from graphs.families.idefics3.checkpoint import Idefics3Checkpoint
from graphs.families.llava import weights as llava

# saved key prefix -> canonical prefix
PREFIXES = {"model.vision_model.": "vision.", "model.connector.modality_projection.proj.": "connector.",
            "model.text_model.": "text.", "lm_head.": "lm_head."}


def canonical(key: str) -> str | None:
    return next((new + key[len(old):] for old, new in PREFIXES.items() if key.startswith(old)), None)


def expected_shapes(ck: Idefics3Checkpoint) -> dict[str, tuple[int, ...]]:
    """llava's tower (SigLIP-style: patch bias, no class token) and decoder; the connector for its projector."""
    v, t = ck.vision, ck.text
    shapes = {k: s for k, s in llava.expected_shapes(ck).items() if not k.startswith("projector.")}
    return shapes | {"vision.post_layernorm.weight": (v.hidden,), "vision.post_layernorm.bias": (v.hidden,),
                     "connector.weight": (t.hidden, v.hidden * v.scale_factor ** 2)}


def load_weights(ck: Idefics3Checkpoint) -> dict[str, np.ndarray]:
    return llava.load_weights(ck, rename=canonical, shapes=expected_shapes)
