"""Tokenizer (Hugging Face `tokenizers`, byte-level BPE) and the chat prompt format.

Every preset's tokenizer is byte-level, so any text encodes; its vocabulary is exactly the decoder's: BPE merges
learned from a small fixed corpus, then reserved tokens pad it to `vocab_size`. Building is deterministic.

Prompt format, token by token (image features, when present, come before all of it):
    <|user|> text <|end|> <|assistant|>  ...generated...  <|end|>
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
EOS = "<|end|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}

# A few lines of plain English so merges form real words.
_BASE_CORPUS = [
    "a small model that sees an image and describes it in a few words",
    "the quick brown fox jumps over the lazy dog",
    "what is in this picture? describe the image. there is a red circle on the left.",
    "hello, how are you today? please answer the question in one short sentence.",
]


def build_tokenizer(vocab_size: int, corpus: list[str] | None = None) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_BASE_CORPUS + list(corpus or []), trainer=trainer)
    short = vocab_size - tok.get_vocab_size()
    if short < 0:
        raise ValueError(f"tokenizer has {tok.get_vocab_size()} tokens, more than vocab_size {vocab_size}")
    tok.add_special_tokens([f"<|reserved_{i}|>" for i in range(short)])
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def token_id(tok: Tokenizer, token: str) -> int:
    i = tok.token_to_id(token)
    if i is None:
        raise ValueError(f"tokenizer has no {token!r} token")
    return i


def encode_chat(tok: Tokenizer, messages: list[tuple[str, str]]) -> list[int]:
    """[(role, text), ...] -> prompt ids ending with the assistant turn opener."""
    ids: list[int] = []
    end = token_id(tok, EOS)
    for role, text in messages:
        ids.append(token_id(tok, ROLE_TOKENS[role]))
        ids.extend(tok.encode(text, add_special_tokens=False).ids)
        ids.append(end)
    ids.append(token_id(tok, ROLE_TOKENS["assistant"]))
    return ids
