"""End to end through every stage: a held-out generated image, sent as a PNG data URL over HTTP, gets its exact
caption back from the served demo captioner. Catches swapped channels, a wrong normalization, features in the
wrong order or a position slip anywhere between the HTTP body and the decoder."""

import base64
import io

import httpx
from PIL import Image
from ray import serve

from graphs.families.own.config import get_preset
from graphs.demo.evaluate import accuracy, heldout
from tests.e2e.conftest import auth_headers, start_app, wait_ready

N = 20  # a smaller sample than the graph-level test: every image crosses four replicas


def _data_url(pixels) -> str:
    buf = io.BytesIO()
    Image.fromarray(pixels.transpose(1, 2, 0)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _caption(url: str, headers: dict, pixels) -> str:
    body = {"model": "mmserve-demo", "temperature": 0, "max_tokens": 32,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": _data_url(pixels)}},
                {"type": "text", "text": "Describe the image."}]}]}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"].strip()


def test_demo_captions_over_http(served, demo_artifacts):
    args = {**served.args, "model": {"artifacts_dir": str(demo_artifacts)},
            "vision": {"max_batch_size": 4, "batch_wait_timeout_s": 0.002},  # default variants: cpu-int8
            "decoder": {"slots": 4, "max_queue": 32}}
    start_app(args, "demo", "/demo")
    try:
        wait_ready(f"{served.url}/demo")
        images, truth = heldout(N, get_preset("demo").vision.image_size)
        got = [_caption(f"{served.url}/demo", auth_headers(served), img) for img in images]
    finally:
        serve.delete("demo")  # the tests after this one share the instance
    assert accuracy(got, truth) >= 0.95, [(g, t) for g, t in zip(got, truth) if g != t][:5]
