"""Serving from one S3 URI on the local heterogeneous cluster: a head, a node advertising a GPU it does not have and
a CPU-only node, each a `ray start` with its OWN cache directory (`cache_dir: $MMSERVE_CACHE_DIR`, set per node)
and the store's standard AWS variables; the store is the session's SeaweedFS on loopback. Deployed with
`serve deploy` against the dashboard, as an operator does.

Checked: vision replicas on the GPU node, the other stages on the CPU node; a chat completion with an image over
HTTP; each node downloaded the artifact once, counted by `mmserve_artifact_fetches_total` on that node's own
Prometheus endpoint (and by its cache's fetch.log), the other replicas on the node `cached`, the head nothing; an
object overwritten in the bucket fails a new deployment's replica with a message naming the file, in `serve status`,
while the running application keeps serving; a `serve deploy` of the live application onto such a URI fails every
stage's rollout naming the file, and Serve keeps the previous version serving every request meanwhile.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
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

from mmcore.store import StoreError, artifact_key, fetch_artifacts, fetch_events, push_artifacts  # noqa: E402
from tests.e2e.conftest import wait_ready  # noqa: E402
from tests.object_store import variant_of  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

APP = "mmserve"
MODEL = "mmserve-bucket"
BASE_PORT = int(os.environ.get("MMSERVE_TEST_CLUSTER_PORT", "27379")) + 600  # clear of the other cluster tests
REPLICAS = {"VisionEncoder": 2, "Decoder": 1, "Preprocess": 1, "Ingress": 1}  # fixed: the counts below follow it
FETCHES = re.compile(r'^ray_mmserve_artifact_fetches_total\{([^}]*)\} ([0-9.e+]+)$', re.M)


@contextmanager
def environment(values: dict[str, str]):
    """This process's environment with `values` set, restored after (push_artifacts reads the AWS variables)."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class BucketCluster:
    def __init__(self, info, url: str, uri: str, caches: dict[str, Path], s3_server, artifacts: Path):
        self.info, self.url, self.uri, self.caches, self.s3, self.artifacts = (info, url, uri, caches, s3_server,
                                                                               artifacts)
        self.node_role = {}
        for node in local_cluster.alive_nodes(info):
            res = node["resources"]
            self.node_role[node["node_id"]] = "gpu" if "gpu_node" in res else "cpu" if "cpu_node" in res else "head"

    def replica_nodes(self) -> dict[str, list[str]]:
        """Deployment name -> the node role of each live replica of the app, from the actors' node ids."""
        from ray.util.state import list_actors

        placed: dict[str, list[str]] = {}
        for actor in list_actors(address=self.info.dashboard_url, filters=[("state", "=", "ALIVE")], detail=True,
                                 limit=1000):
            if actor.class_name.startswith(f"ServeReplica:{APP}:"):
                placed.setdefault(actor.class_name.split(":")[-1], []).append(self.node_role[actor.node_id])
        return {stage: sorted(roles) for stage, roles in placed.items()}

    def fetch_counts(self, node: str) -> dict[str, float]:
        """outcome -> mmserve_artifact_fetches_total summed over the series on `node`'s own metrics endpoint."""
        text = httpx.get(f"http://127.0.0.1:{self.info.metrics_ports[node]}/metrics", timeout=10).text
        counts: Counter = Counter()
        for labels, value in FETCHES.findall(text):
            counts[re.search(r'outcome="(\w+)"', labels).group(1)] += float(value)
        return dict(counts)


def _serve_config(http_port: int, uri: str) -> dict:
    config = local_serve_config(http_port, None, LocalScale())
    (app,) = config["applications"]
    app["args"]["model"] = {"artifacts_uri": uri, "cache_dir": "$MMSERVE_CACHE_DIR", "served_name": MODEL}
    for d in app["deployments"]:
        d.pop("autoscaling_config")
        d["num_replicas"] = REPLICAS[d["name"]]
    return config


def _print_logs(directory: Path, lines: int = 40) -> None:
    for path in [*directory.glob("*.log"), *directory.glob("ray/session_latest/logs/serve/*.log")]:
        print(f"--- {path.name}:", *path.read_text(errors="replace").splitlines()[-lines:], sep="\n")


def _deploy_failed() -> None:
    from ray import serve

    app = serve.status().applications.get(APP)
    if app is not None and app.status == "DEPLOY_FAILED":
        raise RuntimeError(f"deploying {APP} failed: {app.message[-3000:]}")


@pytest.fixture(scope="module")
def cluster(s3_server, tiny_artifacts_dir):
    import ray
    from ray import serve

    if ray.is_initialized():
        pytest.fail("another test left a Ray session open in this process")
    uri = f"s3://{s3_server.bucket}/cluster/{time.monotonic_ns()}/tiny"
    with environment(s3_server.env()):
        assert push_artifacts(tiny_artifacts_dir, uri) == "pushed"
    directory = Path(tempfile.mkdtemp(prefix="mmsb-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    caches = {name: directory / f"cache-{name}" for name in ("head", "gpu", "cpu")}  # one per node, none shared
    nodes = [replace(n, env={**s3_server.env(), "MMSERVE_CACHE_DIR": str(caches[n.name])})
             for n in local_cluster.default_nodes(gpu_cpus=2, cpu_cpus=4)]
    saved_env = dict(os.environ)
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
            local_cluster.deploy(info, directory, _serve_config(http_port, uri))
            url = f"http://127.0.0.1:{http_port}"
            wait_ready(url, 300, give_up=_deploy_failed)
        except BaseException:
            _print_logs(directory)
            raise
        yield BucketCluster(info, url, uri, caches, s3_server, tiny_artifacts_dir)
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


def test_vision_on_the_gpu_node_the_rest_on_the_cpu_node(cluster):
    assert cluster.replica_nodes() == {"VisionEncoder": ["gpu", "gpu"], "Preprocess": ["cpu"], "Decoder": ["cpu"],
                                       "Ingress": ["cpu"]}


def _png_url(rng: np.random.Generator) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_a_chat_completion_with_an_image_is_answered_by_the_bucket_artifact(cluster):
    body = {"model": MODEL, "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": _png_url(np.random.default_rng(0))}},
        {"type": "text", "text": "what is it?"}]}]}
    r = httpx.post(f"{cluster.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model"] == MODEL and answer["usage"]["completion_tokens"] >= 1
    assert answer["system_fingerprint"] == f"mmserve-{artifact_key(cluster.artifacts)[:16]}"


def test_each_node_downloads_once_and_its_other_replicas_use_its_cache(cluster):
    want = {"gpu": {"downloaded": 1, "cached": REPLICAS["VisionEncoder"] - 1},
            "cpu": {"downloaded": 1, "cached": REPLICAS["Decoder"] + REPLICAS["Preprocess"] + REPLICAS["Ingress"] - 1}}
    deadline = time.monotonic() + 60  # Ray's exporter publishes a worker's metrics every few seconds
    counts = {}
    while time.monotonic() < deadline:
        counts = {node: cluster.fetch_counts(node) for node in ("head", "gpu", "cpu")}
        if counts == {"head": {}, **want}:
            break
        time.sleep(2)
    print(f"\nmmserve_artifact_fetches_total per node: {counts}")
    assert counts == {"head": {}, **want}  # the head runs no replica and the builder never fetches
    key = artifact_key(cluster.artifacts)
    for node, outcomes in want.items():  # the same count from each node's own cache, which nothing else wrote
        events = fetch_events(cluster.caches[node] / "fetched")
        assert Counter(e["event"] for e in events) == {"download": 1, "reuse": outcomes["cached"]}
        assert {e["uri"] for e in events} == {cluster.uri} and {e["key"] for e in events} == {key}
        assert (cluster.caches[node] / "fetched" / key / "manifest.json").is_file()
    assert not (cluster.caches["head"] / "fetched").exists()


def test_an_overwritten_object_fails_a_new_deployment_naming_the_file(cluster, tmp_path):
    """An object replaced under the same key after the push: a new deployment's replica downloads it, the sha256
    check fails its start with the file's name (as `serve status` shows), nothing is cached, the live app serves."""
    from ray import serve

    from serve_app.stages.vision import VisionEncoder

    uri = cluster.uri.replace("/tiny", "/tiny-b")
    with environment(cluster.s3.env()):  # another artifact (another cache key): no node has it yet
        assert push_artifacts(variant_of(cluster.artifacts, tmp_path / "b"), uri) == "pushed"
    bucket, prefix = uri.removeprefix("s3://").split("/", 1)
    cluster.s3.client().put_object(Bucket=bucket, Key=f"{prefix}/vision.cpu-int8.onnx", Body=b"not the graph")
    config = local_serve_config(0, None, LocalScale())
    vision = next(d for d in config["applications"][0]["deployments"] if d["name"] == "VisionEncoder")
    source = {"artifacts_uri": uri, "cache_dir": "$MMSERVE_CACHE_DIR"}
    app = VisionEncoder.options(num_replicas=1, autoscaling_config=None,
                                ray_actor_options=vision["ray_actor_options"]).bind(
        source, config["applications"][0]["args"]["vision"])
    before = cluster.fetch_counts("gpu")
    try:
        with pytest.raises(RuntimeError, match="Deploying application corrupt-b failed"):
            serve.run(app, name="corrupt-b", route_prefix=None)
        failed = serve.status().applications["corrupt-b"].deployments["VisionEncoder"]
        assert failed.status == "DEPLOY_FAILED" and failed.replica_states.get("RUNNING", 0) == 0
        message = (f"{uri}/vision.cpu-int8.onnx: sha256 "
                   r"[0-9a-f]{64} does not match the manifest's [0-9a-f]{64}: the object is corrupt")
        assert re.search(message, failed.message), failed.message
        serve_cli = str(Path(sys.executable).parent / "serve")
        shown = subprocess.run([serve_cli, "status", "-a", cluster.info.dashboard_url], capture_output=True,
                               env={**os.environ, **cluster.info.auth_env()}, text=True, timeout=60)
        assert re.search(message, " ".join(shown.stdout.split())), shown.stdout  # wrapped in YAML: unwrap it
        fetched = cluster.caches["gpu"] / "fetched"
        assert {p.name for p in fetched.iterdir() if p.is_dir()} == {"uris", artifact_key(cluster.artifacts)}
        assert cluster.fetch_counts("gpu") == before  # a failed fetch counts as neither outcome
        r = httpx.post(f"{cluster.url}/v1/chat/completions", timeout=60, json={
            "model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "still there?"}]})
        assert r.status_code == 200, r.text
        assert serve.status().applications[APP].status == "RUNNING"
    finally:
        serve.delete("corrupt-b")


def test_redeploying_onto_an_overwritten_object_keeps_the_old_model_serving(cluster, tmp_path):
    """`serve deploy` of the live app onto a URI with an overwritten object: every new replica fails its start
    naming the file, the deploy is reported failed, and requests meanwhile are answered by the old model (last in
    the module: it leaves the application DEPLOY_FAILED)."""
    from ray import serve

    uri = cluster.uri.replace("/tiny", "/tiny-c")
    with environment(cluster.s3.env()):
        assert push_artifacts(variant_of(cluster.artifacts, tmp_path / "c", note="c"), uri) == "pushed"
    bucket, prefix = uri.removeprefix("s3://").split("/", 1)
    cluster.s3.client().put_object(Bucket=bucket, Key=f"{prefix}/decoder.cpu-fp32.onnx", Body=b"not the graph")
    old = f"mmserve-{artifact_key(cluster.artifacts)[:16]}"
    http_port = int(cluster.url.rsplit(":", 1)[1])
    local_cluster.deploy(cluster.info, Path(cluster.info.temp_dir).parent, _serve_config(http_port, uri))
    answers: list[tuple[int, str]] = []
    deadline, deployments = time.monotonic() + 240, {}
    while time.monotonic() < deadline:  # each stage rolls on its own (none listed while the app builds): wait for all
        r = httpx.post(f"{cluster.url}/v1/chat/completions", timeout=60, json={
            "model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "which model?"}]})
        answers.append((r.status_code, r.json().get("system_fingerprint") if r.status_code == 200 else r.text))
        deployments = serve.status().applications[APP].deployments
        if set(deployments) == set(REPLICAS) and all(d.status == "DEPLOY_FAILED" for d in deployments.values()):
            break
        time.sleep(0.5)
    print(f"\nredeploy onto a corrupt object: answers {Counter(answers)}")
    assert serve.status().applications[APP].status == "DEPLOY_FAILED"
    assert {name: d.status for name, d in deployments.items()} == dict.fromkeys(REPLICAS, "DEPLOY_FAILED")
    for name, d in deployments.items():  # Serve keeps every replica of the previous version running (a start
        # already in flight when it gave up may still show STARTING: it fails the same way)
        assert d.replica_states.get("RUNNING") == REPLICAS[name], (name, d.replica_states)
        assert re.search(f"{uri}/decoder.cpu-fp32.onnx: sha256 [0-9a-f]{{64}} does not match", d.message), d.message
    assert answers and set(answers) == {(200, old)}  # no failed request, none from a half-started new model
    bad = f"{uri}/decoder.cpu-fp32.onnx: sha256 [0-9a-f]{{64}} does not match"
    for node in ("gpu", "cpu"):
        fetched = cluster.caches[node] / "fetched"
        trusted = {p.name for p in fetched.iterdir() if p.is_dir() and not p.name.startswith(".")}
        assert trusted == {"uris", artifact_key(cluster.artifacts)}  # the corrupt artifact never became a cache entry
        # A start Serve gave up on may still be downloading, or was killed mid-download and left its partial
        # directory (nothing trusts it). The next fetch of that key waits for the lock, sweeps it and fails the same way.
        with environment(cluster.s3.env()), pytest.raises(StoreError, match=bad):
            fetch_artifacts(uri, fetched)
        assert {p.name for p in fetched.iterdir() if p.is_dir()} == {"uris", artifact_key(cluster.artifacts)}
