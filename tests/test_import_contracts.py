"""The one-way layers (docs/architecture.md), as import-linter contracts in pyproject.toml: they hold on this tree,
and each kind of arrow that runs back up breaks one. Static imports, every one, including those inside functions;
tests/serve_app/test_import_boundaries.py checks what importing actually loads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mmcore", "graphs", "serve_app")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` over the tree at `root` (its pyproject.toml, its packages first on the path)."""
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", code, "--no-cache"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_layers_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " broken" in result.stdout and "0 broken" in result.stdout


@pytest.fixture
def tree_copy(tmp_path) -> Path:
    """The three packages and pyproject.toml, to break on purpose without touching the checkout."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("assets", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


# (module file, the upward import appended to it, the contract it breaks)
UPWARD = [
    ("mmcore/manifest.py", "from serve_app import contract", "mmcore is the bottom layer"),
    ("mmcore/runtime/kv_runner.py", "import graphs.entry", "mmcore is the bottom layer"),
    ("mmcore/store/fetch.py", "import ray", "mmcore is the bottom layer"),
    ("graphs/verify.py", "from serve_app.artifacts import model_key", "graphs (the build) never imports serving"),
    ("serve_app/artifacts.py", "from graphs.build import ensure_artifacts", "only through graphs.entry"),
    ("serve_app/stages/preprocess.py", "from serve_app.api.errors import InvalidRequest", "serve_app's layers"),
    ("serve_app/observability/metrics.py", "from serve_app.api.errors import status_of", "serve_app's layers"),
    ("serve_app/api/ingress.py", "from serve_app.stages.preprocess import Preprocess", "serve_app's layers"),
    ("serve_app/config.py", "from serve_app.stages.vision import VisionEncoder", "config imports no deployment"),
    ("serve_app/contract.py", "from serve_app.engine.config import EngineConfig", "serve_app's layers"),
    ("serve_app/config.py", "import ray", "config imports no deployment"),
    ("serve_app/imaging/resize.py", "from ray import serve", "no Ray, even indirectly"),
    ("serve_app/engine/loader.py", "from serve_app.observability.metrics import StageMetrics", "no Ray, even indirectly"),
    ("serve_app/stages/options.py", "import onnxruntime", "option schemas: no ONNX Runtime"),
]


@pytest.mark.parametrize("path, line, contract", UPWARD, ids=[u[0] + ":" + u[1] for u in UPWARD])
def test_an_arrow_back_up_breaks_its_contract(tree_copy, path, line, contract):
    with open(tree_copy / path, "a") as f:
        f.write(f"\n{line}  # the deliberate upward import\n")
    result = lint_imports(tree_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    broken = [row for row in result.stdout.splitlines() if " BROKEN" in row]
    assert any(contract in row for row in broken), result.stdout  # (an arrow into mmcore also breaks graphs')
