"""One chat completion, orchestrated by the ingress: validate against the model -> preprocess images -> encode
them -> stream from the decoder. Each stage is awaited here in turn; stages never call each other, so every
stage's ongoing-request count is its own work and autoscales on its own traffic (chained deployments over-scale,
Ray issue 60624). Text-only requests skip both image stages. The image features themselves skip the ingress: it
waits for each vision call's outcome and passes the block's object reference to the decoder, which fetches it.

Every stage call carries the ingress's model key (its manifest's sha256). During a rolling upgrade a handle reaches
replicas of the old and the new model alike; a replica of another model refuses the call (ModelMismatch) before
doing any work, and the call is sent again -- Serve's router picks replicas at random, and the matching ones stay
until the rollout replaces them -- for a few seconds (`Stages.retry_s`); then the ingress follows the stages to
their model (serve_app/api/served.py) and runs the whole request again. One request never mixes two models' stages.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from functools import partial

import pydantic_core

from mmcore.manifest import GenerationDefaults, Manifest
from serve_app.api.errors import ContextLengthExceeded, DecoderTimeout, InvalidRequest, StageUnavailable
from serve_app.api.prompt import FeatureSlot, ImageSlot, PromptPiece, PromptRenderer
from serve_app.api.protocol import ChatCompletionRequest
from serve_app.api.errors import unwrap
from serve_app.api.generation import sampling_fields
from serve_app.api.request_limits import DEFAULT_MAX_JSON_DEPTH, check_json_depth
from serve_app.api.retry import RETRYABLE, gather_with_retry
from serve_app.api.unsupported import refuse_unsupported
from serve_app.contract import (DecodeChunk, DecodeRequest, FeatureRef, ModelMismatch, PreprocessedImage,
                                TokenSegment)


def parse_request(body: bytes, max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> ChatCompletionRequest:
    check_json_depth(body, max_depth)  # before parsing: a parser's recursion fails near a thousand levels
    try:
        # pydantic's JSON parser, not json.loads: it takes half as long over a 50 MB base64 image, and that time is
        # one call holding the GIL -- the longest the ingress's event loop waits while a big body is parsed
        data = pydantic_core.from_json(body)
    except ValueError as e:
        raise InvalidRequest(f"request body is not valid JSON ({e})", None, "invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object", None, "invalid_json")
    return ChatCompletionRequest.model_validate(refuse_unsupported(data))  # ValidationError -> 400 naming the field


@dataclass(frozen=True)
class ModelLimits:
    image_tokens: int  # the fewest feature rows an image can fill (its plan, known after preprocessing, says how many)
    max_positions: int  # the longest context: image tokens + prompt + completion
    max_images: int
    vocab_size: int | None = None  # None: token ids unchecked here (unit tests of other things)
    generation: GenerationDefaults = GenerationDefaults()  # the checkpoint's sampling defaults

    @classmethod
    def of(cls, manifest: Manifest, max_context: int | None, max_images: int) -> "ModelLimits":
        """The context is what the decoder stage's cache holds: its max_context when set, else the model's."""
        positions = manifest.decoder.max_positions if max_context is None else \
            min(max_context, manifest.decoder.max_positions)
        return cls(manifest.prompt.image_features, positions, max_images, manifest.decoder.vocab_size,
                   manifest.decoder.generation)


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
    """max_tokens for the decoder; `prompt_len` counts image tokens too. No max_tokens = the checkpoint's
    max_new_tokens within the context, else fill the context."""
    room = limits.max_positions - prompt_len
    wanted = req.token_limit()
    if room < 1 or (wanted is not None and wanted > room):
        asked = f" + max_tokens {wanted}" if wanted is not None else ""
        raise ContextLengthExceeded(f"prompt ({prompt_len} tokens, images included){asked} exceeds the "
                                    f"context of {limits.max_positions} tokens")
    planned = wanted if wanted is not None else min(room, limits.generation.max_new_tokens or room)
    if req.min_tokens > planned:
        raise InvalidRequest(f"min_tokens ({req.min_tokens}) exceeds max_tokens ({planned})", "min_tokens",
                             "invalid_value")
    return planned


@dataclass
class PreparedChat:
    pieces: list[PromptPiece]  # token ids and image slots, in prompt order
    images: list[ImageRef]
    max_tokens: int
    prompt_len: int  # positions, images included
    sampling: dict  # DecodeRequest's sampling fields: the request's, else the checkpoint's, else the server's (and
    #                 the image placeholder id, which the repetition penalty counts as transformers does)


def prepare(req: ChatCompletionRequest, prompt: PromptRenderer, limits: ModelLimits) -> PreparedChat:
    """Everything checkable before a stage is called: a bad request never costs image decoding. Each image counts
    as its fewest rows here; `admit_images` checks again with the rows each image's plan gives."""
    images = collect_images(req, limits)
    pieces = prompt.pieces(req.messages, len(images))
    prompt_len = prompt.length(pieces)
    sampling = sampling_fields(req, limits.generation, limits.vocab_size) | {"image_token_id": prompt.image_id}
    return PreparedChat(pieces, images, plan_tokens(prompt_len, req, limits), prompt_len, sampling)


def admit_images(prepared: PreparedChat, images: list[PreprocessedImage], req: ChatCompletionRequest,
                 limits: ModelLimits, prompt: PromptRenderer, max_image_tokens: int | None = None) -> PreparedChat:
    """The request with each image's feature rows and layout from its plan (preprocessed, not yet encoded): 400
    when the images ask for more than `max_image_tokens` (the ingress's bound on one request's vision work) or the
    prompt no longer fits the context with max_tokens; no view is encoded for a request refused here. An image
    whose layout writes text of its own (row and column tokens around its views) is tokenized again with the
    prompt, its placeholder expanded."""
    image_tokens = sum(im.rows for im in images)
    if max_image_tokens is not None and image_tokens > max_image_tokens:
        raise InvalidRequest(f"the request's images make {image_tokens} image tokens; the limit is "
                             f"{max_image_tokens} (ingress.max_image_tokens_per_request)", "messages",
                             "too_many_image_tokens")
    for im in images:
        if im.layout and sum(x for x in im.layout if isinstance(x, int)) != im.rows:  # a bad plan, not bad input
            raise RuntimeError(f"an image's layout places {im.layout} rows of its {im.rows}")
    if any(isinstance(x, str) for im in images for x in im.layout):
        pieces = prompt.pieces(req.messages, len(images), [im.layout or (im.rows,) for im in images])
        prompt_len = prompt.length(pieces)
    else:
        pieces, prompt_len = prepared.pieces, prepared.prompt_len + image_tokens - limits.image_tokens * len(images)
    if pieces is prepared.pieces and prompt_len == prepared.prompt_len:
        return prepared
    return dataclasses.replace(prepared, pieces=pieces, prompt_len=prompt_len,
                               max_tokens=plan_tokens(prompt_len, req, limits))


@dataclass
class Stages:
    """Handles to the stage deployments (or fakes with the same methods, in unit tests)."""
    preprocess: object
    vision: object
    decoder: object
    timeout_s: float = 60.0
    missing: Callable[[], frozenset[str]] = frozenset  # deployments with no running replica (a StageWatch)
    recheck: Callable[[], frozenset[str]] | None = None  # the same, looked at again (blocking; StageWatch.recheck)
    model_key: str | None = None  # the ingress's model; None = calls untagged (unit tests of other things)
    retry_s: float = 2.0  # how long a call refused by replicas of another model is sent again
    decoder_timeout_s: float = 60.0  # longest wait for the decoder's first chunk, and between two chunks


RETRY_PAUSE_S = (0.02, 0.5)  # first and longest pause between two tries of a refused call


async def matching(stages: Stages, call):
    """`await call()` again while a replica of another model refuses it, for up to `retry_s`; then the last
    ModelMismatch propagates (the ingress follows that model, or answers 503 + Retry-After)."""
    loop = asyncio.get_running_loop()
    deadline, pause = loop.time() + min(stages.retry_s, stages.timeout_s), RETRY_PAUSE_S[0]
    while True:
        try:
            return await call()
        except Exception as e:  # noqa: BLE001 -- only a mismatch is retried
            if not isinstance(unwrap(e), ModelMismatch) or loop.time() + pause > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, RETRY_PAUSE_S[1])


async def image_features(stages: Stages, images: list[ImageRef],
                         admit: Callable[[list[PreprocessedImage]], Awaitable[None]] | None = None
                         ) -> list[FeatureRef]:
    """-> one reference per image to its (rows, D) float32 block, in message order; [] for a text-only request (no
    stage called). `admit` sees the images once preprocessed (their rows and layouts), before any is encoded, and
    may refuse the request. Each block stays in Ray's object store for the decoder stage to fetch
    (`encode_by_reference`); the ingress learns only that each call succeeded, and each block's rows. Both image stages are side-effect free: a
    call whose replica died is retried once (serve_app.api.retry)."""
    if not images:
        return []
    key = stages.model_key
    check = partial(require_image_stages, stages)  # polled while waiting too: a lost stage fails fast
    if stages.recheck is not None and _lost(stages):
        await asyncio.to_thread(stages.recheck)  # not refused on a probe from before the stage came up

    def tagged(call):  # a refusal by a replica of another model is sent again (matching), a dead replica's once
        return lambda: matching(stages, call)

    try:
        pixels = await gather_with_retry([tagged(partial(stages.preprocess.process.remote, ref.url, ref.param, key,
                                                         len(images))) for ref in images],
                                         stages.timeout_s, "preprocess", check)
        if admit is not None:
            await admit(pixels)
        feats = await gather_with_retry([tagged(partial(encode_by_reference, stages.vision, p, key)) for p in pixels],
                                        stages.timeout_s, "vision", check)
    except (*RETRYABLE, TimeoutError):
        check()  # lost while failing: say so rather than a bare replica error or timeout
        raise
    return list(feats)


async def encode_by_reference(vision, image, model_key: str | None) -> FeatureRef:
    """One image through the vision stage's streaming `encode_for_decoder`: its first object (the block's shape) is
    awaited here -- the stage's error, a dead replica or a refusal raise from it as from a plain call -- and its
    second (the block) is taken as an ObjectRef without fetching it. Why a stream and not `encode`'s one result: a
    unary result's ref resolves to either the block or the error, and telling which would mean fetching it.
    By reference explicitly: a Serve run with gRPC handles by default could not hand out ObjectRefs. The block is
    owned by this process (a streamed object belongs to its caller), so it outlives the vision replica."""
    stream = vision.options(stream=True, _by_reference=True).encode_for_decoder.remote(image, model_key)
    try:
        shape = await anext(stream)
        block = await anext(await stream._to_object_ref_gen())
    except asyncio.CancelledError:  # timed out or the client left: free the call's place in the vision queue
        stream.cancel()
        raise
    return FeatureRef(block, rows=int(shape[0]))


IMAGE_STAGES = {"Preprocess": "preprocess", "VisionEncoder": "vision"}  # deployment name -> stage in messages


def require_image_stages(stages: Stages) -> None:
    """Fail fast (503) when an image stage has no running replica, e.g. its node is lost: a call would wait in
    Serve's router until the timeout. Text-only requests never get here."""
    lost = _lost(stages)
    if lost:
        raise StageUnavailable(lost[-1])


def _lost(stages: Stages) -> list[str]:
    return [stage for name, stage in IMAGE_STAGES.items() if name in stages.missing()]


def decode_request(request_id: str, req: ChatCompletionRequest, chat: PreparedChat,
                   features: list[FeatureRef], model_key: str | None = None) -> DecodeRequest:
    segments = [features[p.index] if isinstance(p, ImageSlot) else
                FeatureRef(features[p.index].ref, p.rows, p.start, features[p.index].rows)
                if isinstance(p, FeatureSlot) else TokenSegment(p) for p in chat.pieces]
    return DecodeRequest(request_id=request_id, segments=segments, max_tokens=chat.max_tokens, seed=req.seed,
                         stop=req.stop_list(), ignore_eos=req.ignore_eos, model_key=model_key, **chat.sampling)


async def open_stream(stages: Stages, request: DecodeRequest) -> AsyncIterator[DecodeChunk]:
    """The decoder's token stream, opened: its first chunk is already here, so a decoder of another model (which
    refuses before its first chunk) is retried or surfaces now, while the request can still go to another model.
    Closing the returned generator (client gone) cancels the request in the decoder replica, which frees its
    KV-cache slot at once instead of generating to max_tokens."""
    gen = None

    async def opened():
        nonlocal gen
        gen = stages.decoder.options(stream=True).generate.remote(request)
        try:
            return await next_chunk(gen, stages.decoder_timeout_s)
        except StopAsyncIteration:
            return None

    first = await matching(stages, opened)
    return _rest(gen, first, stages.decoder_timeout_s)


async def next_chunk(gen, timeout_s: float) -> DecodeChunk:
    """The stream's next chunk within `timeout_s` (StopAsyncIteration at its end). A decoder that sends nothing
    for that long -- stuck, or its queue not moving -- would otherwise hold the client until Serve's request
    timeout: its call is cancelled (freeing its slot or its place in the queue) and DecoderTimeout (504) raised."""
    try:
        return await asyncio.wait_for(anext(gen), timeout_s)
    except TimeoutError:
        gen.cancel()
        raise DecoderTimeout(timeout_s) from None


async def _rest(gen, first: DecodeChunk | None, timeout_s: float) -> AsyncIterator[DecodeChunk]:
    finished = False
    try:
        if first is not None:
            yield first
            while True:
                try:
                    chunk = await next_chunk(gen, timeout_s)
                except StopAsyncIteration:
                    break
                yield chunk
        finished = True
    finally:
        if not finished:
            gen.cancel()


async def decode_stream(stages: Stages, request: DecodeRequest) -> AsyncIterator[DecodeChunk]:
    """open_stream as one generator (opened at its first iteration)."""
    async with aclosing(await open_stream(stages, request)) as chunks:
        async for chunk in chunks:
            yield chunk
