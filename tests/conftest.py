"""Fixtures shared across test directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_artifacts(tmp_path_factory) -> Path:
    """The demo captioner's artifacts, built once per test session from the shipped weights and tokenizer."""
    prebuilt = os.environ.get("MMSERVE_DEMO_ARTIFACTS")  # reuse a build across runs while iterating
    if prebuilt:
        return Path(prebuilt)
    from graphs.build import ensure_artifacts

    return Path(ensure_artifacts("demo", tmp_path_factory.mktemp("demo_artifacts")))
