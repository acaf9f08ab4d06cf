"""`python -m serve_app` stops within 10 s on Ctrl-C (SIGINT to its process group, as a terminal sends it) and on
SIGTERM: the in-flight stream ends cleanly, no Ray process of its session is left, and no stale
/tmp/ray/ray_current_cluster points at the dead cluster. Runs the real command on the tiny preset's artifacts."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.e2e.conftest import free_port, wait_ready
from tests.e2e.sse_client import stream_chat

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
STOP_WITHIN_S = 10.0


def write_config(tmp_path: Path, artifacts: Path, port: int) -> Path:
    config = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    config["http_options"].update(host="127.0.0.1", port=port)
    app = config["applications"][0]
    app["args"]["model"] = {"artifacts_dir": str(artifacts)}
    app["args"]["decoder"].update(slots=4, max_queue=8)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def gcs_port(tree: list[psutil.Process]) -> str:
    for p in tree:
        try:
            m = re.search(r"--gcs_server_port=(\d+)", " ".join(p.cmdline()))
        except psutil.Error:
            continue
        if m:
            return m.group(1)
    raise AssertionError("no gcs_server among the service's processes")


LEFTOVER_GRACE_S = 5.0  # a process still running this long after the service exited was left behind


def alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {p.name()}: {' '.join(p.cmdline())[:200]}")
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.parametrize("how", ["SIGINT to the group", "SIGTERM"])
def test_signal_stops_the_service_cleanly(tmp_path, tiny_artifacts_dir, how):
    port = free_port()
    config = write_config(tmp_path, tiny_artifacts_dir, port)
    env = {k: v for k, v in os.environ.items() if k not in ("MMSERVE_API_KEYS", "RAY_ADDRESS")}  # `served` sets keys
    proc = subprocess.Popen([sys.executable, "-m", "serve_app", "--config", str(config), "--ready-timeout-s", "240"],
                            cwd=ROOT, start_new_session=True, env=env,  # its own group, as a terminal's job
                            stdout=open(tmp_path / "out.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def exited() -> None:
            if proc.poll() is not None:
                raise AssertionError(f"exited early: {(tmp_path / 'out.log').read_text()[-3000:]}")
        wait_ready(url, timeout_s=240, give_up=exited)
        tree = psutil.Process(proc.pid).children(recursive=True)
        gcs = gcs_port(tree)
        result = {}
        body = {"model": "mmserve-tiny", "max_tokens": 60, "ignore_eos": True, "temperature": 0,
                "messages": [{"role": "user", "content": "count"}]}
        streamer = threading.Thread(target=lambda: result.update(out=stream_chat(url, {}, body, timeout=30)))
        streamer.start()
        time.sleep(0.3)  # the stream is under way
        began = time.monotonic()
        if how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        took = time.monotonic() - began
        streamer.join(timeout=30)
        print(f"{how}: exited {proc.returncode} in {took:.1f}s;", (tmp_path / "out.log").read_text().splitlines()[-1])
        assert took < STOP_WITHIN_S, (took, (tmp_path / "out.log").read_text()[-3000:])
        status, events = result["out"]
        assert status == 200 and events[-1] == "[DONE]", events[-3:]
        assert not [e for e in events if isinstance(e, dict) and "error" in e], events
        # Orphans of ray.shutdown (the dashboard's multiprocessing forkserver) exit on their own once their parent's
        # socket closes, which on a loaded machine can take a few seconds after the service itself has exited.
        psutil.wait_procs(tree, timeout=LEFTOVER_GRACE_S)
        assert alive(tree) == [], "Ray processes left behind"
        current = Path("/tmp/ray/ray_current_cluster")
        assert not (current.exists() and f":{gcs}" in current.read_text()), "stale ray_current_cluster"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
