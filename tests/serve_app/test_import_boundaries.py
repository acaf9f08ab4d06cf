"""What each layer may import: the ORT runtime neither Ray nor torch, and serving never the build pipeline (torch
and graph emitters) on a path that does not build."""

from __future__ import annotations

import subprocess
import sys

import pytest


def loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_the_runtime_imports_neither_ray_nor_torch():
    mods = loaded_after("import mmcore.runtime.kv_runner, mmcore.runtime.ort_session, "
                        "mmcore.runtime.profiling, mmcore.runtime.providers, mmcore.runtime.warmup")
    assert not {m for m in mods if m.split(".")[0] in ("ray", "torch")}


@pytest.mark.parametrize("code", [
    "from serve_app import build_app; build_app({'model': {'preset': 'tiny', 'cache_dir': '/nonexistent'}})",
    "import serve_app.api.ingress, serve_app.stages.preprocess, serve_app.stages.vision, serve_app.stages.decoder",
])
def test_binding_and_serving_load_no_build_code(code):
    mods = loaded_after(code)
    assert "torch" not in mods and "graphs.build" not in mods
    assert not {m for m in mods if m.startswith("graphs.families.own.")} - {"graphs.families.own.config"}
