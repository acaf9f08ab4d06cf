"""Random-weight LLaVA checkpoints shipping each tokenizer kind real checkpoints ship (tests/tokenizer_kinds.py:
SentencePiece Llama-2 legacy and not, Mistral, byte-level Llama-3 and Qwen2, WordPiece), each with its family's chat
template, built with `mmserve build --hf` and served over real Ray Serve + HTTP. Greedy answers, streamed and not,
equal transformers' `generate()` decoded by transformers' tokenizer, and `usage.prompt_tokens` equals the length of
the ids transformers' LlavaProcessor gives for the same chat and images: an image, two images of different sizes,
text only, and a multi-turn chat with the image in an earlier turn."""

from __future__ import annotations

import base64
import io

import httpx
import pytest

from tests.e2e.conftest import CheckpointApps, auth_headers
from tests.e2e.sse_client import content_of, stream_chat
from tests.serve_app.image_samples import png_url
from tests.tokenizer_kinds import KINDS, TEMPLATES, make_tokenizer

pytest.importorskip("transformers")
pytestmark = pytest.mark.e2e
MAX_TOKENS = 20
IMG, WIDE, TALL = png_url(50, 40, seed=7), png_url(64, 33, seed=4), png_url(40, 56, seed=3)
CASES = {
    "image": [("user", [IMG, "What is in this picture? It's red, café."])],
    "two-images": [("user", [TALL, "and", WIDE, "the image and the image"])],
    "text-only": [("user", ["describe the quick brown fox, don't stop!"])],
    "multi-turn": [("user", [IMG, "Describe it."]), ("assistant", "A red circle on the left."),
                   ("user", ["And the colours?"])],
}


@pytest.fixture(scope="module")
def checkpoint_app(served, tmp_path_factory):
    """checkpoint_app(kind) -> (checkpoint dir, base URL); one app at a time beside the package's."""
    from graphs.families.llava.synthetic import SPECS, write_checkpoint

    apps = CheckpointApps(served, tmp_path_factory)

    def write(kind: str, directory):
        tok = tmp_path_factory.mktemp("tok") / kind
        make_tokenizer(kind, tok)
        return write_checkpoint(directory, SPECS["clip-llama"], tokenizer=tok, chat_template=TEMPLATES[kind])

    def deploy(kind: str):
        ck, _, url = apps.get(f"kind-{kind}", lambda d: write(kind, d))
        return ck, url

    try:
        yield deploy
    finally:
        apps.close()


def _wire(case) -> list[dict]:
    out = []
    for role, content in case:
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        else:
            out.append({"role": role, "content": [
                {"type": "image_url", "image_url": {"url": c}} if c.startswith("data:") else {"type": "text", "text": c}
                for c in content]})
    return out


def _reference(ck, case) -> tuple[str, str, int, int]:
    """(text, finish reason, completion tokens, prompt tokens) from transformers on the checkpoint itself: its
    processor's apply_chat_template (tokenize=True) and LlavaForConditionalGeneration.generate, decoded by its
    tokenizer."""
    import json

    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration, LlavaProcessor

    config = json.loads((ck / "config.json").read_text())
    processor = LlavaProcessor(image_processor=AutoImageProcessor.from_pretrained(ck),
                               tokenizer=AutoTokenizer.from_pretrained(ck),
                               patch_size=config["vision_config"]["patch_size"],
                               vision_feature_select_strategy=config["vision_feature_select_strategy"],
                               chat_template=(ck / "chat_template.jinja").read_text(), num_additional_image_tokens=1)
    messages = []
    for role, content in case:
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
            continue
        parts = []
        for c in content:
            if c.startswith("data:"):
                img = Image.open(io.BytesIO(base64.b64decode(c.split(",", 1)[1]))).convert("RGB")
                parts.append({"type": "image", "image": img})
            else:
                parts.append({"type": "text", "text": c})
        messages.append({"role": role, "content": parts})
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    model = LlavaForConditionalGeneration.from_pretrained(ck, torch_dtype=torch.float32,
                                                          attn_implementation="eager").eval()
    eos = [processor.tokenizer.convert_tokens_to_ids(processor.tokenizer.eos_token)]
    n = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=eos,
                             pad_token_id=eos[0])[0, n:].tolist()
    finish = "stop" if out[-1] in eos else "length"
    return processor.tokenizer.decode(out, skip_special_tokens=True), finish, len(out), n


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_answers_equal_transformers(served, checkpoint_app, kind):
    ck, url = checkpoint_app(kind)
    for name, case in CASES.items():
        body = {"messages": _wire(case), "max_tokens": MAX_TOKENS, "temperature": 0}
        r = httpx.post(f"{url}/v1/chat/completions", headers=auth_headers(served), timeout=120, json=body)
        assert r.status_code == 200, (name, r.text)
        text, finish, completion, prompt_tokens = _reference(ck, case)
        got = r.json()
        assert got["usage"]["prompt_tokens"] == prompt_tokens, name
        assert got["choices"][0]["message"]["content"] == text, name
        assert got["choices"][0]["finish_reason"] == finish, name
        assert got["usage"]["completion_tokens"] == completion, name
        status, events = stream_chat(url, auth_headers(served), body, timeout=120)
        assert status == 200 and events[-1] == "[DONE]", name
        assert content_of(events) == text, name
