"""Random-weight Idefics3 / SmolVLM checkpoints written by transformers' own `save_pretrained` (model and processor),
for the tests and the benchmarks: the build reads exactly the files a real checkpoint directory holds.

    write_checkpoint(out, SPECS["tiny"])  ->  out/{config.json, model.safetensors, generation_config.json,
                                               processor_config.json, tokenizer.json, tokenizer_config.json,
                                               chat_template.jinja}

`smolvlm-256m` has SmolVLM-256M-Instruct's dims (SigLIP-base/16 at 512 + a SmolLM2-135M-shaped Llama, pixel
shuffle 4: 64 tokens per view) with random weights: for benchmarks, never for tests (about 1 GB written).

Build-time only (imports torch and transformers). The tokenizer is llava's synthetic byte-level BPE
(graphs/families/llava/synthetic.py) with Idefics3's special tokens appended at the top of the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from graphs.families.llava.synthetic import IMAGE_TOKEN, _tokenizer

FAKE_TOKEN = "<fake_token_around_image>"
GLOBAL_TOKEN = "<global-img>"
END_OF_UTTERANCE = "<end_of_utterance>"
ROW_COL = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]  # what Idefics3Processor looks up
# appended after `<image>` (which llava's tokenizer places at the top of its own vocabulary)
EXTRA_TOKENS = [FAKE_TOKEN, GLOBAL_TOKEN, END_OF_UTTERANCE, *ROW_COL]
# SmolVLM-Instruct's template shape ("User:<image>...<end_of_utterance>\nAssistant:"), plain-string content allowed
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


@dataclass(frozen=True)
class Spec:
    """One synthetic checkpoint's dims: `vision`/`text` are HF sub-config kwargs; `processor`: the image
    processor's."""

    vision: dict
    text: dict
    scale_factor: int = 2
    model_type: str = "idefics3"  # or "smolvlm": the same model under SmolVLMForConditionalGeneration
    tie_word_embeddings: bool = False
    processor: dict = field(default_factory=dict)


def _vision(hidden=32, layers=2, heads=4, image=32, patch=4, **extra) -> dict:
    base = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=heads,
                image_size=image, patch_size=patch, hidden_act="gelu_pytorch_tanh")
    return {**base, **extra}


def _text(hidden=64, layers=2, heads=4, kv_heads=2, vocab=448, **extra) -> dict:
    base = dict(model_type="llama", hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-5, initializer_range=0.1)
    return {**base, **extra}


def _processor(side: int, **extra) -> dict:
    """Idefics3ImageProcessor's settings as SmolVLM ships them, scaled: longest edge 4 crops, crops of `side`."""
    return dict(do_resize=True, size={"longest_edge": 4 * side}, max_image_size={"longest_edge": side},
                do_image_splitting=True, resample=1, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_convert_rgb=True, do_pad=True, **extra)


SPECS = {
    # 8x8 patches of 4 px at 32 px, pixel shuffle 2: 16 tokens per view; Llama GQA 4 heads over 2, untied head
    "tiny": Spec(vision=_vision(), text=_text(), processor=_processor(32)),
    # the same under SmolVLM's class and model types, tied head, shuffle 4 over 8x8 patches: 4 tokens per view
    "tiny-smolvlm": Spec(vision=_vision(), text=_text(), scale_factor=4, model_type="smolvlm",
                         tie_word_embeddings=True, processor=_processor(32)),
    # SmolVLM-256M-Instruct's dims, random weights (benchmarks only)
    "smolvlm-256m": Spec(
        vision=_vision(hidden=768, layers=12, heads=12, image=512, patch=16, intermediate_size=3072),
        text=_text(hidden=576, layers=30, heads=9, kv_heads=3, vocab=49280, intermediate_size=1536,
                   max_position_embeddings=8192, rope_theta=100000.0, initializer_range=0.02),
        scale_factor=4, model_type="smolvlm", processor=_processor(512)),
}


def _classes(model_type: str):
    import transformers as tf

    prefix = {"idefics3": "Idefics3", "smolvlm": "SmolVLM"}[model_type]
    return tuple(getattr(tf, f"{prefix}{n}") for n in ("Config", "VisionConfig", "ForConditionalGeneration"))


def write_processor(out: Path, spec: Spec, vocab: int, image_seq_len: int,
                    chat_template: str = CHAT_TEMPLATE) -> tuple[int, int]:
    """Tokenizer + image processor + chat template saved by transformers' Idefics3Processor -> (image token id,
    end-of-utterance id). SmolVLM checkpoints ship the same processor files (their video processor aside)."""
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor, PreTrainedTokenizerFast

    image_index = vocab - len(EXTRA_TOKENS) - 1
    tok = _tokenizer(vocab - len(EXTRA_TOKENS), image_index)
    tok.add_special_tokens(EXTRA_TOKENS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token=END_OF_UTTERANCE,
                                   pad_token="<|pad|>", model_max_length=spec.text["max_position_embeddings"])
    processor = Idefics3Processor(image_processor=Idefics3ImageProcessorPil(**spec.processor), tokenizer=fast,
                                  image_seq_len=image_seq_len, chat_template=chat_template)
    processor.save_pretrained(str(out))
    return fast.convert_tokens_to_ids(IMAGE_TOKEN), fast.convert_tokens_to_ids(END_OF_UTTERANCE)


def write_checkpoint(out: str | Path, spec: Spec, seed: int = 0, chat_template: str = CHAT_TEMPLATE) -> Path:
    """A random Idefics3ForConditionalGeneration (or SmolVLM's) and its processor, saved by save_pretrained."""
    import torch
    from transformers import AutoConfig

    out = Path(out)
    config_cls, vision_cls, model_cls = _classes(spec.model_type)
    patches = (spec.vision["image_size"] // spec.vision["patch_size"]) ** 2
    image_seq_len = patches // spec.scale_factor ** 2
    image_id, eou_id = write_processor(out, spec, spec.text["vocab_size"], image_seq_len, chat_template)
    text = AutoConfig.for_model(**spec.text, tie_word_embeddings=spec.tie_word_embeddings, eos_token_id=eou_id)
    cfg = config_cls(vision_config=vision_cls(**spec.vision), text_config=text, scale_factor=spec.scale_factor,
                     image_token_id=image_id, tie_word_embeddings=spec.tie_word_embeddings)
    torch.manual_seed(seed)
    model_cls(cfg).eval().save_pretrained(out)
    return out
