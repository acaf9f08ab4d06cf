"""Tokenizer, chat template, prompts and training batches of the demo captioner (an HF LLaVA checkpoint).

A training example is laid out exactly as serving lays out a request (serve_app/api/prompt.py: the chat template
rendered with jinja2 as transformers renders it, split at `<image>`, each text piece tokenized without specials,
the placeholder expanded to the tower's features), with the caption and `<|im_end|>` after it:

    <|im_start|> user \\n <image> x64 \\n Describe the image. <|im_end|> \\n <|im_start|> assistant \\n  caption <|im_end|>
    loss on:   ---------------------------- none --------------------------------------------------  ^^^^^^^^^^^^^^^^^^^

The model sees images the way the served model does: a square image resized to IMAGE_SIZE with Pillow's bicubic
filter, which for a square input is exactly the preprocess stage's shortest-edge resize + center crop.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from graphs.demo.scenes import all_captions
from graphs.families.llava.synthetic import CHAT_TEMPLATE, IMAGE_TOKEN  # noqa: F401 -- re-exported to train.py

IMAGE_SIZE = 64
PATCH_SIZE = 8
IMAGE_FEATURES = (IMAGE_SIZE // PATCH_SIZE) ** 2  # CLS dropped (vision_feature_select_strategy "default")
VOCAB_SIZE = 512  # 256 byte symbols + specials + enough merges that every caption word is one token
PAD, BOS, EOS = "<|pad|>", "<|im_start|>", "<|im_end|>"
SPECIALS = [PAD, BOS, EOS]
# CHAT_TEMPLATE / IMAGE_TOKEN: the LLaVA family's ChatML template (graphs/families/llava/synthetic.py), the shape
# real LLaVA-OneVision/Qwen2 checkpoints ship; `<image>` on its own line before the text.
PROMPTS = (
    "Describe the image.",
    "What is in this picture?",
    "Caption this image.",
    "What do you see?",
)
TRAIN_SEEDS_END = 1_000_000_000  # training seeds are below; the in-distribution held-out set starts here
IGNORE = -100  # label value transformers' loss skips


def heldout_seeds(n: int) -> list[int]:
    return list(range(TRAIN_SEEDS_END, TRAIN_SEEDS_END + n))


def build_tokenizer() -> Tokenizer:
    """Byte-level BPE (any text encodes) whose merges come from the grammar and prompts, padded with reserved
    tokens to VOCAB_SIZE, `<image>` the last id. Deterministic."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE - 1, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(all_captions() + list(PROMPTS) * 20 + ["user", "assistant"] * 20, trainer=trainer)
    filler = [f"<|reserved_{i}|>" for i in range(VOCAB_SIZE - 1 - tok.get_vocab_size())]
    tok.add_special_tokens(filler + [IMAGE_TOKEN])
    assert tok.get_vocab_size() == VOCAB_SIZE and tok.token_to_id(IMAGE_TOKEN) == VOCAB_SIZE - 1
    return tok


def render_chat(prompt: str) -> str:
    """The chat template applied to one user turn (image, then text), as serving renders it."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return env.from_string(CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=True)


def prompt_ids(tok: Tokenizer, prompt: str) -> list[int]:
    """Token ids of the rendered prompt, `<image>` expanded to IMAGE_FEATURES placeholder ids."""
    before, after = render_chat(prompt).split(IMAGE_TOKEN)
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    return enc(before) + [tok.token_to_id(IMAGE_TOKEN)] * IMAGE_FEATURES + enc(after)


def caption_ids(tok: Tokenizer, caption: str) -> list[int]:
    """Target ids: the caption then <|im_end|>, where greedy decoding must stop."""
    return tok.encode(caption, add_special_tokens=False).ids + [tok.token_to_id(EOS)]


def decode_caption(tok: Tokenizer, ids: list[int]) -> str:
    end = tok.token_to_id(EOS)
    if end in ids:
        ids = ids[: ids.index(end)]
    return tok.decode(ids, skip_special_tokens=True).strip()


def model_pixels(rgb: np.ndarray) -> np.ndarray:
    """(H,W,3) uint8 square image -> (3,IMAGE_SIZE,IMAGE_SIZE) uint8, as the preprocess stage resizes it."""
    img = Image.fromarray(rgb)
    if img.size != (IMAGE_SIZE, IMAGE_SIZE):
        img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def make_batch(tok: Tokenizer, images: list[np.ndarray], captions: list[str], prompts: list[str]):
    """-> (pixels (B,3,S,S) uint8, input_ids (B,T), labels (B,T)) as torch tensors; rows right-padded, where causal
    attention keeps padding from touching any real token. labels[i, j] is the token at j (transformers shifts)."""
    import torch

    rows = [(prompt_ids(tok, p), caption_ids(tok, c)) for p, c in zip(prompts, captions)]
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), tok.token_to_id(PAD), dtype=torch.long)  # (B,T)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)  # (B,T)
    for i, (p, c) in enumerate(rows):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        labels[i, len(p): len(p) + len(c)] = torch.tensor(c)
    pixels = torch.from_numpy(np.stack([model_pixels(im) for im in images]))
    return pixels, ids, labels
