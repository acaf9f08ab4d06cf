"""Fixtures shared across test directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _artifacts(preset: str, env: str, tmp_path_factory) -> Path:
    prebuilt = os.environ.get(env)  # reuse a build across runs while iterating
    if prebuilt:
        return Path(prebuilt)
    from graphs.build import ensure_artifacts

    return Path(ensure_artifacts(preset, tmp_path_factory.mktemp(f"{preset}_artifacts")))


@pytest.fixture(scope="session")
def tiny_artifacts_dir(tmp_path_factory) -> Path:
    """The tiny preset's artifacts (seeded weights), built once per test session; MMSERVE_TINY_ARTIFACTS reuses one."""
    return _artifacts("tiny", "MMSERVE_TINY_ARTIFACTS", tmp_path_factory)


@pytest.fixture(scope="session")
def demo_artifacts(tmp_path_factory) -> Path:
    """The demo captioner's artifacts, built once per test session from the shipped weights and tokenizer."""
    return _artifacts("demo", "MMSERVE_DEMO_ARTIFACTS", tmp_path_factory)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS) on loopback, started on first use, killed at session end."""
    from tests.object_store import running_s3_server

    with running_s3_server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server
