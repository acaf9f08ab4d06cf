"""Zero-downtime model upgrade on real Ray Serve from the real S3-compatible server: two different builds of the
tiny preset (seeded weights 0 and 7) pushed to two URIs; the app serves URI A under streaming load from a few
clients, is redeployed under the same name with URI B, and

    no request fails (every stream ends with finish_reason and [DONE], no error chunk, every status 200);
    streams running when the redeploy began complete on model A;
    requests started after the rollout are answered by model B;
    no answer mixes two models' stages: every answer is model A's or model B's greedy text, whole.

Which model answered is each answer's system_fingerprint (its manifest's sha256); the texts check it."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mmcore.store import artifact_key, fetch_events, push_artifacts
from tests.e2e.conftest import CONFIG_KEY, e2e_args, free_port, start_app, wait_ready
from tests.serve_app.image_samples import png_url

pytestmark = pytest.mark.e2e
HEADERS = {"Authorization": f"Bearer {CONFIG_KEY}"}
CLIENTS = 3
AFTER_ROLLOUT_S = 3.0  # the proxies learn of the new ingress through a long poll: requests begun later must see B
REQUESTS = {
    "text": [{"role": "user", "content": "describe the picture"}],
    "image": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_url(40, 30, 3)}},
                                           {"type": "text", "text": "what is this?"}]}],
}


@dataclass
class Answer:
    kind: str
    start: float
    end: float
    fingerprint: str | None = None
    text: str = ""
    error: str | None = None  # anything but a complete stream


def stream_once(url: str, kind: str) -> Answer:
    body = {"model": "mmserve-tiny", "messages": REQUESTS[kind], "max_tokens": 8, "temperature": 0, "stream": True}
    answer = Answer(kind, time.monotonic(), 0.0)
    finish, done = None, False
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=HEADERS, timeout=120) as r:
            if r.status_code != 200:
                answer.error = f"HTTP {r.status_code}: {r.read().decode()[:300]}"
            for line in [] if answer.error else r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    answer.error = f"error chunk: {chunk['error']}"
                    continue
                answer.fingerprint = chunk.get("system_fingerprint")
                for choice in chunk["choices"]:
                    answer.text += choice["delta"].get("content") or ""
                    finish = choice.get("finish_reason") or finish
    except httpx.HTTPError as e:
        answer.error = f"{type(e).__name__}: {e}"
    if answer.error is None and (finish is None or not done):
        answer.error = f"stream ended early (finish_reason {finish}, [DONE] {done})"
    answer.end = time.monotonic()
    return answer


def model_b(tmp_path: Path) -> Path:
    """The tiny preset built from other (seeded) weights: same shapes and served name, other answers."""
    from graphs.build import build_artifacts
    from graphs.families.own.config import PRESETS
    from graphs.families.own.model import MultimodalModel
    from graphs.families.own.weights import save_weights

    tiny = PRESETS["tiny"]
    save_weights(MultimodalModel.seeded(type(tiny)(**{**tiny.__dict__, "seed": 7})), tmp_path / "b.safetensors")
    build_artifacts("tiny", tmp_path / "b", weights=tmp_path / "b.safetensors")
    return tmp_path / "b"


def test_redeploy_with_a_new_uri_under_streaming_load(s3_uri, aws_env, tiny_artifacts_dir, tmp_path):
    import ray
    from ray import serve

    dirs = {"A": tiny_artifacts_dir, "B": model_b(tmp_path)}
    uris = {m: f"{s3_uri}/{m}" for m in dirs}
    for m in dirs:
        push_artifacts(dirs[m], uris[m])
    prints = {m: f"mmserve-{artifact_key(d)[:16]}" for m, d in dirs.items()}
    assert prints["A"] != prints["B"]
    node_cache = tmp_path / "node"

    def args(model: str) -> dict:
        return {**e2e_args(tiny_artifacts_dir), "model": {"artifacts_uri": uris[model], "cache_dir": str(node_cache)}}

    port = free_port()
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}/up"
        start_app(args("A"), "up", "/up")
        wait_ready(url, timeout_s=300)
        before = {kind: stream_once(url, kind) for kind in REQUESTS}
        assert all(a.error is None and a.fingerprint == prints["A"] for a in before.values()), before

        answers: list[Answer] = []
        stop = threading.Event()

        def client(i: int) -> None:
            n = i
            while not stop.is_set():
                answers.append(stream_once(url, list(REQUESTS)[n % len(REQUESTS)]))
                n += 1

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(2.0)  # load running on model A
        switch = time.monotonic()
        start_app(args("B"), "up", "/up")  # serve.run returns when every new replica runs
        rolled = time.monotonic()
        deadline = rolled + 120
        while time.monotonic() < deadline and \
                sum(a.start > rolled + AFTER_ROLLOUT_S for a in answers) < 2 * CLIENTS * len(REQUESTS):
            time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(timeout=180)

        failed = [a for a in answers if a.error is not None]
        assert not failed, f"{len(failed)} of {len(answers)} requests failed: {failed[:3]}"
        on = {m: [a for a in answers if a.fingerprint == prints[m]] for m in prints}
        assert len(on["A"]) + len(on["B"]) == len(answers), "an answer from neither model"
        for a in on["A"]:  # whole model-A answers: no stage of model B in them
            assert a.text == before[a.kind].text, a
        b_text = {kind: {a.text for a in on["B"] if a.kind == kind} for kind in REQUESTS}
        assert all(len(texts) == 1 for texts in b_text.values()), b_text  # one model-B answer per request
        assert any(b_text[k] != {before[k].text} for k in REQUESTS), "the two models answer alike: test is blind"
        assert any(a.start < switch < a.end or a.start > switch for a in on["A"]), \
            "no stream ran on model A while the redeploy rolled out"
        late = [a for a in answers if a.start > rolled + AFTER_ROLLOUT_S]
        assert late and all(a.fingerprint == prints["B"] for a in late)
        downloads = [e for e in fetch_events(node_cache / "fetched") if e["event"] == "download"]
        assert sorted(e["uri"] for e in downloads) == sorted(uris.values())  # each model once on this node
        print(f"upgrade under load: {len(answers)} streams, {len(on['A'])} on A, {len(on['B'])} on B, "
              f"rollout {rolled - switch:.1f}s, 0 failed")
    finally:
        serve.shutdown()
        ray.shutdown()
