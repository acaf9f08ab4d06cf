"""Ray and Serve in this process, started from a Serve config file and stopped in order on SIGINT or SIGTERM.

Why not `serve run` in a subprocess, as before: a terminal's Ctrl-C goes to the whole foreground process group, so
`serve run` got the SIGINT directly and then a second one forwarded by the wrapper; the second interrupts its
`serve.shutdown()` (click prints "Aborted!") and leaves Ray's processes running. SIGTERM stopped only the wrapper,
leaving `serve run` and the whole local cluster behind. Both measured; docs/failures.md has the figures.

Here:
    SIGINT ignored -> ray.init (its processes inherit "ignore SIGINT": an ignored disposition survives exec, so
    the terminal's signal reaches only this process, and gcs_server and raylet outlive the drain that needs them)
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
