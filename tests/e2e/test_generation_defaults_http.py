"""A checkpoint's generation_config.json as served over real Ray Serve + HTTP: a tiny random CLIP + Llama LLaVA whose
generation_config asks for greedy decoding (do_sample false) with a repetition penalty and max_new_tokens, built with
`mmserve build --hf`. A request that names no temperature, penalty or max_tokens answers as transformers'
generate() does with that same generation_config; logprobs come back in OpenAI's chat shape, as the `openai` client
parses them, with the raw model's logprobs (log_softmax of transformers' own logits)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.e2e.conftest import start_app, wait_ready
from tests.serve_app.image_samples import png_url

pytest.importorskip("transformers")
pytestmark = pytest.mark.e2e
GENERATION = {"do_sample": False, "temperature": 0.7, "repetition_penalty": 1.5, "max_new_tokens": 12}


@pytest.fixture(scope="module")
def llava(served, tmp_path_factory):
    """-> (checkpoint dir, artifact dir, base URL) of the checkpoint with its generation_config, deployed."""
    from ray import serve

    from graphs.cli import main
    from graphs.families.llava.synthetic import SPECS, write_checkpoint

    ck = write_checkpoint(tmp_path_factory.mktemp("gen_ckpt") / "clip-llama", SPECS["clip-llama"])
    path = ck / "generation_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | GENERATION))
    out = tmp_path_factory.mktemp("gen_artifacts") / "clip-llama"
    assert main(["build", "--hf", str(ck), "--out", str(out), "--quiet",
                 "--variants", "vision/cpu-fp32", "decoder/cpu-fp32"]) == 0
    start_app({**served.args, "model": {"artifacts_dir": str(out)}}, "gen", "/gen")
    url = f"{served.url}/gen"
    wait_ready(url)
    try:
        yield ck, out, url
    finally:
        serve.delete("gen")


def transformers_answer(ck, artifacts, prompt: str, images: list[str]) -> tuple[str, list[int], np.ndarray, int]:
    """-> (text, tokens, raw logits (n,V), prompt length) from transformers' generate() with the checkpoint's own
    generation_config (nothing overridden but eos and pad)."""
    import base64
    import io

    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration

    from mmcore.manifest import Manifest

    manifest = Manifest.read(artifacts)
    tok = AutoTokenizer.from_pretrained(ck)
    messages = [{"role": "user", "content": [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    text = text.replace("<image>", "<image>" * manifest.vision.features_per_image)
    ids = torch.tensor([tok(text)["input_ids"]])
    kwargs = {}
    if images:
        pil = [Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))).convert("RGB") for u in images]
        kwargs["pixel_values"] = AutoImageProcessor.from_pretrained(ck)(images=pil, return_tensors="pt")["pixel_values"]
    model = LlavaForConditionalGeneration.from_pretrained(ck, dtype=torch.float32, attn_implementation="eager").eval()
    assert model.generation_config.repetition_penalty == GENERATION["repetition_penalty"]  # its file, as served
    eos = manifest.decoder.eos_token_ids
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), eos_token_id=eos, pad_token_id=eos[0],
                             output_logits=True, return_dict_in_generate=True, **kwargs)
    tokens = out.sequences[0, ids.shape[1]:].tolist()
    logits = torch.stack(out.logits)[:, 0].numpy()  # (n,V) raw, before the repetition penalty
    return tok.decode([t for t in tokens if t not in eos], skip_special_tokens=True), tokens, logits, ids.shape[1]


@pytest.mark.parametrize("images", [[], [png_url(50, 40, seed=7)]], ids=["text-only", "image"])
def test_a_silent_request_is_served_with_the_checkpoint_defaults_and_logprobs(served, llava, images):
    from openai import OpenAI

    ck, artifacts, url = llava
    prompt = "describe the quick brown fox"
    text, tokens, logits, prompt_len = transformers_answer(ck, artifacts, prompt, images)
    client = OpenAI(base_url=f"{url}/v1", api_key=served.key)
    content = [{"type": "image_url", "image_url": {"url": u}} for u in images] + [{"type": "text", "text": prompt}]
    messages = [{"role": "user", "content": content}]
    full = client.chat.completions.create(model="mmserve-clip-llama", messages=messages, logprobs=True,
                                          top_logprobs=3)
    choice = full.choices[0]
    assert choice.message.content == text and full.usage.completion_tokens == len(tokens) <= 12
    assert full.usage.prompt_tokens == prompt_len
    entries = choice.logprobs.content
    assert len(entries) == len(tokens) and all(len(e.top_logprobs) == 3 for e in entries)
    raw = logits - logits.max(1, keepdims=True)
    raw = raw - np.log(np.exp(raw).sum(1, keepdims=True))  # transformers' raw log_softmax per step
    np.testing.assert_allclose([e.logprob for e in entries], raw[np.arange(len(tokens)), tokens], atol=1e-3)
    np.testing.assert_allclose([e.top_logprobs[0].logprob for e in entries], raw.max(1), atol=1e-3)

    stream = client.chat.completions.create(model="mmserve-clip-llama", messages=messages, logprobs=True,
                                            stream=True)
    pieces, streamed = [], []
    for chunk in stream:
        pieces.append(chunk.choices[0].delta.content or "")
        if chunk.choices[0].logprobs is not None:
            streamed += chunk.choices[0].logprobs.content
    assert "".join(pieces) == text and [e.token for e in streamed] == [e.token for e in entries]
    assert all(e.top_logprobs == [] for e in streamed)


def test_the_request_overrides_the_checkpoint(served, llava):
    import httpx

    from tests.e2e.conftest import auth_headers

    _, _, url = llava
    body = {"messages": [{"role": "user", "content": "describe the quick brown fox"}], "max_tokens": 20,
            "repetition_penalty": 1.0, "temperature": 0}
    r = httpx.post(f"{url}/v1/chat/completions", headers=auth_headers(served), json=body, timeout=60)
    assert r.status_code == 200, r.text
    answer = r.json()  # its own max_tokens, not the checkpoint's 12
    assert answer["usage"]["completion_tokens"] == 20 or answer["choices"][0]["finish_reason"] == "stop"
    bad = httpx.post(f"{url}/v1/chat/completions", headers=auth_headers(served), timeout=60,
                     json={**body, "top_logprobs": 3})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_logprobs"
