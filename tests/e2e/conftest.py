"""One real Ray Serve instance for all of tests/e2e, serving the tiny preset over HTTP on loopback.

Package-scoped: Ray starts before the first e2e test and shuts down after the last, so test directories that run
later can start their own Ray.

Reuse: depend on the `served` fixture (base URL, API key, artifact dir, app name); `auth_headers(served)` gives the
headers a call needs. `start_app` deploys other args on the same instance under another route prefix when a test
needs a differently configured application.
"""

from __future__ import annotations

from collections.abc import Callable

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

APP_NAME = "mmserve"
CONFIG_KEY = "e2e-config-key"
ENV_KEY = "e2e-env-key"  # given through MMSERVE_API_KEYS in the environment the replicas inherit
MAX_IMAGES = 2
MAX_IMAGE_BYTES = 300_000
MAX_IMAGE_PIXELS = 4_000_000


@dataclass(frozen=True)
class Served:
    url: str  # e.g. http://127.0.0.1:PORT, routes at /v1/...
    key: str
    artifacts: Path
    app_name: str
    args: dict


def auth_headers(served: Served) -> dict[str, str]:
    return {"Authorization": f"Bearer {served.key}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def e2e_args(artifacts: Path) -> dict:
    """fp32 variants on both graphs: greedy output must match the PyTorch reference token for token."""
    return {
        "model": {"artifacts_dir": str(artifacts)},  # served as mmserve-tiny: named after the built preset
        "ingress": {"api_keys": [CONFIG_KEY], "max_images_per_request": MAX_IMAGES, "stage_timeout_s": 60},
        "preprocess": {"max_image_bytes": MAX_IMAGE_BYTES, "max_image_pixels": MAX_IMAGE_PIXELS},
        # one ORT thread each: the test modules run many replicas side by side on the 2 cores
        "vision": {"prefer_variants": ["cpu-fp32"], "max_batch_size": 4, "batch_wait_timeout_s": 0.002, "threads": 1},
        "decoder": {"prefer_variants": ["cpu-fp32"], "slots": 4, "max_queue": 8, "threads": 1},
    }


def wait_ready(url: str, timeout_s: float = 120.0, give_up: Callable[[], None] | None = None) -> None:
    """Poll /ready until 200; `give_up` may raise first (e.g. the deploy already failed: no point waiting it out)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if give_up is not None:
            give_up()
        try:
            last = httpx.get(f"{url}/ready", timeout=5)
            if last.status_code == 200:
                return
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.5)
    raise TimeoutError(f"{url}/ready did not turn ready in {timeout_s}s (last: {last})")


def replica_pids(app_name: str, deployment: str) -> dict[str, int]:
    """Live replicas of a deployment: actor name -> process id, from Ray's actor table (ray.util.state would need
    the dashboard, which the e2e cluster runs without)."""
    from ray._private import state

    prefix = f"SERVE_REPLICA::{app_name}#{deployment}#"
    return {a["Name"]: a["Pid"] for a in state.actors().values()
            if a["Name"].startswith(prefix) and a["State"] == "ALIVE"}


def start_app(args: dict, name: str, route_prefix: str) -> None:
    from ray import serve

    from serve_app import build_app

    serve.run(build_app(args), name=name, route_prefix=route_prefix)


class CheckpointApps:
    """Checkpoints served beside the package's app, one at a time (the 4 logical CPUs hold no more replicas): each
    written by the caller, built with `mmserve build --hf` and deployed from its artifacts_dir under /<name> with the
    e2e args. Lifecycle: get(...) per test (built on first use) -> close() at the module's end."""

    def __init__(self, served: Served, tmp_path_factory):
        self.served, self.tmp, self.apps = served, tmp_path_factory, {}

    def get(self, name: str, write: Callable[[Path], Path],
            variants: tuple[str, ...] = ("vision/cpu-fp32", "decoder/cpu-fp32"),
            folder: str | None = None, args: dict | None = None) -> tuple[Path, Path, str]:
        """-> (checkpoint dir, artifact dir, base URL) of app `name`; `write(dir)` writes its checkpoint in a folder
        named `folder` (default: the app's name), which names the served model: mmserve-<folder>. `args`: stage ->
        fields laid over the e2e args' (e.g. {"preprocess": {"max_tiles": 2}})."""
        from graphs.cli import main

        if name not in self.apps:
            self.close()
            ck = write(self.tmp.mktemp("ckpt") / (folder or name))
            out = self.tmp.mktemp("artifacts") / name
            assert main(["build", "--hf", str(ck), "--out", str(out), "--quiet", "--variants", *variants]) == 0
            app_args = {**self.served.args, "model": {"artifacts_dir": str(out)}}
            for stage, fields in (args or {}).items():
                app_args[stage] = {**app_args.get(stage, {}), **fields}
            start_app(app_args, name, f"/{name}")
            self.apps[name] = ck, out, f"{self.served.url}/{name}"
            wait_ready(self.apps[name][2])
        return self.apps[name]

    def close(self) -> None:
        from ray import serve

        for name in self.apps:
            serve.delete(name)
        self.apps.clear()


@pytest.fixture(scope="package")
def e2e_artifacts(tiny_artifacts_dir) -> Path:
    return tiny_artifacts_dir


@pytest.fixture(scope="package")
def served(e2e_artifacts) -> Served:
    import ray
    from ray import serve

    os.environ["MMSERVE_API_KEYS"] = ENV_KEY  # before ray.init: the raylet and every replica inherit it
    port = free_port()
    # address="local": always a fresh cluster, never one a crashed run left in /tmp/ray; 4 logical CPUs on 2
    # cores is fine because every replica asks for a fraction and ORT runs one thread without spinning.
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = e2e_args(e2e_artifacts)
        start_app(args, APP_NAME, "/")
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        yield Served(url, CONFIG_KEY, e2e_artifacts, APP_NAME, args)
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.pop("MMSERVE_API_KEYS", None)


def serve_checkpoints(served: Served, tmp_path_factory, write: Callable[[str, Path], Path]):
    """The body of a module fixture: yields (app name, spec=app name, **CheckpointApps.get's keywords) -> (checkpoint
    dir, artifact dir, base URL), each checkpoint written by write(spec, dir) on first use, every app deleted at the
    end."""
    apps = CheckpointApps(served, tmp_path_factory)
    try:
        yield lambda name, spec=None, **kw: apps.get(name, lambda d: write(spec or name, d), **kw)
    finally:
        apps.close()
