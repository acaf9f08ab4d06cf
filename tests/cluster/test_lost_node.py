"""Losing the GPU node of the local heterogeneous cluster (real `ray start` processes) under mixed load.

Measured and asserted: text-only requests keep succeeding (zero failures); image requests fail fast with 503
`vision_unavailable` (none waits past stage_timeout_s); /ready names the vision stage; when the node is started
again, image requests succeed without a redeploy. The times to detection and to recovery are printed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.cluster.test_heterogeneous_cluster import (SCALE, _deploy_failed, _print_logs, image_body,
                                                      local_cluster, local_serve_config, text_body)
from tests.e2e.conftest import wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
BASE_PORT = int(os.environ.get("MMSERVE_TEST_CLUSTER_PORT", "27379")) + 300  # not the other cluster test's ports
STAGE_TIMEOUT_S = 20.0
CLIENTS = {"text": 4, "image": 2}


@pytest.fixture(scope="module")
def lost_cluster(tiny_artifacts_dir):
    import ray
    from ray import serve

    directory = Path(tempfile.mkdtemp(prefix="mmsl-", dir="/tmp"))
    saved_env = dict(os.environ)
    try:
        info = local_cluster.start(directory, nodes=local_cluster.default_nodes(gpu_cpus=2, cpu_cpus=4),
                                   base_port=BASE_PORT)
    except BaseException:
        _print_logs(directory)
        shutil.rmtree(directory, ignore_errors=True)
        raise
    try:
        try:
            local_cluster.use_token_auth(info)
            ray.init(address=info.address, log_to_driver=False, logging_level="ERROR")
            config = local_serve_config(BASE_PORT + 100, str(tiny_artifacts_dir), SCALE)
            config["applications"][0]["args"]["ingress"]["stage_timeout_s"] = STAGE_TIMEOUT_S
            local_cluster.deploy(info, directory, config)
            url = f"http://127.0.0.1:{BASE_PORT + 100}"
            wait_ready(url, 240, give_up=_deploy_failed)
        except BaseException:
            _print_logs(directory)
            raise
        yield directory, url
    finally:
        try:
            if ray.is_initialized():
                serve.shutdown()
                ray.shutdown()
        finally:
            local_cluster.stop(directory)
            shutil.rmtree(directory, ignore_errors=True)
            os.environ.clear()
            os.environ.update(saved_env)


async def _client(url: str, kind: str, seed: int, stop: asyncio.Event, log: list) -> None:
    rng = np.random.default_rng(seed)
    body = {"text": text_body, "image": image_body}[kind]
    async with httpx.AsyncClient(timeout=STAGE_TIMEOUT_S * 3) as client:
        while not stop.is_set():
            began = time.monotonic()
            r = await client.post(f"{url}/v1/chat/completions", json=body(rng))
            code = r.json().get("error", {}).get("code") if r.status_code != 200 else None
            log.append((kind, began, time.monotonic() - began, r.status_code, code))
            if r.status_code != 200:
                await asyncio.sleep(0.2)  # a fast 503 must not turn the client into a busy loop


async def _until(predicate, timeout_s: float, what: str) -> float:
    began = time.monotonic()
    while not await asyncio.to_thread(predicate):
        if time.monotonic() - began > timeout_s:
            raise AssertionError(f"{what} not seen within {timeout_s}s")
        await asyncio.sleep(0.5)
    return time.monotonic()


async def _scenario(directory: Path, url: str) -> dict:
    stop, log = asyncio.Event(), []
    tasks = [asyncio.create_task(_client(url, kind, 100 * i + n, stop, log))
             for i, (kind, n_clients) in enumerate(CLIENTS.items()) for n in range(n_clients)]
    t = {}
    await asyncio.sleep(5)  # steady mixed load
    t["kill"] = time.monotonic()
    await asyncio.to_thread(local_cluster.kill_node, directory, "gpu")

    ready_latency = []

    def ready_names_vision() -> bool:
        began = time.monotonic()
        r = httpx.get(f"{url}/ready", timeout=30)
        ready_latency.append(time.monotonic() - began)
        return r.status_code == 503 and "VisionEncoder" in r.json()["waiting_for"]
    t["ready_says_so"] = await _until(ready_names_vision, 120, "/ready naming VisionEncoder")
    t["first_503"] = await _until(lambda: any(e[0] == "image" and e[4] == "vision_unavailable" for e in log), 60,
                                  "an image request answered 503 vision_unavailable")
    await asyncio.sleep(10)  # the node stays lost for a while under load
    t["restart"] = time.monotonic()
    await asyncio.to_thread(local_cluster.restart_node, directory, "gpu")
    t["rejoined"] = time.monotonic()
    t["recovered"] = await _until(lambda: any(e[0] == "image" and e[3] == 200 and e[1] > t["rejoined"]
                                              for e in log), 240, "an image request succeeding again")
    await asyncio.sleep(5)
    stop.set()
    await asyncio.gather(*tasks)
    t["ready_again"] = await _until(lambda: httpx.get(f"{url}/ready", timeout=10).status_code == 200, 60,
                                    "/ready turning 200 again")
    return {"t": t, "log": log, "ready_latency": ready_latency}


def test_losing_the_gpu_node_fails_images_fast_keeps_text_and_recovers(lost_cluster):
    directory, url = lost_cluster
    out = asyncio.run(_scenario(directory, url))
    t, log = out["t"], out["log"]
    text = [e for e in log if e[0] == "text"]
    images = [e for e in log if e[0] == "image"]
    lost = [e for e in images if t["kill"] <= e[1] and e[1] + e[2] <= t["recovered"]]
    print(f"\nrequests: text {len(text)}, image {len(images)} ({len(lost)} while the node was lost)")
    print(f"after the kill: /ready said so in {t['ready_says_so'] - t['kill']:.1f}s, first 503 "
          f"vision_unavailable in {t['first_503'] - t['kill']:.1f}s")
    print(f"after the restart: node rejoined in {t['rejoined'] - t['restart']:.1f}s, image requests succeed "
          f"again {t['recovered'] - t['restart']:.1f}s after the restart")
    statuses = sorted({(e[3], e[4]) for e in lost}, key=str)
    print(f"image outcomes while lost: {statuses}; slowest {max(e[2] for e in lost):.1f}s")
    print(f"/ready answered in at most {max(out['ready_latency']):.1f}s while the node was lost")
    assert max(out["ready_latency"]) < 8.0, "a readiness probe must answer quickly"
    assert text and all(e[3] == 200 for e in text), [e for e in text if e[3] != 200][:5]
    assert all(e[2] < STAGE_TIMEOUT_S + 5 for e in images), "an image request hung past stage_timeout_s"
    failed = [e for e in lost if e[3] != 200]
    assert failed and all(e[3] == 503 for e in failed), statuses
    settled = [e for e in failed if e[1] > t["first_503"]]  # once the loss is known, every refusal says why
    assert settled and all(e[4] == "vision_unavailable" for e in settled), statuses
    assert all(e[2] < 2.0 for e in settled), "a 503 after the loss was known was not fast"
    assert [e for e in images if e[1] > t["recovered"] and e[3] == 200]
