"""The contract between the stages: what crosses a stage boundary, and the errors a stage raises for the caller.

Everything here travels through Ray's object store or inside Ray's error wrappers between the ingress and the
stages (preprocess, vision, decoder), so both sides import it from this one module and nothing else of each other.
Plain dataclasses of numpy arrays and ints: numpy arrays travel without copies into lists. No Ray, no ONNX Runtime.

A prompt is a list of segments in the order the chat template put them: token ids, and image feature blocks where
the template placed each image's placeholder (several images, images in earlier turns, text before an image).
Between the ingress and the decoder stage an image's block travels as a `FeatureRef`: a reference to the vision
stage's result in Ray's object store, which only the decoder stage fetches (the ingress never holds the bytes).

Errors: `APIError` and its subclasses are what the client got wrong (their HTTP status is on the class);
`Overloaded` and `ModelMismatch` are no fault of the request (serve_app/outcomes.py maps them to 503). Each keeps
its fields when Ray pickles it across processes, and `unwrap` finds it again inside Ray's wrappers.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field

import numpy as np


@dataclass
class PreprocessedImage:
    """One image as the vision graph takes it: its views (a model that encodes an image whole has one; one that
    tiles it, a base view and the tiles), and the feature rows the image fills in the prompt, known from its plan
    before any view is encoded (the ingress checks the context with it)."""
    views: np.ndarray  # (V, 3, S, S) uint8, each already resized/cropped to the model's image size
    rows: int  # feature rows of the image's block in the prompt, all views assembled
    content_hash: str  # sha256 of the views' pixels: the vision stage's cache key
    source_bytes: int  # size of the encoded image the client sent
    source_pixels: int  # width * height of the decoded image before resizing
    # What the image's placeholder becomes in the prompt, in order: text (tokenized with the prompt around it) and
    # runs of feature rows, taken from the block in order; () = one run of all `rows` (no text of its own)
    layout: tuple[str | int, ...] = ()
    plan: object | None = None  # what the vision stage assembles the views' features by (an anyres plan), or None


@dataclass
class TokenSegment:
    ids: list[int]  # token ids, embedded by the decoder stage from the manifest's embedding table

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class FeatureSegment:
    features: np.ndarray  # (P, D) float32: one image's features, already in the decoder's width

    def __len__(self) -> int:
        return int(self.features.shape[0])


@dataclass
class FeatureRef:
    """Rows of one image's (P, D) float32 block, not yet fetched: `ref` is an awaitable reference (a Ray ObjectRef)
    to the vision stage's result; rows start..start+rows of it go here (the whole block, or one run of an image
    whose layout puts text between its views' rows), which the prompt's layout needs before the block is fetched.
    The decoder stage resolves it into a FeatureSegment before the engine sees the request."""
    ref: object
    rows: int
    start: int = 0
    block_rows: int | None = None  # the whole block's P, checked when fetched; None = `rows` (the whole block)

    def __len__(self) -> int:
        return self.rows


Segment = TokenSegment | FeatureSegment | FeatureRef


@dataclass
class DecodeRequest:
    request_id: str
    segments: list[Segment]  # the prompt, in order (FeatureRefs only until the decoder stage resolves them)
    max_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None  # same seed + same request = same tokens, whatever else shares the batch
    stop: list[str] = field(default_factory=list)  # stop strings, matched on the detokenized text
    ignore_eos: bool = False  # vLLM's benchmark extension: generate exactly max_tokens
    top_k: int = 0  # 0 = no top-k cut
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # over prompt + output tokens
    presence_penalty: float = 0.0  # over output tokens
    frequency_penalty: float = 0.0
    min_tokens: int = 0  # eos and stop_token_ids banned until this many tokens are out
    stop_token_ids: list[int] = field(default_factory=list)  # end the completion like eos
    logprobs: int | None = None  # None = none; n = each token's logprob and the n most likely (OpenAI top_logprobs)
    image_token_id: int | None = None  # the id transformers' input_ids hold at image positions: the repetition
    #                                    penalty counts it as a prompt token where the prompt has an image
    model_key: str | None = None  # the artifact the ingress tokenized for (manifest sha256); None = not checked

    @property
    def prompt_len(self) -> int:
        return sum(len(s) for s in self.segments)


@dataclass
class TokenLogprob:
    """One token's raw logprob, as OpenAI's chat format gives it: the token's text and its UTF-8 bytes."""
    token: str
    logprob: float
    bytes: list[int]
    top: list["TokenLogprob"] = field(default_factory=list)  # the most likely tokens, most likely first


@dataclass
class DecodeChunk:
    """One streamed piece of a completion. The last chunk of a stream has finish_reason set."""
    text: str  # new text since the previous chunk (may be "" while a multi-byte character is incomplete)
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" (EOS or a stop string) | "length" (max_tokens or context)
    prompt_tokens: int = 0
    completion_tokens: int = 0  # running count, including this chunk's tokens
    logprobs: list[TokenLogprob] | None = None  # one per token id, when the request asked for logprobs


class Overloaded(Exception):
    """A stage's bounded queue is full. The ingress answers 503 with Retry-After instead of queueing without bound."""

    def __init__(self, message: str = "server overloaded", retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def __reduce__(self):  # crosses process boundaries inside Ray errors: keep retry_after_s
        return (Overloaded, (str(self), self.retry_after_s))


class ModelMismatch(Exception):
    """A stage call tagged with another model's key than the one this replica loaded: during a rolling upgrade the
    handles reach old and new replicas alike, and features or token ids of model A must never run through model
    B. The ingress retries on another replica; when none has its model any more it answers 503 + Retry-After."""

    def __init__(self, stage: str, have: str, asked: str, source: dict | None = None):
        super().__init__(f"{stage} replica serves model {have[:12]}, the request is for model {asked[:12]} "
                         "(an upgrade is rolling out)")
        self.stage, self.have, self.asked, self.source = stage, have, asked, source  # source: the replica's args
        self.retry_after_s = 1.0

    def __reduce__(self):  # crosses process boundaries inside Ray errors
        return (ModelMismatch, (self.stage, self.have, self.asked, self.source))


def check_model_key(stage: str, have: str, asked: str | None, source: dict | None = None) -> None:
    """Refuse a call for another model (naming this replica's model source, so the ingress can follow it); an
    untagged call (None) is not checked."""
    if asked is not None and asked != have:
        raise ModelMismatch(stage, have, asked, source)


class APIError(Exception):
    """An error the client can act on. `param` names the request field, `code` is a stable machine-readable tag."""

    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code

    def __reduce__(self):  # keep param and code when Ray pickles the error across processes
        return (type(self), (self.message, self.param, self.code))


class InvalidImage(APIError):
    """Not an image, truncated, unsupported format, or over a size limit."""


async def resolve_features(request: DecodeRequest) -> DecodeRequest:
    """`request` with every FeatureRef fetched into a FeatureSegment, all at once (awaiting an ObjectRef fetches and
    deserializes it off the event loop); the same object when it holds none."""
    if not any(isinstance(s, FeatureRef) for s in request.segments):
        return request
    refs = [s for s in request.segments if isinstance(s, FeatureRef)]
    blocks = iter(await asyncio.gather(*(s.ref for s in refs)))  # runs of one image: its block fetched once
    return dataclasses.replace(request, segments=[_fetched(next(blocks), s) if isinstance(s, FeatureRef) else s
                                                  for s in request.segments])


def _fetched(block, ref: FeatureRef) -> FeatureSegment:
    shape = getattr(block, "shape", None)
    planned = ref.rows if ref.block_rows is None else ref.block_rows
    if not shape or shape[0] != planned:  # the prompt was laid out for `planned`: a block of another size is a bug
        raise ValueError(f"image features of shape {shape} where the prompt planned {planned} rows")
    return FeatureSegment(block if ref.rows == planned else block[ref.start:ref.start + ref.rows])


def unwrap(exc: BaseException) -> BaseException:
    """The original exception behind Ray's wrappers (RayTaskError keeps it as `.cause`)."""
    for _ in range(8):
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException):
            break
        exc = cause
    return exc
