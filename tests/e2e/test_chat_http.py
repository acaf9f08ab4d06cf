"""The served application over HTTP: streamed and whole answers, the openai client, seeded and greedy decoding
against the PyTorch reference, text-only requests, and one replica per stage."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import APP_NAME, auth_headers
from tests.e2e.sse_client import content_of, stream_chat
from tests.serve_app.image_samples import png_url

pytestmark = pytest.mark.e2e
MODEL = "mmserve-tiny"


def image_message(text: str, seed: int = 0) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_url(40, 30, seed)}},
                                         {"type": "text", "text": text}]}]


def post(served, body: dict) -> httpx.Response:
    return httpx.post(f"{served.url}/v1/chat/completions", json=body, headers=auth_headers(served), timeout=60)


def test_models_lists_the_served_model(served):
    r = httpx.get(f"{served.url}/v1/models", headers=auth_headers(served))
    assert r.status_code == 200
    assert r.json()["object"] == "list" and [m["id"] for m in r.json()["data"]] == [MODEL]


def test_streamed_answer_to_image_and_prompt(served):
    body = {"model": MODEL, "messages": image_message("what is in the image?"), "max_tokens": 12,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    status, events = stream_chat(served.url, auth_headers(served), body)
    assert status == 200 and events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["completion_tokens"] == 12
    prompt_text_tokens = usage["prompt_tokens"] - 16  # tiny: 16 image tokens
    assert prompt_text_tokens > 5 and usage["total_tokens"] == usage["prompt_tokens"] + 12
    assert len(content_of(events)) > 0


def test_openai_client_streaming_and_whole(served):
    import openai

    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key=served.key, max_retries=0)
    assert [m.id for m in client.models.list()] == [MODEL]
    stream = client.chat.completions.create(model=MODEL, messages=image_message("describe"), max_tokens=6,
                                            stream=True, stream_options={"include_usage": True}, temperature=0)
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens <= 6
    whole = client.chat.completions.create(model=MODEL, messages=image_message("describe"), max_tokens=6,
                                           temperature=0)
    assert whole.choices[0].message.content == streamed and whole.usage.completion_tokens <= 6
    assert whole.choices[0].finish_reason in ("stop", "length")


def test_same_seed_same_text_other_seeds_differ(served):
    def sample(seed: int) -> str:
        r = post(served, {"model": MODEL, "messages": image_message("tell me a story"), "max_tokens": 16,
                          "temperature": 1.0, "top_p": 0.95, "seed": seed, "ignore_eos": True})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]
    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(s) != first for s in (1, 2, 3))  # a random 512-token model: 16 draws never all collide


def reference_text(served, image_url: str | None, text: str, max_tokens: int) -> tuple[str, str, int]:
    """Greedy text from the PyTorch model on the same pixels and prompt ids, decoded by transformers' tokenizer."""
    import torch

    from graphs.families.own.config import get_preset
    from mmcore.manifest import Manifest
    from graphs.families.own.tokenizer import encode_chat, load_tokenizer
    from graphs.families.own.weights import load_model
    from transformers import PreTrainedTokenizerFast

    from serve_app.imaging.pipeline import preprocess_image
    from serve_app.stages.options import PreprocessOptions

    manifest = Manifest.read(served.artifacts)
    assert manifest.weights_sha256 is None  # tiny: seeded weights, which load_model reproduces
    tok = load_tokenizer(served.artifacts / manifest.tokenizer_file)
    (eos,) = manifest.decoder.eos_token_ids
    pixels = None
    if image_url is not None:
        px = preprocess_image(image_url, manifest.vision, PreprocessOptions()).views[0]  # (3,S,S): the one view
        pixels = torch.from_numpy(px).unsqueeze(0)  # (1,3,S,S)
    ids = load_model(get_preset("tiny")).generate_greedy(pixels, encode_chat(tok, [("user", text)]), max_tokens,
                                                         eos_id=eos)
    finish = "stop" if ids[-1] == eos else "length"
    reference = PreTrainedTokenizerFast(tokenizer_file=str(served.artifacts / manifest.tokenizer_file))
    out = reference.decode([i for i in ids if i != eos], skip_special_tokens=True)
    return out, finish, len(ids)  # ids include the EOS that ended them: the server counts it as generated too


@pytest.mark.parametrize("with_image", [True, False], ids=["image", "text-only"])
def test_greedy_equals_reference_generation(served, with_image):
    url = png_url(50, 40, seed=7) if with_image else None
    text = "what do you see?"
    content = [{"type": "text", "text": text}]
    if url:
        content.insert(0, {"type": "image_url", "image_url": {"url": url}})
    r = post(served, {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 32,
                      "temperature": 0})
    assert r.status_code == 200, r.text
    expected, finish, n_tokens = reference_text(served, url, text, 32)
    assert r.json()["choices"][0]["message"]["content"] == expected
    assert r.json()["choices"][0]["finish_reason"] == finish
    assert r.json()["usage"]["completion_tokens"] == n_tokens
    assert r.json()["usage"]["prompt_tokens"] == (16 if url else 0) + len(_prompt_ids(served, text))


def _prompt_ids(served, text):
    from graphs.families.own.tokenizer import encode_chat, load_tokenizer
    return encode_chat(load_tokenizer(served.artifacts / "tokenizer.json"), [("user", text)])


def test_image_changes_the_answer_and_text_only_works(served):
    def greedy(messages) -> str:
        r = post(served, {"model": MODEL, "messages": messages, "max_tokens": 16, "temperature": 0,
                          "ignore_eos": True})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]
    text_only = greedy([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}])
    assert text_only
    a, b = greedy(image_message("hi", seed=1)), greedy(image_message("hi", seed=2))
    assert a != b  # the image features reach the decoder


def test_stop_string_ends_the_answer(served):
    body = {"model": MODEL, "messages": image_message("go"), "max_tokens": 24, "temperature": 0,
            "ignore_eos": True}
    full = post(served, body).json()["choices"][0]["message"]["content"]
    stop = full[5:8]
    assert len(stop) == 3
    cut = post(served, {**body, "stop": [stop]}).json()["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["message"]["content"] == full[:full.index(stop)]


def test_each_stage_runs_in_its_own_replica(served):
    import os

    from ray import serve

    status = serve.status().applications[APP_NAME]
    assert status.status == "RUNNING"
    assert set(status.deployments) == {"Ingress", "Preprocess", "VisionEncoder", "Decoder"}
    for name, d in status.deployments.items():
        assert d.replica_states.get("RUNNING") == 1, (name, d.replica_states)
    from ray._private import state  # the actor table with process ids (ray.util.state needs the dashboard)

    replicas = {a["Name"].split("#")[1]: a["Pid"] for a in state.actors().values()
                if a["Name"].startswith(f"SERVE_REPLICA::{APP_NAME}#") and a["State"] == "ALIVE"}
    assert set(replicas) == {"Ingress", "Preprocess", "VisionEncoder", "Decoder"}
    assert len(set(replicas.values())) == 4 and os.getpid() not in replicas.values()  # four processes


def test_concurrent_image_requests_share_vision_batches_and_cache(served):
    import asyncio

    from ray import serve

    async def burst():
        async with httpx.AsyncClient(timeout=60, headers=auth_headers(served)) as client:
            bodies = [{"model": MODEL, "messages": image_message("hi", seed=100 + i), "max_tokens": 2}
                      for i in range(6)]
            return await asyncio.gather(*(client.post(f"{served.url}/v1/chat/completions", json=b)
                                          for b in bodies))
    assert all(r.status_code == 200 for r in asyncio.run(burst()))
    info = serve.get_deployment_handle("VisionEncoder", APP_NAME).info.remote().result()
    assert info["variant"] == "cpu-fp32" and info["max_batch_size"] == 4 and info["cached"] >= 6


def test_features_are_float32_image_tokens(served):
    from ray import serve

    from mmcore.manifest import Manifest
    from serve_app.imaging.pipeline import preprocess_image
    from serve_app.stages.options import PreprocessOptions
    img = preprocess_image(png_url(), Manifest.read(served.artifacts).vision, PreprocessOptions())
    feats = serve.get_deployment_handle("VisionEncoder", APP_NAME).encode.remote(img).result()
    assert feats.dtype == np.float32 and feats.shape == (16, 64)
