"""The ingress's orchestration on fake stage handles: validation against the model, image order, stage calls."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from graphs.families.own.tokenizer import build_tokenizer, encode_chat
from mmcore.manifest import PromptSpec
from serve_app.api import chat
from serve_app.api.errors import ContextLengthExceeded, InvalidRequest
from serve_app.api.prompt import ImageSlot, PromptRenderer
from serve_app.api.protocol import ChatCompletionRequest
from serve_app.contract import DecodeChunk, FeatureRef, FeatureSegment, PreprocessedImage, TokenSegment, \
    resolve_features
from tests.fake_manifest import fake_manifest
from tests.serve_app.api.fake_vision import CountedRef, StreamingVision, blocks

TOK = build_tokenizer(512)
LIMITS = chat.ModelLimits(image_tokens=16, max_positions=128, max_images=2)
MANIFEST = fake_manifest({}, image_size=4, features=16, width=8, max_positions=128)
PROMPT = PromptRenderer(MANIFEST.prompt, TOK)
# A template that puts each image where its message has it (as LLaVA's do), to check segment order.
INLINE = PromptRenderer(PromptSpec(chat_template="{% for m in messages %}<|{{ m.role }}|>{% if m.content is string %}"
                                                 "{{ m.content }}{% else %}{% for p in m.content %}"
                                                 "{% if p.type == 'image' %}<image>{% else %}{{ p.text }}{% endif %}"
                                                 "{% endfor %}{% endif %}<|end|>{% endfor %}<|assistant|>",
                                   image_token="<image>", image_features=16), TOK)


def ids_of(prepared) -> list[int]:
    return [t for p in prepared.pieces if not isinstance(p, ImageSlot) for t in p]


def request(*parts, role="user", **kw) -> ChatCompletionRequest:
    content = [{"type": "text", "text": p} if not p.startswith("data:") else
               {"type": "image_url", "image_url": {"url": p}} for p in parts]
    return ChatCompletionRequest.model_validate({"messages": [{"role": role, "content": content}], **kw})


def test_prompt_is_the_chat_format_and_images_counted():
    p = chat.prepare(request("data:a", "describe", max_tokens=10), PROMPT, LIMITS)
    assert p.pieces[0] == ImageSlot(0) and ids_of(p) == encode_chat(TOK, [("user", "describe")])  # image first
    assert [i.url for i in p.images] == ["data:a"] and p.images[0].param == "messages.0.content.0.image_url"
    assert p.prompt_len == 16 + len(ids_of(p)) and p.max_tokens == 10


def test_multi_turn_images_land_at_their_placeholders():
    req = ChatCompletionRequest.model_validate({"messages": [
        {"role": "user", "content": [{"type": "text", "text": "first"},
                                     {"type": "image_url", "image_url": {"url": "data:1"}}]},
        {"role": "assistant", "content": "a circle"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:2"}},
                                     {"type": "text", "text": "and this?"}]}]})
    p = chat.prepare(req, INLINE, LIMITS)
    kinds = ["img" if isinstance(x, ImageSlot) else "txt" for x in p.pieces]
    assert kinds == ["txt", "img", "txt", "img", "txt"]
    assert [x.index for x in p.pieces if isinstance(x, ImageSlot)] == [0, 1]
    assert TOK.decode(p.pieces[2], skip_special_tokens=False).endswith("<|user|>")
    feats = [FeatureRef(CountedRef(np.full((16, 8), v, np.float32)), 16) for v in (1.0, 2.0)]
    dreq = chat.decode_request("id", req, p, feats)
    assert [type(s) for s in dreq.segments] == [TokenSegment, FeatureRef, TokenSegment, FeatureRef, TokenSegment]
    assert dreq.prompt_len == p.prompt_len == 32 + len(ids_of(p))  # laid out from the rows, nothing fetched
    fetched = asyncio.run(resolve_features(dreq))  # what the decoder stage does
    assert [type(s) for s in fetched.segments] == [TokenSegment, FeatureSegment, TokenSegment, FeatureSegment,
                                                   TokenSegment]
    assert fetched.segments[1].features[0, 0] == 1.0 and fetched.segments[3].features[0, 0] == 2.0
    assert fetched.prompt_len == dreq.prompt_len and [f.ref.fetches for f in feats] == [1, 1]


def test_text_with_the_placeholder_is_refused():
    with pytest.raises(InvalidRequest, match="image placeholder"):
        chat.prepare(request("look: <image>"), PROMPT, LIMITS)


def test_the_context_is_the_decoders_max_context_when_smaller():
    limits = chat.ModelLimits.of(MANIFEST, max_context=40, max_images=2)
    assert limits.max_positions == 40 and chat.ModelLimits.of(MANIFEST, None, 2).max_positions == 128
    with pytest.raises(ContextLengthExceeded, match="context of 40 tokens"):
        chat.prepare(request("data:a", "hi", max_tokens=20), PROMPT, limits)


def test_no_max_tokens_fills_the_context():
    p = chat.prepare(request("hi"), PROMPT, LIMITS)
    assert p.max_tokens == 128 - len(ids_of(p))


def test_context_overflow_counts_images():
    text_only = chat.prepare(request("hi"), PROMPT, LIMITS)
    room = 128 - len(ids_of(text_only))
    assert chat.prepare(request("hi", max_tokens=room), PROMPT, LIMITS).max_tokens == room
    with pytest.raises(ContextLengthExceeded):
        chat.prepare(request("hi", max_tokens=room + 1), PROMPT, LIMITS)
    with pytest.raises(ContextLengthExceeded):
        chat.prepare(request("data:a", "hi", max_tokens=room - 15), PROMPT, LIMITS)


def test_too_many_images_and_images_outside_user_turns():
    with pytest.raises(InvalidRequest) as e:
        chat.prepare(request("data:a", "data:b", "data:c", "x"), PROMPT, LIMITS)
    assert e.value.code == "too_many_images"
    with pytest.raises(InvalidRequest) as e:
        chat.prepare(request("data:a", role="assistant"), PROMPT, LIMITS)
    assert e.value.code == "image_not_allowed"


class FakeCall:
    """Mimics a deployment handle method: .remote(...) returns an awaitable."""

    def __init__(self, fn, log):
        self.fn, self.log = fn, log

    def remote(self, *args):
        self.log.append(args)

        async def run():
            return self.fn(*args)
        return run()


class FakeStages:
    def __init__(self):
        self.calls = {"pre": [], "vis": []}
        self.preprocess = type("P", (), {"process": FakeCall(self._pre, self.calls["pre"])})()
        self.vision = StreamingVision(self._vis)
        self.calls["vis"] = self.vision.calls

    @staticmethod
    def _pre(url, param, model_key=None, images_in_prompt=1):
        v = int(url[-1])
        return PreprocessedImage(np.full((1, 3, 4, 4), v, np.uint8), 16, str(v), 1, 16)

    @staticmethod
    async def _vis(img, model_key=None):
        return np.full((16, 8), float(img.views[0, 0, 0, 0]), np.float32)  # (P,D)


def test_image_features_in_order_and_text_only_skips_stages():
    fake = FakeStages()
    stages = chat.Stages(fake.preprocess, fake.vision, None)
    refs = [chat.ImageRef("data:1", "p1"), chat.ImageRef("data:2", "p2")]
    feats = blocks(asyncio.run(chat.image_features(stages, refs)))
    assert [f.shape for f in feats] == [(16, 8), (16, 8)] and feats[0][0, 0] == 1 and feats[1][0, 0] == 2
    assert [c[1] for c in fake.calls["pre"]] == ["p1", "p2"]
    assert asyncio.run(chat.image_features(stages, [])) == []
    assert len(fake.calls["pre"]) == 2 and len(fake.calls["vis"]) == 2


def planned(*rows: int) -> list[PreprocessedImage]:
    """Preprocessed images whose plans fill these many rows each (one view each: the views do not matter here)."""
    return [PreprocessedImage(np.zeros((1, 3, 4, 4), np.uint8), r, str(r), 1, 16) for r in rows]


def test_admission_with_each_images_rows_from_its_plan():
    """An image that fills more rows than the fewest (a tiled image) lengthens the prompt: the context and the
    request's image-token bound are checked again with the plan's rows, before anything is encoded."""
    req = request("data:a", "hi", max_tokens=10)
    p = chat.prepare(req, PROMPT, LIMITS)
    assert chat.admit_images(p, planned(16), req, LIMITS, PROMPT) is p  # the fewest rows: nothing changes
    longer = chat.admit_images(p, planned(40), req, LIMITS, PROMPT)
    assert longer.prompt_len == p.prompt_len + 24 and longer.max_tokens == 10 and longer.pieces == p.pieces
    filled = chat.prepare(request("data:a", "hi"), PROMPT, LIMITS)  # no max_tokens: fills what is left
    refilled = chat.admit_images(filled, planned(40), request("data:a", "hi"), LIMITS, PROMPT)
    assert refilled.max_tokens == filled.max_tokens - 24
    room = 128 - p.prompt_len + 16  # rows the image may fill with 10 tokens to go
    with pytest.raises(ContextLengthExceeded, match="images included"):
        chat.admit_images(p, planned(room - 9), req, LIMITS, PROMPT)
    assert chat.admit_images(p, planned(room - 10), req, LIMITS, PROMPT).prompt_len == 128 - 10
    with pytest.raises(InvalidRequest, match="40 image tokens; the limit is 39") as e:
        chat.admit_images(p, planned(40), req, LIMITS, PROMPT, max_image_tokens=39)
    assert e.value.code == "too_many_image_tokens"
    at_the_limit = chat.admit_images(p, planned(40), req, LIMITS, PROMPT, max_image_tokens=40)
    assert at_the_limit.prompt_len == longer.prompt_len


def test_a_request_refused_on_its_images_rows_is_never_encoded():
    fake = FakeStages()
    stages = chat.Stages(fake.preprocess, fake.vision, None)
    seen = []

    async def admit(images):
        seen.append([im.rows for im in images])
        raise ContextLengthExceeded("too long")

    with pytest.raises(ContextLengthExceeded):
        asyncio.run(chat.image_features(stages, [chat.ImageRef("data:1", "p1"), chat.ImageRef("data:2", "p2")],
                                        admit))
    assert seen == [[16, 16]] and len(fake.calls["pre"]) == 2 and fake.calls["vis"] == []


class FakeStream:
    """Mimics DeploymentResponseGenerator: an async iterator with cancel()."""

    def __init__(self, chunks):
        self.chunks, self.cancelled = list(chunks), False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.chunks:
            raise StopAsyncIteration
        return self.chunks.pop(0)

    def cancel(self):
        self.cancelled = True


class FakeDecoder:
    def __init__(self, stream):
        self.stream, self.got = stream, None

    def options(self, stream):
        assert stream is True
        return self

    @property
    def generate(self):
        return self

    def remote(self, req):
        self.got = req
        return self.stream


def test_decode_stream_passes_request_and_cancels_when_abandoned():
    chunks = [DecodeChunk("a", [1]), DecodeChunk("b", [2], "stop")]
    req = request("hi", max_tokens=5, temperature=0.5, top_p=0.9, seed=4, stop=["x"], ignore_eos=True)
    prepared = chat.prepare(req, PROMPT, LIMITS)
    dreq = chat.decode_request("id1", req, prepared, [])
    assert (dreq.max_tokens, dreq.temperature, dreq.top_p, dreq.seed, dreq.stop, dreq.ignore_eos) == \
        (5, 0.5, 0.9, 4, ["x"], True)

    async def full():
        dec = FakeDecoder(FakeStream(chunks))
        got = [c.text async for c in chat.decode_stream(chat.Stages(None, None, dec), dreq)]
        return got, dec

    got, dec = asyncio.run(full())
    assert got == ["a", "b"] and dec.got is dreq and not dec.stream.cancelled

    async def abandoned():
        dec = FakeDecoder(FakeStream(chunks))
        gen = chat.decode_stream(chat.Stages(None, None, dec), dreq)
        await anext(gen)
        await gen.aclose()
        return dec

    assert asyncio.run(abandoned()).stream.cancelled
