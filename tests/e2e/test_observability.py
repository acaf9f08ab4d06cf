"""What an operator sees, on a real Ray Serve instance: stage metrics on Ray's Prometheus export with values that add
up, the request id in every stage's replica log, and the ORT profiling switch through user_config.

The application here is deployed from a Serve config (as `serve deploy` does), next to the imperative e2e app: its
own application tag keeps its series apart, and changing only a deployment's `user_config` reconfigures the
running replica instead of replacing it -- the operator's way to switch profiling on.
"""

from __future__ import annotations

import asyncio
import glob
import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from mmcore.runtime.int8_kernels import choose_encoding
from tests.e2e import prom
from tests.e2e.conftest import auth_headers, e2e_args
from tests.serve_app.image_samples import data_url, encode, gradient_rgb

pytestmark = pytest.mark.e2e
APP, PREFIX, MODEL = "obs", "/obs", "mmserve-tiny"
VISION_BATCHING = {"max_batch_size": 4, "batch_wait_timeout_s": 0.05}  # long enough for a burst to share a batch


def deploy(served, vision_config: dict | None = None, decoder_config: dict | None = None) -> None:
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    app = {"name": APP, "route_prefix": PREFIX, "import_path": "serve_app:build_app",
           "args": e2e_args(served.artifacts),
           "deployments": [{"name": "VisionEncoder", "user_config": {**VISION_BATCHING, **(vision_config or {})}},
                           {"name": "Decoder", "user_config": decoder_config or {}}]}
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate({"applications": [app]}), _blocking=True)


def stage_info(deployment: str) -> dict:
    from ray import serve

    return serve.get_deployment_handle(deployment, app_name=APP).info.remote().result(timeout_s=30)


@pytest.fixture(scope="module")
def obs(served):
    deploy(served)
    yield served
    from ray import serve

    serve.delete(APP)


def image_body(seed: int, side: int = 40) -> tuple[dict, bytes, int]:
    raw = encode(gradient_rgb(side, side + 8, seed))  # noise: every seed is a different image (no cache hits)
    body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(raw)}}, {"type": "text", "text": "what is it?"}]}]}
    return body, raw, side * (side + 8)


def text_body(text: str = "hello") -> dict:
    return {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": text}]}


async def post_all(served, bodies: list[dict], headers: dict | None = None) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=served.url + PREFIX, timeout=120) as client:
        return list(await asyncio.gather(*(
            client.post("/v1/chat/completions", json=b, headers={**auth_headers(served), **(headers or {})})
            for b in bodies)))


# ---------------------------------------------------------------- metrics


def dashboard_metrics() -> set[str]:
    text = (Path(__file__).parents[2] / "cluster" / "grafana" / "mmserve-dashboard.json").read_text()
    return set(re.findall(r"\bray_[a-z_]+[a-z]", text))


def test_stage_metrics_add_up_on_the_metrics_endpoint(obs):
    url = prom.metrics_url()
    before = prom.scrape(url)
    vision0, decoder0 = stage_info("VisionEncoder"), stage_info("Decoder")
    images = [image_body(seed) for seed in range(100, 104)]
    bad = {**text_body(), "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}
    responses = asyncio.run(post_all(obs, [b for b, _, _ in images] + [text_body("hi"), text_body("yo"), bad]))
    assert [r.status_code for r in responses] == [200] * 6 + [400]
    tokens = sum(r.json()["usage"]["completion_tokens"] for r in responses[:6])
    batches = stage_info("VisionEncoder")["batches_run"] - vision0["batches_run"]
    steps = stage_info("Decoder")["steps"] - decoder0["steps"]

    def delta(samples, name, **labels):
        return prom.total(samples, name, application=APP, **labels) - \
            prom.total(before, name, application=APP, **labels)

    def delta_batched(samples, stage):  # requests (sequences) run in batches, from the exact integer buckets
        return prom.integer_sum(samples, "ray_mmserve_batch_size", application=APP, stage=stage) - \
            prom.integer_sum(before, "ray_mmserve_batch_size", application=APP, stage=stage)

    expected = {  # (metric, labels) -> value
        ("ray_mmserve_stage_requests_total", ("ingress", "ok", "200")): 6,
        ("ray_mmserve_stage_requests_total", ("ingress", "rejected", "400")): 1,
        ("ray_mmserve_stage_requests_total", ("preprocess", "ok", "200")): 4,
        ("ray_mmserve_stage_requests_total", ("preprocess", "rejected", "400")): 1,
        ("ray_mmserve_stage_requests_total", ("vision", "ok", "200")): 4,
        ("ray_mmserve_stage_requests_total", ("decoder", "ok", "200")): 6,
    }

    def requests_counted(samples) -> bool:
        return all(delta(samples, n, stage=s, outcome=o, status=st) == v for (n, (s, o, st)), v in expected.items())

    def idle(samples) -> bool:  # every sequence retired: the slot gauge is exported, and back to 0
        gauge = [v for n, lab, v in samples
                 if n == "ray_mmserve_decoder_active_sequences" and lab.get("application") == APP]
        return gauge == [0.0]

    after = prom.wait_for(url, lambda s: requests_counted(s) and idle(s) and
                          delta(s, "ray_mmserve_decoder_generated_tokens_total") == tokens)
    assert idle(after)
    for (name, (stage, outcome, status)), want in expected.items():
        assert delta(after, name, stage=stage, outcome=outcome, status=status) == want, (stage, outcome, status)
    # batched stages: one batch-size observation per batch run, summing to the work done
    assert 1 <= batches <= 4
    assert delta(after, "ray_mmserve_batch_size_count", stage="vision") == batches
    assert delta_batched(after, "vision") == 4
    assert delta(after, "ray_mmserve_stage_compute_seconds_count", stage="vision") == batches
    assert delta(after, "ray_mmserve_stage_queue_wait_seconds_count", stage="vision") == 4
    assert delta(after, "ray_mmserve_batch_size_count", stage="decoder") == steps
    assert delta_batched(after, "decoder") == tokens  # a first token too comes from a step: the prompt's last position
    assert delta(after, "ray_mmserve_stage_compute_seconds_count", stage="preprocess") == 5
    assert delta(after, "ray_mmserve_stage_cache_lookups_total", stage="vision", result="miss") == 4
    # what clients sent, and the decoder's token series
    assert delta(after, "ray_mmserve_image_bytes_total") == sum(len(raw) for _, raw, _ in images)
    assert delta(after, "ray_mmserve_image_pixels_total") == sum(px for _, _, px in images)
    assert delta(after, "ray_mmserve_decoder_time_to_first_token_seconds_count") == 6
    assert delta(after, "ray_mmserve_decoder_inter_token_latency_seconds_count") == tokens - 6
    assert 0 < delta(after, "ray_mmserve_stage_compute_seconds_sum", stage="vision") < 30
    active_ep = [lab for n, lab, v in after if n == "ray_mmserve_active_execution_provider"
                 and lab.get("application") == APP and v == 1]
    assert sorted((lab["stage"], lab["provider"]) for lab in active_ep) == [
        ("decoder", "CPUExecutionProvider"), ("vision", "CPUExecutionProvider")]
    # the int8 weight encoding each replica chose for this CPU: a label, the stage's info and /ready agree
    ready = httpx.get(f"{obs.url}/ready", timeout=10).json()
    for lab in active_ep:
        info = stage_info({"vision": "VisionEncoder", "decoder": "Decoder"}[lab["stage"]])
        expected = choose_encoding().encoding if info["variant"] in ("cpu-int8", "cpu-int8-kv8") else None
        assert (info["int8"], lab["int8"], ready[lab["stage"]]["int8"]) == (expected, expected or "", expected)
    # every series the Grafana dashboard plots exists (autoscaling series only appear with autoscaling on, artifact
    # fetches only for an artifacts_uri: tests/cluster/test_bucket_cluster.py scrapes those per node)
    scraped = {name for name, _, _ in after}
    missing = {m for m in dashboard_metrics() if "autoscaling" not in m and "artifact_fetches" not in m} - scraped
    assert not missing, f"dashboard plots series Ray does not export: {sorted(missing)}"
    assert delta(after, "ray_mmserve_stage_queue_wait_seconds_count", stage="decoder") == 6


# ---------------------------------------------------------------- request id


def replica_logs(deployment: str) -> list[Path]:
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    return sorted(logs.glob(f"replica_{APP}_{deployment}_*.log"))


def logs_mentioning(request_id: str, deployment: str) -> list[str]:
    return [line for path in replica_logs(deployment) for line in path.read_text(errors="replace").splitlines()
            if request_id in line]


def test_request_id_is_returned_and_reaches_every_stage_log(obs):
    request_id = f"obs-{uuid.uuid4().hex}"
    body, _, _ = image_body(seed=7)
    [response] = asyncio.run(post_all(obs, [{**body, "stream": True}], {"X-Request-Id": request_id}))
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id
    stages = ("Ingress", "Preprocess", "VisionEncoder", "Decoder")
    deadline = time.monotonic() + 30  # replica log handlers flush asynchronously
    while time.monotonic() < deadline and not all(logs_mentioning(request_id, s) for s in stages):
        time.sleep(0.5)
    for stage in stages:
        assert logs_mentioning(request_id, stage), f"{request_id} not in the {stage} replica log"
    # without a client id, one is generated and returned
    [other] = asyncio.run(post_all(obs, [text_body()]))
    assert other.status_code == 200 and len(other.headers["x-request-id"]) >= 16


# ---------------------------------------------------------------- profiling


def wait_until(check, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.5)


def model_runs(trace: str) -> int:
    return sum(1 for e in json.loads(Path(trace).read_text()) if e.get("name") == "model_run")


def test_profiling_switch_writes_a_trace_for_n_calls_then_stops(obs, tmp_path):
    on = {"calls": 2, "dir": str(tmp_path), "label": "on"}
    replica_before = replica_logs("VisionEncoder")
    deploy(obs, vision_config={"ort_profile": on}, decoder_config={"ort_profile": {**on, "calls": 3}})
    wait_until(lambda: stage_info("Decoder")["options"]["ort_profile"]["calls"] == 3)
    wait_until(lambda: stage_info("VisionEncoder")["ort_profile"]["calls"] == 2)
    assert replica_logs("VisionEncoder") == replica_before  # reconfigured in place, not a new replica
    for seed in (200, 201, 202):  # one at a time: one vision batch each
        [r] = asyncio.run(post_all(obs, [image_body(seed)[0]]))
        assert r.status_code == 200
    vision = glob.glob(str(tmp_path / "vision-*-on_*.json"))
    decoder = glob.glob(str(tmp_path / "decoder-*-on_*.json"))
    assert len(vision) == 1 and model_runs(vision[0]) == 2
    assert len(decoder) == 1 and model_runs(decoder[0]) == 3
    for seed in (203, 204):  # off after N calls: nothing more is written
        asyncio.run(post_all(obs, [image_body(seed)[0]]))
    assert sorted(glob.glob(str(tmp_path / "*.json"))) == sorted(vision + decoder)
    assert model_runs(vision[0]) == 2

    summary = subprocess.run([sys.executable, "-m", "serve_app.observability.profile_summary", vision[0], "--json"],
                             capture_output=True, text=True, check=True)
    parsed = json.loads(summary.stdout)
    assert parsed["model_runs"] == 2 and parsed["kernel_us"] > 0
    assert {op["op_type"] for op in parsed["ops"]} >= {"MatMul"}


def test_profiling_switched_off_early_keeps_what_it_recorded(obs, tmp_path):
    deploy(obs, vision_config={"ort_profile": {"calls": 50, "dir": str(tmp_path), "label": "cut"}})
    wait_until(lambda: stage_info("VisionEncoder")["ort_profile"]["calls"] == 50)
    [r] = asyncio.run(post_all(obs, [image_body(300)[0]]))
    assert r.status_code == 200
    [trace] = glob.glob(str(tmp_path / "*.json"))
    assert Path(trace).stat().st_size == 0  # still on: ORT opens the file at once and fills it when profiling ends
    deploy(obs, vision_config={"ort_profile": {"calls": 0, "dir": str(tmp_path), "label": "cut"}})
    wait_until(lambda: Path(trace).stat().st_size > 0)
    assert "vision-" in trace and "-cut_" in trace
    assert model_runs(trace) == 1
    asyncio.run(post_all(obs, [image_body(301)[0]]))
    assert glob.glob(str(tmp_path / "*.json")) == [trace]
