"""One chat completion, orchestrated by the ingress: validate against the model -> preprocess images -> encode
them -> stream from the decoder. Each stage is awaited here in turn; stages never call each other, so every
stage's ongoing-request count is its own work and autoscales on its own traffic (chained deployments over-scale,
Ray issue 60624). Text-only requests skip both image stages.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
from tokenizers import Tokenizer

from graphs.tokenizer import encode_chat
from serve_app.errors import ContextLengthExceeded, InvalidRequest, StageUnavailable
from serve_app.protocol import ChatCompletionRequest
from serve_app.request_limits import DEFAULT_MAX_JSON_DEPTH, check_json_depth
from serve_app.retry import RETRYABLE, gather_with_retry
from serve_app.stages.messages import DecodeChunk, DecodeRequest


def parse_request(body: bytes, max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> ChatCompletionRequest:
    check_json_depth(body, max_depth)  # before json.loads, whose recursion fails near a thousand levels
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"request body is not valid JSON ({e})", None, "invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object", None, "invalid_json")
    return ChatCompletionRequest.model_validate(data)  # ValidationError -> 400 naming the field


@dataclass(frozen=True)
class ModelLimits:
    image_tokens: int  # P: features per image
    max_positions: int  # the longest context: image tokens + prompt + completion
    max_images: int


@dataclass(frozen=True)
class ImageRef:
    url: str
    param: str  # e.g. messages.0.content.1.image_url: where the client put it, for error messages


def collect_images(req: ChatCompletionRequest, limits: ModelLimits) -> list[ImageRef]:
    """Images in message order; only user messages may carry them."""
    refs: list[ImageRef] = []
    for i, msg in enumerate(req.messages):
        if isinstance(msg.content, str):
            continue
        for j, part in enumerate(msg.content):
            if part.type != "image_url":
                continue
            param = f"messages.{i}.content.{j}.image_url"
            if msg.role != "user":
                raise InvalidRequest(f"only user messages may contain images, not {msg.role}", param,
                                     "image_not_allowed")
            refs.append(ImageRef(part.image_url.url, param))
    if len(refs) > limits.max_images:
        raise InvalidRequest(f"{len(refs)} images in one request; the limit is {limits.max_images}", "messages",
                             "too_many_images")
    return refs


def plan_tokens(prompt_len: int, req: ChatCompletionRequest, limits: ModelLimits) -> int:
    """max_tokens for the decoder; `prompt_len` counts image tokens too. No max_tokens = fill the context."""
    room = limits.max_positions - prompt_len
    wanted = req.token_limit()
    if room < 1 or (wanted is not None and wanted > room):
        asked = f" + max_tokens {wanted}" if wanted is not None else ""
        raise ContextLengthExceeded(f"prompt ({prompt_len} tokens, images included){asked} exceeds the model's "
                                    f"context of {limits.max_positions} tokens")
    return wanted if wanted is not None else room


@dataclass
class PreparedChat:
    prompt_ids: list[int]
    images: list[ImageRef]
    max_tokens: int

    def prompt_tokens(self, limits: ModelLimits) -> int:
        return len(self.images) * limits.image_tokens + len(self.prompt_ids)


def prepare(req: ChatCompletionRequest, tokenizer: Tokenizer, limits: ModelLimits) -> PreparedChat:
    """Everything checkable before a stage is called: a bad request never costs image decoding."""
    images = collect_images(req, limits)
    prompt_ids = encode_chat(tokenizer, [(m.role, m.text()) for m in req.messages])
    prompt_len = len(images) * limits.image_tokens + len(prompt_ids)
    return PreparedChat(prompt_ids, images, plan_tokens(prompt_len, req, limits))


@dataclass
class Stages:
    """Handles to the stage deployments (or fakes with the same methods, in unit tests)."""
    preprocess: object
    vision: object
    decoder: object
    timeout_s: float = 60.0
    missing: Callable[[], frozenset[str]] = frozenset  # deployments with no running replica (a StageWatch)


async def image_features(stages: Stages, images: list[ImageRef]) -> np.ndarray | None:
    """-> (n_images * P, D) float32 in message order, or None for a text-only request. Both image stages are
    side-effect free: a call whose replica died is retried once (serve_app.retry)."""
    if not images:
        return None
    check = partial(require_image_stages, stages)  # polled while waiting too: a lost stage fails fast
    try:
        pixels = await gather_with_retry([partial(stages.preprocess.process.remote, ref.url, ref.param)
                                          for ref in images], stages.timeout_s, "preprocess", check)
        feats = await gather_with_retry([partial(stages.vision.encode.remote, p) for p in pixels],
                                        stages.timeout_s, "vision", check)
    except (*RETRYABLE, TimeoutError):
        check()  # lost while failing: say so rather than a bare replica error or timeout
        raise
    return np.concatenate(feats, axis=0)  # (n*P, D)


IMAGE_STAGES = {"Preprocess": "preprocess", "VisionEncoder": "vision"}  # deployment name -> stage in messages


def require_image_stages(stages: Stages) -> None:
    """Fail fast (503) when an image stage has no running replica, e.g. its node is lost: a call would wait in
    Serve's router until the timeout. Text-only requests never get here."""
    lost = [stage for name, stage in IMAGE_STAGES.items() if name in stages.missing()]
    if lost:
        raise StageUnavailable(lost[-1])


def decode_request(request_id: str, req: ChatCompletionRequest, chat: PreparedChat,
                   features: np.ndarray | None) -> DecodeRequest:
    return DecodeRequest(request_id=request_id, prompt_ids=chat.prompt_ids, image_features=features,
                         max_tokens=chat.max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                         stop=req.stop_list(), ignore_eos=req.ignore_eos)


async def decode_stream(stages: Stages, request: DecodeRequest) -> AsyncIterator[DecodeChunk]:
    """The decoder's token stream. Closing this generator (client gone) cancels the request in the decoder
    replica, which frees its KV-cache slot at once instead of generating to max_tokens."""
    gen = stages.decoder.options(stream=True).generate.remote(request)
    finished = False
    try:
        async for chunk in gen:
            yield chunk
        finished = True
    finally:
        if not finished:
            gen.cancel()
