"""LLaVA-NeXT and LLaVA-OneVision checkpoints served over real Ray Serve + HTTP: tiny random CLIP + Llama (NeXT) and
SigLIP + Qwen2 (OneVision, anyres_max_4), written by transformers' save_pretrained with their whole processor, built
with `mmserve build --hf`, each deployed from its artifacts_dir beside the package's app under /<name>. Each image is
planned at its own size (a base view + the tiles of its best grid, unpadded, newline rows; OneVision's images of a
multi-image prompt one view each). Greedy answers and prompt lengths equal transformers' own pipeline: the
checkpoint's processor (its chat template, tiling and image-token count) and generate() (fp32)."""

from __future__ import annotations

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import auth_headers, serve_checkpoints
from tests.e2e.image_chats import CASES, SQUARE, WIDE, check_chat, greedy, pil_images
from tests.serve_app.image_samples import data_url, encode

pytest.importorskip("transformers")
pytestmark = pytest.mark.e2e
SPECS = ("next-clip-llama", "onevision-siglip-qwen2")


@pytest.fixture(scope="module")
def anyres(served, tmp_path_factory):
    """anyres(spec name) -> (checkpoint dir, artifact dir, base URL); built and deployed on first use."""
    from graphs.families.llava.synthetic import write_checkpoint
    from graphs.families.llava_next.synthetic import SPECS as ANYRES_SPECS

    yield from serve_checkpoints(served, tmp_path_factory, lambda name, d: write_checkpoint(d, ANYRES_SPECS[name]))


def _reference(ck, artifacts, messages: list[dict], images: list[str]) -> tuple[str, str, int, int]:
    """transformers on the checkpoint itself: its processor and generate() in fp32."""
    import json

    import torch
    import transformers

    from graphs.families.llava.synthetic import images_only
    from mmcore.manifest import Manifest

    config = json.loads((ck / "config.json").read_text())
    model_class, processor_class = {
        "llava_next": ("LlavaNextForConditionalGeneration", "LlavaNextProcessor"),
        "llava_onevision": ("LlavaOnevisionForConditionalGeneration", "LlavaOnevisionProcessor")}[config["model_type"]]
    processor = images_only(getattr(transformers, processor_class)).from_pretrained(ck)
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    pil = pil_images(images)
    # the images as one conversation's (a list per sample), as apply_chat_template hands them over: OneVision tiles
    # an image only when it is its conversation's one image (a flat list would make each a conversation of its own)
    inputs = processor(text=text, images=[pil] if pil else None, return_tensors="pt")
    model = getattr(transformers, model_class).from_pretrained(ck, torch_dtype=torch.float32,
                                                               attn_implementation="eager").eval()
    return greedy(model, processor, inputs, Manifest.read(artifacts).decoder.eos_token_ids)


@pytest.mark.parametrize("spec,case", [(s, c) for s in SPECS for c in CASES])
def test_greedy_equals_transformers_generate(served, anyres, spec, case):
    ck, artifacts, url = anyres(spec)
    check_chat(served, url, case, lambda messages, images: _reference(ck, artifacts, messages, images))


def test_an_image_too_thin_for_the_grid_is_a_400_and_the_app_keeps_serving(served, anyres):
    _, _, url = anyres("next-clip-llama")

    def ask(image: str) -> httpx.Response:
        content = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "what is it?"}]
        return httpx.post(f"{url}/v1/chat/completions", headers=auth_headers(served), timeout=120,
                          json={"messages": [{"role": "user", "content": content}], "max_tokens": 2})
    r = ask(data_url(encode(Image.new("RGB", (20000, 20), (40, 90, 160)))))  # flat: small on the wire
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["code"], err["param"]) == ("invalid_image_size", "messages.0.content.0.image_url")
    assert "20000x20 px" in err["message"]
    assert ask(SQUARE).status_code == 200


def test_an_image_of_more_views_than_max_tiles_is_a_400_naming_the_limit(served, anyres):
    """preprocess.max_tiles 4: a square image (a base view + the 2x2 grid's tiles) is refused before anything is
    encoded; a wide one (a base view + 1x3 tiles) is served."""
    _, _, url = anyres("next-max-tiles", spec="next-clip-llama", folder="next-clip-llama",
                       args={"preprocess": {"max_tiles": 4}})

    def ask(image: str) -> httpx.Response:
        content = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "what is it?"}]
        return httpx.post(f"{url}/v1/chat/completions", headers=auth_headers(served), timeout=120,
                          json={"messages": [{"role": "user", "content": content}], "max_tokens": 2})
    r = ask(SQUARE)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["code"], err["param"]) == ("image_too_many_tiles", "messages.0.content.0.image_url")
    assert "becomes 5 views to encode; the limit is 4 (preprocess.max_tiles)" in err["message"]
    assert ask(WIDE).status_code == 200
