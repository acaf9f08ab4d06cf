"""LLaVA-NeXT and LLaVA-OneVision checkpoints served over real Ray Serve + HTTP: tiny random CLIP + Llama (NeXT) and
SigLIP + Qwen2 (OneVision, anyres_max_4), written by transformers' save_pretrained with their whole processor, built
with `mmserve build --hf`, each deployed from its artifacts_dir beside the package's app under /<name>. Each image is
planned at its own size (a base view + the tiles of its best grid, unpadded, newline rows; OneVision's images of a
multi-image prompt one view each). Greedy answers and prompt lengths equal transformers' own pipeline: the
checkpoint's processor (its chat template, tiling and image-token count) and generate() (fp32)."""

from __future__ import annotations

import base64
import io

import httpx
import pytest

from tests.e2e.conftest import auth_headers, start_app, wait_ready
from PIL import Image

from tests.serve_app.image_samples import data_url, encode, png_url

pytest.importorskip("transformers")
pytestmark = pytest.mark.e2e
MAX_TOKENS = 16
SPECS = ("next-clip-llama", "onevision-siglip-qwen2")


@pytest.fixture(scope="module")
def anyres(served, tmp_path_factory):
    """anyres(spec name) -> (checkpoint dir, artifact dir, base URL); built and deployed on first use, one app at a time."""
    from ray import serve

    from graphs.cli import main
    from graphs.families.llava.synthetic import write_checkpoint
    from graphs.families.llava_next.synthetic import SPECS as ANYRES_SPECS

    apps: dict[str, tuple] = {}

    def deploy(name: str):
        if name not in apps:
            for other in apps:
                serve.delete(other)
            apps.clear()
            ck = write_checkpoint(tmp_path_factory.mktemp("anyres_ckpt") / name, ANYRES_SPECS[name])
            out = tmp_path_factory.mktemp("anyres_artifacts") / name
            assert main(["build", "--hf", str(ck), "--out", str(out), "--quiet",
                         "--variants", "vision/cpu-fp32", "decoder/cpu-fp32"]) == 0
            start_app({**served.args, "model": {"artifacts_dir": str(out)}}, name, f"/{name}")
            apps[name] = ck, out, f"{served.url}/{name}"
            wait_ready(apps[name][2])
        return apps[name]

    try:
        yield deploy
    finally:
        for name in apps:
            serve.delete(name)


def _reference(ck, artifacts, messages: list[dict], images: list[str]) -> tuple[str, str, int, int]:
    """(text, finish reason, completion tokens, prompt tokens) from transformers on the checkpoint itself."""
    import json

    import torch
    import transformers
    from PIL import Image

    from graphs.families.llava.synthetic import images_only
    from mmcore.manifest import Manifest

    config = json.loads((ck / "config.json").read_text())
    model_class, processor_class = {
        "llava_next": ("LlavaNextForConditionalGeneration", "LlavaNextProcessor"),
        "llava_onevision": ("LlavaOnevisionForConditionalGeneration", "LlavaOnevisionProcessor")}[config["model_type"]]
    processor = images_only(getattr(transformers, processor_class)).from_pretrained(ck)
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    pil = [Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))).convert("RGB") for u in images]
    # the images as one conversation's (a list per sample), as apply_chat_template hands them over: OneVision tiles
    # an image only when it is its conversation's one image (a flat list would make each a conversation of its own)
    inputs = processor(text=text, images=[pil] if pil else None, return_tensors="pt")
    model = getattr(transformers, model_class).from_pretrained(ck, torch_dtype=torch.float32,
                                                               attn_implementation="eager").eval()
    eos = Manifest.read(artifacts).decoder.eos_token_ids  # every eos id of the checkpoint's files, as served
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=eos,
                             pad_token_id=eos[0])[0, inputs["input_ids"].shape[1]:].tolist()
    finish = "stop" if out[-1] in eos else "length"
    answer = processor.tokenizer.decode([i for i in out if i not in eos], skip_special_tokens=True)
    return answer, finish, len(out), inputs["input_ids"].shape[1]


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


@pytest.mark.parametrize("spec,case", [(s, c) for s in SPECS for c in CASES])
def test_greedy_equals_transformers_generate(served, anyres, spec, case):
    ck, artifacts, url = anyres(spec)
    turns = CASES[case]
    wire = [{"role": role, "content": [{"type": "image_url", "image_url": {"url": u}} for u in images]
             + [{"type": "text", "text": text}]} for role, images, text in turns]
    r = httpx.post(f"{url}/v1/chat/completions", headers=auth_headers(served), timeout=120,
                   json={"model": f"mmserve-{spec}", "messages": wire, "max_tokens": MAX_TOKENS, "temperature": 0})
    assert r.status_code == 200, r.text
    hf_messages = [{"role": role, "content": [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]}
                   for role, images, text in turns]
    text, finish, completion, prompt_tokens = _reference(ck, artifacts, hf_messages, [u for _, i, _ in turns for u in i])
    body = r.json()
    assert body["usage"]["prompt_tokens"] == prompt_tokens
    assert body["choices"][0]["message"]["content"] == text
    assert (body["choices"][0]["finish_reason"], body["usage"]["completion_tokens"]) == (finish, completion)


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
