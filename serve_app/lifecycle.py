"""Ray and Serve in this process, started from a Serve config file and stopped in order on SIGINT or SIGTERM.

Why not `serve run` in a subprocess: a terminal's Ctrl-C goes to the whole foreground process group, and the Ray
processes `serve run` starts (gcs_server, raylet, dashboard, agents) are in that group. They get the SIGINT at the
same moment as `serve run`, so the GCS and raylet are going away while `serve.shutdown()` still talks to them;
it then waits out Ray's reconnection timeouts and leaves processes and /tmp/ray/ray_current_cluster behind
(docs/failures.md has the measured stop times).

Here:
    SIGINT ignored -> ray.init (its processes inherit "ignore SIGINT": an ignored disposition survives exec)
    -> our handlers for SIGINT/SIGTERM set a stop flag -> serve_start + deploy_apps, as `serve run CONFIG` does,
    so every field of the config file (http_options, proxy_location, deployments overrides) is honored
    -> ... stop flag -> serve.shutdown() (replicas drain their in-flight requests) -> ray.shutdown()
Ray stops its own processes with SIGTERM/SIGKILL, which stay untouched.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import yaml

log = logging.getLogger("mmserve")


class Stopper:
    """A flag set by SIGINT/SIGTERM; the main thread waits on it instead of catching KeyboardInterrupt."""

    def __init__(self):
        self.event = threading.Event()
        self.signal: int | None = None

    def install(self) -> Stopper:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.event.is_set():  # a second Ctrl-C: the operator insists
            raise KeyboardInterrupt
        self.signal = signum
        self.event.set()
        print(f"\nmmserve: {signal.Signals(signum).name}: stopping (draining in-flight requests)", flush=True)

    def wait(self, timeout_s: float | None = None) -> bool:
        return self.event.wait(timeout_s)


def load_config(path: str | Path):
    """The config file validated with Ray's own schema: a bad field fails here, named by pydantic."""
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(yaml.safe_load(Path(path).read_text()))


def start(config, stopper: Stopper) -> None:
    """ray.init + serve_start + deploy_apps, with SIGINT ignored while Ray's processes are spawned; the stopper's
    handlers go in after ray.init, which installs a SIGTERM handler of its own in the driver."""
    import ray
    from ray.serve._private import api as serve_api
    from ray.serve._private.constants import SERVE_NAMESPACE
    from ray.serve.config import gRPCOptions

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ray.init(address="local", namespace=SERVE_NAMESPACE)
    finally:
        stopper.install()
    client = serve_api.serve_start(http_options=config.http_options.model_dump(),
                                   proxy_location=config.proxy_location,
                                   grpc_options=gRPCOptions(**config.grpc_options.model_dump()),
                                   controller_options=config.controller_options)
    client.deploy_apps(config, _blocking=False)


def stop() -> str:
    """serve.shutdown() (replicas drain) then ray.shutdown(); -> how long each took, for the operator."""
    import ray
    from ray import serve

    began = time.monotonic()
    try:
        serve.shutdown()
    finally:
        drained = time.monotonic()
        ray.shutdown()
    done = time.monotonic()
    return f"serve.shutdown {drained - began:.1f}s + ray.shutdown {done - drained:.1f}s"
