"""`model.artifacts_uri` in the app args: a bad scheme fails at deploy naming the field; a good one resolves to a
verified local copy from the real S3-compatible server (in the replica that calls resolve_model, on its node)."""

from __future__ import annotations

import pytest

from serve_app.artifacts import ArtifactsError, ModelSource, resolve_model
from serve_app.config import ConfigError, parse_args
from mmcore.store import fetch_events, push_artifacts


def test_unknown_scheme_fails_at_parse_naming_the_field():
    with pytest.raises(ConfigError, match=r"model\.artifacts_uri: .*hdfs://x/y: unknown scheme 'hdfs'"):
        parse_args({"model": {"artifacts_uri": "hdfs://x/y"}})


def test_artifacts_uri_resolves_into_the_cache(s3_uri, aws_env, tiny_artifacts_dir, tmp_path):
    push_artifacts(tiny_artifacts_dir, s3_uri)
    source = ModelSource(artifacts_uri=s3_uri, cache_dir=str(tmp_path))
    path = resolve_model(source)
    assert path.parent == tmp_path / "fetched" and (path / "manifest.json").is_file()
    assert [e["event"] for e in fetch_events(tmp_path / "fetched")] == ["download"]


def test_store_error_names_the_field(aws_env, tmp_path):
    source = ModelSource(artifacts_uri=f"s3://{aws_env.bucket}/nothing-here", cache_dir=str(tmp_path))
    with pytest.raises(ArtifactsError, match=r"^model\.artifacts_uri: s3://.*/nothing-here: no manifest\.json there"):
        resolve_model(source)


def test_cache_dir_expands_the_replica_nodes_environment(s3_uri, aws_env, tiny_artifacts_dir, tmp_path, monkeypatch):
    """One config, a cache per node: `$VARS` in cache_dir are read where the replica runs."""
    push_artifacts(tiny_artifacts_dir, s3_uri)
    monkeypatch.setenv("MMSERVE_TEST_NODE_CACHE", str(tmp_path / "node-a"))
    path = resolve_model(ModelSource(artifacts_uri=s3_uri, cache_dir="$MMSERVE_TEST_NODE_CACHE/mm"))
    assert path.parent == tmp_path / "node-a" / "mm" / "fetched"
