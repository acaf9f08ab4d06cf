"""Random-weight LLaVA-NeXT and LLaVA-OneVision checkpoints, written by graphs/families/llava/synthetic.py's
`write_checkpoint` (transformers' own save_pretrained for the model and its image processor, the local tokenizer
and chat template): the tests import SPECS, benchmarks BENCHMARK_SPECS from here.

    next-clip-llama          CLIP ("default": class token dropped, second-to-last layer) + Llama, NeXT-style
                             pinpoints (1x2, 2x1, 2x2, 1x3, 3x1 tiles)
    onevision-siglip-qwen2   SigLIP ("full", last layer) + Qwen2, tied head, OneVision-style pinpoints (every grid
                             up to 3x3) and anyres_max_4, so a 3x3 grid's unpadded features are interpolated down
    BENCHMARK_SPECS["onevision-0.5b"]  LLaVA-OneVision-0.5B's dims, for benchmarks (the tests never write it)
"""

from __future__ import annotations

from graphs.families.llava.synthetic import CLIP_PROCESSOR, SIGLIP_PROCESSOR, Spec, _clip, _siglip, _text

TILE = 32  # the tiny towers' image_size


def _grids(*shapes: tuple[int, int]) -> list[list[int]]:
    return [[h * TILE, w * TILE] for h, w in shapes]


NEXT_PINPOINTS = _grids((1, 2), (2, 1), (2, 2), (1, 3), (3, 1))
ONEVISION_PINPOINTS = _grids(*[(h, w) for h in range(1, 4) for w in range(1, 4)])


def _kwargs(processor: dict, **more) -> dict:
    """An image processor's constructor kwargs from one of llava's processor JSONs (its class is the arch's)."""
    return {k: v for k, v in processor.items() if k != "image_processor_type"} | more


SPECS = {
    "next-clip-llama": Spec(vision=_clip(), text=_text("llama"), arch="llava_next",
                            extra=dict(image_grid_pinpoints=NEXT_PINPOINTS),
                            processor=_kwargs(CLIP_PROCESSOR, image_grid_pinpoints=NEXT_PINPOINTS, do_pad=True)),
    "onevision-siglip-qwen2": Spec(
        vision=_siglip(), text=_text("qwen2"), arch="llava_onevision", vision_feature_layer=-1,
        vision_feature_select_strategy="full", projector_hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True,
        extra=dict(image_grid_pinpoints=ONEVISION_PINPOINTS, vision_aspect_ratio="anyres_max_4"),
        processor=_kwargs(SIGLIP_PROCESSOR, image_grid_pinpoints=ONEVISION_PINPOINTS, do_pad=True, resample=3)),
}

# The benchmark's dims, LLaVA-OneVision-0.5B's shape: SigLIP-so400m/14 at 384 px (26 layers, as the released model
# keeps; 384 is not a multiple of 14, so each view is 27x27 = 729 patches) + Qwen2-0.5B; every grid up to 6x6 tiles
# and anyres_max_9, as the released processor and config.
ONEVISION_0_5B_PINPOINTS = [[h * 384, w * 384] for h in range(1, 7) for w in range(1, 7)]
BENCHMARK_SPECS = {"onevision-0.5b": Spec(
    vision=dict(_siglip(hidden=1152, layers=26, heads=16, image=384, patch=14), intermediate_size=4304),
    text=_text("qwen2", hidden=896, layers=24, heads=14, kv_heads=2, vocab=151936, intermediate_size=4864,
               max_position_embeddings=32768, rope_theta=1000000.0, initializer_range=0.02),
    arch="llava_onevision", vision_feature_layer=-1, vision_feature_select_strategy="full", tie_word_embeddings=True,
    extra=dict(image_grid_pinpoints=ONEVISION_0_5B_PINPOINTS, vision_aspect_ratio="anyres_max_9"),
    processor=_kwargs(SIGLIP_PROCESSOR, size={"height": 384, "width": 384},
                      image_grid_pinpoints=ONEVISION_0_5B_PINPOINTS, do_pad=True, resample=3))}
