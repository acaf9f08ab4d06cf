"""The same source builds byte-identical artifacts whatever the process's thread count and wherever the source
lies: two builds in separate processes, one on one torch/ORT thread and one on two (as a loaded and an idle node, or
replicas with other num_cpus, would run them), every file's sha256 compared. The LLaVA checkpoint is built from two
copies at different paths, as two nodes of a cluster would hold it.

Before the build pinned its threads, the demo checkpoint's -kv8 decoders (calibration scales in the last digits)
and the manifest (their parity figures and sha256, and the checkpoint's absolute path) differed between such builds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from graphs.families.llava import SHIPPED

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # four builds in subprocesses: ~20 s on two idle cores, minutes on loaded ones

CHILD = """
import sys
import torch
threads = int(sys.argv[3])
torch.set_num_threads(threads)  # what a replica with num_cpus=threads, or a node's idle cores, would give it
from graphs.build import build_artifacts
build_artifacts(sys.argv[1], sys.argv[2])
assert torch.get_num_threads() == threads, "the build did not restore the caller's thread count"
"""


def _build(source: str, out: Path, threads: int) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", CHILD, source, str(out), str(threads)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}


def _differences(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return sorted(name for name in a.keys() | b.keys() if a.get(name) != b.get(name))


def test_tiny_builds_the_same_bytes_on_one_and_two_threads(tmp_path):
    one, two = _build("tiny", tmp_path / "one", 1), _build("tiny", tmp_path / "two", 2)
    assert _differences(one, two) == []


def test_a_llava_checkpoint_builds_the_same_bytes_at_any_path_on_one_and_two_threads(tmp_path):
    copies = []
    for node in ("node-a", "node-b"):  # same folder name, other parents: what two nodes' disks would hold
        copies.append(tmp_path / node / SHIPPED["demo"].name)
        shutil.copytree(SHIPPED["demo"], copies[-1])
    one = _build(str(copies[0]), tmp_path / "one", 1)
    two = _build(str(copies[1]), tmp_path / "two", 2)
    assert any("kv8" in name for name in one), "the demo checkpoint builds -kv8 decoders: the case at stake"
    assert _differences(one, two) == []
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert str(tmp_path) not in json.dumps(manifest)  # nothing of where it was built
