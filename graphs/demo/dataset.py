"""Splits, prompts, tokenizer and training batches for the demo captioner.

Splits are disjoint seed ranges: training draws seeds below HELDOUT_START, evaluation uses the held-out range.
A training example is laid out exactly as serving lays out a request:

    [image features (P) ; <|user|> prompt <|end|> <|assistant|> ; caption ; <|end|>]   positions 0..S-1
    loss on:              --------------------- none -------------------  ^^^^^^^^^^^^^^^^^^^^^^^

so the served prompt "Describe the image." (or any phrasing in PROMPTS) is a prompt the model was trained on.
"""

from __future__ import annotations

import numpy as np
import torch
from tokenizers import Tokenizer

from graphs.demo.render import render_seed
from graphs.demo.scenes import all_captions
from graphs.families.own.tokenizer import EOS, build_tokenizer, encode_chat, token_id

TRAIN_SEEDS = range(0, 1_000_000_000)
HELDOUT_START = 1_000_000_000  # held-out seeds: HELDOUT_START, HELDOUT_START + 1, ...
PROMPTS = (
    "Describe the image.",
    "What is in this picture?",
    "Caption this image.",
    "What do you see?",
)
IGNORE = -100  # label value cross_entropy skips


def heldout_seeds(n: int) -> list[int]:
    return list(range(HELDOUT_START, HELDOUT_START + n))


def demo_tokenizer(vocab_size: int) -> Tokenizer:
    """BPE merges learned from the grammar and the prompts, so each caption word is one token or a few."""
    return build_tokenizer(vocab_size, corpus=all_captions() + list(PROMPTS))


def caption_ids(tok: Tokenizer, caption: str) -> list[int]:
    """Target ids: the caption then <|end|>, which is where greedy decoding must stop."""
    return tok.encode(caption, add_special_tokens=False).ids + [token_id(tok, EOS)]


def decode_caption(tok: Tokenizer, ids: list[int]) -> str:
    """Generated ids -> caption text, cut at the first <|end|>."""
    end = token_id(tok, EOS)
    if end in ids:
        ids = ids[: ids.index(end)]
    return tok.decode(ids, skip_special_tokens=True).strip()


class Batch:
    """One padded training batch. Rows differ in length only after the image, and padding is at the right end
    where causal attention keeps it from touching any real token."""

    def __init__(self, pixels: np.ndarray, prompt_ids: list[list[int]], target_ids: list[list[int]], pad_id: int):
        text = [p + t for p, t in zip(prompt_ids, target_ids)]
        width = max(len(t) for t in text)
        self.pixels = torch.from_numpy(pixels)  # (B,3,H,W) uint8
        self.text_ids = torch.full((len(text), width), pad_id, dtype=torch.long)  # (B,T)
        # labels[i, j] is the token that follows text position j (the last prompt token predicts the first word)
        self.labels = torch.full((len(text), width), IGNORE, dtype=torch.long)  # (B,T)
        for i, (p, t) in enumerate(zip(prompt_ids, target_ids)):
            self.text_ids[i, : len(p) + len(t)] = torch.tensor(p + t)
            self.labels[i, len(p) - 1 : len(p) + len(t) - 1] = torch.tensor(t)


def make_batch(tok: Tokenizer, seeds: list[int], image_size: int, prompt_of: callable) -> Batch:
    """Render `seeds` and lay them out as served requests; prompt_of(seed) picks each row's phrasing."""
    images, prompts, targets = [], [], []
    for seed in seeds:
        pixels, caption = render_seed(seed, image_size)
        images.append(pixels)
        prompts.append(encode_chat(tok, [("user", prompt_of(seed))]))
        targets.append(caption_ids(tok, caption))
    return Batch(np.stack(images), prompts, targets, token_id(tok, "<|pad|>"))
