"""The tiny preset's real artifacts, built once per session (seconds), and its PyTorch reference model."""

import os
from pathlib import Path

import pytest

from graphs.config import get_preset
from graphs.manifest import Manifest


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory) -> Path:
    prebuilt = os.environ.get("MMSERVE_TINY_ARTIFACTS")  # reuse a build across runs while iterating
    if prebuilt:
        return Path(prebuilt)
    from graphs.build import ensure_artifacts

    return Path(ensure_artifacts("tiny", tmp_path_factory.mktemp("artifacts")))


@pytest.fixture(scope="session")
def tiny_reference(tiny_artifacts):
    """The PyTorch model with the artifacts' weights: the greedy token reference."""
    from graphs.weights import load_model

    manifest = Manifest.read(tiny_artifacts)
    assert manifest.weights_sha256 is None, "tiny artifacts are expected to use seeded weights"
    return load_model(get_preset("tiny"))
