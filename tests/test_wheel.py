"""A wheel of this tree ships the Serve configs as serve_app package data, and `python -m serve_app` installed from
it finds and validates its default config outside any checkout (it used to read the checkout's configs/, absent
from a wheel). No top-level `configs` package is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", "artifacts")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the tree (pip builds in place: the checkout gets no build/ or egg-info);
    --no-build-isolation: the environment's setuptools, nothing fetched."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=NOT_SOURCE)  # symlinks kept: serve_app/configs is a link
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = (tmp / "dist").glob("mmserve-*.whl")
    return built


def test_wheel_ships_the_configs_under_serve_app(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for config in sorted(p.name for p in (ROOT / "configs").glob("*.yaml")):
        assert f"serve_app/configs/{config}" in names
        assert (ROOT / "configs" / config).read_bytes() == zipfile.ZipFile(wheel).read(f"serve_app/configs/{config}")
    assert not [n for n in names if n.startswith("configs/")], "a top-level configs package would be installed"


def test_installed_serve_app_finds_and_validates_its_default_config(wheel, tmp_path):
    site = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(site)  # what pip install puts in site-packages
    probe = ("import serve_app.__main__ as m, serve_app.lifecycle as l; "
             "print(m.__file__); print(m.DEFAULT_CONFIG); print(l.load_config(m.DEFAULT_CONFIG).applications[0].name)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={**env, "PYTHONPATH": str(site)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    module, config, app = done.stdout.split()
    assert Path(module).is_relative_to(site) and Path(config).is_relative_to(site)  # not this checkout's copy
    assert Path(config) == site / "serve_app" / "configs" / "local.yaml" and app == "mmserve"
