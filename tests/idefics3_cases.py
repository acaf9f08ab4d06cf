"""Shared cases for the Idefics3 / SmolVLM plan and views tests: the specs, the image shapes, and transformers' own
image processor configured from a spec (the reference every check compares against)."""

from __future__ import annotations

import numpy as np
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mmcore.image_plan.idefics3 import Idefics3PlanSpec

# Small enough to run in milliseconds: views of 32 px, 4x4 patches shuffled by 2 into 4 rows, at most 3x3 crops.
TINY = Idefics3PlanSpec(longest_edge=96, max_image_size=32, image_size=32, patch_size=8, scale_factor=2,
                        image_seq_len=4)
# SmolVLM-256M-Instruct's settings (preprocessor size.longest_edge 2048, max_image_size 512; SigLIP 512/16;
# scale_factor 4; image_seq_len 64), as published with the checkpoint (not readable offline: written from its files).
SMOLVLM_256M = Idefics3PlanSpec(longest_edge=2048, max_image_size=512, image_size=512, patch_size=16, scale_factor=4,
                                image_seq_len=64)

# (height, width, PIL mode): tall, wide, tiny, huge, odd, degenerate aspect, square at and around the crop side
SHAPES = [
    (1, 1, "RGB"), (3, 5, "RGB"), (5, 3, "RGB"), (70, 50, "RGB"), (50, 70, "RGB"), (3000, 4000, "RGB"),
    (4000, 3000, "RGB"), (20, 20000, "RGB"), (20000, 20, "RGB"), (31, 97, "RGB"), (97, 31, "RGB"),
    (33, 33, "RGB"), (32, 32, "RGB"), (64, 96, "RGB"), (333, 517, "RGB"), (45, 67, "L"), (67, 45, "RGBA"),
]


def sample_image(height: int, width: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Noise (every pixel differs from its neighbours, so a one-pixel shift or a wrong filter shows), in `mode`;
    RGBA with varied alpha so the compositing on white matters."""
    rng = np.random.default_rng(seed + height * 7919 + width)
    rgba = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")
    return rgba if mode == "RGBA" else rgba.convert("RGB").convert(mode)


def hf_image_processor(spec: Idefics3PlanSpec, smolvlm: bool = False):
    """transformers' PIL-backend image processor (the class AutoImageProcessor gives without torchvision >= 0.27)
    with the spec's settings."""
    if smolvlm:
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil as cls
    else:
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil as cls
    return cls(do_resize=spec.do_resize, size={"longest_edge": spec.longest_edge} if spec.do_resize else None,
               max_image_size={"longest_edge": spec.max_image_size}, do_image_splitting=spec.do_image_splitting)


SPECIALS = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>", "<|im_start|>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]


def tiny_tokenizer():
    """A byte-level BPE like SmolLM2's, trained here so that "\\n\\n" is one token: the merge the global view's
    leading newline makes with the last row's, which tokenizing pieces apart must not break."""
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["User: what is in the picture?\n\nAssistant: a cat\n\n on a mat.\n"] * 50, trainer)
    assert len(tok.encode("\n\n").ids) == 1
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def tiny_config(spec: Idefics3PlanSpec, image_token_id: int, vocab: int, smolvlm: bool = False):
    """A random-weight Idefics3 (or SmolVLM) config of the spec's vision and connector shape, tiny elsewhere."""
    from transformers import Idefics3Config, SmolVLMConfig
    return (SmolVLMConfig if smolvlm else Idefics3Config)(
        vision_config=dict(image_size=spec.image_size, patch_size=spec.patch_size, hidden_size=16,
                           intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
        text_config=dict(model_type="llama", vocab_size=vocab, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1),
        scale_factor=spec.scale_factor, image_token_id=image_token_id)
