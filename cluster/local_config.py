"""The GPU cluster's Serve config, scaled down to the local heterogeneous cluster on one small machine.

What stays: the import path, the provider list, every deployment's placement resources (gpu_node / cpu_node, GPU
for vision) and the rule that sizes autoscaling targets from each stage's batching. What changes: CPU and GPU
fractions small enough for a laptop, short autoscaling delays so scaling shows within seconds, a loopback port, a
proxy on the head only (the local nodes share one IP, so per-node proxies would fight over the port), and the
model's artifact directory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import yaml

GPU_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "gpu-cluster.yaml"


@dataclass(frozen=True)
class LocalScale:
    replica_cpus: float = 0.1  # every replica: they share 2 cores, one ORT thread each
    vision_gpus: float = 0.25  # four vision replicas fit on the one advertised GPU
    max_replicas: int = 3
    vision_batch: int = 2  # vision target_ongoing_requests follows it
    batch_wait_timeout_s: float = 0.005
    decoder_slots: int = 4  # decoder target_ongoing_requests follows it
    decoder_queue: int = 16
    upscale_delay_s: float = 1.0
    downscale_delay_s: float = 6.0
    look_back_period_s: float = 2.0
    metrics_interval_s: float = 0.5


def _args(args: dict, artifacts_dir: str | None, scale: LocalScale) -> dict:
    args = copy.deepcopy(args)
    model = {"artifacts_dir": artifacts_dir} if artifacts_dir else {"preset": "demo"}
    args["model"] = {**model, "served_name": "mmserve-local"}
    args["vision"].update(max_batch_size=scale.vision_batch, batch_profile_max=scale.vision_batch,
                          batch_wait_timeout_s=scale.batch_wait_timeout_s, threads=1)
    args["decoder"].update(slots=scale.decoder_slots, max_queue=scale.decoder_queue, threads=1)
    return args


def _targets(args: dict) -> dict[str, int]:
    """target_ongoing_requests per stage, by the GPU config's rule: vision = batch size, decoder = slots."""
    return {"VisionEncoder": args["vision"]["max_batch_size"], "Decoder": args["decoder"]["slots"]}


def _deployment(d: dict, args: dict, scale: LocalScale) -> dict:
    d = copy.deepcopy(d)
    opts = d["ray_actor_options"]
    opts["num_cpus"] = scale.replica_cpus
    if opts.get("num_gpus"):
        opts["num_gpus"] = scale.vision_gpus
    auto = d["autoscaling_config"]
    auto.update(max_replicas=min(auto["max_replicas"], scale.max_replicas), upscale_delay_s=scale.upscale_delay_s,
                downscale_delay_s=scale.downscale_delay_s, look_back_period_s=scale.look_back_period_s,
                metrics_interval_s=scale.metrics_interval_s)
    target = _targets(args).get(d["name"])
    if target is not None:
        auto["target_ongoing_requests"] = target
    if d["name"] == "Decoder":
        d["max_ongoing_requests"] = args["decoder"]["slots"] + args["decoder"]["max_queue"]
    if d["name"] == "VisionEncoder":
        d["max_ongoing_requests"] = 4 * args["vision"]["max_batch_size"]
    return d


def local_serve_config(http_port: int, artifacts_dir: str | None = None, scale: LocalScale = LocalScale(),
                       base: dict | None = None) -> dict:
    config = copy.deepcopy(base or yaml.safe_load(GPU_CONFIG.read_text()))
    config["proxy_location"] = "HeadOnly"
    config["http_options"].update(host="127.0.0.1", port=http_port)
    (app,) = config["applications"]
    app["args"] = _args(app["args"], artifacts_dir, scale)
    app["deployments"] = [_deployment(d, app["args"], scale) for d in app["deployments"]]
    return config
