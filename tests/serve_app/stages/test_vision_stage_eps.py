"""The vision stage's EP handling: default provider order, strict start, warm-up over the profile's batch sizes,
and the TensorRT profile bounding live batch-size changes. Real ORT sessions; a fake only for the GPU host."""

import asyncio

import pytest
from pydantic import ValidationError

from mmcore.manifest import CPU_EP, CUDA_EP, TENSORRT_EP
from mmcore.runtime.ort_session import ProviderUnavailable
from serve_app.stages import vision
from serve_app.stages.options import VisionOptions
from serve_app.stages.vision import VisionEncoder



def make(artifacts, **opts) -> VisionEncoder:
    return VisionEncoder.func_or_class({"artifacts_dir": artifacts}, VisionOptions(**opts).model_dump())


def test_default_order_is_tensorrt_cuda_cpu_and_cpu_host_falls_back(vision_artifacts):
    assert [p.name for p in VisionOptions().providers] == [TENSORRT_EP, CUDA_EP, CPU_EP]
    enc = make(vision_artifacts, max_batch_size=4, batch_profile_max=8)
    assert (enc.provider, enc.variant) == (CPU_EP, "cpu-fp32")
    assert len(enc.fallbacks) == 2 and TENSORRT_EP in enc.fallbacks[0]
    assert sorted(enc.warmup_s) == [1, 4, 8]  # every batch size of the profile ran before the replica is ready


def test_strict_vision_refuses_to_start_on_cpu_host(vision_artifacts):
    with pytest.raises(ProviderUnavailable, match=f"vision: {TENSORRT_EP} did not load"):
        make(vision_artifacts, strict=True)


def test_config_form_of_providers(vision_artifacts):
    opts = VisionOptions(providers=[{"name": TENSORRT_EP, "fp16": False, "cache_dir": "/x"}, CPU_EP])
    assert opts.providers[0].fp16 is False and opts.providers[1].name == CPU_EP
    assert VisionOptions.model_validate(opts.model_dump()) == opts  # the builder passes dumps to replicas
    with pytest.raises(ValidationError, match="batch_profile_max"):
        VisionOptions(max_batch_size=8, batch_profile_max=4)


def test_tensorrt_replica_keeps_batches_inside_the_profile(vision_artifacts, monkeypatch):
    """On a GPU host with TensorRT (faked: the session object), a live max_batch_size beyond the profile's max would
    rebuild the engine mid-traffic, so reconfigure refuses it; within the profile it applies."""
    real = vision.open_vision_session

    def on_tensorrt(artifacts_dir, options):
        opened = real(artifacts_dir, VisionOptions(providers=[CPU_EP]))  # a real session to warm up
        return type(opened)(opened.session, TENSORRT_EP, "portable")
    monkeypatch.setattr(vision, "open_vision_session", on_tensorrt)
    enc = make(vision_artifacts, max_batch_size=4)  # batch_profile_max None: the profile ends at 4
    asyncio.run(enc.reconfigure({"max_batch_size": 2}))
    assert enc.options.max_batch_size == 2
    with pytest.raises(ValueError, match="max_batch_size 5 exceeds 4, the batch profile"):
        asyncio.run(enc.reconfigure({"max_batch_size": 5}))
    assert enc.options.max_batch_size == 2
