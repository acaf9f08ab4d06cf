"""The cluster manifests agree with each other and with Ray: the launcher YAML against the schema shipped in the
ray package, the RayService's serveConfigV2 against the GPU Serve config, and that config's placement and
autoscaling against the stages' own batching."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "cluster"))  # cluster/ holds scripts, not a package

import local_cluster  # noqa: E402

GPU_CONFIG = ROOT / "configs" / "gpu-cluster.yaml"
LAUNCHER = ROOT / "cluster" / "ray-cluster.yaml"
RAYSERVICE = ROOT / "cluster" / "rayservice.yaml"
CPU_STAGES = ("Ingress", "Preprocess", "Decoder")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def extras(commands: list[str]) -> set[str]:
    """The mmserve extras a node's `pip install ".../src[a,b]"` commands install."""
    return {e for c in commands for group in re.findall(r"/src\[([a-z0-9,]+)\]", c) for e in group.split(",")}


def deployments() -> dict[str, dict]:
    (app,) = load(GPU_CONFIG)["applications"]
    return {d["name"]: d for d in app["deployments"]}


def test_launcher_yaml_validates_against_schema_in_ray_package():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = load(LAUNCHER)
    jsonschema.validate(config, schema)
    from ray.autoscaler._private.util import prepare_config, validate_config
    validate_config(prepare_config(config))  # what `ray up` runs: schema + Ray's own checks, defaults filled


def test_launcher_node_types_split_gpu_and_cpu_builds():
    types = load(LAUNCHER)["available_node_types"]
    assert set(types) == {"head", "gpu_worker", "cpu_worker"}
    gpu, cpu, head = types["gpu_worker"], types["cpu_worker"], types["head"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["resources"]["gpu_node"] >= 1 and "cpu_node" not in gpu["resources"]
    assert cpu["resources"]["cpu_node"] >= 1 and "GPU" not in cpu["resources"] and "gpu_node" not in cpu["resources"]
    assert not {"gpu_node", "cpu_node"} & set(head["resources"])
    gpu_extras = extras(gpu["worker_setup_commands"])
    cpu_extras, head_extras = extras(cpu["worker_setup_commands"]), extras(load(LAUNCHER)["head_setup_commands"])
    assert "gpu" in gpu_extras and "cpu" not in gpu_extras
    assert "cpu" in cpu_extras and "gpu" not in cpu_extras | head_extras
    assert "s3" in gpu_extras & cpu_extras  # serving nodes fetch artifacts from the store
    for t in (gpu, cpu):
        assert 1 <= t["min_workers"] <= t["max_workers"]


def test_rayservice_serve_config_is_the_gpu_config():
    service = load(RAYSERVICE)
    assert service["kind"] == "RayService"
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == load(GPU_CONFIG)
    check = subprocess.run([sys.executable, str(ROOT / "cluster" / "sync_rayservice.py"), "--check"])
    assert check.returncode == 0


def test_rayservice_worker_groups_advertise_placement_resources():
    groups = {g["groupName"]: g for g in load(RAYSERVICE)["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert set(groups) == {"gpu", "cpu"}
    custom = {name: json.loads(json.loads(g["rayStartParams"]["resources"])) for name, g in groups.items()}
    assert custom == {"gpu": {"gpu_node": 1}, "cpu": {"cpu_node": 1}}
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu_limits["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_gpu_config_is_a_valid_serve_config_with_valid_app_args():
    from ray.serve.schema import ServeDeploySchema

    from serve_app.config import parse_args
    from serve_app.api.ingress import Ingress
    from serve_app.stages.decoder import Decoder
    from serve_app.stages.preprocess import Preprocess
    from serve_app.stages.vision import VisionEncoder

    config = load(GPU_CONFIG)
    ServeDeploySchema.model_validate(config)
    args = parse_args(config["applications"][0]["args"])
    assert [p.name for p in args.vision.providers] == ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                      "CPUExecutionProvider"]
    assert set(deployments()) == {d.name for d in (Ingress, Preprocess, VisionEncoder, Decoder)}


def test_vision_on_gpu_nodes_only_and_cpu_stages_never_on_gpu_nodes():
    deps = deployments()
    vision = deps["VisionEncoder"]["ray_actor_options"]
    assert 0 < vision["num_gpus"] <= 1 and vision["resources"]["gpu_node"] > 0
    for name in CPU_STAGES:
        opts = deps[name]["ray_actor_options"]
        assert opts.get("num_gpus", 0) == 0 and opts["num_cpus"] > 0
        assert opts["resources"]["cpu_node"] > 0 and "gpu_node" not in opts["resources"]


def test_autoscaling_targets_follow_each_stage_batching():
    from serve_app.config import parse_args

    args = parse_args(load(GPU_CONFIG)["applications"][0]["args"])
    deps = deployments()
    vision, decoder = deps["VisionEncoder"], deps["Decoder"]
    assert vision["autoscaling_config"]["target_ongoing_requests"] == args.vision.max_batch_size
    assert vision["max_ongoing_requests"] >= 2 * args.vision.max_batch_size  # the next batch forms while one runs
    assert args.vision.batch_profile_max >= args.vision.max_batch_size
    assert decoder["autoscaling_config"]["target_ongoing_requests"] == args.decoder.slots
    assert decoder["max_ongoing_requests"] == args.decoder.slots + args.decoder.max_queue
    for d in deps.values():
        a = d["autoscaling_config"]
        assert 1 <= a["min_replicas"] < a["max_replicas"]


@pytest.mark.parametrize("resource", ["gpu_node", "cpu_node"])
def test_local_cluster_advertises_the_config_placement_resources(resource):
    nodes = local_cluster.default_nodes()
    holders = [n.name for n in nodes if resource in n.resources]
    assert holders == (["gpu"] if resource == "gpu_node" else ["cpu"])
    gpu = next(n for n in nodes if n.name == "gpu")
    assert gpu.num_gpus == 1 and next(n for n in nodes if n.head).num_cpus == 0


def test_local_cluster_commands_stay_on_own_ports_and_temp_dir(tmp_path):
    head, gpu, cpu = local_cluster.default_nodes()
    cmds = [local_cluster._command(n, i, tmp_path, 1, 30000) for i, n in enumerate((head, gpu, cpu))]
    ports = [a.split("=")[1] for c in cmds for a in c if a.startswith("--") and a.split("=")[0].endswith("port")]
    assert len(ports) == len(set(ports))  # three raylets on one host: no shared port
    assert all(f"--temp-dir={tmp_path}" in c for c in cmds)
    assert "--num-gpus=1" in cmds[1] and '--resources={"gpu_node": 1}' in cmds[1]


def ray_containers(service: dict) -> list[dict]:
    spec = service["spec"]["rayClusterConfig"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_gpu_config_serves_from_an_artifacts_uri_into_a_node_local_cache():
    from serve_app.config import parse_args
    from mmcore.store import parse_uri

    model = parse_args(load(GPU_CONFIG)["applications"][0]["args"]).model
    assert parse_uri(model.artifacts_uri).scheme == "s3" and model.artifacts_dir is None
    assert model.cache_dir == "/var/cache/mmserve"


def test_rayservice_turns_token_auth_on_and_wires_store_credentials_from_a_secret():
    service = load(RAYSERVICE)
    assert service["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "token"}
    assert service["spec"]["rayClusterConfig"]["rayVersion"] >= "2.52"  # authOptions needs Ray 2.52+
    containers = ray_containers(service)
    assert len(containers) == 3
    for c in containers:  # the standard AWS variables, from one Secret, in every Ray container
        assert {"secretRef": {"name": "mmserve-artifacts-s3"}} in c["envFrom"]
        assert not any(e["name"].startswith("AWS_") and "value" in e for e in c.get("env", []))  # no inline keys
    groups = {g["groupName"]: g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    for group in groups.values():  # the fetch cache is the node's, not the pod's: a restarted pod reuses it
        spec = group["template"]["spec"]
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == "/var/cache/mmserve"]
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert volume["hostPath"]["path"] == "/var/cache/mmserve"


def test_launcher_turns_token_auth_on_everywhere_and_keeps_the_dashboard_on_loopback():
    config = load(LAUNCHER)
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    for command in (c for c in starts if "ray start" in c):
        assert "RAY_AUTH_MODE=token ray start" in command
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # the same token on every node
    (head_start,) = [c for c in config["head_start_ray_commands"] if "--head" in c]
    assert "--dashboard-host=127.0.0.1" in head_start
    assert not any("artifacts" in remote for remote in config["file_mounts"])  # artifacts come from the store


@pytest.mark.parametrize("config", [GPU_CONFIG, ROOT / "configs" / "local.yaml"])
def test_the_ingress_keeps_two_malloc_arenas_where_a_config_replaces_its_actor_options(config):
    # a config's ray_actor_options replace the code's, runtime_env included: each shipped one repeats the env var
    (app,) = load(config)["applications"]
    ingress = next(d for d in app["deployments"] if d["name"] == "Ingress")
    from serve_app.api.ingress import ARENA_ENV

    assert ingress["ray_actor_options"]["runtime_env"]["env_vars"] == ARENA_ENV
