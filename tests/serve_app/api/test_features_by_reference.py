"""Image features skip the ingress: it awaits each vision call's outcome (a small first object), hands the block's
reference to the decoder unfetched, and still answers a failed or lost vision call before any stream opens."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serve_app.api import chat
from serve_app.api.errors import to_error
from serve_app.contract import DecodeChunk, DecodeRequest, FeatureRef, FeatureSegment, InvalidImage, \
    PreprocessedImage, TokenSegment, resolve_features
from tests.serve_app.api.fake_vision import CountedRef, StreamingVision

P, D = 16, 8


class Preprocess:
    class process:  # noqa: N801 -- a handle's method: .remote(...) -> awaitable
        @staticmethod
        def remote(url, param, model_key=None, images_in_prompt=1):
            async def run():
                v = int(url[-1])
                return PreprocessedImage(np.full((1, 3, 4, 4), v, np.uint8), P, str(v), 1, 16)
            return run()


async def block_of(image, model_key=None):
    return np.full((P, D), float(image.views[0, 0, 0, 0]), np.float32)


class Decoder:
    """A decoder stage in miniature: takes the request as Ray would hand it over, resolves its references as the real
    stage does, and answers one chunk per image with the first feature of each block."""

    def __init__(self):
        self.received: DecodeRequest | None = None

    def options(self, stream):
        return self

    @property
    def generate(self):
        return self

    def remote(self, request):
        self.received = request

        async def stream():
            resolved = await resolve_features(request)
            for s in resolved.segments:
                if isinstance(s, FeatureSegment):
                    yield DecodeChunk(str(s.features[0, 0]), [1])
        return stream()


def stages(vision, decoder=None, timeout_s=5.0) -> chat.Stages:
    return chat.Stages(Preprocess, vision, decoder, timeout_s)


def test_the_ingress_passes_each_block_by_reference_and_never_fetches_one():
    vision, decoder = StreamingVision(block_of), Decoder()
    images = [chat.ImageRef("data:3", "p0"), chat.ImageRef("data:5", "p1")]

    async def request():
        feats = await chat.image_features(stages(vision, decoder), images)
        req = DecodeRequest("r", [TokenSegment([1]), feats[0], TokenSegment([2]), feats[1]], max_tokens=4)
        return feats, [c.text async for c in chat.decode_stream(stages(vision, decoder), req)]

    feats, texts = asyncio.run(request())
    fetched = [v for s in vision.streams for v in s.fetched]
    assert fetched == [(P, D), (P, D)]  # all the ingress fetched of the vision calls: each block's shape
    assert not any(isinstance(v, np.ndarray) for v in fetched)
    assert [type(s) for s in decoder.received.segments] == [TokenSegment, FeatureRef, TokenSegment, FeatureRef]
    assert decoder.received.prompt_len == 2 + 2 * P  # laid out from the rows the first objects gave
    assert [f.ref.fetches for f in feats] == [1, 1]  # once each, by the decoder
    assert texts == ["3.0", "5.0"]  # message order kept end to end


def test_a_bad_image_found_by_vision_is_a_400_before_any_reference_is_taken():
    async def bad(image, model_key=None):
        raise InvalidImage("image is not 3 channels", None, "invalid_image")
    vision = StreamingVision(bad)
    with pytest.raises(InvalidImage) as e:
        asyncio.run(chat.image_features(stages(vision), [chat.ImageRef("data:1", "messages.0.content.0")]))
    status, body, _ = to_error(e.value)
    assert (status, body.error.type, body.error.code) == (400, "invalid_request_error", "invalid_image")
    assert not vision.streams[0].refs_taken


def test_a_vision_call_past_the_stage_timeout_is_a_504_and_is_cancelled():
    async def slow(image, model_key=None):
        await asyncio.sleep(30)
    vision = StreamingVision(slow)
    with pytest.raises(TimeoutError) as e:
        asyncio.run(chat.image_features(stages(vision, timeout_s=0.3), [chat.ImageRef("data:1", "p")]))
    assert to_error(e.value)[0] == 504
    assert len(vision.streams) == 1 and vision.streams[0].cancelled and not vision.streams[0].refs_taken


def test_a_client_gone_while_its_image_is_encoded_cancels_the_vision_call():
    async def scenario():
        encoding = asyncio.Event()

        async def slow(image, model_key=None):
            encoding.set()
            await asyncio.sleep(30)
        vision = StreamingVision(slow)
        task = asyncio.create_task(chat.image_features(stages(vision), [chat.ImageRef("data:1", "p")]))
        await encoding.wait()
        task.cancel()  # what the ingress's request task gets when the client hangs up
        with pytest.raises(asyncio.CancelledError):
            await task
        return vision

    vision = asyncio.run(scenario())
    assert len(vision.streams) == 1 and vision.streams[0].cancelled


def test_a_block_of_other_rows_than_planned_is_refused_by_the_decoder_stage():
    req = DecodeRequest("r", [FeatureRef(CountedRef(np.zeros((P - 1, D), np.float32)), P)], max_tokens=1)
    with pytest.raises(ValueError, match=f"planned {P} rows"):
        asyncio.run(resolve_features(req))
    plain = DecodeRequest("r", [TokenSegment([1])], max_tokens=1)
    assert asyncio.run(resolve_features(plain)) is plain  # nothing to fetch: the request as it came
