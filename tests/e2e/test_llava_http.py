"""LLaVA checkpoints served over real Ray Serve + HTTP: tiny random CLIP + Llama (4 query heads over 2 KV heads,
shortest-edge resize + center crop) and SigLIP + Qwen2 (q/k/v biases, tied head, height x width resize), written by
transformers' save_pretrained, built with `mmserve build --hf`, each deployed from its artifacts_dir beside the
package's app under /<name>. Greedy answers equal transformers' own pipeline on the same images and prompt: the
checkpoint's image processor, its chat template and tokenizer, LlavaForConditionalGeneration.generate (fp32)."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import CheckpointApps, auth_headers
from tests.serve_app.image_samples import png_url

pytest.importorskip("transformers")
pytestmark = pytest.mark.e2e
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def llava(served, tmp_path_factory):
    """llava(spec name) -> (checkpoint dir, artifact dir, base URL); built and deployed on first use, one LLaVA app
    at a time beside the package's (the tests are ordered by spec)."""
    from graphs.families.llava.synthetic import SPECS, write_checkpoint

    apps = CheckpointApps(served, tmp_path_factory)

    def deploy(name: str, decoder: str = "cpu-fp32"):
        app = name if decoder == "cpu-fp32" else f"{name}-{decoder}"
        return apps.get(app, lambda d: write_checkpoint(d, SPECS[name]), ("vision/cpu-fp32", f"decoder/{decoder}"),
                        folder=name)

    try:
        yield deploy
    finally:
        apps.close()


def _reference(ck, artifacts, messages: list[dict], images: list[str]) -> tuple[str, str, int, int]:
    """(text, finish reason, completion tokens, prompt tokens) from transformers on the checkpoint itself."""
    import base64
    import io

    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration

    from mmcore.manifest import Manifest

    manifest = Manifest.read(artifacts)
    tok = AutoTokenizer.from_pretrained(ck)
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    text = text.replace("<image>", "<image>" * manifest.vision.features_per_image)  # as LlavaProcessor expands it
    ids = torch.tensor([tok(text)["input_ids"]])
    kwargs = {}
    if images:
        pil = [Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))).convert("RGB") for u in images]
        kwargs["pixel_values"] = AutoImageProcessor.from_pretrained(ck)(images=pil, return_tensors="pt")[
            "pixel_values"]
    model = LlavaForConditionalGeneration.from_pretrained(ck, torch_dtype=torch.float32,
                                                          attn_implementation="eager").eval()
    eos = manifest.decoder.eos_token_ids
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_TOKENS, do_sample=False,
                             eos_token_id=eos, pad_token_id=eos[0], **kwargs)[0, ids.shape[1]:].tolist()
    finish = "stop" if out[-1] in eos else "length"
    answer = tok.decode([i for i in out if i not in eos], skip_special_tokens=True)  # transformers' own decode
    return answer, finish, len(out), ids.shape[1]


CASES = {
    "image": ([png_url(50, 40, seed=7)], "what is in this picture?"),
    "text-only": ([], "describe the quick brown fox"),
    "two-images": ([png_url(40, 56, seed=3), png_url(64, 33, seed=4)], "the image and the image"),
}


@pytest.mark.parametrize("spec,case", [("clip-llama", c) for c in CASES] + [("siglip-qwen2", "two-images")])
def test_greedy_equals_transformers_generate(served, llava, spec, case):
    ck, artifacts, url = llava(spec)
    images, prompt = CASES[case]
    wire = [{"type": "image_url", "image_url": {"url": u}} for u in images] + [{"type": "text", "text": prompt}]
    r = httpx.post(f"{url}/v1/chat/completions", headers=auth_headers(served), timeout=120,
                   json={"model": f"mmserve-{spec}", "messages": [{"role": "user", "content": wire}],
                         "max_tokens": MAX_TOKENS, "temperature": 0})
    assert r.status_code == 200, r.text
    hf_messages = [{"role": "user", "content": [{"type": "image"} for _ in images] + [{"type": "text",
                                                                                        "text": prompt}]}]
    text, finish, completion, prompt_tokens = _reference(ck, artifacts, hf_messages, images)
    body = r.json()
    assert body["usage"]["prompt_tokens"] == prompt_tokens
    assert body["choices"][0]["message"]["content"] == text
    assert body["choices"][0]["finish_reason"] == finish
    assert body["usage"]["completion_tokens"] == completion


def test_int8_cache_decoder_serves_first_on_cpu(served, llava):
    """Built with the int8-cache decoder (and its float-cache sibling, which the gate needs), the replica runs
    cpu-int8-kv8 with no preference for it (the app's args prefer cpu-fp32, absent here: manifest order decides),
    and its greedy answer starts as transformers' fp32 one does (int8 weights and cache: tokens may part later)."""
    from ray import serve

    ck, artifacts, url = llava("clip-llama", "cpu-int8-kv8")
    info = serve.get_deployment_handle("Decoder", app_name="clip-llama-cpu-int8-kv8").info.remote().result(
        timeout_s=30)
    assert info["variant"] == "cpu-int8-kv8"
    images, prompt = CASES["image"]
    wire = [{"type": "image_url", "image_url": {"url": u}} for u in images] + [{"type": "text", "text": prompt}]
    r = httpx.post(f"{url}/v1/chat/completions", headers=auth_headers(served), timeout=120,
                   json={"model": "mmserve-clip-llama", "messages": [{"role": "user", "content": wire}],
                         "max_tokens": MAX_TOKENS, "temperature": 0})
    assert r.status_code == 200, r.text
    hf = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text, _, _, prompt_tokens = _reference(ck, artifacts, hf, images)
    body = r.json()
    assert body["usage"]["prompt_tokens"] == prompt_tokens
    got = body["choices"][0]["message"]["content"]
    common = next((i for i, (a, b) in enumerate(zip(got, text)) if a != b), min(len(got), len(text)))
    assert common >= len(text) // 4, (got, text)
