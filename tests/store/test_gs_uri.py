"""gs:// URIs: Google Cloud Storage through its S3-compatible XML API (HMAC keys in the AWS key variables), with the
same client as s3://. No GCS runs offline, so the wire path is exercised against the session's SeaweedFS through
the explicit endpoint override; which endpoint a gs:// URI goes to without one is checked on the client itself."""

from __future__ import annotations

import pytest

from serve_app.artifacts import ModelSource
from mmcore.store import StoreError, artifact_key, fetch_artifacts, parse_uri, push_artifacts
from mmcore.store.backends import S3Backend
from mmcore.store.uri import GCS_ENDPOINT


def test_gs_uri_pushes_and_fetches_through_the_s3_api(aws_env, tiny_artifacts_dir, tmp_path):
    uri = f"gs://{aws_env.bucket}/gs-roundtrip/tiny"
    assert push_artifacts(tiny_artifacts_dir, uri, endpoint_url=aws_env.endpoint) == "pushed"
    got = fetch_artifacts(uri, tmp_path / "cache", endpoint_url=aws_env.endpoint)
    assert got.name == artifact_key(tiny_artifacts_dir)
    assert {p.name: p.read_bytes() for p in got.iterdir()} == {
        p.name: p.read_bytes() for p in tiny_artifacts_dir.iterdir() if p.is_file()}


def test_gs_errors_name_the_gs_uri(aws_env, tmp_path):
    with pytest.raises(StoreError, match=rf"^gs://{aws_env.bucket}/gs-missing: no manifest\.json there"):
        fetch_artifacts(f"gs://{aws_env.bucket}/gs-missing", tmp_path / "cache", endpoint_url=aws_env.endpoint)
    with pytest.raises(StoreError, match=r"^gs://no-such-bucket/x/manifest\.json: no bucket 'no-such-bucket'"):
        fetch_artifacts("gs://no-such-bucket/x", tmp_path / "cache", endpoint_url=aws_env.endpoint)


def test_gs_goes_to_gcs_not_to_the_s3_endpoint_of_the_environment(aws_env):
    """AWS_ENDPOINT_URL names the s3:// store; a gs:// URI sent there would read that store's same-named bucket."""
    gs = S3Backend(parse_uri("gs://bucket/p"))
    assert gs._client.meta.endpoint_url == GCS_ENDPOINT
    assert gs._client.meta.config.s3["addressing_style"] == "path"
    assert S3Backend(parse_uri("s3://bucket/p"))._client.meta.endpoint_url == aws_env.endpoint


def test_gs_region_defaults_to_auto(aws_env, monkeypatch):
    monkeypatch.delenv("AWS_REGION")
    assert S3Backend(parse_uri("gs://bucket/p"))._client.meta.region_name == "auto"


def test_model_source_accepts_gs():
    assert ModelSource(artifacts_uri="gs://bucket/demo/0.1.0").artifacts_uri == "gs://bucket/demo/0.1.0"
