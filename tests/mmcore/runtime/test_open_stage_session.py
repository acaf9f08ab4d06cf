"""Which EP loads, and which variant file it runs. Real ORT sessions where this CPU-only machine can show the
behaviour (the CPU build, ORT's silent fallback); a fake session only for a GPU host that loads CUDA/TensorRT."""

import logging

import numpy as np
import pytest

from mmcore.manifest import CPU_EP, CUDA_EP, TENSORRT_EP
from mmcore.runtime.ort_session import ProviderUnavailable, open_session, open_stage_session
from mmcore.runtime.providers import BatchProfile, CPUSpec, default_vision_providers

# conftest's variant graphs compute pixels * scale: portable (TRT/CUDA) scales by 2, cpu-fp32 by 1.
PORTABLE_SCALE, CPU_SCALE = 2.0, 1.0
PROFILE = BatchProfile("pixels", (3, 8, 8), opt_batch=4, max_batch=8)


def _run(opened) -> float:
    pixels = np.full((1, 3, 8, 8), 3, dtype=np.uint8)
    return float(opened.session.run(None, {"pixels": pixels})[0].ravel()[0]) / 3


def test_cpu_build_falls_back_to_cpu_variant_with_warning(vision_dir, caplog):
    directory, graph = vision_dir
    with caplog.at_level(logging.WARNING, logger="mmcore.runtime.ort_session"):
        opened = open_stage_session(directory, graph, default_vision_providers(), stage="vision", profile=PROFILE)
    assert (opened.provider, opened.variant) == (CPU_EP, "cpu-fp32")
    assert _run(opened) == CPU_SCALE  # the CPU variant's file really is the one running
    assert [m.split(":")[1].strip().split()[0] for m in opened.fallbacks] == [TENSORRT_EP, CUDA_EP]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and TENSORRT_EP in warned[0] and "not in this onnxruntime build" in warned[0]


def test_strict_refuses_and_names_the_missing_ep(vision_dir):
    directory, graph = vision_dir
    with pytest.raises(ProviderUnavailable, match=f"vision: {TENSORRT_EP} did not load.*strict mode"):
        open_stage_session(directory, graph, default_vision_providers(), strict=True, stage="vision")


@pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")  # ORT's own notice of the fallback
def test_real_ort_silent_fallback_is_detected(vision_dir, gpu_build_available):
    """onnxruntime-gpu on a host without CUDA libraries lists the GPU EPs as available, then runs on CPU. Real ORT
    here does the same when told to use EPs it lacks: only get_providers() tells."""
    directory, graph = vision_dir
    opened = open_stage_session(directory, graph, default_vision_providers(), stage="vision",
                                available=gpu_build_available)
    assert (opened.provider, opened.variant) == (CPU_EP, "cpu-fp32")
    assert "fell back to CPUExecutionProvider" in opened.fallbacks[0]
    assert _run(opened) == CPU_SCALE
    with pytest.raises(ProviderUnavailable, match=f"{TENSORRT_EP} did not load: ONNX Runtime fell back"):
        open_stage_session(directory, graph, default_vision_providers(), strict=True, available=gpu_build_available)


def test_gpu_host_loads_tensorrt_with_portable_variant_and_profile(vision_dir, gpu_host, gpu_build_available):
    directory, graph = vision_dir
    opened = open_stage_session(directory, graph, default_vision_providers(), strict=True, profile=PROFILE,
                                session_factory=gpu_host(), available=gpu_build_available)
    assert (opened.provider, opened.variant, opened.fallbacks) == (TENSORRT_EP, "portable", ())
    (session,) = gpu_host.created
    assert session.path.endswith("vision.portable.onnx")
    names = [e[0] for e in session.entries]
    assert names == [TENSORRT_EP, CUDA_EP, CPU_EP]  # later EPs registered for nodes TensorRT cannot take
    assert session.entries[0][1]["trt_profile_max_shapes"] == "pixels:8x3x8x8"


def test_tensorrt_libraries_missing_falls_to_cuda(vision_dir, gpu_host, gpu_build_available, caplog):
    directory, graph = vision_dir
    factory = gpu_host(loadable=(CUDA_EP, CPU_EP))  # e.g. libnvinfer absent: ORT drops TRT silently
    opened = open_stage_session(directory, graph, default_vision_providers(), session_factory=factory,
                                available=gpu_build_available, stage="vision")
    assert (opened.provider, opened.variant) == (CUDA_EP, "portable")
    assert [[e[0] for e in s.entries] for s in gpu_host.created] == [[TENSORRT_EP, CUDA_EP, CPU_EP],
                                                                     [CUDA_EP, CPU_EP]]
    assert "fell back to CUDAExecutionProvider" in opened.fallbacks[0]


def test_session_creation_error_is_a_fallback_reason(vision_dir, gpu_host, gpu_build_available):
    directory, graph = vision_dir
    factory = gpu_host(raise_for=(TENSORRT_EP,))
    opened = open_stage_session(directory, graph, default_vision_providers(), session_factory=factory,
                                available=gpu_build_available)
    assert opened.provider == CUDA_EP
    assert "engine build failed" in opened.fallbacks[0]
    with pytest.raises(ProviderUnavailable, match="engine build failed"):
        open_stage_session(directory, graph, default_vision_providers(), strict=True, session_factory=factory,
                           available=gpu_build_available)


def test_no_variant_for_the_ep_is_a_fallback_reason(vision_dir, gpu_build_available):
    directory, graph = vision_dir
    del graph.variants["cpu-fp32"]
    with pytest.raises(ProviderUnavailable, match="no provider loaded.*no variant for CPUExecutionProvider"):
        open_stage_session(directory, graph, [CPUSpec()], stage="decoder")


def test_legacy_open_session_still_reports_active_ep(vision_dir):
    directory, _ = vision_dir
    opened = open_session(str(directory / "vision.cpu-fp32.onnx"), [TENSORRT_EP, CPU_EP], threads=1)
    assert opened.provider == CPU_EP and opened.variant is None
