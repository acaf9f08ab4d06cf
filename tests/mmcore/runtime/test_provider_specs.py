"""Provider specs -> ORT provider entries: option names and values as ONNX Runtime expects them."""

import pytest
from pydantic import ValidationError

from mmcore.manifest import CPU_EP, CUDA_EP, TENSORRT_EP, TensorSpec
from mmcore.runtime.providers import (BatchProfile, CPUSpec, CUDASpec, TensorRTSpec, batch_profile,
                                 default_vision_providers, parse_providers)

PIXELS = TensorSpec(name="pixels", dtype="uint8", shape=["batch", 3, 224, 224])


def test_trt_profile_spans_batch_sizes_so_no_engine_rebuild():
    profile = batch_profile(PIXELS, opt_batch=8, max_batch=16)
    name, opts = TensorRTSpec(cache_dir="/cache/trt").ort_entry(profile)
    assert name == TENSORRT_EP
    assert opts["trt_profile_min_shapes"] == "pixels:1x3x224x224"
    assert opts["trt_profile_opt_shapes"] == "pixels:8x3x224x224"
    assert opts["trt_profile_max_shapes"] == "pixels:16x3x224x224"
    assert opts["trt_fp16_enable"] == "1"
    assert opts["trt_engine_cache_enable"] == "1"
    assert opts["trt_engine_cache_path"] == opts["trt_timing_cache_path"] == "/cache/trt"
    assert opts["trt_timing_cache_enable"] == "1"
    assert opts["trt_max_workspace_size"] == str(2 << 30)
    assert all(isinstance(v, str) for v in opts.values())


def test_trt_without_profile_and_fp32():
    _, opts = TensorRTSpec(fp16=False, workspace_bytes=1 << 20, timing_cache=False).ort_entry()
    assert opts["trt_fp16_enable"] == "0"
    assert opts["trt_timing_cache_enable"] == "0"
    assert opts["trt_max_workspace_size"] == str(1 << 20)
    assert not any(k.startswith("trt_profile") for k in opts)


def test_cuda_memory_options():
    name, opts = CUDASpec(device_id=1, gpu_mem_limit=3 << 30).ort_entry()
    assert name == CUDA_EP
    assert opts == {"device_id": "1", "arena_extend_strategy": "kSameAsRequested", "gpu_mem_limit": str(3 << 30)}
    assert "gpu_mem_limit" not in CUDASpec().ort_entry()[1]


def test_cpu_entry_has_no_options():
    assert CPUSpec().ort_entry() == (CPU_EP, {})


def test_parse_config_form_keeps_order_and_accepts_bare_names():
    specs = parse_providers([{"name": TENSORRT_EP, "fp16": False}, CUDA_EP, "CPUExecutionProvider"])
    assert [type(s) for s in specs] == [TensorRTSpec, CUDASpec, CPUSpec]
    assert specs[0].fp16 is False
    assert [s.name for s in default_vision_providers()] == [TENSORRT_EP, CUDA_EP, CPU_EP]


@pytest.mark.parametrize("raw, field", [
    ([{"name": "OpenVINOExecutionProvider"}], "name"),
    ([{"name": CUDA_EP, "gpu_mem_limt": 5}], "gpu_mem_limt"),  # a typo must not be ignored silently
    ([{"name": TENSORRT_EP, "builder_optimization_level": 9}], "builder_optimization_level"),
])
def test_bad_provider_config_names_the_field(raw, field):
    with pytest.raises(ValidationError, match=field):
        parse_providers(raw)


def test_batch_profile_needs_symbolic_batch_and_fixed_rest():
    with pytest.raises(ValueError, match="fixed"):
        batch_profile(TensorSpec(name="pixels", dtype="uint8", shape=[4, 3, 8, 8]), 1, 4)
    with pytest.raises(ValueError, match="symbolic"):
        batch_profile(TensorSpec(name="pixels", dtype="uint8", shape=["batch", 3, "h", 8]), 1, 4)
    with pytest.raises(ValueError, match="opt_batch"):
        BatchProfile("pixels", (3, 8, 8), opt_batch=9, max_batch=4)


def test_warmup_batches_cover_min_opt_max():
    assert BatchProfile("pixels", (3, 8, 8), 4, 16).warmup_batches == [1, 4, 16]
    assert BatchProfile("pixels", (3, 8, 8), 1, 1).warmup_batches == [1]
