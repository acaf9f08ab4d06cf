"""The chats the per-architecture HTTP tests send (an image of each aspect class, two images of different sizes, text
only, a multi-turn chat with an image in an earlier turn) and the check each runs: the served greedy answer, finish
reason and prompt length equal transformers' processor + generate() on the checkpoint itself."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable

import httpx

from tests.e2e.conftest import Served, auth_headers
from tests.serve_app.image_samples import png_url

MAX_TOKENS = 16
TALL, WIDE, SQUARE = png_url(30, 90, seed=1), png_url(100, 28, seed=2), png_url(48, 48, seed=3)
CASES = {  # name -> turns: (role, [image urls], text)
    "tall": [("user", [TALL], "what is in this picture?")],
    "wide": [("user", [WIDE], "what is in this picture?")],
    "square": [("user", [SQUARE], "describe it")],
    "two-sizes": [("user", [WIDE, png_url(20, 70, seed=4)], "compare the two")],
    "text-only": [("user", [], "describe the quick brown fox")],
    "multi-turn": [("user", [TALL], "what is this?"), ("assistant", [], "a picture"),
                   ("user", [], "and its colours?")],
}


def pil_images(urls: list[str]) -> list:
    from PIL import Image

    return [Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))).convert("RGB") for u in urls]


def greedy(model, processor, inputs, eos: list[int]) -> tuple[str, str, int, int]:
    """(text, finish reason, completion tokens, prompt tokens) of transformers' generate() on `inputs`."""
    import torch

    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=eos,
                             pad_token_id=eos[0])[0, inputs["input_ids"].shape[1]:].tolist()
    finish = "stop" if out[-1] in eos else "length"
    answer = processor.tokenizer.decode([i for i in out if i not in eos], skip_special_tokens=True)
    return answer, finish, len(out), inputs["input_ids"].shape[1]


def check_chat(served: Served, url: str, case: str,
               reference: Callable[[list[dict], list[str]], tuple[str, str, int, int]]) -> None:
    """POST case `case` to the app at `url` and compare with reference(HF messages, image urls in order)."""
    turns = CASES[case]
    wire = [{"role": role, "content": [{"type": "image_url", "image_url": {"url": u}} for u in images]
             + [{"type": "text", "text": text}]} for role, images, text in turns]
    r = httpx.post(f"{url}/v1/chat/completions", headers=auth_headers(served), timeout=120,
                   json={"messages": wire, "max_tokens": MAX_TOKENS, "temperature": 0})
    assert r.status_code == 200, r.text
    hf_messages = [{"role": role, "content": [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]}
                   for role, images, text in turns]
    text, finish, completion, prompt_tokens = reference(hf_messages, [u for _, i, _ in turns for u in i])
    body = r.json()
    assert body["usage"]["prompt_tokens"] == prompt_tokens
    assert body["choices"][0]["message"]["content"] == text
    assert (body["choices"][0]["finish_reason"], body["usage"]["completion_tokens"]) == (finish, completion)
