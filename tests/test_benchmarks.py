"""The benchmark scripts still measure: each one that runs without Ray and within seconds is run for real, briefly,
on the tiny preset's artifacts (or its own small graphs), and the figures it prints must be there and be sane.
Speed itself is never asserted: these are figures for a quiet machine, not a test's verdict.

Not run here (each takes minutes or starts Ray, which the e2e tests already exercise through the same stages):
bench_soak, bench_vs_naive, bench_feature_path and bench_engine's --serve/--http part (bench_http) start a Ray Serve
app; bench_step_loop needs the `reference` preset's 228-position contexts; bench_llava builds a 0.5B-shaped
checkpoint. bench_graphs runs on the tiny preset without the standard recipe (its torch export is the slow part).
bench_vs_vllm starts vLLM (minutes); only its checkpoint copy for vLLM is tested here.
"""

from __future__ import annotations

import json
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


def test_bench_lone_prompt_prints_the_first_token_time_with_the_option_on_and_off(tiny_artifacts_dir):
    out = run("bench_lone_prompt.py", "--artifacts", str(tiny_artifacts_dir), "--variant", "cpu-fp32", "--threads",
              "1", "--rounds", "4", "--prompt", "8")
    for lone in ("False", "True"):
        (p50, low), = figures(rf"^lone_prompt_logits={lone} *: first token p50 +{NUMBER} ms, min +{NUMBER} ms "
                              rf"\(n=2\)$", out)
        assert 0 < float(low) <= float(p50) < 10000


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


def test_bench_graphs_times_every_cpu_variant_and_the_encoding_replicas_run(tmp_path):
    """Every CPU variant of the tiny preset, the quantized-cache ones with their own cache dtype, and each int8 one
    again as u8s8 (what a replica runs on a VNNI/AMX CPU); the peaks of both int8 encodings."""
    from mmcore.runtime.int8_kernels import choose_encoding

    out = run("bench_graphs.py", "--preset", "tiny", "--seconds", "0.05", "--cache", str(tmp_path), "--no-standard")
    rows = {(graph, variant) for graph, variant in figures(r"^(vision|decoder)\s+(\S+)\s+\d+/\d+\s+(?:batch|step)",
                                                           out)}
    for graph, variant in [("vision", "cpu-int8"), ("vision", "cpu-int8@u8s8"), ("decoder", "cpu-int8-kv8"),
                           ("decoder", "cpu-int8-kv8@u8s8"), ("decoder", "cpu-int8-rowwise-kv8"),
                           ("decoder", "cpu-fp32")]:
        assert (graph, variant) in rows, (graph, variant, sorted(rows))
    assert ("decoder", "cpu-int8-rowwise@u8s8") not in rows  # MatMulNBits: no u8u8 weights to re-encode
    u8s8, u8u8 = map(float, figures(rf"int8 u8s8 {NUMBER} GOP/s, u8u8 {NUMBER} GOP/s", out)[0])
    assert u8s8 > 0 and u8u8 > 0
    assert f"run int8 weights as {choose_encoding().encoding} (" in out


def test_vllm_copy_renames_only_the_vision_tower_keys_and_transformers_loads_it_unchanged(tmp_path):
    """bench_vs_vllm serves vLLM a copy of the checkpoint whose safetensors headers name the vision tower's weights
    `vision_tower.vision_model.*` (the layout vLLM 0.32 reads): transformers must load that copy to exactly the
    original's weights, with no key missing or left over."""
    import safetensors
    import torch
    from transformers import LlavaForConditionalGeneration

    from graphs.families.llava.synthetic import SPECS, write_checkpoint

    sys.path.insert(0, str(BENCHMARKS))
    import vllm_peer

    ckpt = write_checkpoint(tmp_path / "ckpt", SPECS["siglip-qwen2"], max_shard_size="200KB")  # sharded: the index
    copy = vllm_peer.vllm_copy(ckpt, tmp_path / "ckpt-vllm")
    assert vllm_peer.vllm_copy(ckpt, copy) == copy  # reused, not remade
    keys = [k for f in sorted(copy.glob("*.safetensors")) for k in safetensors.safe_open(f, "pt").keys()]
    vision = [k for k in keys if "vision_tower." in k]
    assert vision and all(k.startswith("vision_tower.vision_model.") for k in vision)
    index = json.loads((copy / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == sorted(keys)

    original = LlavaForConditionalGeneration.from_pretrained(ckpt).state_dict()
    loaded, info = LlavaForConditionalGeneration.from_pretrained(copy, output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    renamed = loaded.state_dict()
    assert renamed.keys() == original.keys()
    assert all(torch.equal(renamed[k], original[k]) for k in original)


def test_bench_tiling_counts_image_tokens_as_transformers_and_times_the_views(tmp_path):
    """Parts a and b on the tests' tiny OneVision and SmolVLM checkpoints (written and built into tmp_path)."""
    out = run("bench_tiling.py", "--models", "onevision-tiny", "smolvlm-tiny", "--parts", "a", "b", "--work",
              str(tmp_path), "--sizes", "640x480", "480x640", "300x300", "--seconds", "0.05")
    counts = figures(r"^ +(\d+x\d+) +(\d+) +(\d+) +(\d+)  (yes|NO)$", out)
    assert len(counts) == 6 and all(equal == "yes" and int(views) >= 1 for _, views, _, _, equal in counts)
    for b in (1, 8):
        assert len(figures(rf"^ +batch of {b} view\(s\) +{NUMBER} +{NUMBER} +{NUMBER} +{NUMBER}$", out)) == 2
    per_image = figures(rf"^ +one 640x480 image \((\d+) views\) +{NUMBER} .* -> (\d+) rows$", out)
    tokens_640 = [int(rows) for size, _, rows, _, _ in counts if size == "640x480"]
    assert [int(rows) for *_, rows in per_image] == tokens_640  # the assembled features fill the planned rows
