"""An image whose layout writes text of its own (Idefics3 / SmolVLM: row and column tokens around each crop's rows,
the global view's marker) makes the ingress tokenize the prompt again with each placeholder expanded: the ids are
transformers' Idefics3Processor's for the same chat and images, and each run of image tokens is one view's rows."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from transformers import Idefics3Processor
from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

from mmcore.image_plan.idefics3 import Features, plan
from mmcore.manifest import PromptSpec
from serve_app.api import chat
from serve_app.api.errors import ContextLengthExceeded
from serve_app.api.prompt import FeatureSlot, PromptRenderer
from serve_app.api.protocol import ChatCompletionRequest
from serve_app.contract import FeatureRef, PreprocessedImage, resolve_features
from tests.idefics3_cases import TINY, hf_image_processor, sample_image, tiny_tokenizer

ROWS = TINY.image_seq_len  # rows per view


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def processor(tokenizer) -> Idefics3Processor:
    return Idefics3Processor(image_processor=hf_image_processor(TINY), tokenizer=tokenizer,
                             image_seq_len=ROWS, chat_template=DEFAULT_CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def renderer(tokenizer) -> PromptRenderer:
    spec = PromptSpec(chat_template=DEFAULT_CHAT_TEMPLATE, image_token=TINY.image_token, image_features=ROWS)
    return PromptRenderer(spec, tokenizer.backend_tokenizer)


def preprocessed(height: int, width: int) -> PreprocessedImage:
    """What the preprocess stage hands the ingress for an Idefics3 image: its views and its plan's layout."""
    p = plan(TINY, height, width)
    layout = tuple(x.rows if isinstance(x, Features) else x.text for x in p.pieces)
    return PreprocessedImage(np.zeros((p.num_views, 3, 4, 4), np.uint8), p.num_rows, f"{height}x{width}", 1,
                             height * width, layout)


def chat_request(sizes, **kw) -> ChatCompletionRequest:
    content = []
    for k in range(len(sizes)):
        content += [{"type": "image_url", "image_url": {"url": f"data:{k}"}},
                    {"type": "text", "text": f"what is in picture {k}?"}]
    return ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": content}], **kw})


def flat_ids(pieces, image_id: int) -> list[int]:
    return [t for p in pieces for t in ([image_id] * p.rows if isinstance(p, FeatureSlot) else p)]


@pytest.mark.parametrize("sizes", [[(50, 70)], [(1, 1)], [(20, 2000)], [(70, 50), (3, 5)], [(32, 32), (97, 31)]])
def test_prompt_ids_are_the_processors_with_each_placeholder_expanded(processor, tokenizer, renderer, sizes):
    req = chat_request(sizes, max_tokens=4)
    limits = chat.ModelLimits(image_tokens=ROWS, max_positions=4096, max_images=4)
    prepared = chat.prepare(req, renderer, limits)
    images = [preprocessed(h, w) for h, w in sizes]
    admitted = chat.admit_images(prepared, images, req, limits, renderer)

    messages = [{"role": "user", "content": [{"type": "image"} if p.type == "image_url" else
                                             {"type": "text", "text": p.text} for p in req.messages[0].content]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    expected = processor(text=text, images=[sample_image(h, w) for h, w in sizes])["input_ids"][0]
    image_id = tokenizer.convert_tokens_to_ids(TINY.image_token)
    assert flat_ids(admitted.pieces, image_id) == expected
    assert admitted.prompt_len == len(expected) and admitted.max_tokens == 4
    runs = [p for p in admitted.pieces if isinstance(p, FeatureSlot)]  # one run per view, in order
    assert [(r.index, r.start, r.rows) for r in runs] == [
        (i, v * ROWS, ROWS) for i, im in enumerate(images) for v in range(im.views.shape[0])]


def test_the_expanded_prompt_is_checked_against_the_context(renderer):
    req = chat_request([(1, 1)], max_tokens=4)  # 1x1 is upscaled to the longest edge: 3x3 crops + the global view
    limits = chat.ModelLimits(image_tokens=ROWS, max_positions=64, max_images=4)
    prepared = chat.prepare(req, renderer, limits)  # fits with the fewest rows
    with pytest.raises(ContextLengthExceeded, match="images included"):
        chat.admit_images(prepared, [preprocessed(1, 1)], req, limits, renderer)


def test_each_run_of_rows_is_its_views_slice_of_the_images_block(renderer):
    """decode_request turns each run into a FeatureRef of the image's block, which the decoder stage fetches once
    and slices: the segments are the prompt's ids and each view's rows, in order."""
    block = np.arange(3 * ROWS * 2, dtype=np.float32).reshape(3 * ROWS, 2)  # three views' rows

    async def vision_result():
        return block

    async def go():
        image = FeatureRef(asyncio.ensure_future(vision_result()), 3 * ROWS)  # what image_features hands on
        pieces = [[5, 6], FeatureSlot(0, 0, ROWS), [7], FeatureSlot(0, ROWS, ROWS), FeatureSlot(0, 2 * ROWS, ROWS),
                  [8]]
        prepared = chat.PreparedChat(pieces, [], 1, 4 + 3 * ROWS, {})
        request = chat.decode_request("r", chat_request([(4, 4)]), prepared, [image])
        return request, await resolve_features(request)

    request, resolved = asyncio.run(go())
    assert request.prompt_len == resolved.prompt_len == 4 + 3 * ROWS
    got = [s.ids if hasattr(s, "ids") else s.features for s in resolved.segments]
    assert got[0] == [5, 6] and got[2] == [7] and got[5] == [8]
    for k, v in ((1, 0), (3, 1), (4, 2)):
        np.testing.assert_array_equal(got[k], block[v * ROWS:(v + 1) * ROWS])
