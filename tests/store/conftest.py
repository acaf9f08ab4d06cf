"""The store tests' environment: this process pointed at the session's SeaweedFS (the `s3_server` fixture in
tests/conftest.py), a fresh prefix per test."""

from __future__ import annotations

import os
import time

import pytest

from tests.object_store import S3Server


@pytest.fixture
def aws_env(s3_server, monkeypatch, tmp_path) -> S3Server:
    """This process's environment pointed at the test server, and at nothing else (no profile, no IMDS)."""
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return s3_server


@pytest.fixture
def s3_uri(aws_env, request) -> str:
    """A fresh prefix per test in the session's bucket."""
    return f"s3://{aws_env.bucket}/{request.node.name.replace('[', '-').rstrip(']')}/{time.monotonic_ns()}"
