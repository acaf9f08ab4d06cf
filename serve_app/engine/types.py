"""What the ingress hands each stage and gets back. Plain dataclasses of numpy arrays and ints: they cross process
boundaries through Ray's object store, where numpy arrays travel without copies into Python lists."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class PreprocessedImage:
    pixels: np.ndarray  # (3, H, W) uint8, already resized/cropped to the model's image size
    content_hash: str  # sha256 of the decoded pixels: the vision stage's cache key
    source_bytes: int  # size of the encoded image the client sent
    source_pixels: int  # width * height of the decoded image before resizing


@dataclass
class DecodeRequest:
    request_id: str
    prompt_ids: list[int]  # chat-formatted prompt, after any image features
    image_features: np.ndarray | None  # (n_images * P, D) float32, prepended to the prompt embeddings; None = text only
    max_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None  # same seed + same request = same tokens, whatever else shares the batch
    stop: list[str] = field(default_factory=list)  # stop strings, matched on the detokenized text
    ignore_eos: bool = False  # vLLM's benchmark extension: generate exactly max_tokens

    @property
    def prompt_len(self) -> int:
        n_img = 0 if self.image_features is None else int(self.image_features.shape[0])
        return n_img + len(self.prompt_ids)


@dataclass
class DecodeChunk:
    """One streamed piece of a completion. The last chunk of a stream has finish_reason set."""
    text: str  # new text since the previous chunk (may be "" while a multi-byte character is incomplete)
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" (EOS or a stop string) | "length" (max_tokens or context)
    prompt_tokens: int = 0
    completion_tokens: int = 0  # running count, including this chunk's tokens


class Overloaded(Exception):
    """A stage's bounded queue is full. The ingress answers 503 with Retry-After instead of queueing without bound."""

    def __init__(self, message: str = "server overloaded", retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def __reduce__(self):  # crosses process boundaries inside Ray errors: keep retry_after_s
        return (Overloaded, (str(self), self.retry_after_s))
