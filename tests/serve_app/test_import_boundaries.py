"""What each layer loads when imported: the ORT runtime neither Ray nor torch, validating the app's args neither Ray
nor ONNX Runtime, and serving never the build pipeline (torch and graph emitters) on a path that does not build.
(tests/test_import_contracts.py checks the static imports; this checks what Python really loads.)"""

from __future__ import annotations

import subprocess
import sys

import pytest


def loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         check=True, capture_output=True, text=True).stdout
    return set(out.split())


def roots(mods: set[str]) -> set[str]:
    return {m.split(".")[0] for m in mods}


def test_the_runtime_imports_neither_ray_nor_torch():
    mods = loaded_after("import mmcore.runtime.kv_runner, mmcore.runtime.ort_session, "
                        "mmcore.runtime.profiling, mmcore.runtime.providers, mmcore.runtime.warmup, mmcore.store")
    assert not roots(mods) & {"ray", "torch", "graphs", "serve_app"}


def test_validating_the_args_loads_neither_ray_nor_onnxruntime():
    mods = loaded_after("from serve_app.config import parse_args; "
                        "parse_args({'model': {'preset': 'tiny'}, 'vision': {'providers': ['CPUExecutionProvider']}})")
    assert not roots(mods) & {"ray", "onnxruntime", "torch", "fastapi"}


def test_the_libraries_under_the_deployments_load_no_ray():
    mods = loaded_after("import serve_app.contract, serve_app.stages.options, serve_app.imaging.pipeline, "
                        "serve_app.encoder.session, serve_app.encoder.feature_cache, serve_app.engine.loader")
    assert not roots(mods) & {"ray", "torch"}


@pytest.mark.parametrize("code", [
    "from serve_app import build_app; build_app({'model': {'preset': 'tiny', 'cache_dir': '/nonexistent'}})",
    "import serve_app.api.ingress, serve_app.stages.preprocess, serve_app.stages.vision, serve_app.stages.decoder",
])
def test_binding_and_serving_load_no_build_code(code):
    mods = loaded_after(code)
    assert "torch" not in mods and "graphs.build" not in mods
    assert not {m for m in mods if m.startswith("graphs.families.own.")} - {"graphs.families.own.config"}
