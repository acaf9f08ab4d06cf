"""The benchmark scripts are not tests (speed is never asserted here), but they must stay runnable: each one's
imports resolve and its command line parses under the Python the project supports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if "argparse" in p.read_text())


def test_every_script_is_found():
    assert {p.name for p in SCRIPTS} >= {"bench_graphs.py", "bench_engine.py", "bench_bounds.py", "bench_soak.py",
                                        "bench_vs_naive.py"}


def test_naive_server_module_imports():
    """bench_vs_naive ships this module to its replica by value: it must import on its own."""
    run = subprocess.run([sys.executable, "-c", "import naive_server; print(naive_server.NaiveServer.name)"],
                         cwd=BENCHMARKS, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "NaiveServer" in run.stdout, run.stderr[-2000:]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_answers_help(script: Path):
    run = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage:" in run.stdout


def test_soak_growth_verdict_flags_growth_over_five_percent():
    sys.path.insert(0, str(BENCHMARKS))
    import bench_soak

    steady = [(0, {"Decoder#a": 100.0}), (60, {"Decoder#a": 150.0}), (600, {"Decoder#a": 154.0})]
    growing = [(0, {"Decoder#a": 100.0}), (60, {"Decoder#a": 150.0}), (600, {"Decoder#a": 160.0})]
    assert bench_soak.growth_report(steady, warmup_s=60) and not bench_soak.growth_report(growing, warmup_s=60)
