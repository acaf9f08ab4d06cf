"""Push the tiny artifact to the real S3-compatible server and serve it over HTTP on a real Ray Serve instance from
`model.artifacts_uri`: the answer is the one the same artifact gives from its build directory, and every replica
fetched it for itself (one download, the others reuse the node's cache)."""

from __future__ import annotations

import httpx
import pytest

from mmcore.store import fetch_events, push_artifacts
from tests.e2e.conftest import CONFIG_KEY, e2e_args, free_port, start_app, wait_ready

pytestmark = pytest.mark.e2e
HEADERS = {"Authorization": f"Bearer {CONFIG_KEY}"}
BODY = {"model": "mmserve-tiny", "messages": [{"role": "user", "content": "describe the picture"}],
        "max_tokens": 6, "temperature": 0}


def test_serve_from_an_s3_uri(s3_uri, aws_env, tiny_artifacts_dir, tmp_path):
    import ray
    from ray import serve

    assert push_artifacts(tiny_artifacts_dir, s3_uri) == "pushed"
    port = free_port()
    # The AWS variables are in this process's environment before ray.init: the raylet and its replicas inherit them.
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        answers = {}
        for route, model in (("/dir", {"artifacts_dir": str(tiny_artifacts_dir)}),
                             ("/bucket", {"artifacts_uri": s3_uri, "cache_dir": str(tmp_path / "node")})):
            start_app({**e2e_args(tiny_artifacts_dir), "model": model}, route.strip("/"), route)
            wait_ready(url + route, timeout_s=300)  # replicas start slowly on a loaded shared machine
            r = httpx.post(f"{url}{route}/v1/chat/completions", json=BODY, headers=HEADERS, timeout=60)
            assert r.status_code == 200, r.text
            answers[route] = r.json()["choices"][0]["message"]["content"]
        assert answers["/bucket"] == answers["/dir"] and answers["/dir"]
        # each of the four replicas resolved the URI itself, on its node; the node downloaded once
        events = sorted(e["event"] for e in fetch_events(tmp_path / "node" / "fetched"))
        assert events == ["download", "reuse", "reuse", "reuse"]
    finally:
        serve.shutdown()
        ray.shutdown()
