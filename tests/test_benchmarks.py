"""The benchmark scripts still measure: each one that runs without Ray and within seconds is run for real, briefly,
on the tiny preset's artifacts (or its own small graphs), and the figures it prints must be there and be sane.
Speed itself is never asserted: these are figures for a quiet machine, not a test's verdict.

Not run here (each takes minutes or starts Ray, which the e2e tests already exercise through the same stages):
bench_soak, bench_vs_naive and bench_engine's --serve/--http part (bench_http) start a Ray Serve app; bench_step_loop
needs the `reference` preset's 228-position contexts; bench_llava builds a 0.5B-shaped checkpoint; bench_graphs
builds and times every variant of a preset.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
NUMBER = r"(\d+(?:\.\d+)?)"


def run(script: str, *args: str, timeout: float = 180) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def figures(pattern: str, text: str) -> list[tuple[str, ...]]:
    found = re.findall(pattern, text, re.M)
    assert found, f"no line matches {pattern!r} in:\n{text[-3000:]}"
    return found


def test_bench_kv_cache_prints_step_times_and_cache_sizes(tiny_artifacts_dir):
    out = run("bench_kv_cache.py", "--artifacts", str(tiny_artifacts_dir), "--shapes", "2x16", "--rounds", "1",
              "--calls", "2", "--max-context", "64", "--prefill", "8")
    for variant in ("cpu-int8", "cpu-int8-kv8"):
        (cpu, wall), = figures(rf"^decode b2 @~16 \(ragged\) {variant} +cpu +{NUMBER} ms .* wall +{NUMBER} ms$", out)
        assert 0 < float(cpu) < 1000 and 0 < float(wall) < 1000
        figures(rf"^prefill 8 positions {variant} +cpu +{NUMBER} ms", out)
    slots = {v: float(n) for v, _, n in figures(rf"^KV cache (\S+) +{NUMBER} MiB per slot at max_context 64: "
                                                rf"{NUMBER} slots per GiB$", out)}
    assert slots["cpu-int8-kv8"] == 4 * slots["cpu-int8"]  # an int8 cache holds 4x the float32 one's positions


def test_bench_prefill_prints_ttft_throughput_and_an_op_profile(tiny_artifacts_dir):
    out = run("bench_prefill.py", "--artifacts", str(tiny_artifacts_dir), "--variants", "cpu-fp32", "cpu-int8-kv8",
              "--rounds", "1", "--seconds", "0.05", "--long-positions", "60", "--burst", "4", "--op-profile")
    figures(rf"^GEMM peaks this run: fp32 {NUMBER} GFLOP/s, int8 {NUMBER} GOP/s$", out)
    for variant in ("cpu-fp32", "cpu-int8-kv8"):
        (short, _long), = figures(rf"^{variant} +short TTFT p50 +{NUMBER} ms .* long TTFT p50 +{NUMBER} ms", out)
        assert 0 < float(short) < 10000
        figures(rf"^  {variant} +median +{NUMBER} ms .* GOP/s = +{NUMBER}% int8 peak", out)
        figures(rf"^    {variant}: GroupQueryAttention {NUMBER} ms|^    {variant}: .*GroupQueryAttention", out)


def test_bench_profile_prints_step_rates_and_an_op_table(tiny_artifacts_dir):
    out = run("bench_profile.py", "--artifacts", str(tiny_artifacts_dir), "--variants", "cpu-int8", "cpu-int8-kv8",
              "--batches", "1", "2", "--context", "16", "--rounds", "1")
    for batch, ms1, tok1, ms2, tok2 in figures(rf"^([12]) +{NUMBER} +{NUMBER} +{NUMBER} +{NUMBER}$", out):
        for ms, tok in ((ms1, tok1), (ms2, tok2)):  # ms printed to 0.1: tok/s = batch / step within that rounding
            assert float(tok) > 0 and int(batch) * 1e3 / (float(ms) + 0.05) <= float(tok) + 0.5
            assert float(ms) < 0.05 or float(tok) - 0.5 <= int(batch) * 1e3 / (float(ms) - 0.05)
    assert "GroupQueryAttention" in out
    (kernel, wall), = figures(rf"^kernel time {NUMBER} ms over \d+ model runs \(mean run {NUMBER} ms wall\)$",
                              out.split("profile cpu-int8-kv8")[-1])
    assert 0 < float(kernel) <= float(wall) * 1.5


def test_bench_engine_prints_throughput_and_step_overhead(tiny_artifacts_dir):
    out = run("bench_engine.py", "--artifacts", str(tiny_artifacts_dir), "--variants", "cpu-int8", "cpu-int8-kv8",
              "--concurrency", "2", "--gen", "8", "--duration-s", "1", "--ramp-s", "0.3", "--prompt-positions", "8",
              "--skip-ttft")
    for variant in ("cpu-int8", "cpu-int8-kv8"):
        for mode in ("continuous", "run-to-completion"):
            tok_s, p50, p99, tokens = figures(rf"^{variant} {mode} x2 +{NUMBER} tok/s +ITL p50 +{NUMBER} ms +p99 +"
                                              rf"{NUMBER} ms +\({NUMBER} tokens in", out)[0]
            assert float(tok_s) > 0 and int(tokens) > 0 and 0 < float(p50) <= float(p99)
    batch, decode, step = figures(rf"^ +mean batch +{NUMBER} +ORT decode +{NUMBER} ms +step +{NUMBER} ms", out)[0]
    assert 1 <= float(batch) <= 2 and 0 < float(decode) <= float(step)
    figures(rf"^ +engine without the graph x2: {NUMBER} ms per step \({NUMBER} tok/s ceiling\)$", out)


@pytest.mark.slow
def test_bench_bounds_prints_kernel_times_and_a_step_floor():
    out = run("bench_bounds.py", "--threads", "1", "--seconds", "0.02", timeout=300)
    figures(rf"^1 ORT threads; memory read {NUMBER} GB/s", out)
    for hot, dram in figures(rf"^ +b\d+ @\d+ past +float(?:32|16) +{NUMBER} +{NUMBER} ", out):
        assert float(hot) > 0 and float(dram) > 0
    for attention, rest, total in figures(rf"^ +b\d+ @\d+ past: attention {NUMBER} \+ the rest {NUMBER} = "
                                          rf"{NUMBER} ms per step", out):
        assert float(total) == pytest.approx(float(attention) + float(rest), abs=0.02)


def test_naive_server_module_imports():
    """bench_vs_naive ships this module to its replica by value: it must import on its own."""
    done = subprocess.run([sys.executable, "-c", "import naive_server; print(naive_server.NaiveServer.name)"],
                          cwd=BENCHMARKS, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "NaiveServer" in done.stdout, done.stderr[-2000:]


def test_soak_growth_verdict_flags_growth_over_five_percent():
    sys.path.insert(0, str(BENCHMARKS))
    import bench_soak

    steady = [(0, {"Decoder#a": 100.0}), (60, {"Decoder#a": 150.0}), (600, {"Decoder#a": 154.0})]
    growing = [(0, {"Decoder#a": 100.0}), (60, {"Decoder#a": 150.0}), (600, {"Decoder#a": 160.0})]
    assert bench_soak.growth_report(steady, warmup_s=60) and not bench_soak.growth_report(growing, warmup_s=60)
