"""One tiny build shared by the graph tests: building takes seconds, so it happens once per session."""

import pytest

from graphs.build import build_artifacts


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts") / "tiny"
    manifest = build_artifacts("tiny", out)
    return out, manifest
