"""Fixtures of the vision stage's tests: the runtime's vision-shaped graph, and a stand-in replica context."""

from types import SimpleNamespace

import pytest

from tests.mmcore.runtime.conftest import vision_artifacts  # noqa: F401 -- a fixture, found by name


@pytest.fixture(autouse=True)
def replica_context(monkeypatch):
    """serve.batch reads the replica's deployment config (to warn when batches cannot fill): stand in for it
    outside Ray. Every test here builds a VisionEncoder directly, none in a replica."""
    from ray import serve

    ctx = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=32), app_name="a",
                          deployment="VisionEncoder", replica_tag="r", servable_object=None)
    monkeypatch.setattr(serve, "get_replica_context", lambda: ctx)
