"""The tiny preset's real artifacts, built once per session (seconds), and its PyTorch reference model."""

from pathlib import Path

import pytest

from graphs.families.own.config import get_preset
from mmcore.manifest import Manifest


@pytest.fixture(scope="session")
def tiny_artifacts(tiny_artifacts_dir) -> Path:
    return tiny_artifacts_dir


@pytest.fixture(scope="session")
def tiny_reference(tiny_artifacts):
    """The PyTorch model with the artifacts' weights: the greedy token reference."""
    from graphs.families.own.weights import load_model

    manifest = Manifest.read(tiny_artifacts)
    assert manifest.weights_sha256 is None, "tiny artifacts are expected to use seeded weights"
    return load_model(get_preset("tiny"))
