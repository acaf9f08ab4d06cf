"""Image features skip the ingress, on the real Ray Serve instance: over HTTP every image of a request reaches the
decoder as a reference it fetches itself, and the vision call the ingress makes answers its outcome first -- a
refusal raises there, as a plain call's would -- and its block as an ObjectRef that Ray resolves to exactly the
features `encode` returns, from which the decoder generates what it generates from the array itself."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.e2e.conftest import APP_NAME, auth_headers
from tests.e2e.sse_client import stream_chat
from tests.serve_app.image_samples import png_url

pytestmark = pytest.mark.e2e
MODEL = "mmserve-tiny"


def handle(deployment: str):
    from ray import serve

    return serve.get_deployment_handle(deployment, APP_NAME)


def images_fetched() -> int:
    return handle("Decoder").info.remote().result()["images_fetched"]


def preprocessed(served, seed: int):
    from mmcore.manifest import Manifest
    from serve_app.imaging.pipeline import preprocess_image
    from serve_app.stages.options import PreprocessOptions

    return preprocess_image(png_url(40, 30, seed), Manifest.read(served.artifacts).vision, PreprocessOptions())


def test_each_image_of_a_streamed_request_reaches_the_decoder_by_reference(served):
    before = images_fetched()
    content = [{"type": "image_url", "image_url": {"url": png_url(40, 30, seed)}} for seed in (31, 32)]
    body = {"model": MODEL, "messages": [{"role": "user", "content": [*content, {"type": "text", "text": "two"}]}],
            "max_tokens": 4, "ignore_eos": True, "stream_options": {"include_usage": True}}
    status, events = stream_chat(served.url, auth_headers(served), body)
    assert status == 200 and events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] == 4
    assert images_fetched() == before + 2  # fetched by the decoder, one reference per image
    text_only = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert stream_chat(served.url, auth_headers(served), text_only)[0] == 200
    assert images_fetched() == before + 2


def test_the_vision_call_gives_its_outcome_then_a_reference_the_decoder_resolves(served):
    import ray

    from serve_app.api.chat import encode_by_reference
    from serve_app.api.errors import to_error
    from serve_app.contract import DecodeRequest, FeatureSegment, ModelMismatch, TokenSegment, unwrap

    image = preprocessed(served, seed=33)
    feature = asyncio.run(encode_by_reference(handle("VisionEncoder"), image, None))
    assert isinstance(feature.ref, ray.ObjectRef) and feature.rows == 16
    direct = handle("VisionEncoder").encode.remote(image).result()
    np.testing.assert_array_equal(ray.get(feature.ref), direct)  # the block itself, as `encode` returns it

    def greedy(segment) -> list[int]:
        request = DecodeRequest("r", [TokenSegment([5, 6]), segment, TokenSegment([7])], max_tokens=8,
                                temperature=0.0, ignore_eos=True)
        return [t for c in handle("Decoder").options(stream=True).generate.remote(request) for t in c.token_ids]
    assert greedy(feature) == greedy(FeatureSegment(direct))

    with pytest.raises(Exception) as refused:  # a replica of another model refuses before yielding anything
        asyncio.run(encode_by_reference(handle("VisionEncoder"), image, "f" * 64))
    assert isinstance(unwrap(refused.value), ModelMismatch)
    assert to_error(refused.value)[1].error.code == "model_changed"
