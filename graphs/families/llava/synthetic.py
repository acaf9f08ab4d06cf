"""Random-weight LLaVA checkpoints written by transformers' own `save_pretrained`: what the tests and the benchmark
import, so the import path is exercised on exactly the files a real checkpoint directory holds.

    write_checkpoint(out, SPECS["clip-llama"])  ->  out/{config.json, model.safetensors, tokenizer.json,
                                                     tokenizer_config.json, chat_template.jinja,
                                                     preprocessor_config.json}

`Spec.arch` picks the architecture: LLaVA-1.5 (a processor dict written as is), or LLaVA-NeXT / LLaVA-OneVision
(graphs/families/llava_next/synthetic.py has their specs), whose image processor transformers saves itself.

Build-time only (imports torch and transformers). The tokenizer is a byte-level BPE trained locally with
`tokenizers` on a few lines, padded with reserved tokens to the decoder's vocabulary, with `<image>` at
`image_token_index` and the chat markers as special tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_TOKEN = "<image>"
SPECIALS = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>"]
# A ChatML-like template in the shape real checkpoints ship (Qwen2/LLaVA-OneVision style).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = ["a small model that sees an image and describes it", "what is in this picture? describe the image.",
           "the quick brown fox jumps over the lazy dog"]


@dataclass(frozen=True)
class Spec:
    """The dims of one synthetic checkpoint; `vision`/`text` are HF sub-config kwargs (model_type included)."""

    vision: dict
    text: dict
    vision_feature_layer: int | list[int] = -2
    vision_feature_select_strategy: str = "default"
    projector_hidden_act: str = "gelu"
    tie_word_embeddings: bool = False
    processor: dict = field(default_factory=dict)  # llava: the JSON; others: the image processor's kwargs
    arch: str = "llava"  # a key of ARCHS
    extra: dict = field(default_factory=dict)  # more config kwargs (image_grid_pinpoints, vision_aspect_ratio)


def _clip(hidden=32, layers=3, heads=4, image=32, patch=8) -> dict:
    return dict(model_type="clip_vision_model", hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=layers, num_attention_heads=heads, image_size=image, patch_size=patch,
                hidden_act="quick_gelu", projection_dim=hidden)


def _siglip(hidden=32, layers=3, heads=4, image=32, patch=8) -> dict:
    return dict(model_type="siglip_vision_model", hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=layers, num_attention_heads=heads, image_size=image, patch_size=patch,
                hidden_act="gelu_pytorch_tanh", vision_use_head=False)


def _text(model_type: str, hidden=64, layers=2, heads=4, kv_heads=2, vocab=384, **extra) -> dict:
    base = dict(model_type=model_type, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-6, initializer_range=0.1)
    return {**base, **extra}


CLIP_PROCESSOR = {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": 32},
                  "do_center_crop": True, "crop_size": {"height": 32, "width": 32}, "resample": 3,
                  "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                  "image_mean": [0.48145466, 0.4578275, 0.40821073],
                  "image_std": [0.26862954, 0.26130258, 0.27577711], "do_convert_rgb": True}
SIGLIP_PROCESSOR = {"image_processor_type": "SiglipImageProcessor", "do_resize": True,
                    "size": {"height": 32, "width": 32}, "resample": 2, "do_rescale": True,
                    "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
                    "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True}

SPECS = {
    # CLIP + Llama: CLS dropped, features from the second-to-last layer, untied head, GQA 4 heads over 2.
    "clip-llama": Spec(vision=_clip(), text=_text("llama"), processor=CLIP_PROCESSOR),
    # SigLIP + Qwen2: no CLS (`full`), last layer, q/k/v biases, tied head.
    "siglip-qwen2": Spec(vision=_siglip(), text=_text("qwen2"), vision_feature_layer=-1,
                         vision_feature_select_strategy="full", projector_hidden_act="gelu_pytorch_tanh",
                         tie_word_embeddings=True, processor=SIGLIP_PROCESSOR),
    # The realistic benchmark's dims: SigLIP-base at 384 px + a Qwen2-0.5B-shaped decoder.
    "siglip-qwen2-0.5b": Spec(
        vision=dict(_siglip(hidden=768, layers=12, heads=12, image=384, patch=16), intermediate_size=3072),
        text=_text("qwen2", hidden=896, layers=24, heads=14, kv_heads=2, vocab=151936, intermediate_size=4864,
                   max_position_embeddings=32768, initializer_range=0.02),
        vision_feature_layer=-1, vision_feature_select_strategy="full", tie_word_embeddings=True,
        processor=dict(SIGLIP_PROCESSOR, size={"height": 384, "width": 384})),
}


# arch -> (config class, model class, image processor class or None: the processor dict is written as JSON)
ARCHS = {"llava": ("LlavaConfig", "LlavaForConditionalGeneration", None),
         "llava_next": ("LlavaNextConfig", "LlavaNextForConditionalGeneration", "LlavaNextImageProcessor"),
         "llava_onevision": ("LlavaOnevisionConfig", "LlavaOnevisionForConditionalGeneration",
                             "LlavaOnevisionImageProcessor")}
PROCESSORS = {"llava_next": "LlavaNextProcessor", "llava_onevision": "LlavaOnevisionProcessor"}


def _tokenizer(vocab: int, image_index: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=min(vocab - 8, 400), special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    filler = [f"<|reserved_{i}|>" for i in range(vocab - tok.get_vocab_size() - 1)]
    at = image_index - tok.get_vocab_size()  # `<image>` lands at image_index exactly
    tok.add_special_tokens(filler[:at] + [IMAGE_TOKEN] + filler[at:])
    assert tok.token_to_id(IMAGE_TOKEN) == image_index and tok.get_vocab_size() == vocab
    return tok


def write_checkpoint(out: str | Path, spec: Spec, seed: int = 0, max_shard_size: str | None = None,
                     tokenizer: Path | None = None, chat_template: str = CHAT_TEMPLATE) -> Path:
    """A random model of spec.arch (LlavaForConditionalGeneration, ...) saved with save_pretrained (sharded when
    max_shard_size is set).
    `tokenizer`: a directory of tokenizer files saved by transformers (with `<image>` among its special tokens) to
    ship instead of the generated byte-level one; the decoder's vocabulary is then that tokenizer's size."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    out = Path(out)
    vocab, image_index = spec.text["vocab_size"], spec.text["vocab_size"] - 1
    if tokenizer is not None:
        shipped = AutoTokenizer.from_pretrained(str(tokenizer))
        vocab, image_index = len(shipped), shipped.convert_tokens_to_ids(IMAGE_TOKEN)
    vision = AutoConfig.for_model(**spec.vision)
    text = AutoConfig.for_model(**{**spec.text, "vocab_size": vocab}, tie_word_embeddings=spec.tie_word_embeddings)
    config_class, model_class, processor_class = (getattr(transformers, n) if n else None for n in ARCHS[spec.arch])
    cfg = config_class(vision_config=vision, text_config=text, image_token_index=image_index,
                      vision_feature_layer=spec.vision_feature_layer, projector_hidden_act=spec.projector_hidden_act,
                      vision_feature_select_strategy=spec.vision_feature_select_strategy,
                      tie_word_embeddings=spec.tie_word_embeddings, **spec.extra)
    torch.manual_seed(seed)
    model = model_class(cfg).eval()
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(out, **kwargs)
    if tokenizer is None:
        _tokenizer(vocab, image_index).save(str(out / "tokenizer.json"))
        (out / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
            "pad_token": "<|pad|>", "model_max_length": spec.text["max_position_embeddings"]}, indent=2))
    else:
        shipped.save_pretrained(str(out))
    (out / "chat_template.jinja").write_text(chat_template)
    if processor_class is None:
        (out / "preprocessor_config.json").write_text(json.dumps(spec.processor, indent=2))
    else:
        _save_processor(out, spec, processor_class(**spec.processor), chat_template)
    return out


def _save_processor(out: Path, spec: Spec, image_processor, chat_template: str) -> None:
    """The whole processor, as released anyres checkpoints ship it (processor_config.json beside the image
    processor's settings): how many <image> tokens it writes per view is its own setting, which must agree with the
    model's rows per view."""
    import transformers
    from transformers import AutoTokenizer

    side = spec.vision["image_size"] // spec.vision["patch_size"]
    has_cls = spec.vision["model_type"] == "clip_vision_model"  # "default" drops its CLS row
    strategy = spec.vision_feature_select_strategy
    if spec.arch == "llava_next":
        kwargs = dict(patch_size=spec.vision["patch_size"], num_additional_image_tokens=int(has_cls))
    else:  # OneVision counts one view's rows itself, the CLS row included when the tower has one
        kwargs = dict(num_image_tokens=side * side + int(has_cls),
                      vision_aspect_ratio=spec.extra.get("vision_aspect_ratio", "anyres_max_9"))
    cls = getattr(transformers, PROCESSORS[spec.arch])
    processor = images_only(cls)(image_processor=image_processor, tokenizer=AutoTokenizer.from_pretrained(str(out)),
                                 vision_feature_select_strategy=strategy, chat_template=chat_template, **kwargs)
    processor.save_pretrained(str(out))
    # laid out as the released llava-hf checkpoints ship it: the image processor in preprocessor_config.json, the
    # processor's own settings in processor_config.json (transformers 5 nests the one in the other when it saves)
    saved = json.loads((out / "processor_config.json").read_text())
    (out / "preprocessor_config.json").write_text(json.dumps(saved.pop("image_processor"), indent=2))
    (out / "processor_config.json").write_text(json.dumps(saved, indent=2))


def images_only(cls):
    """`cls` (a transformers processor class) built without a video processor: without torchvision transformers has
    no video processor class for OneVision, and ProcessorMixin refuses even a None one. Images never reach it; the
    image handling and what save_pretrained writes are the class's own (its name included, so AutoProcessor loads
    the files back as `cls`)."""
    if "video_processor" not in cls.get_attributes():
        return cls

    class ImagesOnly(cls):
        @classmethod
        def get_attributes(cls):
            return ["image_processor", "tokenizer"]

    ImagesOnly.__name__ = ImagesOnly.__qualname__ = cls.__name__
    return ImagesOnly
