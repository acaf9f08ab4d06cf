"""Prompt ids equal transformers' for every tokenizer kind real checkpoints ship (tests/tokenizer_kinds.py), each
with a chat template in its family's style: the reference is `LlavaProcessor.apply_chat_template(..., tokenize=True)`
on the same messages and images; the code under test reads only what a build writes (the effective tokenizer.json and
the manifest's prompt spec). Cases: an image and text, two images, a multi-turn chat with an image in an earlier turn,
text only, a string content, and templates that use `{% generation %}`, `{% break %}`, `raise_exception` and
`{{ bos_token }}`."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from tokenizers import Tokenizer

from graphs.families.llava.tokenizer_files import effective_tokenizer_json
from mmcore.manifest import PromptSpec
from serve_app.api.errors import InvalidRequest
from serve_app.api.prompt import ImageSlot, PromptRenderer
from serve_app.api.protocol import ChatMessage
from tests.tokenizer_kinds import IMAGE_TOKEN, KINDS, TEMPLATES, make_tokenizer

PATCH, SIZE = 14, 28
FEATURES = (SIZE // PATCH) ** 2  # LlavaProcessor's count for the "default" strategy with one CLS token

def png(seed: int, w: int, h: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


A, B = png(1, 40, 30), png(2, 20, 50)
CASES = {
    "image": [("user", [A, "What is in the image? It's red, café 日本."])],
    "two-images": [("user", ["Compare", A, "with", B, "please"])],
    "multi-turn": [("user", [A, "Describe it."]), ("assistant", "A red circle on the left."),
                   ("user", ["And now  the colours?"])],
    "text-only": [("user", ["Hello there, how are you?"])],
    "string-content": [("user", "Just a string, no parts.")],
}


def hf_messages(case):
    out = []
    for role, content in case:
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        else:
            out.append({"role": role, "content": [{"type": "image", "image": c} if isinstance(c, Image.Image)
                                                  else {"type": "text", "text": c} for c in content]})
    return out


def openai_messages(case):
    out = []
    for role, content in case:
        if not isinstance(content, str):
            content = [{"type": "image_url", "image_url": {"url": url(c)}} if isinstance(c, Image.Image)
                       else {"type": "text", "text": c} for c in content]
        out.append(ChatMessage.model_validate({"role": role, "content": content}))
    return out


@pytest.fixture(scope="module", params=KINDS)
def kind(request, tmp_path_factory):
    from transformers import CLIPImageProcessor, LlavaProcessor

    out = tmp_path_factory.mktemp(request.param)
    tok = make_tokenizer(request.param, out)
    template = TEMPLATES[request.param]
    images = CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    processor = LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=PATCH, chat_template=template,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    spec = PromptSpec(chat_template=template, image_token=IMAGE_TOKEN, image_features=FEATURES,
                      bos_token=tok.bos_token or "", eos_token=tok.eos_token or "")
    renderer = PromptRenderer(spec, Tokenizer.from_str(effective_tokenizer_json(out)))
    return request.param, processor, renderer


def served_ids(renderer: PromptRenderer, case) -> list[int]:
    messages = openai_messages(case)
    n_images = sum(isinstance(c, Image.Image) for _, content in case if not isinstance(content, str) for c in content)
    pieces = renderer.pieces(messages, n_images)
    assert renderer.length(pieces) == sum(FEATURES if isinstance(p, ImageSlot) else len(p) for p in pieces)
    return [i for p in pieces for i in ([renderer.image_id] * FEATURES if isinstance(p, ImageSlot) else p)]


@pytest.mark.parametrize("case", CASES)
def test_prompt_ids_equal_the_processors(kind, case):
    name, processor, renderer = kind
    expected = processor.apply_chat_template(hf_messages(CASES[case]), add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"]
    expected = expected[0] if isinstance(expected[0], list) else expected
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    ids = served_ids(renderer, CASES[case])
    assert [image_id if i == renderer.image_id else i for i in ids] == list(expected)


def test_bos_comes_once(kind):
    """At the start, once: added by the tokenizer (Llama-2) or written by the template (Mistral, Llama-3), never both."""
    name, processor, renderer = kind
    bos = processor.tokenizer.bos_token_id
    if bos is None:
        pytest.skip(f"{name} has no BOS token")
    ids = served_ids(renderer, CASES["text-only"])
    assert ids[0] == bos and ids.count(bos) == 1


@pytest.mark.parametrize("kind", ["mistral"], indirect=True)  # the one template here that refuses a conversation
def test_a_template_refusal_is_a_400_naming_its_message(kind):
    _, _, renderer = kind
    with pytest.raises(InvalidRequest, match="roles must alternate"):
        served_ids(renderer, [("assistant", "I speak first.")])


@pytest.mark.parametrize("parts", [["look at <image> here"], ["look at <ima", "ge> here"]],
                         ids=["whole", "split-across-parts"])
def test_a_placeholder_written_by_the_client_is_a_400(kind, parts):
    _, _, renderer = kind
    with pytest.raises(InvalidRequest) as e:
        served_ids(renderer, [("user", parts)])
    assert e.value.param == "messages.0.content"
