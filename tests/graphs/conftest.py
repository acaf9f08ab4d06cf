"""Shared graph-test fixtures: one tiny build per session (building takes seconds), and private copies of
checkpoint directories a test may break."""

import shutil
from pathlib import Path

import pytest

from graphs.build import build_artifacts


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts") / "tiny"
    manifest = build_artifacts("tiny", out)
    return out, manifest


@pytest.fixture
def copy_of(tmp_path):
    """copy_of(checkpoint dir) -> a private copy a test may break."""
    def copy(src: Path) -> Path:
        dst = tmp_path / "ckpt"
        shutil.copytree(src, dst)
        return dst
    return copy
