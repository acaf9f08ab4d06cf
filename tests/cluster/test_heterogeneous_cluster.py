"""The GPU cluster config on a real multi-node Ray cluster on this machine: a head, a node advertising a GPU (there
is none: ONNX Runtime here is the CPU build) and a CPU-only node, each a `ray start` process group. The application
is deployed the way an operator deploys it (`serve deploy` against the dashboard) and loaded over HTTP.

Checked: each stage's replicas sit on the node type the config places them on (replica actors' node ids); vision
falls back to the CPU EP with a warning in its replica log and the active-EP metric on the GPU node's Prometheus
endpoint; strict vision refuses to start; image-only traffic scales vision and not the decoder, text-only traffic
the decoder and not vision, and both scale back down when traffic stops. Last, the app redeployed with
`model.preset` and each node's own cache dir (and another thread count on each node): every node builds the model for
itself, and an image request whose vision and decoder stages run on different nodes passes the stages' model key
check, because the two builds are byte-identical.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "cluster"))  # cluster/ holds scripts, not a package

import local_cluster  # noqa: E402
from local_config import LocalScale, local_serve_config  # noqa: E402

from tests.e2e.conftest import wait_ready  # noqa: E402 -- one readiness poll for every served test

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

APP = "mmserve"
MODEL = "mmserve-local"
BASE_PORT = int(os.environ.get("MMSERVE_TEST_CLUSTER_PORT", "27379"))  # not the script's default: no clash
SCALE = LocalScale(max_replicas=3, vision_batch=2, decoder_slots=4, upscale_delay_s=1.0, downscale_delay_s=5.0)
# image: no more clients than the decoder's target, so the requests in the decoder (queued or running) can never
# exceed it, however fast a scaled-up vision stage hands them on; vision still sees 4 calls per client against a
# target of 2. With more clients the decoder's share depended on timing (it scaled once in CI with 8).
# text: enough streams that the decoder's queue stays above its slots.
LOAD_CLIENTS = {"image": SCALE.decoder_slots, "text": 12}
IMAGES_PER_REQUEST = 4  # image requests fan out to 4 vision calls and 1 one-token decode
TEXT_TOKENS = 48


class Cluster:
    def __init__(self, info: local_cluster.ClusterInfo, url: str, artifacts: Path, directory: Path, config: dict,
                 caches: dict[str, Path]):
        self.info, self.url, self.artifacts = info, url, artifacts
        self.directory, self.config, self.caches = directory, config, caches  # caches: node name -> its cache dir
        self.node_role = {}
        for node in local_cluster.alive_nodes(info):
            res = node["resources"]
            self.node_role[node["node_id"]] = "gpu" if "gpu_node" in res else "cpu" if "cpu_node" in res else "head"

    def replica_nodes(self) -> dict[str, set[str]]:
        """Deployment name -> roles of the nodes its live replicas run on, from the actors' node ids."""
        from ray.util.state import list_actors

        placed: dict[str, set[str]] = {}
        for actor in list_actors(address=self.info.dashboard_url, filters=[("state", "=", "ALIVE")], detail=True,
                                 limit=1000):
            if actor.class_name.startswith(f"ServeReplica:{APP}:"):
                stage = actor.class_name.split(":")[-1]
                placed.setdefault(stage, set()).add(self.node_role[actor.node_id])
        return placed

    def metrics(self, node: str) -> str:
        return httpx.get(f"http://127.0.0.1:{self.info.metrics_ports[node]}/metrics", timeout=10).text

    def replica_logs(self, stage: str) -> str:
        logs = Path(self.info.temp_dir) / "session_latest" / "logs" / "serve"
        return "".join(p.read_text() for p in logs.glob(f"replica_{APP}_{stage}_*.log"))


def _deploy_failed() -> None:
    from ray import serve

    app = serve.status().applications.get(APP)
    if app is not None and app.status == "DEPLOY_FAILED":
        raise RuntimeError(f"deploying {APP} failed: {app.message[-3000:]}")


def _print_logs(directory: Path, lines: int = 40) -> None:
    logs = [*directory.glob("*.log"), *directory.glob("ray/session_latest/logs/serve/*.log")]
    for path in logs:
        print(f"--- {path.name}:", *path.read_text(errors="replace").splitlines()[-lines:], sep="\n")


@pytest.fixture(scope="module")
def cluster(tiny_artifacts_dir):
    import ray
    from ray import serve

    if ray.is_initialized():
        pytest.fail("another test left a Ray session open in this process")
    artifacts = tiny_artifacts_dir
    directory = Path(tempfile.mkdtemp(prefix="mmsc-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    saved_env = dict(os.environ)
    # nodes of a real cluster share no disk and may run builds on other thread counts (a replica's num_cpus sets
    # OMP_NUM_THREADS; a loaded node's torch picks fewer): each node its own cache and its own count
    caches = {"gpu": directory / "cache-gpu", "cpu": directory / "cache-cpu"}
    threads = {"gpu": "2", "cpu": "1"}
    nodes = [replace(n, env={"MMSERVE_CACHE_DIR": str(caches[n.name]), "OMP_NUM_THREADS": threads[n.name]})
             if n.name in caches else n for n in local_cluster.default_nodes(gpu_cpus=2, cpu_cpus=4)]
    try:
        info = local_cluster.start(directory, nodes=nodes, base_port=BASE_PORT)  # stops what it started on failure
    except BaseException:
        _print_logs(directory)
        shutil.rmtree(directory, ignore_errors=True)
        raise
    try:
        try:
            local_cluster.use_token_auth(info)
            ray.init(address=info.address, log_to_driver=False, logging_level="ERROR")
            http_port = BASE_PORT + 100
            config = local_serve_config(http_port, str(artifacts), SCALE)
            local_cluster.deploy(info, directory, config)
            url = f"http://127.0.0.1:{http_port}"
            wait_ready(url, 240, give_up=_deploy_failed)
        except BaseException:
            _print_logs(directory)  # shown with the setup error: the directory is gone after teardown
            raise
        yield Cluster(info, url, artifacts, directory, config, caches)
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


# ---------------------------------------------------------------- placement and EP fallback


def test_each_stage_runs_on_its_node_type(cluster):
    assert cluster.replica_nodes() == {"VisionEncoder": {"gpu"}, "Preprocess": {"cpu"}, "Decoder": {"cpu"},
                                       "Ingress": {"cpu"}}


def test_vision_falls_back_to_cpu_ep_with_warning_and_metric(cluster):
    from ray import serve

    info = serve.get_deployment_handle("VisionEncoder", APP).info.remote().result()
    assert (info["provider"], info["variant"]) == ("CPUExecutionProvider", "cpu-int8")
    assert [f.split(" did not load")[0] for f in info["fallbacks"]] == ["vision: TensorrtExecutionProvider",
                                                                        "vision: CUDAExecutionProvider"]
    ready = httpx.get(f"{cluster.url}/ready", timeout=10).json()
    assert ready["vision"] == {key: info[key] for key in ("provider", "variant", "fallbacks", "int8")}
    assert "WARNING" in cluster.replica_logs("VisionEncoder")
    assert "vision runs on CPUExecutionProvider, not TensorrtExecutionProvider" in cluster.replica_logs(
        "VisionEncoder")
    series = re.compile(r'^ray_mmserve_active_execution_provider\{[^}]*deployment="VisionEncoder"[^}]*'
                        r'provider="CPUExecutionProvider"[^}]*\} 1\.0$', re.M)
    deadline = time.monotonic() + 60  # the gauge is re-published from the health check (every 10 s)
    while not series.search(cluster.metrics("gpu")) and time.monotonic() < deadline:
        time.sleep(2)
    assert series.search(cluster.metrics("gpu")), "active-EP gauge not exported by the GPU node"
    answer = httpx.post(f"{cluster.url}/v1/chat/completions", json=image_body(np.random.default_rng(0)),
                        timeout=60)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 1


def test_strict_vision_refuses_to_start_on_the_gpu_node(cluster):
    from ray import serve

    from serve_app.stages.vision import VisionEncoder

    config = local_serve_config(0, str(cluster.artifacts), SCALE)
    vision = next(d for d in config["applications"][0]["deployments"] if d["name"] == "VisionEncoder")
    args = {**config["applications"][0]["args"]["vision"], "strict": True}
    source = {"artifacts_dir": str(cluster.artifacts)}
    app = VisionEncoder.options(num_replicas=1, autoscaling_config=None,
                                ray_actor_options=vision["ray_actor_options"]).bind(source, args)
    try:
        with pytest.raises(RuntimeError, match="Deploying application strict-vision failed"):
            serve.run(app, name="strict-vision", route_prefix=None)
        failed = serve.status().applications["strict-vision"].deployments["VisionEncoder"]
        assert failed.status == "DEPLOY_FAILED" and failed.replica_states.get("RUNNING", 0) == 0
        assert "ProviderUnavailable" in failed.message  # the replica constructor's error, as the dashboard shows it
        assert "vision: TensorrtExecutionProvider did not load" in failed.message
        assert "strict mode: refusing to fall back" in failed.message
    finally:
        serve.delete("strict-vision")


# ---------------------------------------------------------------- per-stage autoscaling


def png_url(rng: np.random.Generator) -> str:
    """A fresh random 32x32 PNG: no two requests share an image, so the vision cache never answers."""
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_body(rng: np.random.Generator) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": png_url(rng)}} for _ in range(IMAGES_PER_REQUEST)]
    return {"model": MODEL, "max_tokens": 1,
            "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": "what is it?"}]}]}


def text_body(rng: np.random.Generator) -> dict:
    return {"model": MODEL, "max_tokens": TEXT_TOKENS, "ignore_eos": True,
            "messages": [{"role": "user", "content": "tell me a long story"}]}


def running_replicas() -> dict[str, int]:
    from ray import serve

    deployments = serve.status().applications[APP].deployments
    return {name: int(d.replica_states.get("RUNNING", 0)) for name, d in deployments.items()}


async def _client(url: str, body, seed: int, stop: asyncio.Event, codes: list[int]) -> None:
    rng = np.random.default_rng(seed)
    async with httpx.AsyncClient(timeout=60) as client:
        while not stop.is_set():
            codes.append((await client.post(f"{url}/v1/chat/completions", json=body(rng))).status_code)


async def _burst_then_idle(url: str, body, clients: int, scaled, settled, load_s: tuple[float, float],
                           idle_s: float):
    """Load until `scaled(counts)` has held for 3 s (at least load_s[0], at most load_s[1] seconds), then stop and
    wait up to idle_s for `settled(counts)`. -> timeline of (seconds, phase, counts), status codes."""
    stop, codes, timeline = asyncio.Event(), [], []
    tasks = [asyncio.create_task(_client(url, body, i, stop, codes)) for i in range(clients)]
    start, scaled_since = time.monotonic(), None
    while True:
        now = time.monotonic() - start
        counts = await asyncio.to_thread(running_replicas)
        timeline.append((round(now, 1), "load", counts))
        scaled_since = (scaled_since or now) if scaled(counts) else None
        if now >= load_s[1] or (now >= load_s[0] and scaled_since is not None and now - scaled_since >= 3):
            break
        await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*tasks)
    idle_start = time.monotonic()
    while time.monotonic() - idle_start < idle_s:
        counts = await asyncio.to_thread(running_replicas)
        timeline.append((round(time.monotonic() - start, 1), "idle", counts))
        if settled(counts):
            break
        await asyncio.sleep(0.5)
    return timeline, codes


def _print(title: str, timeline) -> None:
    print(f"\n{title}: seconds phase VisionEncoder Decoder Preprocess Ingress")
    for t, phase, c in timeline:
        print(f"  {t:6.1f} {phase:4s} {c.get('VisionEncoder')} {c.get('Decoder')} {c.get('Preprocess')} "
              f"{c.get('Ingress')}")


def _wait_at_min(timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        counts = running_replicas()
        if counts["VisionEncoder"] == 1 and counts["Decoder"] == 1:
            return
        time.sleep(1)
    raise AssertionError(f"replicas not back at min before the burst: {running_replicas()}")


@pytest.mark.parametrize("traffic,scales,stays", [("image", "VisionEncoder", "Decoder"),
                                                   ("text", "Decoder", "VisionEncoder")])
def test_a_burst_scales_its_own_stage_only_then_back_down(cluster, traffic, scales, stays):
    """Image traffic scales vision and not the decoder; text-only traffic the decoder and not vision."""
    _wait_at_min()
    body = {"image": image_body, "text": text_body}[traffic]
    timeline, codes = asyncio.run(_burst_then_idle(
        cluster.url, body, LOAD_CLIENTS[traffic], scaled=lambda c: c[scales] > 1,
        settled=lambda c: c[scales] == 1, load_s=(15, 45), idle_s=60))
    _print(f"{traffic} burst", timeline)
    assert codes and set(codes) == {200}
    load = [c for _, phase, c in timeline if phase == "load"]
    assert max(c[scales] for c in load) > 1, f"{scales} did not scale up under {traffic} traffic"
    assert all(c[stays] == 1 for _, _, c in timeline), f"{stays} scaled on {traffic} traffic"
    assert timeline[-1][1] == "idle" and timeline[-1][2][scales] == 1, f"{scales} did not scale back down"


# ---------------------------------------------------------------- every node builds the preset for itself (last:
# it redeploys the app)

PRESET_MODEL = "mmserve-preset-demo"


def _serving(url: str, model: str) -> bool:
    """The redeployed app is up: the app RUNNING (old replicas gone) and its ingress names the new model."""
    from ray import serve

    _deploy_failed()
    if serve.status().applications[APP].status != "RUNNING":
        return False
    try:
        models = httpx.get(f"{url}/v1/models", timeout=5).json()["data"]
        return [m["id"] for m in models] == [model] and httpx.get(f"{url}/ready", timeout=5).status_code == 200
    except (httpx.HTTPError, KeyError, ValueError):
        return False


def test_a_preset_each_node_builds_serves_images_across_nodes(cluster):
    """model.preset with a per-node cache_dir: the GPU node (vision) and the CPU node (ingress, preprocess, decoder)
    each build the demo checkpoint (with -kv8 decoders) on their own thread count; an image request then passes
    every stage's model key check, because both builds have the same bytes."""
    config = copy.deepcopy(cluster.config)
    app = config["applications"][0]
    app["args"]["model"] = {"preset": "demo", "cache_dir": "$MMSERVE_CACHE_DIR", "served_name": PRESET_MODEL}
    app["args"]["ingress"]["max_images_per_request"] = 1  # the demo was trained on one image per prompt
    local_cluster.deploy(cluster.info, cluster.directory, config)
    deadline = time.monotonic() + 540  # two nodes build the demo at once on a shared machine
    while not _serving(cluster.url, PRESET_MODEL):
        assert time.monotonic() < deadline, f"preset app not serving: {running_replicas()}"
        time.sleep(2)
    assert cluster.replica_nodes() == {"VisionEncoder": {"gpu"}, "Preprocess": {"cpu"}, "Decoder": {"cpu"},
                                       "Ingress": {"cpu"}}
    builds = {node: sorted(cache.glob("demo-*/manifest.json")) for node, cache in cluster.caches.items()}
    assert all(len(found) == 1 for found in builds.values()), builds  # each node built it, in its own cache
    assert builds["gpu"][0].read_bytes() == builds["cpu"][0].read_bytes()  # same manifest: same model key
    assert any("kv8" in f.name for f in builds["gpu"][0].parent.iterdir())
    body = {"model": PRESET_MODEL, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_url(
                np.random.default_rng(1))}}, {"type": "text", "text": "Describe the image."}]}]}
    answer = httpx.post(f"{cluster.url}/v1/chat/completions", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] >= 1 and answer.json()["choices"][0]["message"]["content"]
